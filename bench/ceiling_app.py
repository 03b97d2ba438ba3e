"""The ceiling row's app (row H1 of `make bench`, bench/hotpath_bench.py): an empty Flask app that parses the webhook's
JSON body and answers 200, served by the same gunicorn settings as the product. Its req/s is what Flask + gunicorn +
loopback TCP allow on this machine, so the product's throughput is read as a fraction of it.
"""

from __future__ import annotations

from flask import Flask, request

app = Flask(__name__)


@app.post("/webhook")
def webhook() -> tuple[dict[str, str], int]:
    # Parse the body like the product must, so JSON decoding is part of the ceiling, not of the product's share.
    request.get_json()
    return {"status": "ok"}, 200


@app.get("/health")
def health() -> tuple[dict[str, str], int]:
    # harness.Gunicorn.wait_ready polls this before any load starts.
    return {"status": "ok"}, 200
