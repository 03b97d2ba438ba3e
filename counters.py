"""Event counters (received, duplicates, replies_sent, fallbacks, dead_lettered, ...): this process's own, and, with
metrics on, also every process's of the host (metrics.py), which is what /health shows.

Every failure that is not retried is counted here as well as logged.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from metrics import Metrics


class Counters:
    """A thread-safe Counter of named events, mirrored into `wa_events_total{event}` when metrics are on."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.metrics = metrics

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[name] += amount
        if self.metrics is not None:
            self.metrics.event(name, amount)

    def snapshot(self) -> dict[str, int]:
        """This process's counts."""
        with self._lock:
            return dict(sorted(self._counts.items()))

    def totals(self) -> dict[str, int]:
        """Every process's counts on this host when metrics are on (the same source as /metrics), else this
        process's."""
        if self.metrics is not None and self.metrics.enabled:
            return self.metrics.event_totals()
        return self.snapshot()
