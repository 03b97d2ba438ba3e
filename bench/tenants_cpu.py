"""CPU per reply of the worker path with 50 tenants against one tenant, in one process (no gunicorn): what bench
row T3 measures as a drain rate, with less noise and without loading the machine.
`.venv/bin/python bench/tenants_cpu.py [--processes 4 --threads] [--profile]`

Each case runs in its own child process: build_components with the TENANTS_FILE of bench/tenants_bench.py (one
tenant claiming the 50 instances, or 50 tenants with their own persona and 200-chunk knowledge folder), a real
redis-server, fake Gemini and Evolution in another process (bench/harness.py's FakeHost, so their CPU is not
counted), metrics on. A first drain of --chats chats builds the tenants' setups; the second is measured: this
process's CPU time per reply (the first drain's is printed too, T3c's counterpart). By default one worker answers
with `run_once(wait=True)`, one chat after another; `--processes N` builds N serving processes' parts (each its
own setups and knowledge cache) that share the drain, and `--threads` runs their loops and reply pools, as
`gunicorn -w 4` does (the model that reproduces T3). Each process's knowledge reads in both drains are printed.
Rounds alternate the two cases and the medians are printed; `--profile` writes a cProfile top list of one more
drain per case to /tmp.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MESSAGE_TEXT = "Oi! Vocês têm o tênis 42 em estoque? Qual o preço?"  # bench/run.py's
BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for path in (str(ROOT), str(BENCH)):
    if path not in sys.path:
        sys.path.insert(0, path)


def measure(case: str, chats: int, profile: bool, threads: bool, processes: int) -> dict[str, float]:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="tenants-cpu-metrics-")
    import loadgen
    import tenants_bench
    from harness import FakeHost, RedisProc, pacing_off

    from components import build_components
    from config import Settings
    from models import ChatRef, IncomingMessage

    root = Path(tempfile.mkdtemp(prefix="tenants-cpu-"))
    folders = [tenants_bench.knowledge_folder(root / "knowledge", n) for n in range(tenants_bench.TENANTS)]
    path = tenants_bench.tenants_file(root, folders, many=case == "fifty")
    redis = RedisProc(root / "redis").start()
    fakes = FakeHost(gemini_delay=0.0)
    try:
        settings = Settings(
            redis_uri=redis.url,
            gemini_api_key="bench",
            gemini_base_url=fakes.gemini_url,
            evolution_api=fakes.evolution_url,
            authentication_api_key="bench-apikey",
            worker_enabled=False,
            webhook_auth=False,
            worker_concurrency=16,  # the default
            **pacing_off(Settings),
            log_level="WARNING",
            tenants_file=str(path),
            knowledge_cache_mb=tenants_bench.BUDGET_MB,
            rag_whole_max_chars=0,
        )
        # `processes` > 1: as many serving processes' parts, each with its own tenants' setups and knowledge cache,
        # taking turns to claim (one after another, in this one process), as gunicorn's workers share a drain.
        every = [build_components(settings) for _ in range(processes)]
        parts = every[0]

        def drain(first_chat: int) -> float:
            now = time.time()
            for chat in range(first_chat, first_chat + chats):
                ref = ChatRef(
                    gateway="evolution",
                    instance=tenants_bench.instance(chat % tenants_bench.TENANTS),
                    chat_id=loadgen.jid_for(chat),
                    tenant=tenants_bench.tenant_of(chat, many=case == "fifty"),
                )
                message = IncomingMessage(chat=ref, message_id=f"3EB0{chat:016X}", text=MESSAGE_TEXT)
                parts.buffer.append(message, now=now - 600)
            before = time.process_time()
            if threads:  # the worker's own loop and reply pool, as in a serving process
                sent = fakes.count()
                for one in every:
                    one.worker.start()
                while fakes.count() < sent + chats:
                    time.sleep(0.01)
                for one in every:
                    one.worker.stop()
            else:
                answered, turn = 0, 0
                while answered < chats:
                    answered += every[turn % processes].worker.run_once(wait=True)
                    turn += 1
            return time.process_time() - before

        cold = drain(600_000)  # every tenant's setup is built
        loads_after_cold = [p.knowledge_cache.loads for p in every]
        if profile:
            import cProfile
            import pstats

            profiler = cProfile.Profile()
            profiler.enable()
            drain(700_000)
            profiler.disable()
            out = Path(tempfile.gettempdir()) / f"tenants-cpu-{case}.txt"
            with out.open("w") as fh:
                stats = pstats.Stats(profiler, stream=fh)
                stats.sort_stats("tottime").print_stats(40)
                stats.sort_stats("cumulative").print_stats(60)
            print(f"profile: {out}", file=sys.stderr)
        gc_seconds = [0.0, 0.0, 0.0]
        started: list[float] = []

        def on_gc(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                started[:] = [time.perf_counter()]
            elif started:
                gc_seconds[info["generation"]] += time.perf_counter() - started[0]

        gc.callbacks.append(on_gc)
        wall = time.perf_counter()
        cpu = drain(800_000)
        wall = time.perf_counter() - wall
        gc.callbacks.remove(on_gc)
        assert fakes.count() == (3 if profile else 2) * chats, "every chat must be answered once"
        health = parts.knowledge_cache.health()
        warm_loads = [p.knowledge_cache.loads - n for p, n in zip(every, loads_after_cold, strict=True)]
        print(
            f"{case}: gc ms/reply by generation {[round(g / chats * 1000, 3) for g in gc_seconds]}, "
            f"objects {len(gc.get_objects())}, knowledge {health}, "
            f"loads per process in the first drain {loads_after_cold}, in the measured one {warm_loads}",
            file=sys.stderr,
        )
        return {"cpu_ms": cpu / chats * 1000, "wall_ms": wall / chats * 1000, "cold_cpu_ms": cold / chats * 1000}
    finally:
        fakes.stop()
        redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chats", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="also write a cProfile of one warm drain per case")
    parser.add_argument("--threads", action="store_true", help="drain with the worker's thread and reply pool")
    parser.add_argument("--processes", type=int, default=1, help="serving processes' parts taking turns to claim")
    parser.add_argument("--child", choices=("one", "fifty"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.chats, args.profile, args.threads, args.processes)))
        return
    results: dict[str, list[float]] = {"one": [], "fifty": []}
    colds: dict[str, list[float]] = {"one": [], "fifty": []}
    for n in range(args.rounds):
        for case in results:
            argv = [sys.executable, __file__, "--child", case, "--chats", str(args.chats)]
            argv += ["--profile"] if args.profile and n == 0 else []
            argv += ["--threads"] if args.threads else []
            argv += ["--processes", str(args.processes)]
            done = subprocess.run(argv, check=True, capture_output=True, text=True)
            found = json.loads(done.stdout.strip().splitlines()[-1])
            results[case].append(found["cpu_ms"])
            colds[case].append(found["cold_cpu_ms"])
            print(done.stderr.strip(), file=sys.stderr)
            print(f"round {n + 1}: {case} {found}", file=sys.stderr, flush=True)
    one, fifty = statistics.median(results["one"]), statistics.median(results["fifty"])
    print(f"CPU per warm reply, {args.chats} chats x {args.rounds} rounds, medians")
    print(f"one tenant {one:.3f} ms, 50 tenants {fifty:.3f} ms, ratio one/fifty {one / fifty:.2f}x")
    one, fifty = statistics.median(colds["one"]), statistics.median(colds["fifty"])
    print(f"first drain: one tenant {one:.3f} ms, 50 tenants {fifty:.3f} ms, ratio one/fifty {one / fifty:.2f}x")


if __name__ == "__main__":
    main()
