"""Processes the benchmark starts and stops: its own redis-server, gunicorn, and the fake Gemini/Evolution host.

Everything binds to 127.0.0.1 on free ports. Only processes started here are ever signalled (by their pid or
the process group of a child started with start_new_session=True).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
GUNICORN = ROOT / ".venv" / "bin" / "gunicorn"
CLK_TCK = os.sysconf("SC_CLK_TCK")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.redis_server import RedisServer, free_port  # noqa: E402 (needs ROOT on sys.path)

# Where the service code is imported from (gunicorn's cwd, the fakes, the bench's own Buffer). A private
# snapshot by default: the working tree may be edited by other tools while a run takes minutes.
SOURCE = ROOT


def snapshot_source(dest: Path, root: Path = ROOT) -> str:
    """Copy the service's Python files of `root` (this tree, or another checkout to compare with: top level and
    packages; not tests/, bench/, hidden dirs or .venv) and
    the test helpers the bench imports (fakes.py, redis_server.py) to `dest`, once two reads 0.3 s apart agree
    (so a file being rewritten at that moment is not caught half-way). Returns a short content hash."""
    skip = {"tests", "bench", "node_modules"}
    files = [
        f
        for f in sorted(root.rglob("*.py"))
        if not any(part.startswith(".") or part in skip for part in f.relative_to(root).parts[:-1])
    ]
    files += [root / "tests" / name for name in ("__init__.py", "fakes.py", "redis_server.py")]
    for _ in range(20):
        first = {f: f.read_bytes() for f in files}
        time.sleep(0.3)
        if all(f.read_bytes() == data for f, data in first.items()):
            break
    if dest.exists():
        shutil.rmtree(dest)
    digest = hashlib.sha256()
    for f, data in first.items():
        (dest / f.relative_to(root)).parent.mkdir(parents=True, exist_ok=True)
        (dest / f.relative_to(root)).write_bytes(data)
        digest.update(str(f.relative_to(root)).encode() + b"\0" + data)
    use_source(dest)
    return digest.hexdigest()[:12]


def use_source(path: Path) -> None:
    global SOURCE
    SOURCE = path
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


def proc_cpu_seconds(pid: int, *, with_children: bool = True) -> float:
    """utime+stime (+ cutime+cstime of reaped children) of one process, all threads, in seconds."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read().decode()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    fields = raw[raw.rindex(")") + 2 :].split()
    # fields[0] is state (field 3); utime is field 14 -> index 11
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    total = utime + stime + ((cutime + cstime) if with_children else 0)
    return total / CLK_TCK


def children_of(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                raw = fh.read().decode()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            kids.append(int(entry))
    return kids


def tree_cpu_seconds(pid: int) -> float:
    """CPU of a process and its live children (gunicorn master + workers), reaped children included."""
    return proc_cpu_seconds(pid) + sum(proc_cpu_seconds(kid) for kid in children_of(pid))


def system_cpu() -> dict[str, int]:
    """Machine-wide jiffies from /proc/stat (for busy% and steal% over a window)."""
    with open("/proc/stat") as fh:
        parts = fh.readline().split()[1:]
    names = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"]
    values = {name: int(parts[i]) for i, name in enumerate(names) if i < len(parts)}
    values["total"] = sum(int(x) for x in parts[:8])
    return values


def machine_window(before: dict[str, int], after: dict[str, int]) -> dict[str, float]:
    total = max(after["total"] - before["total"], 1)
    idle = (after["idle"] + after["iowait"]) - (before["idle"] + before["iowait"])
    return {
        "busy_pct": 100.0 * (total - idle) / total,
        "steal_pct": 100.0 * (after.get("steal", 0) - before.get("steal", 0)) / total,
        # loopback TCP is processed in softirq context: not charged to any process's utime/stime
        "irq_pct": 100.0 * ((after["irq"] + after["softirq"]) - (before["irq"] + before["softirq"])) / total,
    }


PACING_FIELDS = (
    "outbound_rate_evolution",
    "outbound_rate_meta",
    "outbound_rate_twilio",
    "outbound_rate_mega",
    "outbound_customer_gap_seconds",
)


def pacing_off(settings_class: type) -> dict[str, float]:
    """Settings keywords that turn outbound pacing off, for the in-process benches: they measure the service's own
    cost, not one number's allowed rate (2 sends/s on Evolution by default). Empty for a checkout from before
    pacing (`--against`, `--source`)."""
    fields = getattr(settings_class, "__dataclass_fields__", {})
    return {name: 0.0 for name in PACING_FIELDS if name in fields}


def metrics_tempdir(prefix: str) -> Path:
    """A fresh PROMETHEUS_MULTIPROC_DIR where the service puts its own by default (config.memory_directory:
    /dev/shm when writable), so a server measured here writes its metric files where it would in production."""
    shm = "/dev/shm"
    parent = shm if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK) else None
    return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))


