"""How long a part stays "taken by the gateway but not yet known as sent in Redis": the window in which a SIGKILL
makes the next owner send the part again on a gateway that cannot be asked (Meta's Cloud API has no lookup of
sent messages; Evolution and Twilio are asked, see worker._first_unsent).

`.venv/bin/python bench/crash_window.py [--replies N]`: one process, a real redis-server, the real worker and
Gemini/Evolution fakes; each reply's window runs from the moment `send_text` returns (the gateway answered) to
the moment the progress or the ack holding that part is back from Redis. Prints percentiles in milliseconds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness import pacing_off  # noqa: E402

from buffer import Buffer  # noqa: E402
from components import build_components  # noqa: E402
from config import Settings  # noqa: E402
from models import ChatRef, IncomingMessage  # noqa: E402
from tests.fakes import FakeEvolution, FakeGemini  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replies", type=int, default=1000)
    args = parser.parse_args()
    redis_server = RedisServer(Path(tempfile.mkdtemp(prefix="bench-window-"))).start()
    gemini, evolution = FakeGemini(), FakeEvolution()
    windows: list[float] = []
    returned: dict[str, float] = {}
    try:
        settings = Settings(
            redis_uri=redis_server.url,
            gemini_api_key="bench",
            gemini_base_url=gemini.url,
            evolution_api=evolution.url,
            worker_enabled=False,
            webhook_auth=False,  # no webhook is served: nothing to generate a token for
            max_replies_per_hour=0,
            **pacing_off(Settings),
            log_level="WARNING",
        )
        parts = build_components(settings)
        gateway = parts.worker.gateways["evolution"]
        send_text = gateway.send_text
        ack = Buffer.ack

        def timed_send(chat: ChatRef, text: str, **kwargs: object) -> str:
            message_id = send_text(chat, text, **kwargs)  # type: ignore[arg-type]
            returned[chat.key] = time.perf_counter()
            return message_id

        def timed_ack(buffer: Buffer, claim: object, **kwargs: object) -> bool:
            done = ack(buffer, claim, **kwargs)  # type: ignore[arg-type]
            windows.append(time.perf_counter() - returned.pop(claim.chat.key))  # type: ignore[attr-defined]
            return done

        gateway.send_text = timed_send  # type: ignore[method-assign]
        Buffer.ack = timed_ack  # type: ignore[method-assign,assignment]
        now = time.time()
        for n in range(args.replies):
            chat = ChatRef(gateway="evolution", instance="loja", chat_id=f"5511{n:09d}@s.whatsapp.net")
            parts.buffer.append(IncomingMessage(chat=chat, message_id=f"M{n}", text="Oi"), now=now - 600)
        while len(windows) < args.replies:
            parts.worker.run_once(wait=True)
    finally:
        gemini.close()
        evolution.close()
        redis_server.stop()
    ordered = sorted(w * 1000 for w in windows)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    print(f"\nWindow from the gateway's answer to the ack in Redis, {len(ordered)} one-part replies (ms)\n")
    print("| p50 | p90 | p99 | max | mean |")
    print("|---|---|---|---|---|")
    mean = statistics.mean(ordered)
    print(f"| {pick(0.5):.2f} | {pick(0.9):.2f} | {pick(0.99):.2f} | {ordered[-1]:.2f} | {mean:.2f} |")


if __name__ == "__main__":
    main()
