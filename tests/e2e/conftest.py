"""End-to-end harness: the real server (`python webhook.py`, `gunicorn webhook:app`) as child processes.

Each server gets a clean environment that sets every variable the service reads (so neither the caller's
environment nor a `.env` file can change it), is pointed at this test's Redis and fakes, and logs to a file
under `tmp_path`. The `e2e` fixture stops every process it started; a failing test shows their logs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from config import ENV_ALIASES, ENV_VARIABLES, MAY_BE_EMPTY, SYSTEM_PROMPT_FILE, Settings
from tests.conftest import ROOT, RedisServer, free_port
from tests.fakes import FakeEvolution, FakeGemini

PYTHON = ROOT / ".venv" / "bin" / "python"
GUNICORN = ROOT / ".venv" / "bin" / "gunicorn"

DEBOUNCE_SECONDS = 1.0
# Not paced unless a test asks (test_pacing.py): many tests answer dozens of chats of one number at once.
PACING_OFF_ENV = {
    "OUTBOUND_RATE_PER_SECOND_EVOLUTION": "0",
    "OUTBOUND_RATE_PER_SECOND_META": "0",
    "OUTBOUND_RATE_PER_SECOND_TWILIO": "0",
    "OUTBOUND_RATE_PER_SECOND_MEGA": "0",
    "OUTBOUND_CUSTOMER_GAP_SECONDS": "0",
}
QUIET_SECONDS = 2 * DEBOUNCE_SECONDS  # how long "no further sends" is watched after the expected ones
REPLY_TIMEOUT_SECONDS = 10.0  # debounce + Gemini + send, with room for a loaded machine
READY_TIMEOUT_SECONDS = 20.0

INSTANCE = "loja-e2e"
CUSTOMER_JID = "5511987654321@s.whatsapp.net"
OTHER_JID = "5521976543210@s.whatsapp.net"
GROUP_JID = "120363041234567890@g.us"
EVOLUTION_APIKEY = "e2e-evolution-apikey-7f3a9c41"  # AUTHENTICATION_API_KEY given to the service
PAYLOAD_APIKEY = "e2e-instance-token-b52d0e18"  # the `apikey` Evolution puts inside each webhook body
GEMINI_KEY = "e2e-gemini-key-91c4"
FALLBACK_TEXT = "Desculpe, instabilidade de teste e2e. Retornamos em breve!"
REDIS_PREFIX = "wa_e2e"


# ----- payloads -----------------------------------------------------------------------------------------


def upsert(
    text: str | None = None,
    *,
    jid: str = CUSTOMER_JID,
    msg_id: str | None = None,
    from_me: bool = False,
    instance: str = INSTANCE,
    event: str = "messages.upsert",
    message: dict[str, Any] | None = None,
    participant: str | None = None,
) -> dict[str, Any]:
    """An Evolution v2 `messages.upsert` webhook body (our own values, v2 envelope: status, instanceId, source)."""
    msg_id = msg_id or "3EB0" + uuid.uuid4().hex[:16].upper()
    key: dict[str, Any] = {"remoteJid": jid, "fromMe": from_me, "id": msg_id}
    if participant:
        key["participant"] = participant
    return {
        "event": event,
        "instance": instance,
        "data": {
            "key": key,
            "pushName": "Cliente E2E",
            "status": "DELIVERY_ACK",
            "message": message if message is not None else {"conversation": text or ""},
            "messageType": "conversation",
            "messageTimestamp": int(time.time()),
            "instanceId": "0b7d6c1e-e2e0-4a55-9d3b-5f0c2a7e1d11",
            "source": "android",
        },
        "destination": "http://127.0.0.1/webhook",
        "date_time": "2026-01-15T10:20:30.000Z",
        "sender": "5511900001111@s.whatsapp.net",
        "server_url": "http://evolution.e2e.local:8080",
        "apikey": PAYLOAD_APIKEY,
    }


# ----- polling helpers ----------------------------------------------------------------------------------


def wait_until(predicate: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll `predicate` until it returns something truthy; fail the test with `what` on timeout."""
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.time() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


def wait_count(count: Callable[[], int], expected: int, *, timeout: float, what: str) -> None:
    """Wait until `count()` reaches `expected`; fail at once if it goes past it."""

    def reached() -> bool:
        current = count()
        assert current <= expected, f"{what}: expected {expected}, got {current}"
        return current == expected

    wait_until(reached, timeout=timeout, what=f"{what} == {expected} (now {count()})")


