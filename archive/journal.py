"""The archive's journal: where the worker and the web layer put archive events, never waiting on PostgreSQL.

Events go to a Redis Stream (`RedisKeys.archive_stream`) that the archive writers read through a consumer group
(archive/writer.py). While Redis is unreachable they wait in this process's memory, in order, and go to the stream
when it answers again (or straight to PostgreSQL, if the writer gets there first). Off (no DATABASE_URL), emitting
does nothing.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import redis

from archive.events import Event
from counters import Counters
from redis_keys import RedisKeys
from redis_link import RedisLink

log = logging.getLogger(__name__)

FIELD = "e"  # the one field of a stream entry: the event as JSON
MAX_LOCAL_EVENTS = 200_000  # held in memory during a Redis outage; beyond it the oldest are dropped, logged, counted


class Journal:
    """Append-only: `emit(events)`; the writer takes them from the stream or, during an outage, from `take_local`."""

    def __init__(self, link: RedisLink, keys: RedisKeys, counters: Counters, *, enabled: bool) -> None:
        self.enabled = enabled
        self.link = link
        self.keys = keys
        self.counters = counters
        self._local: deque[str] = deque()
        self._lock = threading.Lock()

    def emit(self, events: Sequence[Event]) -> None:
        """Append the events (in order) to the stream, or keep them here while Redis is down."""
        if not self.enabled or not events:
            return
        entries = self._entries(events)
        encoded = [raw for _, raw in entries]
        try:
            self.link.run(lambda client: self._append(client, entries), lambda: self._keep(encoded))
        except redis.RedisError as exc:  # not an outage (a full Redis: OOM, say): kept here, never an error upstream
            log.warning("archive: events kept in memory, Redis refused them: %s", exc.__class__.__name__)
            self._keep(encoded)

    def adder(self, events: Sequence[Event]) -> Callable[[Any], None]:
        """A hook that appends `events` to a pipeline another call is sending (buffer.py's `also`), so they cost no
        round trip of their own."""
        entries = self._entries(events)
        return lambda pipe: self._xadd(pipe, entries)

    def _entries(self, events: Sequence[Event]) -> list[tuple[str, str]]:
        """(stream, encoded event): the stream of the event's chat's shard (one stream unless sharded)."""
        return [(self._stream_of(event.chat), event.encode()) for event in events]

    def _stream_of(self, chat: str) -> str:
        return self.keys.archive_stream(self.keys.shard(chat))

    def _stream_of_kept(self, raw: str) -> str:
        """The stream of an event kept in memory as JSON (read again only when the streams are sharded)."""
        if not self.keys.sharded:
            return self.keys.archive_stream()
        event = Event.decode(raw)
        return self._stream_of(event.chat) if event is not None else self.keys.archive_stream()

    def _append(self, client: redis.Redis, entries: list[tuple[str, str]]) -> None:
        pipe = client.pipeline(transaction=False)
        self._xadd(pipe, entries)
        pipe.execute()

    def _xadd(self, pipe: Any, entries: list[tuple[str, str]]) -> None:
        for stream, raw in entries:
            pipe.xadd(stream, {FIELD: raw})

    def _keep(self, encoded: list[str]) -> None:
        with self._lock:
            self._local.extend(encoded)
            overflow = len(self._local) - MAX_LOCAL_EVENTS
            for _ in range(max(0, overflow)):
                self._local.popleft()
        if overflow > 0:
            self.counters.add("archive_events_dropped", overflow)
            log.error("archive: %d events dropped, Redis has been down too long (memory cap reached)", overflow)

    # ----- for the writer --------------------------------------------------------------------------

    def local_count(self) -> int:
        with self._lock:
            return len(self._local)

    def take_local(self, limit: int) -> list[str]:
        """Up to `limit` of the events kept here, oldest first (put them back with `put_back` if unwritten)."""
        with self._lock:
            return [self._local.popleft() for _ in range(min(limit, len(self._local)))]

    def put_back(self, encoded: list[str]) -> None:
        with self._lock:
            self._local.extendleft(reversed(encoded))

    def flush_local(self) -> int:
        """Move the events kept during an outage to the stream, now that Redis answers; returns how many."""
        moved = 0
        while self.local_count():
            batch = self.take_local(500)

            def push(client: redis.Redis, batch: list[str] = batch) -> bool:
                self._append(client, [(self._stream_of_kept(raw), raw) for raw in batch])
                return True

            def back(batch: list[str] = batch) -> bool:
                self.put_back(batch)
                return False

            if not self.link.run(push, back):
                break
            moved += len(batch)
        if moved:
            log.info("archive: %d events kept during the Redis outage are in the stream now", moved)
        return moved

    def forget_chat(self, chat: str) -> int:
        """Drop this process's in-memory events of one chat (an erasure); returns how many."""
        marker = f'"chat":{json.dumps(chat, ensure_ascii=False)},'
        with self._lock:
            kept = [raw for raw in self._local if marker not in raw]
            dropped = len(self._local) - len(kept)
            self._local = deque(kept)
        return dropped
