"""The ceiling row's apps (row H1 of `make bench`, bench/hotpath_bench.py), served by the same gunicorn settings as
the product:

- `app`: an empty Flask app that parses the webhook's JSON body and answers 200. Its req/s is what Flask + gunicorn +
  loopback TCP allow on this machine, so the product's throughput is read as a fraction of it.
- `floor`: the same, plus the one thing no durable webhook can skip: one Lua call through redis-py that stores the
  body before the 200 (the product's invariant: a message that got a 2xx is never lost). Its ratio to `app` is the
  most any webhook on Flask + redis-py could reach on this machine, before dedupe, parsing or metrics.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

from flask import Flask, request
from redis import Redis

app = Flask(__name__)
floor = Flask("floor")

STORE_LUA = "redis.call('SET', KEYS[1], ARGV[1], 'EX', 600) return 1"


@app.post("/webhook")
def webhook() -> tuple[dict[str, str], int]:
    # Parse the body like the product must, so JSON decoding is part of the ceiling, not of the product's share.
    request.get_json()
    return {"status": "ok"}, 200


@floor.post("/webhook")
def durable_webhook() -> tuple[dict[str, str], int]:
    body = request.get_json()
    message_id = str(((body.get("data") or {}).get("key") or {}).get("id") or os.urandom(8).hex())
    _store()(keys=[f"bench:floor:{message_id}"], args=[request.get_data()])
    return {"status": "ok"}, 200


@cache
def _store() -> Any:
    # Made on first use, so each gunicorn worker opens its own connection after the fork.
    return Redis.from_url(os.environ["CACHE_REDIS_URI"]).register_script(STORE_LUA)


@app.get("/health")
@floor.get("/health")
def health() -> tuple[dict[str, str], int]:
    # harness.Gunicorn.wait_ready polls this before any load starts.
    return {"status": "ok"}, 200
