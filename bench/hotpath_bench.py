"""Row H of `make bench` (`bench/run.py --only H`): the webhook's hot path against its ceiling. Two gunicorns up at
once with identical settings (`sync -w N`, run.py's environment, DEBOUNCE_SECONDS=600, METRICS_ENABLED=true), one
serving an empty Flask app (bench/ceiling_app.py: parse the JSON, answer 200) and one the product, loaded at the same
time by their own closed-loop load processes (archive_bench.webhook_windows_together), so both see the same moment
of the machine. H1 is the median of the rounds' product/ceiling ratios; target >= 0.80. Run alone:
`.venv/bin/python bench/hotpath_bench.py [--quick]` (writes bench/results/hotpath.md).
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from archive_bench import webhook_windows_together  # noqa: E402
from harness import FakeHost, Gunicorn, RedisProc  # noqa: E402
from run import RESULTS_DIR, Report, base_env, log, ms, pct  # noqa: E402

CEILING_RATIO_TARGET = 0.80
WINDOW_SECONDS = 4.0
EXPECT = {"ceiling": b"", "product": b'"buffered"'}  # the ceiling's answers count whatever they say


def bench_hotpath(args: Any, redis: RedisProc, fakes: FakeHost, report: Report) -> None:
    quick = getattr(args, "quick", False)
    rounds = 1 if quick else 5
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
        for i in range(rounds):
            log(f"[H1] round {i + 1}/{rounds}: ceiling and product loaded together, {WINDOW_SECONDS:.0f} s")
            together = webhook_windows_together(args, servers, WINDOW_SECONDS, tag=0x4800 + i, expect=EXPECT)
            for name, measured in together.items():
                windows[name].append(measured)
        ok = {name: sum(w["ok"] for w in runs) for name, runs in windows.items()}
        rate = {name: ok[name] / sum(w["seconds"] for w in runs) for name, runs in windows.items()}
        errors = {name: sum(w["errors"] for w in runs) for name, runs in windows.items()}
        p99 = {name: pct([x for w in runs for x in w["lat"]], 99) for name, runs in windows.items()}
        cpu = {name: sum(w["cpu"] for w in runs) / max(ok[name], 1) for name, runs in windows.items()}
        # Round r's two windows were at the same time: their ratio is the least disturbed by the machine's drift.
        pairs = zip(windows["ceiling"], windows["product"], strict=True)
        ratios = [product["ok"] / ceiling["ok"] if ceiling["ok"] else 0.0 for ceiling, product in pairs]
        ratio = statistics.median(ratios)
        overall = rate["product"] / rate["ceiling"] if rate["ceiling"] else 0.0
        report.add(
            "H1",
            f"Webhook max throughput, product vs empty Flask app (ceiling) (`sync -w {args.workers}` each, "
            f"{args.conns} conns split between them, both loaded at the same time, {rounds} rounds of "
            f"{WINDOW_SECONDS:.0f} s; median of the rounds' ratios)",
            f"ceiling {rate['ceiling']:,.0f} / product {rate['product']:,.0f} req/s = **{ratio:.2f}x** (rounds "
            f"{min(ratios):.2f}-{max(ratios):.2f}x; all windows {overall:.2f}x; server CPU per request "
            f"{cpu['ceiling'] * 1000:.2f} / {cpu['product'] * 1000:.2f} ms; p99 {ms(p99['ceiling'])} / "
            f"{ms(p99['product'])}; errors {errors['ceiling']:.0f} / {errors['product']:.0f})",
            f">= {CEILING_RATIO_TARGET:.2f}x ceiling",
            ratio >= CEILING_RATIO_TARGET and not errors["ceiling"] and not errors["product"],
        )
        report.notes.append(
            "H1: per round ceiling "
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
