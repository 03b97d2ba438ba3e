"""Row H of `make bench` (`bench/run.py --only H`): the webhook's hot path against its ceiling. Two gunicorns up at
once with identical settings (`sync -w N`, run.py's environment, DEBOUNCE_SECONDS=600, METRICS_ENABLED=true), one
serving an empty Flask app (bench/ceiling_app.py: parse the JSON, answer 200) and one the product, loaded one at a time
in rounds of two closed-loop windows in ABBA order (ceiling, product, product, ceiling, ...), so both see the same
machine. H1 is the median of the rounds' product/ceiling ratios; target >= 0.80. Run alone:
`.venv/bin/python bench/hotpath_bench.py [--quick]` (writes bench/results/hotpath.md).
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import loadgen  # noqa: E402
from archive_bench import abba  # noqa: E402
from harness import FakeHost, Gunicorn, RedisProc  # noqa: E402
from run import RESULTS_DIR, Report, base_env, collect, log, ms, pct, run_load, sleep_until  # noqa: E402

CEILING_RATIO_TARGET = 0.80
WINDOW_SECONDS = 3.0
# abba() names the two sides "off" and "on": here the ceiling and the product.
SIDES = {"off": "ceiling", "on": "product"}


def window(args: Any, server: Gunicorn, seconds: float, tag: int, expect: bytes) -> dict[str, Any]:
    """archive_bench.webhook_window with `expect` passed to the load: that one counts only "buffered" answers as ok,
    which the ceiling's app never gives. Same timing: 1 s warm-up, then `seconds` measured."""
    per_proc = max(1, args.conns // args.load_procs)
    start_at = time.time() + 1.5
    kwargs = [
        {
            "port": server.port,
            "proc_index": i,
            "threads": per_proc,
            "start_at": start_at,
            "warmup": 1.0,
            "duration": seconds,
            "chats": args.tp_chats,
            "run_tag": tag,
            "expect": expect,
        }
        for i in range(args.load_procs)
    ]
    procs, queue = run_load(loadgen.closed_loop, kwargs)
    sleep_until(start_at + 1.0)
    cpu0 = server.cpu()
    sleep_until(start_at + 1.0 + seconds)
    cpu1 = server.cpu()
    results = collect(procs, queue, timeout=seconds + 60)
    return {
        "ok": sum(r["ok"] for r in results),
        "errors": sum(r["errors"] + r["not_buffered"] for r in results),
        "err_samples": [s for r in results for s in r["err_samples"]][:3],
        "lat": [x for r in results for x in r["lat"]],
        "cpu": cpu1 - cpu0,
        "seconds": seconds,
    }


def bench_hotpath(args: Any, redis: RedisProc, fakes: FakeHost, report: Report) -> None:
    quick = getattr(args, "quick", False)
    rounds = 1 if quick else 7
    redis.client.flushall()
    metrics_dir = Path(tempfile.mkdtemp(prefix="bench-hotpath-metrics-"))
    common = {"DEBOUNCE_SECONDS": 600, "METRICS_ENABLED": "true"}
    servers = {
        "ceiling": Gunicorn(
            base_env(redis.url, fakes, **common),
            workers=args.workers,
            log_path=RESULTS_DIR / "logs" / "gunicorn-hotpath-ceiling.log",
            app="ceiling_app:app",
            pythonpath=BENCH_DIR,
        ),
        "product": Gunicorn(
            base_env(redis.url, fakes, **common, PROMETHEUS_MULTIPROC_DIR=metrics_dir),
            workers=args.workers,
            log_path=RESULTS_DIR / "logs" / "gunicorn-hotpath-product.log",
        ),
    }
    report.servers.extend(servers.values())
    log(f"[H1] starting two gunicorn sync -w {args.workers}: the empty Flask app (ceiling) and the product")
    try:
        for server in servers.values():
            server.start()
        for server in servers.values():
            server.wait_ready()
        windows: dict[str, list[dict[str, Any]]] = {"ceiling": [], "product": []}
        order = [SIDES[name] for name in abba(rounds)]
        for i, name in enumerate(order):
            log(f"[H1] window {i + 1}/{len(order)}: {name}, {WINDOW_SECONDS:.0f} s closed loop")
            expect = b"" if name == "ceiling" else b'"buffered"'
            windows[name].append(window(args, servers[name], WINDOW_SECONDS, tag=0x4800 + i, expect=expect))
        ok = {name: sum(w["ok"] for w in runs) for name, runs in windows.items()}
        rate = {name: ok[name] / sum(w["seconds"] for w in runs) for name, runs in windows.items()}
        errors = {name: sum(w["errors"] for w in runs) for name, runs in windows.items()}
        p99 = {name: pct([x for w in runs for x in w["lat"]], 99) for name, runs in windows.items()}
        cpu = {name: sum(w["cpu"] for w in runs) / max(ok[name], 1) for name, runs in windows.items()}
        # Round r's two windows were adjacent in time: their ratio is the least disturbed by the machine's drift.
        pairs = zip(windows["ceiling"], windows["product"], strict=True)
        ratios = [product["ok"] / ceiling["ok"] if ceiling["ok"] else 0.0 for ceiling, product in pairs]
        ratio = statistics.median(ratios)
        overall = rate["product"] / rate["ceiling"] if rate["ceiling"] else 0.0
        report.add(
            "H1",
            f"Webhook max throughput, product vs empty Flask app (ceiling) (`sync -w {args.workers}` both, "
            f"{args.conns} conns, {rounds} rounds of a ceiling and a product {WINDOW_SECONDS:.0f} s window, ABBA "
            "order; median of the rounds' ratios)",
            f"ceiling {rate['ceiling']:,.0f} / product {rate['product']:,.0f} req/s = **{ratio:.2f}x** (rounds "
            f"{min(ratios):.2f}-{max(ratios):.2f}x; all windows {overall:.2f}x; server CPU per request "
            f"{cpu['ceiling'] * 1000:.2f} / {cpu['product'] * 1000:.2f} ms; p99 {ms(p99['ceiling'])} / "
            f"{ms(p99['product'])}; errors {errors['ceiling']:.0f} / {errors['product']:.0f})",
            f">= {CEILING_RATIO_TARGET:.2f}x ceiling",
            ratio >= CEILING_RATIO_TARGET and not errors["ceiling"] and not errors["product"],
        )
        report.notes.append(
            "H1: per window ceiling "
            + ", ".join(f"{w['ok'] / w['seconds']:,.0f}" for w in windows["ceiling"])
            + " / product "
            + ", ".join(f"{w['ok'] / w['seconds']:,.0f}" for w in windows["product"])
            + " req/s. The ceiling app parses the body and answers 200; the gap is everything the product does of "
            "its own on the webhook path (`make bench-profile` shows where: bench/profiles/webhook-<tag>.txt)."
        )
        report.raw["H1_hotpath"] = {
            name: {
                "rate": rate[name],
                "ok": ok[name],
                "errors": errors[name],
                "err_samples": [s for w in windows[name] for s in w["err_samples"]][:5],
                "p99": p99[name],
                "cpu_ms_per_req": cpu[name] * 1000,
                "windows": [w["ok"] / w["seconds"] for w in windows[name]],
            }
            for name in windows
        }
        report.raw["H1_hotpath"].update({"ratio_median": ratio, "ratios": ratios, "ratio_all_windows": overall})
        log(f"[H1] ceiling {rate['ceiling']:,.0f} / product {rate['product']:,.0f} req/s, median ratio {ratio:.2f}")
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(metrics_dir, ignore_errors=True)
        redis.client.flushall()


def main(argv: list[str] | None = None) -> int:
    import run

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--out" not in argv:
        argv += ["--out", str(RESULTS_DIR / "hotpath.md")]
    return run.main(["--only", "H", *argv])


if __name__ == "__main__":
    sys.exit(main())
