"""Where a gunicorn sync worker's time goes under row H1's load, for the product and for the empty Flask app
(`make bench-spy`): py-spy samples each of the 4 workers for 8 s while two closed-loop load processes post to
them, then the samples of all workers are summed into bench/profiles/webhook-gunicorn-<app>.txt: the frames the
workers were in (self), and the frames under which they were (inclusive).

The in-process profile (bench/profile_paths.py) times the app's own Python; this one sees what it cannot: gunicorn's
accept, write and close, and the waits in system calls, on a machine where the service, its Redis and the load
share two cores. py-spy leaves out the samples of a thread blocked in a wait it recognises (accept, select), not
those of a send or a receive the scheduler parked.
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
for path in (str(ROOT), str(BENCH_DIR)):
    if path not in sys.path:
        sys.path.insert(0, path)

import loadgen  # noqa: E402
from harness import FakeHost, Gunicorn, metrics_tempdir  # noqa: E402
from run import base_env  # noqa: E402

APPS = {"product": "webhook:app", "ceiling": "ceiling_app:app"}
WORKERS = 4
SAMPLE_SECONDS = 8
SHOWN = 30


def spy(app: str, out: Path) -> Path:
    from tests.redis_server import RedisServer

    redis = RedisServer(Path(tempfile.mkdtemp(prefix="bench-spy-"))).start()
    fakes = FakeHost(0.05)
    env = base_env(
        redis.url,
        fakes,
        DEBOUNCE_SECONDS=600,
        METRICS_ENABLED="true",
        PROMETHEUS_MULTIPROC_DIR=metrics_tempdir("bench-spy-metrics-"),
    )
    log_path = Path(tempfile.mkdtemp(prefix="bench-spy-logs-")) / "gunicorn.log"
    server = Gunicorn(env, workers=WORKERS, log_path=log_path, app=APPS[app], pythonpath=BENCH_DIR).start()
    samples: list[Path] = []
    try:
        server.wait_ready()
        samples = sample_under_load(server, out, app)
    finally:
        server.stop()
        fakes.proc.terminate()
        redis.stop()
    path = out / f"webhook-gunicorn-{app}.txt"
    path.write_text(summary(app, samples))
    for sample in samples:
        sample.unlink()
    return path


def sample_under_load(server: Gunicorn, out: Path, app: str) -> list[Path]:
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    start_at = time.time() + 1.0
    load = {"start_at": start_at, "warmup": 1.0, "duration": SAMPLE_SECONDS + 4, "chats": 10_000, "run_tag": 7}
    loads = [
        ctx.Process(
            target=loadgen.closed_loop,
            args=(server.port,),
            kwargs={**load, "proc_index": i, "threads": 4, "result_q": results, "expect": b""},
        )
        for i in range(2)
    ]
    for process in loads:
        process.start()
    time.sleep(3.0)
    samples = [out / f"spy-{app}-{pid}.txt" for pid in server.pids()[1:]]
    spies = [
        subprocess.Popen(
            [str(ROOT / ".venv" / "bin" / "py-spy"), "record", "--pid", sample.stem.rsplit("-", 1)[1]]
            + ["--duration", str(SAMPLE_SECONDS), "--rate", "500", "--format", "raw", "--nonblocking"]
            + ["--output", str(sample)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for sample in samples
    ]
    for process in spies:
        process.wait()
    for _ in loads:  # each load process's totals: taken before joining it (a full queue would keep it alive)
        results.get(timeout=60)
    for process in loads:
        process.join()
    return [sample for sample in samples if sample.exists()]


def summary(app: str, samples: list[Path]) -> str:
    own: collections.Counter[str] = collections.Counter()
    under: collections.Counter[str] = collections.Counter()
    total = 0
    for sample in samples:
        for line in sample.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            frames = stack.split(";")
            total += int(count)
            own[frames[-1]] += int(count)
            for frame in set(frames):
                under[frame] += int(count)
    lines = [
        f"# webhook under gunicorn: {app} ({APPS[app]}), sync -w {WORKERS}, H1's closed-loop load",
        "",
        f"{total:,} samples of {len(samples)} workers over {SAMPLE_SECONDS} s (py-spy, 500 Hz)",
        "",
        "## self: the frame a worker was in",
        *(f"{count / total:6.1%}  {frame}" for frame, count in own.most_common(SHOWN)),
        "",
        "## inclusive: the frames a worker was under",
        *(f"{count / total:6.1%}  {frame}" for frame, count in under.most_common(2 * SHOWN)),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "profiles")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for app in APPS:
        print("->", spy(app, args.out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
