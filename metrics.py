"""Prometheus metrics (`/metrics`): what happened, counted in every process of a host and summed at scrape time by
prometheus-client's multiprocess mode, plus what the deployment holds now (pending and in-progress chats, the
archive's backlog, live workers), read from Redis when scraped.

Every process of a host writes its samples as files under PROMETHEUS_MULTIPROC_DIR (config.metrics_directory(), run
before prometheus_client is imported, gives it a default), so `/metrics` and `/health` answer the same
totals whichever gunicorn worker serves them. A counter's total outlives the process that counted it; a process's
live gauges (`wa_replies_in_flight`) stop counting once it is gone (gunicorn's child_exit hook in
deploy/gunicorn.conf.py marks a dead worker at once; a dead process the hook did not see is found when scraped).

Labels are gateway, provider, model, outcome/result: never a chat or a number. A tenant label can be added later
without renaming anything.
"""

from __future__ import annotations

import functools
import glob
import os
import re
from collections.abc import Callable, Iterable
from typing import Any

from config import metrics_directory

# prometheus_client chooses its multiprocess value files when first imported: the directory must be set before.
DIRECTORY = metrics_directory()

from prometheus_client import (  # noqa: E402 (after metrics_directory(): prometheus_client reads it on import)
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily  # noqa: E402

LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60)
LAG_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)
SIZE_BUCKETS = (1, 2, 3, 4, 5, 7, 10, 15, 20, 30, 50)
SEND_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)

# registry=None: in multiprocess mode the samples go to files, and /metrics reads them through its own registry.
WEBHOOKS = Counter(
    "wa_webhooks", "Messages received by webhook, by outcome", ["gateway", "tenant", "outcome", "reason"], registry=None
)
BURSTS = Counter(
    "wa_bursts",
    "Due bursts decided, by action (ai, text, none) and reason",
    ["gateway", "tenant", "action"],
    registry=None,
)
BURST_SIZE = Histogram(
    "wa_burst_size", "Messages per due burst", ["gateway", "tenant"], buckets=SIZE_BUCKETS, registry=None
)
DEBOUNCE_LAG = Histogram(
    "wa_debounce_lag_seconds",
    "From a burst's deadline to its reply's first part sent",
    ["gateway", "tenant"],
    buckets=LAG_BUCKETS,
    registry=None,
)
MODEL_LATENCY = Histogram(
    "wa_model_latency_seconds",
    "One model call, retries included",
    ["provider", "model"],
    buckets=LATENCY_BUCKETS,
    registry=None,
)
MODEL_ERRORS = Counter(
    "wa_model_errors", "Model calls that failed after their retries", ["provider", "model"], registry=None
)
MODEL_TOKENS = Counter(
    "wa_model_tokens", "Tokens of model calls (usage metadata)", ["provider", "model", "direction"], registry=None
)
SENDS = Counter("wa_sends", "Reply parts given to a gateway, by result", ["gateway", "tenant", "result"], registry=None)
SEND_LATENCY = Histogram(
    "wa_send_latency_seconds", "One send to a gateway", ["gateway"], buckets=SEND_BUCKETS, registry=None
)
SEND_RETRIES = Counter(
    "wa_send_retries", "Replies put back for a later delivery attempt", ["gateway", "tenant"], registry=None
)
DEAD_LETTERS = Counter(
    "wa_dead_letters", "Replies given up on (kept in the dead letters)", ["gateway", "tenant"], registry=None
)
HANDOFFS = Counter(
    "wa_handoffs",
    "Chats handed to a person (asked by the customer, or taken over)",
    ["gateway", "tenant", "how"],
    registry=None,
)
OPT_OUTS = Counter("wa_opt_outs", "Customers who opted out", ["gateway", "tenant"], registry=None)
OUT_OF_HOURS = Counter("wa_out_of_hours", "Out-of-hours notices sent", ["gateway", "tenant"], registry=None)
EVENTS = Counter("wa_events", "Every event /health counts, by name", ["event"], registry=None)
IN_FLIGHT = Gauge(
    "wa_replies_in_flight", "Replies being written or sent now", ["role"], multiprocess_mode="livesum", registry=None
)


@functools.lru_cache(maxsize=1024)
def _child(metric: Any, *values: str) -> Any:
    """`metric.labels(*values)` (in the metric's label order), looked up once: the webhook's counters are incremented
    for every message and a reply's about ten times, and `labels()` costs more than the increment. Label values are
    a small set (gateways, tenants, outcomes, models, event names)."""
    return metric.labels(*values)


