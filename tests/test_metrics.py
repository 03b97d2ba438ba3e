"""metrics.py: the names the dashboard and the alerts use exist with their labels; counters reach /health's totals;
a dead process's live gauges are dropped and its counters kept; `/metrics` is off, open or behind its token."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask
from prometheus_client import Counter, Gauge, Histogram

import config
import metrics
from metrics import Metrics
from tests.conftest import ROOT
from tests.test_deploy import METRICS as CONTRACT


def defined() -> dict[str, tuple[str, set[str]]]:
    """Every metric metrics.py defines: exposed name -> (type, label names)."""
    found: dict[str, tuple[str, set[str]]] = {}
    for value in vars(metrics).values():
        if isinstance(value, Counter):
            found[value._name + "_total"] = ("counter", set(value._labelnames))
        elif isinstance(value, Histogram):
            found[value._name] = ("histogram", set(value._labelnames))
        elif isinstance(value, Gauge):
            found[value._name] = ("gauge", set(value._labelnames))
    for name in metrics._DeploymentCollector.HELP:
        found[name] = ("gauge", set())
    return found


def test_every_metric_the_dashboard_and_alerts_use_is_defined_with_its_labels() -> None:
    have = defined()
    for name, (kind, labels) in CONTRACT.items():
        assert name in have, name
        assert have[name][0] == kind, name
        assert labels <= have[name][1], (name, have[name][1])


def test_no_metric_is_labelled_by_chat_or_number() -> None:
    for name, (_, labels) in defined().items():
        assert not labels & {"chat", "chat_id", "number", "phone", "instance_chat"}, name


def test_counted_events_reach_the_totals_and_a_disabled_registry_counts_nothing() -> None:
    on, off = Metrics(enabled=True), Metrics(enabled=False)
    before = on.event_totals().get("test_metric_event", 0)
    on.event("test_metric_event", 2)
    off.event("test_metric_event", 5)
    assert on.event_totals()["test_metric_event"] == before + 2


def run_child(directory: Path, code: str) -> int:
    """Run `code` in a child Python with this metrics directory; returns its pid (it has exited)."""
    script = "import os, metrics\n" + textwrap.dedent(code) + "\nprint(os.getpid())"
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={"PROMETHEUS_MULTIPROC_DIR": str(directory), "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return int(done.stdout.strip().splitlines()[-1])


def test_a_dead_process_live_gauge_is_dropped_and_its_counters_kept(tmp_path: Path) -> None:
    pid = run_child(
        tmp_path,
        """
        m = metrics.Metrics(enabled=True)
        m.in_flight(+1)
        m.webhook("evolution", "buffered")
        """,
    )
    assert list(tmp_path.glob(f"gauge_livesum_{pid}.db"))
    body = Metrics(enabled=True, directory=str(tmp_path)).exposition()[0].decode()
    assert not list(tmp_path.glob(f"gauge_livesum_{pid}.db"))  # the process is gone: its live gauge too
    assert 'wa_webhooks_total{gateway="evolution",outcome="buffered",reason="",tenant=""} 1.0' in body
    assert 'wa_replies_in_flight{role="worker"} 1.0' not in body


def test_metrics_endpoint_off_open_and_behind_its_token(make_app: Callable[..., Flask]) -> None:
    assert make_app(metrics_enabled=False).test_client().get("/metrics").status_code == 404
    open_page = make_app(metrics_enabled=True).test_client().get("/metrics")
    assert open_page.status_code == 200 and open_page.content_type.startswith("text/plain")
    assert "wa_pending_chats 0.0" in open_page.text and "# TYPE wa_workers_alive gauge" in open_page.text
    guarded = make_app(metrics_enabled=True, metrics_token="tok-9").test_client()
    assert guarded.get("/metrics").status_code == 401
    assert guarded.get("/metrics", headers={"Authorization": "Bearer tok-8"}).status_code == 401
    assert guarded.get("/metrics", headers={"Authorization": "Bearer tok-9"}).status_code == 200


def test_the_default_metrics_directory_is_in_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every counter increment writes to a memory-mapped file there: on a disk it costs webhook throughput."""
    if not os.access("/dev/shm", os.W_OK):
        pytest.skip("this host has no writable /dev/shm")
    monkeypatch.delenv(config.METRICS_DIR)
    path = config.metrics_directory()
    assert path == f"/dev/shm/wa-assistant-metrics-{os.getuid()}" and os.path.isdir(path)
    assert os.environ[config.METRICS_DIR] == path, "set for prometheus-client, which reads it on import"
    filesystems = {line.split()[1]: line.split()[2] for line in Path("/proc/mounts").read_text().splitlines()}
    assert filesystems.get("/dev/shm") == "tmpfs"
