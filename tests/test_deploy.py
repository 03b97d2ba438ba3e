"""deploy/: the gunicorn settings run for real (a dead worker's metric files go), the systemd units pass
`systemd-analyze verify`, the nginx site passes `nginx -t`, the compose file has what production needs, and the
Grafana dashboard and alert rules only use the metrics the service exports (`promtool` checks the rules).
"""

from __future__ import annotations

import configparser
import getpass
import grp
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from gunicorn.app.base import Application

from config import Settings
from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])

# The metrics the service exports (name -> type, labels, known label values).
METRICS: dict[str, tuple[str, set[str]]] = {
    "wa_webhooks_total": ("counter", {"gateway", "outcome"}),
    "wa_bursts_total": ("counter", {"gateway", "action"}),
    "wa_burst_size": ("histogram", set()),
    "wa_debounce_lag_seconds": ("histogram", {"gateway"}),
    "wa_model_latency_seconds": ("histogram", {"provider", "model"}),
    "wa_model_errors_total": ("counter", {"provider", "model"}),
    "wa_model_tokens_total": ("counter", {"provider", "model", "direction"}),
    "wa_sends_total": ("counter", {"gateway", "result"}),
    "wa_send_latency_seconds": ("histogram", {"gateway"}),
    "wa_send_retries_total": ("counter", {"gateway"}),
    "wa_dead_letters_total": ("counter", {"gateway"}),
    "wa_pending_chats": ("gauge", set()),
    "wa_in_progress_chats": ("gauge", set()),
    "wa_archive_backlog": ("gauge", set()),
    "wa_workers_alive": ("gauge", set()),
    "wa_handoffs_total": ("counter", {"gateway"}),
    "wa_opt_outs_total": ("counter", {"gateway"}),
    "wa_out_of_hours_total": ("counter", {"gateway"}),
}
LABEL_VALUES = {
    "outcome": {"buffered", "duplicate", "ignored", "refused", "human"},
    "result": {"sent", "failed"},
    "direction": {"input", "output"},
}
PROMQL_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset"}
GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")