# ----- web and worker processes apart -------------------------------------------------------------------


class Apart:
    """Row 3w's topology: `gunicorn webhook:app -w N` with WORKER_ENABLED=false (it only buffers) and `workers`
    `python worker.py` processes that answer, on one Redis. Quacks like Gunicorn for the drain (cpu, logs, stop)."""

    def __init__(self, env: dict[str, Any], *, web_workers: int, workers: int, log_dir: Path) -> None:
        self.web = Gunicorn({**env, "WORKER_ENABLED": "false"}, workers=web_workers, log_path=log_dir / "apart-web.log")
        self.workers = workers
        self.env = service_env({**env, "WORKER_ENABLED": "true"})
        self.log_path = log_dir / "apart-workers.log"
        self.procs: list[subprocess.Popen[bytes]] = []
        self._log: Any = None

    @property
    def label(self) -> str:
        return f"{self.web.label} (WORKER_ENABLED=false) + {self.workers} x python worker.py"

    def start(self) -> Apart:
        self.web.start()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")
        for _ in range(self.workers):
            self.procs.append(spawn_service([str(ROOT / ".venv" / "bin" / "python"), "worker.py"], self.env, self._log))
        return self

    def wait_ready(self, timeout: float = 60.0) -> Apart:
        self.web.wait_ready(timeout)
        # Each worker process imports the service (google-genai): wait until their CPU settles.
        deadline, last = time.time() + timeout, self.workers_cpu()
        while time.time() < deadline:
            time.sleep(0.5)
            if any(proc.poll() is not None for proc in self.procs):
                raise RuntimeError(f"a worker process exited:\n{self.logs()[-3000:]}")
            now = self.workers_cpu()
            if now - last < 0.03 * self.workers:
                break
            last = now
        return self

    def workers_cpu(self) -> float:
        return sum(proc_cpu_seconds(proc.pid) for proc in self.procs)

    def cpu(self) -> float:
        return self.web.cpu() + self.workers_cpu()

    def logs(self) -> str:
        try:
            return self.web.logs() + self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return self.web.logs()

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.procs.clear()
        if self._log is not None:
            self._log.close()
            self._log = None
        self.web.stop()


# ----- redis-server -------------------------------------------------------------------------------------


class RedisProc(RedisServer):
    """The tests' private redis-server, plus a client and the process's CPU time for the report."""

    cluster = False
    shards = 1
    env: dict[str, str] = {}  # what the service needs besides CACHE_REDIS_URI to use it

    def __init__(self, workdir: Path) -> None:
        try:
            super().__init__(workdir)
        except RuntimeError as exc:
            raise SystemExit(str(exc)) from exc
        self.client = redis.Redis(port=self.port, decode_responses=True)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def cpu(self) -> float:
        return proc_cpu_seconds(self.pid)


