"""The archive: every conversation kept in PostgreSQL (DATABASE_URL), never on the reply path.

The worker and the web layer `emit` events (archive/events.py) into a Redis Stream (archive/journal.py); a writer
thread in each process moves them into PostgreSQL in batches (archive/writer.py, archive/store.py). Without
DATABASE_URL the archive is off: emitting does nothing and the rest of the service works as without it.
`python -m archive upgrade|purge` applies the migrations or the retention purge by hand.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from archive.events import Event
from archive.journal import Journal
from archive.store import ArchiveStore
from archive.writer import BLOCK_MS, ArchiveWriter
from config import Settings
from counters import Counters
from redis_keys import RedisKeys
from redis_link import RedisLink

HEALTH_PING_SECONDS = 1.0  # /health never waits longer than this on PostgreSQL
HEALTH_CACHE_SECONDS = 2.0
WRITER_TIMEOUT_MARGIN_SECONDS = 2.0  # the writer's socket timeout: its longest block plus this


@dataclass(kw_only=True)
class Archive:
    """The archive of one process: its journal (always), and its store and writer when DATABASE_URL is set."""

    journal: Journal
    store: ArchiveStore | None = None
    writer: ArchiveWriter | None = None
    _health: tuple[float, str] = field(default=(0.0, ""), repr=False)

    @property
    def enabled(self) -> bool:
        return self.store is not None

    def emit(self, events: Sequence[Event]) -> None:
        self.journal.emit(events)

    def health(self) -> dict[str, Any]:
        """`{"state": "up"|"down"|"off", "backlog": N}` for /health."""
        if self.store is None or self.writer is None:
            return {"state": "off", "backlog": 0}
        checked_at, state = self._health
        if time.monotonic() - checked_at > HEALTH_CACHE_SECONDS:
            state = "up" if self.store.ping(timeout=HEALTH_PING_SECONDS) else "down"
            self._health = (time.monotonic(), state)
        return {"state": state, "backlog": self.writer.backlog()}


def build_archive(settings: Settings, link: RedisLink, keys: RedisKeys, counters: Counters) -> Archive:
    enabled = bool(settings.database_url)
    journal = Journal(link, keys, counters, enabled=enabled)
    if not enabled:
        return Archive(journal=journal)
    store = ArchiveStore(settings.database_url)
    # The writer's own connection: its XREADGROUP blocks up to BLOCK_MS, which on the shared client (1 s socket
    # timeout) would time out now and then and mark Redis down for the whole process (the webhook then buffers in
    # memory). Its failures stay its own.
    writer_link = RedisLink.for_settings(settings, timeout_seconds=BLOCK_MS / 1000 + WRITER_TIMEOUT_MARGIN_SECONDS)
    writer = ArchiveWriter(
        store,
        journal,
        writer_link,
        keys,
        counters,
        claim_idle_seconds=settings.archive_claim_idle_seconds,
        retention_days=settings.archive_retention_days,
    )
    return Archive(journal=journal, store=store, writer=writer)


__all__ = ["Archive", "ArchiveStore", "ArchiveWriter", "Event", "Journal", "build_archive"]