class Metrics:
    """What the pipeline reports; every method does nothing when METRICS_ENABLED is off."""

    def __init__(self, *, enabled: bool, directory: str = "") -> None:
        self.enabled = enabled
        self.directory = directory or DIRECTORY

    def event(self, name: str, amount: int = 1) -> None:
        if self.enabled and amount:
            _child(EVENTS, name).inc(amount)

    # `tenant`: the chat's business in TENANTS_FILE ("default" without one; "" for what no tenant claims).

    def webhook(self, gateway: str, outcome: str, reason: str = "", *, tenant: str = "") -> None:
        if self.enabled:
            _child(WEBHOOKS, gateway, tenant, outcome, reason).inc()

    def burst(self, gateway: str, action: str, size: int, *, tenant: str = "") -> None:
        if self.enabled:
            _child(BURSTS, gateway, tenant, action).inc()
            _child(BURST_SIZE, gateway, tenant).observe(size)

    def handoff(self, gateway: str, how: str, *, tenant: str = "") -> None:
        """`how`: requested (the customer asked for a person) or taken (a person wrote or paused the bot)."""
        if self.enabled:
            _child(HANDOFFS, gateway, tenant, how).inc()

    def opt_out(self, gateway: str, *, tenant: str = "") -> None:
        if self.enabled:
            _child(OPT_OUTS, gateway, tenant).inc()

    def out_of_hours(self, gateway: str, *, tenant: str = "") -> None:
        if self.enabled:
            _child(OUT_OF_HOURS, gateway, tenant).inc()

    def debounce_lag(self, gateway: str, seconds: float, *, tenant: str = "") -> None:
        if self.enabled:
            _child(DEBOUNCE_LAG, gateway, tenant).observe(max(0.0, seconds))

    def model_call(self, provider: str, model: str, seconds: float, *, ok: bool) -> None:
        if not self.enabled:
            return
        _child(MODEL_LATENCY, provider, model).observe(seconds)
        if not ok:
            _child(MODEL_ERRORS, provider, model).inc()

    def model_tokens(self, provider: str, model: str, input_tokens: int, output_tokens: int) -> None:
        if not self.enabled:
            return
        _child(MODEL_TOKENS, provider, model, "input").inc(input_tokens)
        _child(MODEL_TOKENS, provider, model, "output").inc(output_tokens)

    def send(self, gateway: str, *, ok: bool, seconds: float, tenant: str = "") -> None:
        if self.enabled:
            _child(SENDS, gateway, tenant, "sent" if ok else "failed").inc()
            _child(SEND_LATENCY, gateway).observe(seconds)

    def send_retry(self, gateway: str, *, tenant: str = "") -> None:
        if self.enabled:
            _child(SEND_RETRIES, gateway, tenant).inc()

    def dead_letter(self, gateway: str, *, tenant: str = "") -> None:
        if self.enabled:
            _child(DEAD_LETTERS, gateway, tenant).inc()

    def in_flight(self, delta: int, role: str = "worker") -> None:
        if self.enabled:
            _child(IN_FLIGHT, role).inc(delta)

    # ----- reading ---------------------------------------------------------------------------------

    def registry(self, deployment: Callable[[], dict[str, float]] | None = None) -> CollectorRegistry:
        """The samples of every process of this host (dead processes' live gauges dropped first), plus the
        deployment's gauges read now."""
        forget_dead_processes(self.directory)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.directory)
        if deployment is not None:
            registry.register(_DeploymentCollector(deployment))
        return registry

    def exposition(self, deployment: Callable[[], dict[str, float]] | None = None) -> tuple[bytes, str]:
        return generate_latest(self.registry(deployment)), CONTENT_TYPE_LATEST

    def event_totals(self) -> dict[str, int]:
        """The /health counters: every process's `wa_events_total` of this host, summed."""
        totals: dict[str, int] = {}
        for family in self.registry().collect():
            if family.name != "wa_events":
                continue
            for sample in family.samples:
                if sample.name == "wa_events_total":
                    name = sample.labels.get("event", "")
                    totals[name] = totals.get(name, 0) + int(sample.value)
        return dict(sorted(totals.items()))


class _DeploymentCollector:
    """Gauges of the whole deployment, read when scraped (not per process: they would be summed N times)."""

    HELP = {
        "wa_pending_chats": "Chats with a burst being typed (waiting for its deadline)",
        "wa_in_progress_chats": "Chats whose burst a worker is answering",
        "wa_dead_letters_held": "Replies in the dead letters now",
        "wa_archive_backlog": "Archive events not yet in PostgreSQL",
        "wa_workers_alive": "Worker processes with a recent heartbeat",
    }

    def __init__(self, read: Callable[[], dict[str, float]]) -> None:
        self.read = read

    def collect(self) -> Iterable[Any]:
        for name, value in self.read().items():
            family = GaugeMetricFamily(name, self.HELP.get(name, name))
            family.add_metric([], value)
            yield family


_PID = re.compile(r"_(\d+)\.db$")


def forget_dead_processes(directory: str) -> None:
    """Drop the live gauges of processes of this host that are gone (killed without the gunicorn hook seeing it);
    their counters stay."""
    if not directory:
        return
    pids = {
        int(m.group(1)) for path in glob.glob(os.path.join(directory, "gauge_live*_*.db")) if (m := _PID.search(path))
    }
    for pid in pids:
        if pid != os.getpid() and not _alive(pid):
            multiprocess.mark_process_dead(pid, directory)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process with that pid: alive
        return True
    return True
