"""How fast the panel's pages render server-side: `.venv/bin/python bench/console_pages.py` (or `make bench-console`).

A real redis-server (started here, thrown away), the app from the factory with the worker off, a logged-in
session (through the login form), and Flask's test client, so the figures are the server's own work: Redis reads,
the chat list's key scan and Jinja, with no network or browser. Rows: one chat page whose history holds 500
turns (the goal: under 100 ms), its polled fragment, and the chat list with 200 chats.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from config import Settings  # noqa: E402
from memory import Turn  # noqa: E402
from models import ChatRef  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

TOKEN = "bench-admin"
TURNS = 500
CHATS = 200
TEXT = "Oi! Queria saber se vocês têm bolo de cenoura com cobertura de chocolate para amanhã à tarde, por favor. "


def timed(call: Callable[[], object], rounds: int) -> tuple[float, float]:
    """(median, p95) in milliseconds of `rounds` calls, after two warm-ups."""
    for _ in range(2):
        call()
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.95) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()

    redis_server = RedisServer(Path(tempfile.mkdtemp(prefix="bench-console-"))).start()
    try:
        from webhook import create_app

        settings = Settings(
            redis_uri=redis_server.url,
            admin_token=TOKEN,
            secret_key="bench",
            evolution_api="http://127.0.0.1:9",  # a gateway: the panel is behind its login, as in production
            history_max_turns=TURNS,
            worker_enabled=False,
            webhook_auth=False,
            log_level="WARNING",
        )
        app = create_app(settings, start_worker=False)
        parts = app.extensions["assistant"]
        chat = ChatRef(gateway="evolution", instance="loja", chat_id="5511987654321@s.whatsapp.net")
        now = time.time() - TURNS * 60
        turns = [
            Turn(role="user" if n % 2 == 0 else "model", text=f"{TEXT}#{n}", at=now + n * 60, name="Maria")
            for n in range(TURNS)
        ]
        parts.history.append(chat, turns)
        for n in range(CHATS - 1):
            other = ChatRef(gateway="evolution", instance="loja", chat_id=f"5521{n:09d}@s.whatsapp.net")
            parts.history.append(other, turns[:4])

        client = app.test_client()
        csrf = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/admin/login").text).group(1)  # type: ignore[union-attr]
        assert client.post("/admin/login", data={"token": TOKEN, "csrf_token": csrf}).status_code == 302
        page = client.get(f"/admin/chats/{chat.key}")
        assert page.status_code == 200 and page.text.count('class="bubble ') == TURNS, "the page lacks turns"

        rows = [
            (f"chat page, {TURNS} turns", f"/admin/chats/{chat.key}", 100.0),
            (f"chat page fragment, {TURNS} turns", f"/admin/chats/{chat.key}/body", 100.0),
            (f"chat list, {CHATS} chats", "/admin/chats/rows", None),
        ]
        print(f"{'page':<34} {'median ms':>10} {'p95 ms':>8} {'KB':>6}  goal")
        for name, path, goal in rows:
            size = len(client.get(path).data) / 1024
            median, p95 = timed(lambda path=path: client.get(path), args.rounds)
            verdict = "" if goal is None else f"< {goal:.0f} ms: {'met' if median < goal else 'MISSED'}"
            print(f"{name:<34} {median:>10.1f} {p95:>8.1f} {size:>6.0f}  {verdict}")
        parts.watcher.stop()
    finally:
        redis_server.stop()


if __name__ == "__main__":
    main()
