"""A throwaway PostgreSQL cluster on a free loopback port, nothing flushed to disk: shared by the test suite and bench/.

It owns one cluster of its own (initdb'd by the first `start()`, with trust authentication for `postgres`) and the
postmaster that this object started; only that one is ever stopped or killed. Debian's `main` cluster and any other
server are never touched. The archive's database is `archive_test`; `create_database()` makes more, empty ones.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg import sql

from tests.redis_server import free_port

DATABASE = "archive_test"
SUPERUSER = "postgres"
# Extensions the archive creates: checked at start, so a machine without them fails here, not in a test.
REQUIRED_EXTENSIONS = ("unaccent",)
# A Unix socket's path is at most 107 bytes (sun_path); postgres names its socket `.s.PGSQL.<port>` in its directory.
SOCKET_PATH_LIMIT = 107
INSTALL_HINT = "`make test` installs the Debian package postgresql"


def find_bindir() -> Path:
    """Debian keeps the server programs off PATH, in /usr/lib/postgresql/<version>/bin: the newest version wins."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version, reverse=True)
    on_path = shutil.which("initdb")
    if on_path is not None:
        candidates.append(Path(on_path).resolve().parent)
    for bindir in candidates:
        if all(os.access(bindir / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres")):
            return bindir
    raise RuntimeError(f"PostgreSQL's initdb, pg_ctl and postgres are not installed: {INSTALL_HINT}")


def _version(bindir: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", bindir.parent.name))


def server_user() -> pwd.struct_passwd | None:
    """initdb and postgres refuse to run as root, which CI is: then they run as Debian's `postgres` system user."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise RuntimeError(f"running as root, PostgreSQL needs the `postgres` system user: {INSTALL_HINT}") from None


def locale_options() -> list[str]:
    """C.UTF-8 sorts by code point like C yet knows UTF-8's letters (lower(), ILIKE); a machine without it gets C."""
    try:
        listed = subprocess.run(["locale", "-a"], capture_output=True, text=True, check=False).stdout
    except OSError:
        listed = ""
    names = {line.strip().lower().replace("-", "") for line in listed.splitlines()}
    return ["--locale=C.UTF-8"] if "c.utf8" in names else ["--no-locale"]


class PostgresServer:
    """`stop()` or `kill()`, then `start()` on the same port and data directory, let tests simulate an outage."""

    def __init__(self, workdir: Path) -> None:
        self.bindir = find_bindir()
        self.user = server_user()
        self.port = free_port()
        self.workdir = workdir
        self.private: Path | None = None  # a short folder of our own under /tmp, made only when needed
        self.home = self._choose_home()
        self.datadir = self.home / "data"
        self.logfile = self.home / "postgres.log"
        socket_fits = len(f"{self.home}/.s.PGSQL.{self.port}") <= SOCKET_PATH_LIMIT
        self.socket_dir = self.home if socket_fits else self._private_dir()
        self.started = False  # True while a postmaster that this object started should be running

    @property
    def url(self) -> str:
        return self.dsn_for(DATABASE)

    def dsn_for(self, dbname: str) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> PostgresServer:
        if self.started and self.postmaster_pid() is not None:
            return self  # already up: a second postmaster on the same data directory would only fail
        if not (self.datadir / "PG_VERSION").exists():
            self._initdb()
        options = self._server_options()
        self._run("pg_ctl", "start", "-D", str(self.datadir), "-l", str(self.logfile), "-w", "-t", "30", "-o", options)
        self.started = True
        self._wait_until_ready()
        self._ensure_database(DATABASE)
        self._check_extensions()
        return self

    def stop(self) -> None:
        if not self.started:
            return
        self.started = False
        if self.postmaster_pid() is not None:
            self._run("pg_ctl", "stop", "-D", str(self.datadir), "-m", "fast", "-w", "-t", "30")

    def kill(self) -> None:
        """SIGKILL the postmaster and its children, as a crash would: the next `start()` runs crash recovery."""
        if not self.started:
            return
        self.started = False
        pid = self.postmaster_pid()
        if pid is None:
            return
        # Stopped first, it cannot fork a backend between the listing of its children and its death.
        os.kill(pid, signal.SIGSTOP)
        doomed = [pid, *_children(pid)]
        for victim in doomed:
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                pass
        # A child still attached to the old shared memory would make the next start refuse to run.
        _wait_gone(doomed)
        # The dead postmaster stays a zombie until init reaps it (over a second on some machines), and postgres
        # takes a zombie's PID in a lock file for a live server: with every process dead, the locks are stale.
        for lock in (self.datadir / "postmaster.pid", self.socket_dir / f".s.PGSQL.{self.port}.lock"):
            lock.unlink(missing_ok=True)

    def close(self) -> None:
        """Stop, and remove the folder this object made under /tmp (the workdir is the caller's to remove)."""
        self.stop()
        if self.private is not None:
            shutil.rmtree(self.private, ignore_errors=True)
            self.private = None

    def postmaster_pid(self) -> int | None:
        """The live postmaster of this object's data directory, from its postmaster.pid."""
        try:
            pid = int((self.datadir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def create_database(self, name: str) -> str:
        """An empty database (a copy of template1); returns its URL."""
        with self._admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn_for(name)

    def drop_database(self, name: str) -> None:
        """Drops it even while a test's pool still holds connections to it."""
        with self._admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def _choose_home(self) -> Path:
        """Where the data directory and log live: the workdir, unless the server's user cannot reach it."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.user is None:
            return self.workdir
        # As root, pytest's tmp folders sit under /tmp/pytest-of-root, mode 0700, which `postgres` cannot enter.
        if self._as_user("test", "-x", str(self.workdir.parent)).returncode != 0:
            return self._private_dir()
        os.chown(self.workdir, self.user.pw_uid, self.user.pw_gid)
        return self.workdir

    def _private_dir(self) -> Path:
        if self.private is None:
            # /tmp named, not TMPDIR: the path must stay short enough for the socket and open to `postgres`.
            self.private = Path(tempfile.mkdtemp(prefix="pg-", dir="/tmp"))
            if self.user is not None:
                os.chown(self.private, self.user.pw_uid, self.user.pw_gid)
        return self.private

    def _initdb(self) -> None:
        # --no-sync: a throwaway cluster needs no flush of its fresh files, which is most of initdb's time.
        options = ["-A", "trust", "-U", SUPERUSER, "--encoding=UTF8", *locale_options(), "--no-sync"]
        self._run("initdb", "-D", str(self.datadir), *options)

    def _server_options(self) -> str:
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
            # Throwaway data: nothing is flushed to disk, so tests and benchmarks are not paced by the disk. A
            # process crash (kill()) still loses nothing committed: every write has reached the kernel. Not
            # synchronous_commit=off: that leaves commits in shared memory, where kill() would lose them.
            "fsync": "off",
            "full_page_writes": "off",
        }
        # pg_ctl hands these to a shell, hence the quoting.
        return " ".join(f"-c {shlex.quote(f'{name}={value}')}" for name, value in settings.items())

    def _wait_until_ready(self) -> None:
        """pg_ctl -w waits on the Unix socket; the tests connect over TCP, so that is what is awaited."""
        deadline = time.monotonic() + 10
        while True:
            try:
                with psycopg.connect(self.dsn_for("postgres"), connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"PostgreSQL did not accept connections{self._log_tail()}") from None
                time.sleep(0.05)

    def _ensure_database(self, name: str) -> None:
        # A restart finds it already there.
        with self._admin() as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def _check_extensions(self) -> None:
        with self._admin() as conn:
            rows = conn.execute(
                "SELECT name FROM pg_available_extensions WHERE name = ANY(%s)", [list(REQUIRED_EXTENSIONS)]
            ).fetchall()
        missing = sorted(set(REQUIRED_EXTENSIONS) - {name for (name,) in rows})
        if missing:
            raise RuntimeError(f"PostgreSQL lacks the extension(s) {', '.join(missing)}: {INSTALL_HINT}")

    def _admin(self) -> psycopg.Connection:
        # Autocommit: CREATE and DROP DATABASE cannot run inside a transaction.
        return psycopg.connect(self.dsn_for("postgres"), autocommit=True, connect_timeout=5)

    def _run(self, program: str, *args: str) -> None:
        result = self._as_user(str(self.bindir / program), *args)
        if result.returncode != 0:
            output = (result.stderr.strip() or result.stdout.strip())[-2000:]
            raise RuntimeError(f"{program} {args[0]} failed ({result.returncode}): {output}{self._log_tail()}")

    def _as_user(self, *command: str) -> subprocess.CompletedProcess[str]:
        """Runs a command as the server's user: ourselves, or `postgres` when we are root."""
        prefix: list[str] = []
        if self.user is not None:
            name = self.user.pw_name
            if shutil.which("runuser"):
                prefix = ["runuser", "-u", name, "--"]
            else:
                prefix = ["setpriv", f"--reuid={name}", f"--regid={name}", "--init-groups", "--"]
        # cwd "/": `postgres` may not be allowed into ours (root's home, a 0700 checkout). Paths given are absolute.
        # pg_ctl's postmaster writes to the log file, not to these pipes, so the call returns once pg_ctl does.
        return subprocess.run(
            [*prefix, *command], cwd="/", capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120
        )

    def _log_tail(self) -> str:
        try:
            lines = self.logfile.read_text(errors="replace").splitlines()[-15:]
        except OSError:
            return ""
        return "\nlast lines of " + str(self.logfile) + ":\n" + "\n".join(lines)


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid`, from /proc (each line of /proc/N/stat reads `N (name) state ppid ...`)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def _alive(pid: int) -> bool:
    """Running, not a zombie: a killed postmaster whose parent has not reaped it yet is gone for our purposes."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _wait_gone(pids: list[int]) -> None:
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            raise RuntimeError(f"PostgreSQL processes {pids} outlived SIGKILL")
        time.sleep(0.02)
