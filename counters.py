"""Per-process event counters (received, duplicates, replies_sent, fallbacks, dead_lettered, ...).

Shown by /health; every failure that is not retried is counted here as well as logged.
"""

from __future__ import annotations

import threading
from collections import Counter


class Counters:
    """A thread-safe Counter of named events."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[name] += amount

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(sorted(self._counts.items()))