def assert_stays(count: Callable[[], int], expected: int, *, seconds: float, what: str) -> None:
    """Watch `count()` for `seconds` and fail as soon as it differs from `expected`."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        current = count()
        assert current == expected, f"{what}: expected to stay {expected}, got {current}"
        time.sleep(0.05)


def prompt_turns(prompt: dict[str, Any]) -> list[tuple[str, str]]:
    """(role, text) of every part of a generateContent request body, in order."""
    return [
        (content.get("role", ""), part.get("text", ""))
        for content in prompt.get("contents", [])
        for part in content.get("parts", [])
        if "text" in part
    ]


def last_user_text(prompt: dict[str, Any]) -> str:
    """All text of the last content of a prompt (the new burst)."""
    last = prompt["contents"][-1]
    assert last["role"] == "user"
    return "\n".join(part.get("text", "") for part in last["parts"])


# ----- server processes ---------------------------------------------------------------------------------


class ServerProcess:
    """One server process (and, for gunicorn, its workers: they share its process group)."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], port: int, log_path: Path, cwd: Path = ROOT
    ) -> None:
        self.name = name
        self.cwd = cwd
        self.argv = argv
        self.env = env
        self.port = port
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # lifecycle

    def spawn(self) -> ServerProcess:
        self._log_file = open(self.log_path, "ab")  # closed by kill()/stop()
        self.proc = subprocess.Popen(
            self.argv,
            cwd=self.cwd,
            env=self.env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, so kill() reaches gunicorn's workers too
        )
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT_SECONDS) -> ServerProcess:
        """Poll GET /health until it answers 200; fail with the log if the process exits first."""
        assert self.proc is not None
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode} before serving:\n{self.logs()}")
            try:
                if requests.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise AssertionError(f"{self.name} did not answer /health within {timeout}s:\n{self.logs()}")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group (no cleanup runs, as with `kill -9`)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        self._close_log()

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM the main process and wait for it; returns its exit code (fails on timeout)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still running {timeout}s after SIGTERM:\n{self.logs()}") from None

    def stop(self) -> None:
        """Finalizer: SIGTERM, then SIGKILL the group whatever happened (leftover gunicorn workers included)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    # HTTP

    def post(
        self,
        payload: Any = None,
        *,
        data: bytes | str | None = None,
        path: str = "/webhook",
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> requests.Response:
        if payload is not None:
            return requests.post(self.url + path, json=payload, headers=headers, params=params, timeout=10)
        return requests.post(self.url + path, data=data, headers=headers, params=params, timeout=10)

    def burst(self, texts: list[str], *, jid: str = CUSTOMER_JID, **kwargs: Any) -> list[requests.Response]:
        """Post one message per text, in order; each must be buffered."""
        responses = []
        for text in texts:
            response = self.post(upsert(text, jid=jid), **kwargs)
            assert response.status_code == 200, response.text
            assert response.json()["status"] == "buffered", response.text
            responses.append(response)
        return responses

    def health(self) -> dict[str, Any]:
        response = requests.get(self.url + "/health", timeout=5)
        assert response.status_code == 200, response.text
        return response.json()

    def logs(self) -> str:
        if self._log_file is not None:
            self._log_file.flush()
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def assert_logs_private(self, *secrets: str) -> None:
        """None of `secrets` (full numbers, keys, message texts) appears in this server's log."""
        text = self.logs()
        leaked = [secret for secret in secrets if secret and secret in text]
        assert not leaked, f"{self.name} log contains {leaked!r}"


