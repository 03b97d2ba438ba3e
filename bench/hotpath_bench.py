"""Row H of `make bench` (`bench/run.py --only H`): the webhook's hot path against its ceiling. Two gunicorns up at
once with identical settings (`sync -w N`, run.py's environment, DEBOUNCE_SECONDS=600, METRICS_ENABLED=true), one
serving an empty Flask app (bench/ceiling_app.py: parse the JSON, answer 200) and one the product, loaded at the same
time by their own closed-loop load processes (archive_bench.webhook_windows_together), so both see the same moment
of the machine. H1 is the median of the rounds' product/ceiling ratios; target >= 0.80. H1f then loads the ceiling
together with the floor app (ceiling_app.floor: the empty app plus one redis-py Lua call that stores the body, the
least a webhook that never loses an acknowledged message does): the most any such webhook reaches here. Run alone:
`.venv/bin/python bench/hotpath_bench.py [--quick]` (writes bench/results/hotpath.md).
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

from archive_bench import side_by_side  # noqa: E402
from harness import FakeHost, Gunicorn, RedisProc, metrics_tempdir  # noqa: E402
from run import RESULTS_DIR, Report, base_env, log, ms  # noqa: E402

CEILING_RATIO_TARGET = 0.80
WINDOW_SECONDS = 4.0
EXPECT = {"ceiling": b"", "product": b'"buffered"', "floor": b""}  # the ceiling's answers count whatever they say


def bench_hotpath(args: Any, redis: RedisProc, fakes: FakeHost, report: Report) -> None:
    quick = getattr(args, "quick", False)
    rounds = 1 if quick else 5
    redis.client.flushall()
    metrics_dir = metrics_tempdir("bench-hotpath-metrics-")
    common = {"DEBOUNCE_SECONDS": 600, "METRICS_ENABLED": "true"}

    def bench_app(name: str, app: str) -> Gunicorn:
        """One of ceiling_app.py's apps under the product's gunicorn settings."""
        log_path = RESULTS_DIR / "logs" / f"gunicorn-hotpath-{name}.log"
        env = base_env(redis.url, fakes, **common)
        return Gunicorn(env, workers=args.workers, log_path=log_path, app=app, pythonpath=BENCH_DIR)

    servers = {
        "ceiling": bench_app("ceiling", "ceiling_app:app"),
        "product": Gunicorn(
            base_env(redis.url, fakes, **common, PROMETHEUS_MULTIPROC_DIR=metrics_dir),
            workers=args.workers,
            log_path=RESULTS_DIR / "logs" / "gunicorn-hotpath-product.log",
        ),
        "floor": bench_app("floor", "ceiling_app:floor"),
    }
    report.servers.extend(servers.values())
    log(
        f"[H1] starting three gunicorn sync -w {args.workers}: the empty Flask app (ceiling), the product and the "
        "empty app with one Redis write (floor)"
    )
    try:
        for server in servers.values():
            server.start()
        for server in servers.values():
            server.wait_ready()
        pair = {name: servers[name] for name in ("ceiling", "product")}
        totals, ratios = side_by_side(
            args, pair, rounds=rounds, seconds=WINDOW_SECONDS, tag=0x4800, row="H1", expect=EXPECT
        )
        # Each round's two servers were loaded at the same time: their ratio is the least disturbed by the machine's
        # drift.
        ratio = statistics.median(ratios)
        ceiling, product = totals["ceiling"], totals["product"]
        overall = product["rate"] / ceiling["rate"] if ceiling["rate"] else 0.0
        report.add(
            "H1",
            f"Webhook max throughput, product vs empty Flask app (ceiling) (`sync -w {args.workers}` each, "
            f"{args.conns} conns split between them, both loaded at the same time, {rounds} rounds of "
            f"{WINDOW_SECONDS:.0f} s; median of the rounds' ratios)",
            f"ceiling {ceiling['rate']:,.0f} / product {product['rate']:,.0f} req/s = **{ratio:.2f}x** (rounds "
            f"{min(ratios):.2f}-{max(ratios):.2f}x; all windows {overall:.2f}x; server CPU per request "
            f"{ceiling['cpu_ms']:.2f} / {product['cpu_ms']:.2f} ms; p99 {ms(ceiling['p99'])} / "
            f"{ms(product['p99'])}; errors {ceiling['errors']:.0f} / {product['errors']:.0f})",
            f">= {CEILING_RATIO_TARGET:.2f}x ceiling",
            ratio >= CEILING_RATIO_TARGET and not ceiling["errors"] and not product["errors"],
        )
        report.notes.append(
            "H1: per round ceiling "
            + ", ".join(f"{x:,.0f}" for x in ceiling["windows"])
            + " / product "
            + ", ".join(f"{x:,.0f}" for x in product["windows"])
            + " req/s. The ceiling app parses the body and answers 200; the gap is everything the product does of "
            "its own on the webhook path (`make bench-profile` shows where: bench/profiles/webhook-<tag>.txt)."
        )
        report.raw["H1_hotpath"] = {**totals, "ratio_median": ratio, "ratios": ratios, "ratio_all_windows": overall}
        log(f"[H1] ceiling {ceiling['rate']:,.0f} / product {product['rate']:,.0f} req/s, median ratio {ratio:.2f}")
        bench_floor(args, servers, rounds, report)
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(metrics_dir, ignore_errors=True)
        redis.client.flushall()


def bench_floor(args: Any, servers: dict[str, Gunicorn], rounds: int, report: Report) -> None:
    """H1f: the ceiling against the floor app, loaded together like H1's pair."""
    pair = {name: servers[name] for name in ("ceiling", "floor")}
    totals, ratios = side_by_side(
        args, pair, rounds=rounds, seconds=WINDOW_SECONDS, tag=0x4600, row="H1f", expect=EXPECT
    )
    ratio = statistics.median(ratios)
    ceiling, floor = totals["ceiling"], totals["floor"]
    report.add(
        "H1f",
        "Floor of a durable webhook: the empty Flask app plus one redis-py Lua call storing the body, vs the empty "
        f"app (loaded together like H1, {rounds} rounds; diagnostic, no target)",
        f"ceiling {ceiling['rate']:,.0f} / floor {floor['rate']:,.0f} req/s = **{ratio:.2f}x** (rounds "
        f"{min(ratios):.2f}-{max(ratios):.2f}x; server CPU per request {ceiling['cpu_ms']:.2f} / "
        f"{floor['cpu_ms']:.2f} ms; errors {ceiling['errors']:.0f} / {floor['errors']:.0f})",
        "none (diagnostic)",
        None,
    )
    report.raw["H1f_floor"] = {**totals, "ratio_median": ratio, "ratios": ratios}
    log(f"[H1f] ceiling {ceiling['rate']:,.0f} / floor {floor['rate']:,.0f} req/s, median ratio {ratio:.2f}")


def main(argv: list[str] | None = None) -> int:
    import run

    return run.run_alone("H", "hotpath.md", argv)


if __name__ == "__main__":
    sys.exit(main())
