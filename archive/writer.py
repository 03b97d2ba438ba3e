"""The archive writer: one thread per process that moves archive events from the Redis Stream into PostgreSQL.

The writers of every process form one consumer group (ARCHIVE_GROUP). A writer takes, in this order: the entries it
read earlier and could not write yet (its own pending list: PostgreSQL was down), the entries of a writer that has
been silent for ARCHIVE_CLAIM_IDLE_SECONDS (XAUTOCLAIM: it died mid-batch), then new entries (XREADGROUP). A batch
is acknowledged and deleted from the stream (XACK + XDEL) only once PostgreSQL has it, so the stream's length is the
backlog, and a batch written twice (a writer killed between the insert and the ack) inserts nothing the second time.
Events kept in memory during a Redis outage go to the stream when Redis is back, or straight to PostgreSQL.
On a Redis Cluster there is one stream per shard (redis_keys.py): a round takes from each, and one insert writes
what it took.
Once a day one process purges rows older than ARCHIVE_RETENTION_DAYS.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import redis

from archive.events import Event
from archive.journal import FIELD, Journal
from archive.store import UNAVAILABLE as DATABASE_UNAVAILABLE
from archive.store import ArchiveStore
from counters import Counters
from redis_keys import RedisKeys
from redis_link import RedisLink

log = logging.getLogger(__name__)

ARCHIVE_GROUP = "archive-writers"
BATCH_SIZE = 1000
BLOCK_MS = 1000  # how long one XREADGROUP waits for new entries
MAX_BACKOFF_SECONDS = 10.0
IDLE_SECONDS = 0.2  # after a round that wrote nothing (XREADGROUP already waited up to BLOCK_MS for new entries)
# After a round that wrote less than a full batch. The archive is not read in real time: waiting lets a drain's
# thousands of replies go in a few dozen inserts, and keeps the writer's work out of the way while replies go out.
LINGER_SECONDS = 2.0
# While this process has replies in flight the writer waits (polling every YIELD_POLL_SECONDS) for up to
# MAX_YIELD_SECONDS, or until the backlog reaches YIELD_BACKLOG entries: the replies of a drain go out first, and the
# archive follows in full batches just after, instead of taking CPU and the GIL from the replies.
MAX_YIELD_SECONDS = 20.0
YIELD_BACKLOG = 20_000
YIELD_POLL_SECONDS = 0.5
CLAIM_EVERY_SECONDS = 5.0  # how often a writer looks for a dead writer's entries
PURGE_EVERY_SECONDS = 24 * 3600
CONSUMER_CLEANUP_SECONDS = 3600
CONSUMER_IDLE_MS = 24 * 3600 * 1000  # a writer silent this long with nothing pending belongs to a process long gone

Entry = tuple[str, dict[str, str] | None]


class ArchiveWriter:
    """`step()` is one round (tests call it); `start()` runs rounds on a daemon thread until `stop()`."""

    def __init__(
        self,
        store: ArchiveStore,
        journal: Journal,
        link: RedisLink,
        keys: RedisKeys,
        counters: Counters,
        *,
        claim_idle_seconds: float,
        retention_days: int = 0,
        batch_size: int = BATCH_SIZE,
        block_ms: int = BLOCK_MS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.journal = journal
        self.link = link
        self.keys = keys
        self.counters = counters
        self.claim_idle_ms = int(claim_idle_seconds * 1000)
        self.retention_days = retention_days
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.clock = clock
        self.consumer = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.database_up: bool | None = None  # None until the first attempt
        self.streams = [keys.archive_stream(shard) for shard in keys.all_shards()]
        self._groups_ready: set[str] = set()
        self._claim_cursor = dict.fromkeys(self.streams, "0-0")
        self._next_claim = dict.fromkeys(self.streams, 0.0)
        self._next_wait = 0  # the stream a round with nothing to take waits on (they take turns)
        self._next_purge_check = 0.0
        self._next_consumer_cleanup = 0.0
        self._purged_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # True while this process's replies are running (the wiring gives it Worker.busy): the writer waits then.
        self.busy: Callable[[], bool] = lambda: False
        self.max_yield_seconds = MAX_YIELD_SECONDS
        self.linger_seconds = LINGER_SECONDS

    # ----- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self.run_forever, name="archive-writer", daemon=True)
        self._thread.start()
        log.info("archive writer started consumer=%s", self.consumer)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread. Events still held in memory (Redis was down) get one last try at the stream or the
        database; what cannot go anywhere is logged and counted."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self.journal.local_count():
            if self.link.client is not None and self.link.available():
                self.journal.flush_local()
            while self.journal.local_count() and self._write_local():
                pass
            if left := self.journal.local_count():
                self.counters.add("archive_events_dropped", left)
                log.error("archive: %d events lost at shutdown (neither Redis nor PostgreSQL reachable)", left)
        self.store.close()

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def run_forever(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                written = self.step()
                failures = 0
            except Exception:  # the writer must outlive anything; a failed round is logged and retried
                failures += 1
                written = 0
                log.exception("archive writer round failed (%d in a row)", failures)
            if self.database_up is False or failures:
                self._stop.wait(min(0.5 * 2 ** min(failures, 5), MAX_BACKOFF_SECONDS))
            elif not written:
                self._stop.wait(IDLE_SECONDS)
            else:
                if written < self.batch_size:
                    self._stop.wait(self.linger_seconds)  # a part batch: let more events gather
                self._yield_to_replies()

    def _yield_to_replies(self) -> None:
        """Wait while this process's replies are running, within MAX_YIELD_SECONDS and YIELD_BACKLOG: the archive
        is not read in real time, a customer waiting for an answer is."""
        until = self.clock() + self.max_yield_seconds
        while not self._stop.is_set() and self.busy() and self.clock() < until and self.backlog() < YIELD_BACKLOG:
            self._stop.wait(YIELD_POLL_SECONDS)

    # ----- one round -------------------------------------------------------------------------------

    def step(self) -> int:
        """Write one batch (if there is one); returns the rows it tried to write. Never raises for an unreachable
        Redis or PostgreSQL: the events wait where they are."""
        if not self._schema_ready():
            return 0
        self._purge_if_due()
        self._forget_idle_consumers()
        if self.journal.local_count():
            if self.link.client is not None and self.link.available():
                self.journal.flush_local()
            if self.journal.local_count():  # Redis is down (or off): from memory straight to PostgreSQL
                return self._write_local()
        if self.link.client is None or not self.link.available():
            return 0
        return self.link.run(self._write_from_stream, lambda: 0)

    def _schema_ready(self) -> bool:
        """Migrate at start (the first round), and again after a failure: True once the schema is there."""
        if self.store.migrated:
            return True
        try:
            self.store.migrate()
        except DATABASE_UNAVAILABLE as exc:
            self._database_down(exc)
            return False
        self._database_back()
        log.info("archive: PostgreSQL ready, schema up to date")
        return True

    def _forget_idle_consumers(self) -> None:
        """Once an hour, remove from the group the writers (consumers) of processes long gone that hold nothing
        (each process start adds one; a consumer with pending entries is kept until they are taken over)."""
        now = self.clock()
        if now < self._next_consumer_cleanup or self.link.client is None or not self._groups_ready:
            return
        self._next_consumer_cleanup = now + CONSUMER_CLEANUP_SECONDS
        for stream in list(self._groups_ready):

            def forget(client: redis.Redis, stream: str = stream) -> int:
                gone = 0
                for consumer in client.xinfo_consumers(stream, ARCHIVE_GROUP):
                    idle = int(consumer.get("idle") or 0)
                    if consumer["name"] != self.consumer and not consumer["pending"] and idle > CONSUMER_IDLE_MS:
                        gone += int(client.xgroup_delconsumer(stream, ARCHIVE_GROUP, consumer["name"]) == 0)
                return gone

            try:
                self.link.run(forget, lambda: 0)
            except redis.ResponseError:  # the group or the stream is gone (FLUSHDB): recreated on the next read
                self._groups_ready.discard(stream)

    def _write_local(self) -> int:
        raw = self.journal.take_local(self.batch_size)
        events = [event for event in map(Event.decode, raw) if event is not None]
        if not self._write(events):
            self.journal.put_back(raw)
            return 0
        return len(events)

    def _write_from_stream(self, client: redis.Redis) -> int:
        """Take up to a batch from the streams (waiting up to block_ms on one when none has any), write it in one
        insert, then acknowledge and delete it stream by stream."""
        taken: list[tuple[str, list[Entry]]] = []
        wait = len(self.streams) == 1
        for stream in self.streams:
            if sum(len(entries) for _, entries in taken) >= self.batch_size:
                break
            if entries := self._take(client, stream, block=self.block_ms if wait else None):
                taken.append((stream, entries))
        if not taken and not wait:
            stream = self.streams[self._next_wait % len(self.streams)]
            self._next_wait += 1
            if entries := self._read(client, stream, ">", block=self.block_ms):
                taken.append((stream, entries))
        if not taken:
            return 0
        events = []
        for _, entries in taken:
            for _, fields in entries:
                event = Event.decode(fields.get(FIELD, "")) if fields else None
                if event is not None:
                    events.append(event)
                elif fields:  # an entry that is not an event is dropped, loudly (deleted entries have no fields)
                    self.counters.add("archive_bad_entries")
                    log.error("archive: a stream entry that is not an event was dropped")
        if events and not self._write(events):
            return 0
        for stream, entries in taken:
            ids = [entry_id for entry_id, _ in entries]
            pipe = client.pipeline(transaction=True)
            pipe.xack(stream, ARCHIVE_GROUP, *ids)
            pipe.xdel(stream, *ids)
            pipe.execute()
        return len(events)

    def _take(self, client: redis.Redis, stream: str, *, block: int | None) -> list[Entry]:
        """One stream's share of a round: this writer's own pending entries first (a batch PostgreSQL refused is
        retried before anything new is read), then a dead writer's, then new ones."""
        self._ensure_group(client, stream)
        entries = self._read(client, stream, "0")
        if not entries and self.database_up is not False and self.clock() >= self._next_claim[stream]:
            self._next_claim[stream] = self.clock() + min(CLAIM_EVERY_SECONDS, self.claim_idle_ms / 2000)
            entries = self._claim_abandoned(client, stream)
        if not entries:  # while the database is down, this one batch is what tells when it is back
            entries = self._read(client, stream, ">", block=block)
        return entries

    def _write(self, events: list[Event]) -> bool:
        """Insert the batch; False (and the database marked down) when PostgreSQL cannot be reached."""
        try:
            inserted = self._insert(events)
        except DATABASE_UNAVAILABLE as exc:
            self._database_down(exc)
            return False
        self._database_back()
        self.counters.add("archive_events_written", inserted)
        if inserted < len(events):
            self.counters.add("archive_events_already_written", len(events) - inserted)
        return True

    def _database_down(self, exc: BaseException) -> None:
        """Said once per outage."""
        if self.database_up is not False:
            log.warning(
                "archive: PostgreSQL unavailable (%s); events wait in the stream until it is back",
                exc.__class__.__name__,
            )
        self.database_up = False

    def _database_back(self) -> None:
        if self.database_up is False:
            log.warning("archive: PostgreSQL reachable again, writing the backlog")
        self.database_up = True

    def _insert(self, events: list[Event]) -> int:
        """The batch in one statement; if PostgreSQL refuses it (not an outage: a value it cannot take), each
        event alone, so that one bad event is dropped (logged, counted) instead of blocking every later one."""
        try:
            return self.store.write(events)
        except DATABASE_UNAVAILABLE:
            raise
        except psycopg.Error as exc:
            log.error("archive: PostgreSQL refused a batch (%s); writing its events one by one", exc.__class__.__name__)
        inserted = 0
        for event in events:
            try:
                inserted += self.store.write([event])
            except DATABASE_UNAVAILABLE:
                raise
            except psycopg.Error as exc:
                self.counters.add("archive_bad_entries")
                log.error(
                    "archive: event %s of chat=%s dropped, PostgreSQL refused it: %s",
                    event.kind,
                    event.chat_ref.label,
                    exc.__class__.__name__,
                )
        return inserted

    # ----- the stream ------------------------------------------------------------------------------

    def _ensure_group(self, client: redis.Redis, stream: str) -> None:
        if stream in self._groups_ready:
            return
        try:
            # From the start of the stream: events appended before any writer existed are archived too.
            client.xgroup_create(stream, ARCHIVE_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups_ready.add(stream)

    def _read(self, client: redis.Redis, stream: str, start: str, *, block: int | None = None) -> list[Entry]:
        try:
            answer: Any = client.xreadgroup(
                ARCHIVE_GROUP, self.consumer, {stream: start}, count=self.batch_size, block=block
            )
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._groups_ready.discard(stream)  # the stream was deleted (FLUSHDB): create the group again next round
            return []
        return list(answer[0][1]) if answer else []

    def _claim_abandoned(self, client: redis.Redis, stream: str) -> list[Entry]:
        """Entries another writer read and has not acknowledged for ARCHIVE_CLAIM_IDLE_SECONDS (it died)."""
        answer: Any = client.xautoclaim(
            stream,
            ARCHIVE_GROUP,
            self.consumer,
            min_idle_time=self.claim_idle_ms,
            start_id=self._claim_cursor[stream],
            count=self.batch_size,
        )
        self._claim_cursor[stream] = answer[0] if answer and answer[0] else "0-0"
        entries = list(answer[1]) if answer else []
        if entries:
            self.counters.add("archive_entries_taken_over", len(entries))
            log.warning("archive: took over %d events of a writer that stopped", len(entries))
        return entries

    # ----- retention -------------------------------------------------------------------------------

    def _purge_if_due(self) -> None:
        """Once a day, in one process (a Redis lock; every process when Redis is off), purge old rows."""
        if not self.retention_days:
            return
        now = self.clock()
        if now < self._next_purge_check:
            return
        self._next_purge_check = now + 60  # look at most once a minute

        def take_lock(client: redis.Redis) -> bool:
            return bool(client.set(self.keys.archive_purge(), self.consumer, nx=True, ex=PURGE_EVERY_SECONDS))

        if self.link.client is not None:
            if not self.link.run(take_lock, lambda: False):
                return
        elif now < self._purged_at + PURGE_EVERY_SECONDS:
            return
        self._purged_at = now
        if self.purge_now() is None and self.link.client is not None:  # try again later today
            self.link.run(lambda client: client.delete(self.keys.archive_purge()), lambda: 0)

    def purge_now(self) -> int | None:
        """Purge now; the rows removed, or None when PostgreSQL could not be reached."""
        try:
            removed = self.store.purge(older_than_days=self.retention_days)
        except DATABASE_UNAVAILABLE as exc:
            log.warning("archive: retention purge skipped, PostgreSQL unavailable (%s)", exc.__class__.__name__)
            return None
        log.info("archive: %d events older than %d days purged", removed, self.retention_days)
        return removed

    # ----- for /health -----------------------------------------------------------------------------

    def backlog(self) -> int:
        """Events not in PostgreSQL yet: the stream's entries plus those kept in this process's memory."""

        def length(client: redis.Redis) -> int:
            with client.pipeline(transaction=False) as pipe:
                for stream in self.streams:
                    pipe.xlen(stream)
                return sum(int(n) for n in pipe.execute())

        in_stream = self.link.run(length, lambda: 0) if self.link.client is not None else 0
        return in_stream + self.journal.local_count()
