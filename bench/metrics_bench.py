"""Row M of `make bench`: what the Prometheus metrics cost on the webhook's path. Two gunicorns up at once, one with
METRICS_ENABLED=false and one with it on (each with its own PROMETHEUS_MULTIPROC_DIR and Redis db), loaded one at a
time in alternating windows (off, on, on, off, ...) by run.py's closed-loop load processes, so both see the same
machine. Target: on >= 0.95x off. Run alone: `.venv/bin/python bench/metrics_bench.py [--quick]`.
"""

from __future__ import annotations

import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from archive_bench import db_url, side_by_side  # noqa: E402
from harness import FakeHost, Gunicorn, RedisProc, metrics_tempdir  # noqa: E402
from run import RESULTS_DIR, Report, base_env, log, ms  # noqa: E402

METRICS_TOLERANCE = 0.05  # metrics on within 5 % of off
OFF_DB, ON_DB = 2, 3


def bench_metrics(args: Any, redis: RedisProc, fakes: FakeHost, report: Report) -> None:
    quick = getattr(args, "quick", False)
    rounds = 1 if quick else 5
    seconds = 4.0
    dirs = {name: metrics_tempdir(f"bench-metrics-{name}-") for name in ("off", "on")}
    servers: dict[str, Gunicorn] = {}
    for name, db in (("off", OFF_DB), ("on", ON_DB)):
        env = base_env(
            db_url(redis, db),
            fakes,
            DEBOUNCE_SECONDS=600,
            METRICS_ENABLED="true" if name == "on" else "false",
            PROMETHEUS_MULTIPROC_DIR=dirs[name],
        )
        servers[name] = Gunicorn(
            env, workers=args.workers, log_path=RESULTS_DIR / "logs" / f"gunicorn-metrics-{name}.log"
        )
        report.servers.append(servers[name])
    log(f"[M1] starting two gunicorn sync -w {args.workers}: METRICS_ENABLED false and true")
    try:
        for server in servers.values():
            server.start()
        for server in servers.values():
            server.wait_ready()
        totals, ratios = side_by_side(args, servers, rounds=rounds, seconds=seconds, tag=0x3100, row="M1")
        ratio = statistics.median(ratios)
        off, on = totals["off"], totals["on"]
        report.add(
            "M1",
            f"Webhook max throughput, metrics off vs on (`sync -w {args.workers}` each, {args.conns} conns "
            f"split between them, both loaded at the same time, {rounds} rounds of {seconds:.0f} s; median of the "
            "rounds' ratios)",
            f"**{ratio:.2f}x** (rounds {min(ratios):.2f}-{max(ratios):.2f}x; all windows off {off['rate']:,.0f} / "
            f"on {on['rate']:,.0f} req/s = {on['rate'] / off['rate']:.2f}x; server CPU per request "
            f"{off['cpu_ms']:.2f} / {on['cpu_ms']:.2f} ms; p99 {ms(off['p99'])} / {ms(on['p99'])}; "
            f"errors {off['errors']:.0f} / {on['errors']:.0f})",
            f"on >= {1 - METRICS_TOLERANCE:.2f}x off",
            ratio >= 1 - METRICS_TOLERANCE and not off["errors"] and not on["errors"],
        )
        report.notes.append(
            "M1: per round off "
            + ", ".join(f"{x:,.0f}" for x in off["windows"])
            + " / on "
            + ", ".join(f"{x:,.0f}" for x in on["windows"])
            + " req/s. With metrics on, each buffered message adds two counter increments (memory-mapped file "
            "writes): its outcome and its /health counter."
        )
    finally:
        for server in servers.values():
            server.stop()
        for path in dirs.values():
            shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    import run

    return run.run_alone("M", "metrics.md", argv)


if __name__ == "__main__":
    sys.exit(main())