class Harness:
    """Starts servers wired to this test's Redis and fakes, and stops them all at the end."""

    def __init__(
        self,
        tmp_path: Path,
        redis_server: RedisServer,
        redis_client: redis.Redis,
        gemini: FakeGemini,
        evolution: FakeEvolution,
    ) -> None:
        self.tmp_path = tmp_path
        self.redis_server = redis_server
        self.redis = redis_client
        self.gemini = gemini
        self.evolution = evolution
        self.servers: list[ServerProcess] = []
        # Servers run in a folder of this test (no .env of the repo is read, nothing is written into it).
        self.cwd = tmp_path / "server-cwd"
        self.cwd.mkdir(exist_ok=True)
        self.metrics_dir = tmp_path / "metrics"  # PROMETHEUS_MULTIPROC_DIR of this test's servers
        self.metrics_dir.mkdir(exist_ok=True)

    def env(self, port: int, overrides: dict[str, Any]) -> dict[str, str]:
        """A clean environment: every variable the service reads is set here (empty = its default)."""
        env = {k: v for k, v in os.environ.items() if k not in ENV_VARIABLES and not k.startswith("GUNICORN")}
        env.update({name: "" for name in [*ENV_VARIABLES, *ENV_ALIASES]})
        defaults = Settings()
        for name, (attr, _) in ENV_VARIABLES.items():
            if attr in MAY_BE_EMPTY:  # empty would mean "send nothing" there: set the default text instead
                env[name] = getattr(defaults, attr)
        env[SYSTEM_PROMPT_FILE] = ""
        env.update(
            {
                "PYTHONUNBUFFERED": "1",
                "HOST": "127.0.0.1",
                "PORT": str(port),
                "LOG_LEVEL": "INFO",
                "GEMINI_API_KEY": GEMINI_KEY,
                "GEMINI_BASE_URL": self.gemini.url,
                "GEMINI_TIMEOUT_SECONDS": "10",
                "GEMINI_MAX_ATTEMPTS": "4",
                "GEMINI_RETRY_INITIAL_SECONDS": "0.05",
                "EVOLUTION_API": self.evolution.url,
                "AUTHENTICATION_API_KEY": EVOLUTION_APIKEY,
                "EVOLUTION_API_VERSION": "2",
                "SEND_DELAY_MS": "0",
                "SEND_TIMEOUT_SECONDS": "5",
                "SEND_MAX_RETRIES": "1",
                "CACHE_REDIS_ENABLED": "true",
                "CACHE_REDIS_URI": self.redis_server.url,
                "CACHE_REDIS_PREFIX_KEY": REDIS_PREFIX,
                "REDIS_RETRY_SECONDS": "0.5",
                "FALLBACK_REPLY": FALLBACK_TEXT,
                "DEBOUNCE_SECONDS": str(DEBOUNCE_SECONDS),
                "DEBOUNCE_MAX_WAIT_SECONDS": "60",
                "LEASE_SECONDS": "5",
                "DELIVERY_MAX_ATTEMPTS": "12",
                "DELIVERY_RETRY_BASE_SECONDS": "0.3",
                "WORKER_ENABLED": "true",
                "WORKER_POLL_SECONDS": "0.05",
                "MAX_BODY_BYTES": "1000000",
                "WEBHOOK_AUTH": "off",  # most tests post without a token; closed by default: test_http.py
                "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir),  # this test's servers share it, as on one host
                **PACING_OFF_ENV,
            }
        )
        env.update({name: str(value) for name, value in overrides.items()})
        return env

    def spawn_python(self, **overrides: Any) -> ServerProcess:
        """`python webhook.py` (not waited for: call `.wait_ready()`)."""
        port = free_port()
        name = f"python-{len(self.servers)}-{port}"
        argv = [str(PYTHON), str(ROOT / "webhook.py")]
        server = ServerProcess(name, argv, self.env(port, overrides), port, self.tmp_path / f"{name}.log", self.cwd)
        self.servers.append(server)
        return server.spawn()

    def spawn_gunicorn(self, workers: int = 4, **overrides: Any) -> ServerProcess:
        """`gunicorn webhook:app -w N` with an empty config file, so no gunicorn.conf.py in the repo applies."""
        port = free_port()
        name = f"gunicorn-{len(self.servers)}-{port}"
        config = self.tmp_path / "gunicorn_e2e.conf.py"
        config.write_text("# empty: the e2e tests pass every option on the command line\n")
        argv = [
            str(GUNICORN),
            "webhook:app",
            "-c",
            str(config),
            "-w",
            str(workers),
            "-b",
            f"127.0.0.1:{port}",
            "--graceful-timeout",
            "5",
            "--timeout",
            "30",
            "--pythonpath",
            str(ROOT),
        ]
        server = ServerProcess(name, argv, self.env(port, overrides), port, self.tmp_path / f"{name}.log", self.cwd)
        self.servers.append(server)
        return server.spawn()

    def spawn_worker_process(self, **overrides: Any) -> ServerProcess:
        """`python worker.py`: the reply worker alone, no HTTP server."""
        name = f"worker-{len(self.servers)}"
        argv = [str(PYTHON), str(ROOT / "worker.py")]
        port = free_port()  # read from the settings like any variable, never bound
        server = ServerProcess(name, argv, self.env(port, overrides), port, self.tmp_path / f"{name}.log", self.cwd)
        self.servers.append(server)
        return server.spawn()

    def workers_alive(self) -> int:
        """Worker processes with a heartbeat in Redis (liveness.py)."""
        return int(self.redis.zcard(f"{REDIS_PREFIX}:workers"))

    def python_server(self, **overrides: Any) -> ServerProcess:
        return self.spawn_python(**overrides).wait_ready()

    def gunicorn_server(self, workers: int = 4, **overrides: Any) -> ServerProcess:
        return self.spawn_gunicorn(workers, **overrides).wait_ready()

    # what the fakes saw

    def sends(self) -> list[Any]:
        return self.evolution.sends()

    def prompts(self) -> list[dict[str, Any]]:
        return self.gemini.prompts()

    def wait_sends(self, expected: int, timeout: float = REPLY_TIMEOUT_SECONDS) -> list[Any]:
        wait_count(lambda: len(self.sends()), expected, timeout=timeout, what="sendText calls")
        return self.sends()

    def assert_no_more(self, *, sends: int, prompts: int | None = None, seconds: float = QUIET_SECONDS) -> None:
        """After the expected replies: for `seconds`, no further sendText (and Gemini) call arrives."""
        deadline = time.time() + seconds
        while time.time() < deadline:
            assert len(self.sends()) == sends, f"expected {sends} sendText calls, got {len(self.sends())}"
            if prompts is not None:
                assert len(self.prompts()) == prompts, f"expected {prompts} Gemini calls, got {len(self.prompts())}"
            time.sleep(0.05)

    def redis_keys(self) -> list[str]:
        """The service's keys in Redis, but for the secrets it generates at start (the session key, the webhook
        token) and the workers' heartbeats: what messages, chats and replies left behind."""
        generated = {f"{REDIS_PREFIX}:secret_key", f"{REDIS_PREFIX}:webhook:token", f"{REDIS_PREFIX}:workers"}
        return sorted(key for key in self.redis.scan_iter(match=f"{REDIS_PREFIX}:*") if key not in generated)

    def close(self) -> None:
        for server in self.servers:
            server.stop()

    def debug_report(self) -> str:
        lines = [f"sendText calls: {len(self.sends())}"]
        lines += [f"  {r.at:.3f} {r.path} {r.body[:200]!r}" for r in self.sends()]
        lines.append(f"Gemini calls: {len(self.gemini.received())}")
        lines += [f"  {r.at:.3f} {r.path} {r.body[:300]!r}" for r in self.gemini.received()]
        return "\n".join(lines)


