"""Profiles of the two hot paths (`make bench-profile`, or `bench/run.py --profile`): where the CPU of a webhook
and of a reply goes, as pyinstrument call trees written to text files under bench/profiles/.

- webhook: the Flask app as gunicorn calls it (`app.wsgi_app(environ, start_response)`, one message per request,
  a new chat each time, the same Evolution body as the load of row 1), against a real redis-server, metrics on.
  gunicorn's own HTTP parsing is left out: it is the same for the empty-app ceiling and the product.
- reply: `Worker.run_once(wait=True)` over chats that are due, each a burst of three texts with two earlier turns of
  history, with the example knowledge base loaded, google-genai pointed at the in-process fake Gemini and the
  sender at the fake Evolution (their server threads are not profiled: pyinstrument samples the calling thread).

Each file starts with the CPU per request or reply measured without the profiler, then the call tree of the profiled
run (frames under 1 % hidden). Run `--tag before` / `--tag after` to keep both sides of a change.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for path in (str(ROOT), str(BENCH)):
    if path not in sys.path:
        sys.path.insert(0, path)

PROFILES_DIR = BENCH / "profiles"
BURST = ["Oi, boa tarde!", "Vocês entregam no domingo?", "Queria saber o preço do bolo de cenoura"]
HISTORY_TURNS = [
    ("Oi, vocês fazem bolo de aniversário?", "Fazemos sim! Qual sabor você gostaria?"),
    ("Chocolate com morango", "Perfeito, o de chocolate com morango sai por R$ 90 o quilo."),
]


def settings_for(redis_url: str, gemini_url: str, evolution_url: str, metrics_dir: str) -> Any:
    from harness import pacing_off

    from config import Settings

    return Settings(
        redis_uri=redis_url,
        gemini_api_key="bench",
        gemini_base_url=gemini_url,
        evolution_api=evolution_url,
        worker_enabled=False,
        webhook_auth=False,
        worker_concurrency=64,
        **pacing_off(Settings),
        log_level="WARNING",
        metrics_enabled=True,
        knowledge_dir=str(ROOT / "examples" / "knowledge"),
        debounce_seconds=600,
    )


def wsgi_caller(app: Any, body_for: Callable[[int], bytes]) -> Callable[[int], int]:
    """One request as gunicorn's sync worker hands it to the app; returns the status code."""
    base = {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/webhook",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "CONTENT_TYPE": "application/json",
        "HTTP_HOST": "127.0.0.1:8000",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    status: list[str] = []

    def start_response(code: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        status.append(code)

    def call(n: int) -> int:
        body = body_for(n)
        environ = dict(base, CONTENT_LENGTH=str(len(body)))
        environ["wsgi.input"] = io.BytesIO(body)
        status.clear()
        for _ in app(environ, start_response):
            pass
        return int(status[0].split()[0])

    return call


def profile_webhook(redis_url: str, fakes: Any, requests: int) -> str:
    import loadgen

    from webhook import create_app

    settings = settings_for(redis_url, fakes.gemini.url, fakes.evolution.url, "")
    app = create_app(settings, start_worker=False)
    call = wsgi_caller(app.wsgi_app, lambda n: loadgen.body_for(n, f"PROF{n:012d}"))
    for n in range(500):  # warm-up: imports, script loading, connection
        assert call(10_000_000 + n) == 200
    start = time.thread_time()
    for n in range(requests):
        assert call(n) == 200
    per_request = (time.thread_time() - start) / requests
    return header("webhook", f"{per_request * 1e3:.3f} ms CPU per request ({requests:,} requests)") + run_profiled(
        lambda: [call(20_000_000 + n) for n in range(requests)]
    )


def profile_reply(redis_url: str, fakes: Any, chats: int) -> str:
    from components import build_components
    from memory import Turn
    from models import ChatRef, IncomingMessage

    settings = settings_for(redis_url, fakes.gemini.url, fakes.evolution.url, "")
    parts = build_components(settings)

    def load(first: int) -> None:
        now = time.time()
        for n in range(first, first + chats):
            chat = ChatRef(gateway="evolution", instance="loja", chat_id=f"5511{n:09d}@s.whatsapp.net")
            turns = [
                Turn(role=role, text=text, at=now - 3600)
                for pair in HISTORY_TURNS
                for role, text in zip(("user", "model"), pair, strict=True)
            ]
            parts.history.append(chat, turns)
            for i, text in enumerate(BURST):
                message = IncomingMessage(chat=chat, message_id=f"P{n}-{i}", text=text)
                parts.buffer.append(message, now=now - 600 + i)

    def answer_all() -> None:
        answered = 0
        while answered < chats:
            answered += parts.worker.run_once(wait=True)

    load(0)
    answer_all()  # warm-up
    load(chats)
    start = time.thread_time()
    answer_all()
    per_reply = (time.thread_time() - start) / chats
    floor = reply_floor(redis_url, fakes, settings, chats)
    load(2 * chats)
    with counted_round_trips() as round_trips:
        text = run_profiled(answer_all)
    figure = (
        f"{per_reply * 1e3:.3f} ms CPU per reply ({chats:,} replies); the floor of a reply's exchanges, measured "
        f"next: {floor * 1e3:.3f} ms ({per_reply / floor:.2f}x); {round_trips[0] / chats:.2f} Redis round trips "
        "per reply"
    )
    return header("reply", figure) + text + FLOOR_NOTE


FLOOR_NOTE = """
The floor: what any reply on this stack costs before it decides, builds or records anything of its own, in the same
thread and run: the same generateContent body (the last one the product sent) through google-genai's API client,
one urllib3 POST of a sendText, and two redis-py Lua calls (the fence and the ack; the claim is shared by a batch).
"""


@contextlib.contextmanager
def counted_round_trips() -> Iterator[list[int]]:
    """Counts redis-py's sends in the block: one per command or pipeline, so one per round trip to Redis."""
    from redis.connection import AbstractConnection

    count = [0]
    original = AbstractConnection.send_packed_command

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        count[0] += 1
        return original(self, *args, **kwargs)

    AbstractConnection.send_packed_command = counting  # type: ignore[method-assign]
    try:
        yield count
    finally:
        AbstractConnection.send_packed_command = original  # type: ignore[method-assign]


def reply_floor(redis_url: str, fakes: Any, settings: Any, replies: int) -> float:
    """CPU seconds per reply of the floor described in FLOOR_NOTE."""
    import json

    import urllib3
    from redis import Redis

    from gemini_provider import GeminiProvider

    provider = GeminiProvider(settings)
    body = fakes.gemini.prompts()[-1]
    pool = urllib3.PoolManager()
    send_url = f"{fakes.evolution.url}/message/sendText/loja"
    send_body = json.dumps({"number": "5511000000000", "text": "Fazemos sim! O bolo de cenoura sai por R$ 45."})
    store = Redis.from_url(redis_url).register_script("redis.call('SET', KEYS[1], ARGV[1], 'EX', 60) return 1")

    def one(n: int) -> None:
        store(keys=[f"floor:{n}"], args=["fence"])
        provider._generate(body)
        pool.urlopen("POST", send_url, body=send_body, headers={"content-type": "application/json", "apikey": "x"})
        store(keys=[f"floor:{n}"], args=["ack"])

    for n in range(200):
        one(n)
    start = time.thread_time()
    for n in range(replies):
        one(n)
    return (time.thread_time() - start) / replies


def header(path: str, figure: str) -> str:
    return f"# {path} path profile\n\n{figure}\n\n"


def run_profiled(work: Callable[[], Any]) -> str:
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0002)
    profiler.start()
    work()
    profiler.stop()
    return profiler.output_text(unicode=False, color=False, show_all=False, time="percent_of_total")


class Fakes:
    def __init__(self) -> None:
        from tests.fakes import FakeEvolution, FakeGemini

        self.gemini, self.evolution = FakeGemini(), FakeEvolution()

    def close(self) -> None:
        self.gemini.close()
        self.evolution.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tag", default="after", help="file name suffix: webhook-<tag>.txt, reply-<tag>.txt")
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--chats", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=PROFILES_DIR)
    args = parser.parse_args(argv)
    from harness import metrics_tempdir

    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(metrics_tempdir("bench-profile-metrics-")))
    from tests.redis_server import RedisServer

    redis_server = RedisServer(Path(tempfile.mkdtemp(prefix="bench-profile-"))).start()
    fakes = Fakes()
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        for name, run in (
            ("webhook", lambda: profile_webhook(redis_server.url, fakes, args.requests)),
            ("reply", lambda: profile_reply(redis_server.url, fakes, args.chats)),
        ):
            text = run()
            path = args.out / f"{name}-{args.tag}.txt"
            path.write_text(text)
            print(text.split("\n\n")[1], "->", path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    finally:
        fakes.close()
        redis_server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
