"""CPU per reply of the worker path, side by side with another checkout: `.venv/bin/python bench/reply_cpu.py
--against /path/to/other/checkout` (e.g. a `git worktree` of the last landed commit).

The drain row of `make bench` is CPU-bound on a shared 2-core machine, so its replies/s move by +-10 % between
runs. This measures the same work with less noise: one process, one thread, `run_once(wait=True)` over N due chats
(one text message each) against a real redis-server and in-process fake Gemini and Evolution, counting this
process's CPU time (fakes included, the same for both) and redis-server's. Rounds alternate between the two trees
and the table shows the medians and their ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


def measure(source: Path, chats: int) -> dict[str, float]:
    """Run in a child process with `source` first on sys.path; returns its CPU figures."""
    sys.path.insert(0, str(source))
    sys.path.insert(1, str(ROOT))  # tests.redis_server and tests.fakes of this tree
    try:
        from components import build_components  # type: ignore[import-not-found]
    except ImportError:  # a checkout from before components.py
        from webhook import build_components  # type: ignore[import-not-found,no-redef]
    from harness import pacing_off

    from config import Settings  # type: ignore[import-not-found]
    from models import ChatRef, IncomingMessage  # type: ignore[import-not-found]
    from tests.fakes import FakeEvolution, FakeGemini
    from tests.redis_server import RedisServer

    redis_server = RedisServer(Path(tempfile.mkdtemp(prefix="bench-cpu-"))).start()
    gemini, evolution = FakeGemini(), FakeEvolution()
    try:
        settings = Settings(
            redis_uri=redis_server.url,
            gemini_api_key="bench",
            gemini_base_url=gemini.url,
            evolution_api=evolution.url,
            worker_enabled=False,
            webhook_auth=False,  # no webhook is served: nothing to generate a token for
            max_replies_per_hour=0,
            worker_concurrency=64,
            **pacing_off(Settings),
            log_level="WARNING",
        )
        parts = build_components(settings)
        now = time.time()
        for n in range(chats):
            chat = ChatRef(gateway="evolution", instance="loja", chat_id=f"5511{n:09d}@s.whatsapp.net")
            message = IncomingMessage(chat=chat, message_id=f"M{n}", text="Oi, quanto custa o bolo de cenoura?")
            parts.buffer.append(message, now=now - 600)
        redis_before = _cpu_seconds(redis_server.process.pid)  # type: ignore[union-attr]
        cpu_before, wall_before = time.process_time(), time.perf_counter()
        answered = 0
        while answered < chats:
            answered += parts.worker.run_once(wait=True)
        cpu = time.process_time() - cpu_before
        wall = time.perf_counter() - wall_before
        redis_cpu = _cpu_seconds(redis_server.process.pid) - redis_before  # type: ignore[union-attr]
        assert len(evolution.sends()) == chats, "every chat must be answered once"
        return {"cpu_ms": cpu / chats * 1000, "redis_ms": redis_cpu / chats * 1000, "wall_ms": wall / chats * 1000}
    finally:
        gemini.close()
        evolution.close()
        redis_server.stop()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks of 1/100 s


def run_child(source: Path, chats: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(source), "--chats", str(chats)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", type=Path, help="another checkout to compare with (its code, this harness)")
    parser.add_argument("--chats", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.chats)))
        return
    trees = {"this tree": ROOT} | ({"other": args.against.resolve()} if args.against else {})
    results: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    for n in range(args.rounds):
        for name, path in trees.items():
            results[name].append(run_child(path, args.chats))
            print(f"round {n + 1}: {name} {results[name][-1]}", file=sys.stderr, flush=True)
    print(f"\nCPU per reply, worker path, {args.chats} chats x {args.rounds} rounds, medians (lower is better)\n")
    print("| tree | process CPU ms/reply | redis-server CPU ms/reply | wall ms/reply |")
    print("|---|---|---|---|")
    medians = {
        name: {key: statistics.median(r[key] for r in runs) for key in ("cpu_ms", "redis_ms", "wall_ms")}
        for name, runs in results.items()
    }
    for name, m in medians.items():
        print(f"| {name} | {m['cpu_ms']:.3f} | {m['redis_ms']:.3f} | {m['wall_ms']:.3f} |")
    if "other" in medians:
        this, other = medians["this tree"], medians["other"]
        print(
            f"| ratio this/other | {this['cpu_ms'] / other['cpu_ms']:.2f} | "
            f"{this['redis_ms'] / other['redis_ms']:.2f} | {this['wall_ms'] / other['wall_ms']:.2f} |"
        )


if __name__ == "__main__":
    main()