@pytest.fixture
def e2e(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    redis_server: RedisServer,
    redis_client: redis.Redis,
    fake_gemini: FakeGemini,
    fake_evolution: FakeEvolution,
) -> Iterator[Harness]:
    harness = Harness(tmp_path, redis_server, redis_client, fake_gemini, fake_evolution)
    request.node.e2e_harness = harness
    yield harness
    harness.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """On failure, attach every server's log and what the fakes received to the report."""
    outcome = yield
    report = outcome.get_result()
    harness: Harness | None = getattr(item, "e2e_harness", None)
    if report.failed and harness is not None:
        for server in harness.servers:
            report.sections.append((f"server log {server.name} ({server.log_path})", server.logs()[-30000:]))
        report.sections.append(("fakes", harness.debug_report()))


# ----- shared by the failover tests (Sentinel, Cluster) ---------------------------------------------------------


def post_until_acknowledged(server: ServerProcess, body: dict[str, Any], *, timeout: float = 20.0) -> None:
    """What a gateway does: post, and post the same message again after anything but a 2xx."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            response = server.post(body)
            if response.status_code == 200:
                assert response.json()["status"] in ("buffered", "ignored"), response.text
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{body} was never acknowledged")


def assert_a_worker_killed_mid_reply_is_replaced(e2e: Harness, env: dict[str, str]) -> None:
    """A web process and a worker process; the worker is SIGKILLed while it waits on the model, and another worker
    process answers the burst once the dead one's lease runs out: one reply, no more."""
    web = e2e.gunicorn_server(workers=1, WORKER_ENABLED="false", **env)
    first = e2e.spawn_worker_process(**env)
    e2e.gemini.delay = 3.0  # the first worker is still waiting on the model when it dies
    assert web.post(upsert("Vocês abrem no feriado?")).json()["status"] == "buffered"
    wait_count(lambda: len(e2e.gemini.received()), 1, timeout=20, what="the model asked by the first worker")

    first.kill()
    e2e.gemini.delay = 0.0
    e2e.spawn_worker_process(**env)  # takes the chat over once the dead worker's lease (LEASE_SECONDS) runs out

    (send,) = e2e.wait_sends(1, timeout=30)
    assert "Vocês abrem no feriado?" in send.json["text"]
    e2e.assert_no_more(sends=1, seconds=3)