class ClusterProc:
    """A private 3-master Redis Cluster with a replica each (tests/redis_cluster.py), with what the bench asks of
    RedisProc: `url`, `client`, `cpu()` (all six redis-servers, replicas included: replication is part of the cost),
    `env` and `shards` (the service's DUE_SHARDS default)."""

    cluster = True
    shards = 16

    def __init__(self, workdir: Path) -> None:
        from tests.redis_cluster import RedisClusterGroup

        self.group = RedisClusterGroup(workdir)
        self.env = {"CACHE_REDIS_CLUSTER": "true", "DUE_SHARDS": str(self.shards)}
        self.client: Any = None

    def start(self) -> ClusterProc:
        self.group.start()
        self.url = self.group.url
        self.client = self.group.client()
        return self

    def cpu(self) -> float:
        return sum(proc_cpu_seconds(pid) for pid in self.pids())

    def pids(self) -> list[int]:
        return [server.process.pid for server in self.group.servers if server.process is not None]

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        self.group.stop()


# ----- gunicorn -----------------------------------------------------------------------------------------


def service_env(overrides: dict[str, Any]) -> dict[str, str]:
    """A clean environment: every variable the service reads is set (empty = default), then `overrides`."""
    from config import ENV_VARIABLES, SYSTEM_PROMPT_FILE

    env = {k: v for k, v in os.environ.items() if k not in ENV_VARIABLES and not k.startswith("GUNICORN")}
    env.update({name: "" for name in ENV_VARIABLES})
    env[SYSTEM_PROMPT_FILE] = ""
    env["PYTHONUNBUFFERED"] = "1"
    env["WEBHOOK_AUTH"] = "off"  # the load posts without a token (a release without the setting ignores it)
    env.update({name: str(value) for name, value in overrides.items()})
    return env