def metric_selectors(expr: str) -> tuple[list[tuple[str, dict[str, str]]], set[str]]:
    """The metric selectors of a PromQL expression (name, label matchers) and the labels it groups by."""
    grouped = {label.strip() for labels in GROUPING.findall(expr) for label in labels.split(",") if label.strip()}
    body = re.sub(r"\[[^\]]*\]", " ", GROUPING.sub(" ", expr))
    selectors = []
    for match in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?\s*(\()?", body):
        name, matchers, call = match.groups()
        if call or name in PROMQL_KEYWORDS:
            continue
        selectors.append((name, dict(re.findall(r'(\w+)\s*(?:=~|!~|!=|=)\s*"([^"]*)"', matchers or ""))))
    return selectors, grouped


def check_expr(expr: str) -> set[str]:
    """Assert an expression uses only exported metrics, their labels and their label values; return the names."""
    selectors, grouped = metric_selectors(expr)
    assert selectors, f"no metric in {expr!r}"
    names, labels = set(), {"instance", "job"}
    for name, matchers in selectors:
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if base != name and METRICS.get(base, ("",))[0] == "histogram":
            labels.add("le")
        else:
            base = name
        assert base in METRICS, f"{name} (in {expr!r}) is not a metric the service exports"
        kind, metric_labels = METRICS[base]
        assert kind != "histogram" or name != base, f"histogram {base} used without _bucket/_sum/_count in {expr!r}"
        for label, value in matchers.items():
            assert label in metric_labels, f"{base} has no label {label} (in {expr!r})"
            assert value in LABEL_VALUES.get(label, {value}), f"{label}={value!r} is never exported (in {expr!r})"
        labels |= metric_labels
        names.add(name)
    assert grouped <= labels, f"{expr!r} groups by {grouped - labels}, which its metrics do not have"
    return names


# --- gunicorn ---------------------------------------------------------------------------------------------------


class ConfigOnly(Application):
    """Reads deploy/gunicorn.conf.py exactly as `gunicorn -c` does (with its validators), and nothing else."""

    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__()

    def load_config(self) -> None:
        self.load_config_from_file(str(self.path))

    def load(self):  # pragma: no cover: never asked for an app
        raise AssertionError("only the settings are read")


def test_gunicorn_conf_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PORT", "WEB_CONCURRENCY"):
        monkeypatch.delenv(name, raising=False)
    cfg = ConfigOnly(DEPLOY / "gunicorn.conf.py").cfg
    assert cfg.bind == ["0.0.0.0:5000"]
    assert cfg.workers == 2
    assert cfg.graceful_timeout == 30
    assert cfg.preload_app is False
    assert cfg.child_exit.__module__ != "gunicorn.config", "child_exit hook not set"


def test_gunicorn_conf_reads_port_and_concurrency(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "6123")
    monkeypatch.setenv("WEB_CONCURRENCY", "5")
    cfg = ConfigOnly(DEPLOY / "gunicorn.conf.py").cfg
    assert cfg.bind == ["0.0.0.0:6123"]
    assert cfg.workers == 5


def write_live_gauge(directory: Path) -> int:
    """A process that sets a live gauge in `directory` (multiprocess mode) and exits; returns its pid."""
    code = (
        "import os; from prometheus_client import Counter, Gauge; "
        "Gauge('wa_test_live', 'test', multiprocess_mode='livesum').set(1); Counter('wa_test', 'test').inc(); "
        "print(os.getpid())"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return int(done.stdout)


def test_child_exit_removes_the_dead_workers_live_gauges(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pid = write_live_gauge(tmp_path)
    assert (tmp_path / f"gauge_livesum_{pid}.db").exists()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    hooks = ConfigOnly(DEPLOY / "gunicorn.conf.py").cfg

    hooks.child_exit(None, type("Worker", (), {"pid": pid})())

    assert not list(tmp_path.glob(f"gauge_live*_{pid}.db"))
    assert (tmp_path / f"counter_{pid}.db").exists(), "counters of dead processes keep counting in the sum"


def test_child_exit_does_nothing_without_a_metrics_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    ConfigOnly(DEPLOY / "gunicorn.conf.py").cfg.child_exit(None, type("Worker", (), {"pid": 1})())


TINY_APP = """
from prometheus_client import Gauge

Gauge("wa_test_live", "one per live worker", multiprocess_mode="livesum").set(1)


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
"""


def wait_for(predicate, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_gunicorn_with_the_conf_forks_then_builds_and_cleans_up_a_killed_worker(tmp_path: Path) -> None:
    """Real gunicorn on a tiny app that sets a live gauge at import: each worker writes its own file (so the
    app was built after the fork), and the file of a worker killed with SIGKILL is gone once gunicorn notices."""
    (tmp_path / "tinyapp.py").write_text(TINY_APP, encoding="utf-8")
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    port = free_port()
    env = {**os.environ, "PORT": str(port), "WEB_CONCURRENCY": "2", "PROMETHEUS_MULTIPROC_DIR": str(metrics)}
    gunicorn = Path(sys.executable).with_name("gunicorn")
    server = subprocess.Popen(
        [str(gunicorn), "-c", str(DEPLOY / "gunicorn.conf.py"), "tinyapp:app"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        files = wait_for(lambda: len(list(metrics.glob("gauge_livesum_*.db"))) == 2)
        assert files
        pids = {int(path.stem.rsplit("_", 1)[1]) for path in metrics.glob("gauge_livesum_*.db")}
        assert server.pid not in pids, "the app was built in the master (preloaded)"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as answer:
            assert answer.read() == b"ok"

        killed = min(pids)
        os.kill(killed, signal.SIGKILL)

        wait_for(lambda: not (metrics / f"gauge_livesum_{killed}.db").exists())
        wait_for(lambda: len(list(metrics.glob("gauge_livesum_*.db"))) == 2)  # its replacement
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            _, stderr = server.communicate(timeout=35)
        except subprocess.TimeoutExpired:
            server.kill()
            _, stderr = server.communicate()
    assert server.returncode == 0, stderr


# --- systemd ----------------------------------------------------------------------------------------------------

UNITS = {
    "web": DEPLOY / "systemd" / "wa-assistant-web.service",
    "worker": DEPLOY / "systemd" / "wa-assistant-worker.service",
}
VENV_BIN = "/opt/wa-assistant/.venv/bin/"


def read_unit(path: Path) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    unit.optionxform = str  # keys are case-sensitive
    unit.read(path, encoding="utf-8")
    return unit


def test_units_run_the_two_processes_with_the_shared_settings() -> None:
    web, worker = read_unit(UNITS["web"]), read_unit(UNITS["worker"])
    for unit in (web, worker):
        service = unit["Service"]
        assert service["EnvironmentFile"] == "/etc/wa-assistant/env"
        assert service["User"] == "wa-assistant"
        assert service["WorkingDirectory"] == "/opt/wa-assistant"
        assert service["Restart"] == "on-failure"
        assert service["KillSignal"] == "SIGTERM"
        assert 30 < int(service["TimeoutStopSec"]) <= 60, "a little over the 30 s graceful stop"
        assert unit["Install"]["WantedBy"] == "multi-user.target"
    web_start = web["Service"]["ExecStart"].split()
    assert web_start[0] == VENV_BIN + "gunicorn"
    assert web_start[1:3] == ["-c", "deploy/gunicorn.conf.py"] and web_start[-1] == "webhook:app"
    assert "--env" in web_start and web_start[web_start.index("--env") + 1] == "WORKER_ENABLED=false"
    assert "--preload" not in web_start
    assert worker["Service"]["ExecStart"].split() == [VENV_BIN + "python", "worker.py"]

    metrics_dirs = {unit["Service"]["Environment"] for unit in (web, worker)}
    assert metrics_dirs == {"PROMETHEUS_MULTIPROC_DIR=/run/wa-assistant/metrics"}, "in memory, as /dev/shm by default"
    for unit in (web, worker):
        assert "wa-assistant/metrics" in unit["Service"]["RuntimeDirectory"].split()
        # Without it, stopping one unit would delete the other's live metric files.
        assert unit["Service"]["RuntimeDirectoryPreserve"] == "yes"


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze", path=SBIN_PATH)
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (the units' keys are checked above)")
    # The venv's programs do not exist on this machine: verify checks ExecStart's binary, so point it at one that does.
    copies = []
    for path in UNITS.values():
        text = re.sub(
            r"^ExecStart=/opt/wa-assistant/\.venv/bin/\w+", "ExecStart=/bin/true", path.read_text(), flags=re.M
        )
        (tmp_path / path.name).write_text(text, encoding="utf-8")
        copies.append(str(tmp_path / path.name))
    done = subprocess.run([analyze, "verify", "--man=no", *copies], capture_output=True, text=True, timeout=60)
    ours = [line for line in (done.stdout + done.stderr).splitlines() if "wa-assistant" in line]
    assert done.returncode == 0 and not ours, done.stdout + done.stderr


def test_tmpfiles_rule_creates_and_empties_the_metrics_dir(tmp_path: Path) -> None:
    tmpfiles = shutil.which("systemd-tmpfiles", path=SBIN_PATH)
    if tmpfiles is None:
        pytest.skip("systemd-tmpfiles is not installed")
    rule = (DEPLOY / "systemd" / "wa-assistant.tmpfiles.conf").read_text()
    me = f"{getpass.getuser()} {grp.getgrgid(os.getgid()).gr_name}"
    (tmp_path / "rule.conf").write_text(rule.replace("wa-assistant wa-assistant", me), encoding="utf-8")
    root = tmp_path / "root"
    stale = root / "run/wa-assistant/metrics/counter_123.db"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")

    subprocess.run(
        [tmpfiles, "--create", "--remove", "--boot", f"--root={root}", str(tmp_path / "rule.conf")],
        check=True,
        capture_output=True,
        timeout=60,
    )

    assert stale.parent.is_dir() and not stale.exists()
    assert stale.parent.stat().st_mode & 0o777 == 0o750


# --- nginx ------------------------------------------------------------------------------------------------------

SITE = DEPLOY / "nginx" / "wa-assistant.conf"


def test_nginx_site_proxies_with_the_forwarded_headers_and_a_large_enough_body() -> None:
    site = SITE.read_text()
    limit = re.search(r"^\s*client_max_body_size (\d+)m;", site, re.M)
    assert limit and int(limit.group(1)) * 1024 * 1024 >= Settings().webhook_body_limit
    for header in (
        "Host $host",
        "X-Real-IP $remote_addr",
        "X-Forwarded-For $proxy_add_x_forwarded_for",
        "X-Forwarded-Proto $scheme",
    ):
        assert f"proxy_set_header {header};" in site
    assert site.count("proxy_pass http://127.0.0.1:5000;") == 2
    assert "ssl_certificate /etc/letsencrypt/live/example.com/fullchain.pem;" in site
    assert "ssl_certificate_key /etc/letsencrypt/live/example.com/privkey.pem;" in site
    metrics = re.search(r"location = /metrics \{(.*?)\}", site, re.S)
    assert metrics and "allow 127.0.0.1;" in metrics.group(1) and "deny all;" in metrics.group(1)


def test_nginx_accepts_the_site(tmp_path: Path) -> None:
    nginx = shutil.which("nginx", path=SBIN_PATH)
    if nginx is None:
        pytest.fail("nginx is not installed: `make test` installs it (apt-get install nginx-light)")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=example.com",
            "-keyout",
            str(tmp_path / "privkey.pem"),
            "-out",
            str(tmp_path / "fullchain.pem"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    site = SITE.read_text().replace("/etc/letsencrypt/live/example.com/", f"{tmp_path}/")
    site = site.replace("/var/log/nginx/", f"{tmp_path}/")
    directives = [line for line in site.splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in directives if "/etc/" in line or "/var/log/" in line]
    (tmp_path / "site.conf").write_text(site, encoding="utf-8")
    temp_paths = "\n".join(
        f"    {kind}_temp_path {tmp_path}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n    access_log {tmp_path}/access.log;\n{temp_paths}\n    include {tmp_path}/site.conf;\n}}\n",
        encoding="utf-8",
    )

    done = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", str(tmp_path / "error.log")],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 0 and "test is successful" in done.stderr, done.stderr


# --- docker -----------------------------------------------------------------------------------------------------


def test_dockerfile_runs_the_web_as_a_non_root_user() -> None:
    lines = [line.strip() for line in (DEPLOY / "Dockerfile").read_text().splitlines()]
    assert lines[lines.index(next(line for line in lines if line.startswith("FROM")))] == "FROM python:3.11-slim"
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert "RUN pip install -r requirements.txt" in lines
    assert "EXPOSE 5000" in lines
    assert any(line.startswith("HEALTHCHECK") for line in lines) and "/health" in (DEPLOY / "Dockerfile").read_text()
    cmd = [line for line in lines if line.startswith("CMD ")][-1]  # not HEALTHCHECK's, on the line before
    assert json.loads(cmd[4:]) == ["gunicorn", "-c", "deploy/gunicorn.conf.py", "webhook:app"]
    ignored = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert {".env", ".webhook_token", ".secret_key", ".venv", ".git"} <= set(ignored), "secrets kept out of the image"


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def seconds(duration: str) -> int:
    return int(duration.removesuffix("s"))


def test_compose_has_web_worker_redis_and_postgres_with_health_checks() -> None:
    services = compose()["services"]
    assert set(services) == {"web", "worker", "redis", "postgres"}
    web, worker = services["web"], services["worker"]
    for name, service in services.items():
        assert service["healthcheck"]["test"], f"{name} has no health check"
        assert service["restart"] == "unless-stopped"

    assert web["environment"]["WORKER_ENABLED"] == "false"
    assert "5000:5000" in web["ports"]
    assert worker["command"] == ["python", "worker.py"]
    assert "ports" not in worker
    for service in (web, worker):
        assert service["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
        assert service["env_file"] == "../.env"
        assert service["environment"]["CACHE_REDIS_URI"] == "redis://redis:6379/0"
        assert service["environment"]["DATABASE_URL"].endswith("@postgres:5432/assistant")
        assert seconds(service["stop_grace_period"]) > 30
        assert service["depends_on"]["redis"] == {"condition": "service_healthy"}
        assert service["depends_on"]["postgres"] == {"condition": "service_healthy"}

    assert "--appendonly" in services["redis"]["command"] and "yes" in services["redis"]["command"]
    assert "redis-data:/data" in services["redis"]["volumes"]
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "postgres-data:/var/lib/postgresql/data" in services["postgres"]["volumes"]


def test_compose_web_and_worker_share_the_metric_files() -> None:
    """Both write metric files named by pid into one volume: same directory, one PID namespace."""
    document = compose()
    web, worker = document["services"]["web"], document["services"]["worker"]
    for service in (web, worker):
        target = service["environment"]["PROMETHEUS_MULTIPROC_DIR"]
        assert f"metrics:{target}" in service["volumes"]
    assert worker["pid"] == "service:web"
    assert "metrics" in document["volumes"]


def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("docker compose is not installed (the file's content is checked above)")
    (tmp_path / "deploy").mkdir()
    shutil.copy(DEPLOY / "docker-compose.yml", tmp_path / "deploy")
    shutil.copy(DEPLOY / "Dockerfile", tmp_path / "deploy")
    (tmp_path / ".env").write_text("GEMINI_API_KEY=\n", encoding="utf-8")
    done = subprocess.run(
        [docker, "compose", "-f", str(tmp_path / "deploy" / "docker-compose.yml"), "config", "--quiet"],
        env={**os.environ, "POSTGRES_PASSWORD": "test"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


# --- Grafana and Prometheus -------------------------------------------------------------------------------------


def test_dashboard_panels_use_only_exported_metrics() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "wa-assistant-dashboard.json").read_text())
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    used: set[str] = set()
    exprs = []
    for panel in panels:
        assert panel["targets"], panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        for target in panel["targets"]:
            used |= check_expr(target["expr"])
            exprs.append(target["expr"])
    assert {
        "wa_bursts_total",
        "wa_debounce_lag_seconds_bucket",
        "wa_model_latency_seconds_bucket",
        "wa_model_errors_total",
        "wa_sends_total",
        "wa_archive_backlog",
        "wa_pending_chats",
        "wa_workers_alive",
        "wa_model_tokens_total",
    } <= used
    for quantile in ("0.5", "0.99"):
        assert any(f"histogram_quantile({quantile}," in e and "wa_debounce_lag_seconds_bucket" in e for e in exprs)
        assert any(f"histogram_quantile({quantile}," in e and "by (le, provider)" in e for e in exprs)
    assert any("increase(wa_model_tokens_total[1d])" in e for e in exprs)


def alert_rules() -> list[dict]:
    document = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_alert_rules_are_complete_and_use_only_exported_metrics() -> None:
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} == {
        "WaNothingAnswered",
        "WaDebounceLagHigh",
        "WaDeadLetters",
        "WaNoLiveWorker",
    }
    for rule in rules:
        assert {"expr", "for", "labels", "annotations"} <= set(rule), rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]
        check_expr(rule["expr"])
    by_name = {rule["alert"]: rule for rule in rules}
    assert by_name["WaNoLiveWorker"]["for"] == "2m"
    assert "[10m]" in by_name["WaNothingAnswered"]["expr"]
    assert "> 300" in by_name["WaDebounceLagHigh"]["expr"]


def promtool() -> str:
    path = shutil.which("promtool", path=SBIN_PATH)
    if path is None:
        pytest.skip("promtool is not installed (apt-get install prometheus): the rules' content is checked above")
    return path


def test_promtool_checks_the_rules() -> None:
    done = subprocess.run(
        [promtool(), "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# Synthetic series, one sample a minute, and the alerts each must (or must not) raise.
RULE_TESTS = {
    "rule_files": ["alerts.yml"],
    "evaluation_interval": "1m",
    "tests": [
        {  # messages keep arriving, no burst is ever handled
            "interval": "1m",
            "input_series": [
                {"series": 'wa_webhooks_total{gateway="evolution",outcome="buffered"}', "values": "0+3x30"},
                {"series": "wa_workers_alive", "values": "0x30"},
            ],
            "alert_rule_test": [
                {
                    "eval_time": "16m",
                    "alertname": "WaNothingAnswered",
                    "exp_alerts": [{"exp_labels": {"severity": "critical"}}],
                },
                {"eval_time": "1m", "alertname": "WaNoLiveWorker"},
                {
                    "eval_time": "3m",
                    "alertname": "WaNoLiveWorker",
                    "exp_alerts": [{"exp_labels": {"severity": "critical"}}],
                },
            ],
        },
        {  # a healthy service: messages in, bursts handled, one worker
            "interval": "1m",
            "input_series": [
                {"series": 'wa_webhooks_total{gateway="evolution",outcome="buffered"}', "values": "0+3x30"},
                {"series": 'wa_bursts_total{gateway="evolution",action="ai"}', "values": "0+1x30"},
                {"series": 'wa_dead_letters_total{gateway="evolution"}', "values": "0x30"},
                {"series": "wa_workers_alive", "values": "1x30"},
            ],
            "alert_rule_test": [
                {"eval_time": "20m", "alertname": "WaNothingAnswered"},
                {"eval_time": "20m", "alertname": "WaNoLiveWorker"},
                {"eval_time": "20m", "alertname": "WaDeadLetters"},
            ],
        },
        {  # a reply dead-lettered at minute 5
            "interval": "1m",
            "input_series": [{"series": 'wa_dead_letters_total{gateway="meta"}', "values": "0x4 1x25"}],
            "alert_rule_test": [
                {
                    "eval_time": "6m",
                    "alertname": "WaDeadLetters",
                    "exp_alerts": [{"exp_labels": {"severity": "warning", "gateway": "meta"}}],
                },
                {"eval_time": "25m", "alertname": "WaDeadLetters"},
            ],
        },
    ],
}


def test_promtool_rule_tests_fire_when_they_should(tmp_path: Path) -> None:
    # promtool compares annotations too: test the rules without them (their text is not what is tested here).
    document = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations")
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(document), encoding="utf-8")
    tests = tmp_path / "alerts_test.yml"
    tests.write_text(yaml.safe_dump(RULE_TESTS), encoding="utf-8")
    done = subprocess.run([promtool(), "test", "rules", str(tests)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


# --- the READMEs ------------------------------------------------------------------------------------------------


def test_readmes_link_each_other_and_the_deploy_files() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "README.pt-BR.md" in readme.split("\n## ", 1)[0], "the Portuguese README is linked near the top"
    deploy_section = readme.split("\n## Deploy\n", 1)[1].split("\n## ", 1)[0]
    for path in re.findall(r"`(deploy/[^`\s]+)`", deploy_section):
        assert (ROOT / path).exists(), path
    assert (ROOT / "README.pt-BR.md").exists()