def spawn_service(argv: list[str], env: dict[str, str], log: Any) -> subprocess.Popen[bytes]:
    """A process of the service snapshot (cwd SOURCE), in its own process group, its output into `log`."""
    return subprocess.Popen(
        argv,
        cwd=SOURCE,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


class Gunicorn:
    """`gunicorn webhook:app -w N [--worker-class gthread --threads T]` in its own process group.

    `app` serves another WSGI app instead (row H's empty Flask app, `ceiling_app:app`), imported from `pythonpath`
    when given: the service snapshot gunicorn runs in holds no bench/ files."""

    def __init__(
        self,
        env: dict[str, Any],
        *,
        workers: int,
        worker_class: str = "sync",
        threads: int = 1,
        log_path: Path,
        app: str = "webhook:app",
        pythonpath: Path | None = None,
    ) -> None:
        self.port = free_port()
        self.app = app
        self.pythonpath = pythonpath
        self.workers = workers
        self.worker_class = worker_class
        self.threads = threads
        self.env = service_env(env)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def label(self) -> str:
        if self.worker_class == "gthread":
            return f"gthread -w {self.workers} --threads {self.threads}"
        return f"sync -w {self.workers}"

    def start(self) -> Gunicorn:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        config = self.log_path.parent / "gunicorn_bench.conf.py"
        config.write_text("# empty: every option is on the command line\n")
        argv = [
            str(GUNICORN),
            self.app,
            "-c",
            str(config),
            "-w",
            str(self.workers),
            "-b",
            f"127.0.0.1:{self.port}",
            "--graceful-timeout",
            "5",
            "--timeout",
            "60",
            "--log-level",
            "warning",
        ]
        if self.worker_class != "sync":
            argv += ["--worker-class", self.worker_class, "--threads", str(self.threads)]
        if self.pythonpath is not None:
            # Only for an app outside the service: the product is always imported from SOURCE (the cwd) alone.
            argv += ["--pythonpath", str(self.pythonpath)]
        self._log = open(self.log_path, "wb")
        self.proc = spawn_service(argv, self.env, self._log)
        return self

    def pids(self) -> list[int]:
        assert self.proc is not None
        return [self.proc.pid, *children_of(self.proc.pid)]

    def cpu(self) -> float:
        assert self.proc is not None
        return tree_cpu_seconds(self.proc.pid)

    def wait_ready(self, timeout: float = 60.0) -> Gunicorn:
        """All N workers forked, /health answers, and the processes went quiet (every worker imported the app)."""
        import requests

        assert self.proc is not None
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited {self.proc.returncode}:\n{self.logs()[-3000:]}")
            if len(children_of(self.proc.pid)) >= self.workers:
                try:
                    if requests.get(self.url + "/health", timeout=2).status_code == 200:
                        break
                except requests.RequestException:
                    pass
            time.sleep(0.1)
        else:
            raise RuntimeError(f"gunicorn not ready in {timeout}s:\n{self.logs()[-3000:]}")
        # Each worker builds the app after the fork (imports google-genai): wait until the CPU settles.
        last = self.cpu()
        while time.time() < deadline:
            time.sleep(0.5)
            now = self.cpu()
            if now - last < 0.06:  # < 12% of one core over 0.5 s: booted and idle-polling
                return self
            last = now
        return self

    def logs(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        pid = self.proc.pid
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(pid, signal.SIGKILL)  # the group of the child we started (leftover workers)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None


# ----- fake Gemini + Evolution in their own process --------------------------------------------------------


def _fake_host_main(conn: Any, gemini_delay: float, root: str) -> None:
    """Child process: runs FakeGemini(delay) and FakeEvolution and answers commands on `conn`."""
    if root not in sys.path:
        sys.path.insert(0, root)
    import json
    import socketserver
    from http.server import ThreadingHTTPServer

    # The stdlib default listen backlog is 5: a burst of 64 connects (4 workers x 16 reply threads) would
    # overflow it and cost 1 s SYN retransmits that have nothing to do with the service. Bench-only tweak.
    ThreadingHTTPServer.request_queue_size = 1024
    # The fake handler writes headers and body in two send() calls; with Nagle on, the body waits for the
    # client's delayed ACK (~40 ms on Linux), so every fake answer would take 40 ms more than configured.
    socketserver.StreamRequestHandler.disable_nagle_algorithm = True
    from tests.fakes import FakeEvolution, FakeGemini

    gemini = FakeGemini(delay=gemini_delay)
    evolution = FakeEvolution()
    conn.send({"gemini": gemini.url, "evolution": evolution.url})
    try:
        while True:
            cmd = conn.recv()
            if cmd == "count":  # sendText calls only (a gateway may also get e.g. read receipts)
                with evolution._lock:
                    conn.send(sum(1 for r in evolution.requests if "/message/sendText/" in r.path))
            elif cmd == "gemini_count":
                with gemini._lock:
                    conn.send(len(gemini.requests))
            elif cmd == "sends":
                out = []
                for r in evolution.sends():
                    try:
                        number = json.loads(r.body).get("number", "")
                    except ValueError:
                        number = ""
                    out.append((number, r.at))
                conn.send(out)
            elif cmd == "reset":
                gemini.reset()
                evolution.reset()
                conn.send(True)
            elif cmd == "cpu":
                t = os.times()
                conn.send(t.user + t.system)
            elif cmd == "stop":
                conn.send(True)
                break
    finally:
        gemini.close()
        evolution.close()


class FakeHost:
    def __init__(self, gemini_delay: float) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_fake_host_main, args=(child, gemini_delay, str(SOURCE)), daemon=True)
        self.proc.start()
        urls = self.conn.recv()
        self.gemini_url: str = urls["gemini"]
        self.evolution_url: str = urls["evolution"]

    def _ask(self, cmd: str) -> Any:
        self.conn.send(cmd)
        return self.conn.recv()

    def count(self) -> int:
        return self._ask("count")

    def gemini_count(self) -> int:
        return self._ask("gemini_count")

    def sends(self) -> list[tuple[str, float]]:
        return self._ask("sends")

    def reset(self) -> None:
        self._ask("reset")

    def cpu(self) -> float:
        return self._ask("cpu")

    def stop(self) -> None:
        if self.proc.is_alive():
            try:
                self._ask("stop")
            except (OSError, EOFError):
                pass
            self.proc.join(5)
            if self.proc.is_alive():
                self.proc.terminate()
                self.proc.join(5)
