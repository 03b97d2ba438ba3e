"""End-to-end archive: real servers, Redis and PostgreSQL. Every event reaches `archive_events` exactly once through a
PostgreSQL outage, a writer killed with a batch in hand, and two processes migrating an empty database at once; without
DATABASE_URL the archive is off and the service answers as before.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
from psycopg.rows import dict_row

from archive.journal import FIELD
from archive.store import MIGRATION_LOCK, migrations
from archive.writer import ARCHIVE_GROUP
from tests.e2e.conftest import INSTANCE, REDIS_PREFIX, Harness, ServerProcess, upsert, wait_until
from tests.fakes import Recorded
from tests.postgres_server import PostgresServer

STREAM = f"{REDIS_PREFIX}:archive"
ARCHIVE_TIMEOUT_SECONDS = 20.0  # a backlog written once PostgreSQL is back (the writers back off while it is away)
REPLIES_TIMEOUT_SECONDS = 40.0  # hundreds of chats on one loaded machine
MIGRATED_LOG = "archive: migration 001_init applied"


def jid(n: int) -> str:
    return f"55119{n:08d}@s.whatsapp.net"


def message_id(n: int) -> str:
    return f"3EB0ARCH{n:012d}"


def post_bursts(servers: list[ServerProcess], chats: Iterable[int]) -> dict[str, str]:
    """One one-message burst per chat, posted concurrently (chat n through servers[n % len]); returns jid -> id."""
    sent = {jid(n): message_id(n) for n in chats}

    def post(n: int) -> None:
        response = servers[n % len(servers)].post(upsert(f"Pedido número {n}", jid=jid(n), msg_id=message_id(n)))
        assert response.status_code == 200 and response.json()["status"] == "buffered", response.text

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(post, chats))
    return sent


def archived(url: str) -> list[dict[str, Any]]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        return conn.execute(
            "SELECT event_id, chat_id, kind, author, text, gateway_message_id, delivery FROM archive_events"
        ).fetchall()


def assert_messages_archived_once(url: str, sent: dict[str, str], sends: list[Recorded]) -> None:
    """Each customer message and each reply part the gateway took is in the archive once, with what it said."""
    rows = [row for row in archived(url) if row["kind"] == "message"]
    customer = [row for row in rows if row["author"] == "customer"]
    bot = [row for row in rows if row["author"] == "bot"]
    assert len(customer) + len(bot) == len(rows), Counter(row["author"] for row in rows)

    assert Counter(row["gateway_message_id"] for row in customer) == Counter(sent.values())
    assert all(sent[row["chat_id"]] == row["gateway_message_id"] for row in customer)

    replies = {send.json["number"]: send.json["text"] for send in sends}
    assert len(replies) == len(sends) == len(sent), "one reply of one part per chat"
    assert sorted(row["chat_id"] for row in bot) == sorted(replies)
    assert all(row["text"] == replies[row["chat_id"]] for row in bot)
    assert all(row["delivery"] == "sent" for row in bot)
    gateway_ids = [row["gateway_message_id"] for row in bot]
    assert all(gateway_ids) and len(set(gateway_ids)) == len(bot)


def wait_messages_archived(url: str, chats: int) -> None:
    """Each chat's customer message and reply part is in PostgreSQL."""

    def count() -> int:
        return sum(row["kind"] == "message" for row in archived(url))

    what = f"{2 * chats} message rows"
    wait_until(lambda: count() == 2 * chats, timeout=ARCHIVE_TIMEOUT_SECONDS, what=what, interval=0.1)


def journaled(e2e: Harness) -> dict[str, dict[str, Any]]:
    """The events in the archive stream (not yet in PostgreSQL), by event_id."""
    events = [json.loads(fields[FIELD]) for _, fields in e2e.redis.xrange(STREAM)]
    return {event["event_id"]: event for event in events}


def wait_journaled(e2e: Harness, chats: int) -> dict[str, dict[str, Any]]:
    """The stream once it holds every chat's events: a reply part is the last event of a burst."""

    def complete() -> dict[str, dict[str, Any]] | None:
        events = journaled(e2e)
        replied = {event["chat"] for event in events.values() if event["author"] == "bot"}
        return events if len(replied) == chats else None

    return wait_until(complete, timeout=ARCHIVE_TIMEOUT_SECONDS, what=f"the events of {chats} chats in the stream")


def wait_group(e2e: Harness) -> None:
    """The writers have migrated and read the stream (they create the group on their first read)."""

    def exists() -> bool:
        return bool(e2e.redis.exists(STREAM)) and any(
            group["name"] == ARCHIVE_GROUP for group in e2e.redis.xinfo_groups(STREAM)
        )

    wait_until(exists, timeout=10, what="the archive writers' consumer group")


def wait_archive(server: ServerProcess, state: str, backlog: int | None = None) -> dict[str, Any]:
    """/health's archive section once it reports `state` (and `backlog`): it caches PostgreSQL's state a moment."""

    def reported() -> dict[str, Any] | None:
        archive = server.health()["archive"]
        return archive if archive["state"] == state and backlog in (None, archive["backlog"]) else None

    what = f"/health archive state {state!r}" + (f" with backlog {backlog}" if backlog is not None else "")
    return wait_until(reported, timeout=10, what=what, interval=0.2)


def wait_stream_empty(e2e: Harness) -> None:
    wait_until(
        lambda: e2e.redis.xlen(STREAM) == 0,
        timeout=ARCHIVE_TIMEOUT_SECONDS,
        what=f"the archive stream to empty (now {e2e.redis.xlen(STREAM)})",
        interval=0.1,
    )


def advisory_waiters(url: str) -> int:
    """Sessions of this database waiting on an advisory lock (the migrations take one)."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(DISTINCT pid) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchone()
    return row[0] if row else 0


def test_postgres_down_during_200_bursts_loses_nothing_and_writes_each_event_once(
    e2e: Harness, postgres_server: PostgresServer, postgres_url: str
) -> None:
    server = e2e.gunicorn_server(workers=2, DATABASE_URL=postgres_url)
    wait_group(e2e)
    postgres_server.stop()

    sent = post_bursts([server], range(200))
    sends = e2e.wait_sends(200, timeout=REPLIES_TIMEOUT_SECONDS)  # the replies do not wait for the archive
    assert {send.json["number"] for send in sends} == set(sent)
    events = wait_journaled(e2e, 200)
    assert Counter(event["author"] for event in events.values() if event["kind"] == "message") == {
        "customer": 200,
        "bot": 200,
    }
    wait_archive(server, "down", backlog=len(events))
    assert server.health()["status"] == "degraded"

    postgres_server.start()
    wait_stream_empty(e2e)
    wait_archive(server, "up", backlog=0)
    assert sorted(row["event_id"] for row in archived(postgres_url)) == sorted(events)
    assert_messages_archived_once(postgres_url, sent, sends)
    assert e2e.redis.xpending(STREAM, ARCHIVE_GROUP)["pending"] == 0


def test_writer_killed_with_a_batch_in_hand_its_entries_are_taken_over_and_written_once(
    e2e: Harness, postgres_server: PostgresServer, postgres_url: str
) -> None:
    first = e2e.python_server(DATABASE_URL=postgres_url, ARCHIVE_CLAIM_IDLE_SECONDS=1)
    wait_group(e2e)
    postgres_server.stop()
    sent = post_bursts([first], range(20))
    sends = e2e.wait_sends(20)
    events = wait_journaled(e2e, 20)

    # The writer read a batch it cannot write: it sits, unacknowledged, in this process's pending list.
    def pending_of_first() -> dict[str, Any] | None:
        summary = e2e.redis.xpending(STREAM, ARCHIVE_GROUP)
        return summary if summary["pending"] else None

    summary = wait_until(pending_of_first, timeout=10, what="the writer's unacknowledged batch")
    assert first.proc is not None
    (consumer,) = [consumer for consumer in summary["consumers"] if consumer["pending"]]
    assert f":{first.proc.pid}:" in consumer["name"], consumer
    held = summary["pending"]
    first.kill()

    postgres_server.start()
    second = e2e.python_server(DATABASE_URL=postgres_url, ARCHIVE_CLAIM_IDLE_SECONDS=1)
    wait_stream_empty(e2e)
    assert e2e.redis.xpending(STREAM, ARCHIVE_GROUP)["pending"] == 0
    assert sorted(row["event_id"] for row in archived(postgres_url)) == sorted(events)
    assert_messages_archived_once(postgres_url, sent, sends)
    assert f"archive: took over {held} events of a writer that stopped" in second.logs()
    counters = second.health()["counters"]
    assert counters["archive_entries_taken_over"] == held
    assert counters["archive_events_written"] == len(events), "the dead writer wrote nothing, this one wrote it all"


def test_two_processes_starting_at_once_on_an_empty_database_migrate_it_once(e2e: Harness, postgres_url: str) -> None:
    # The test holds the migrations' advisory lock until both processes wait on it to migrate: they race for real.
    with psycopg.connect(postgres_url, autocommit=True) as lock:
        lock.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        spawned = [e2e.spawn_python(DATABASE_URL=postgres_url), e2e.spawn_python(DATABASE_URL=postgres_url)]
        servers = [server.wait_ready() for server in spawned]
        wait_until(lambda: advisory_waiters(postgres_url) == 2, timeout=10, what="both processes waiting to migrate")
        lock.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))

    def settled() -> bool:
        return not advisory_waiters(postgres_url) and any(MIGRATED_LOG in server.logs() for server in servers)

    wait_until(settled, timeout=10, what="one process migrated and the other no longer waiting")
    with psycopg.connect(postgres_url) as conn:
        applied = conn.execute("SELECT version, name FROM archive_migrations ORDER BY version").fetchall()
    assert applied == [(version, name) for version, name, _ in migrations()]
    assert sorted(server.logs().count(MIGRATED_LOG) for server in servers) == [0, 1]

    # Both archive: together, then the one that found the schema applied on its own.
    sent = post_bursts(servers, range(6))
    sends = e2e.wait_sends(6)
    wait_messages_archived(postgres_url, 6)
    wait_stream_empty(e2e)
    (other,) = [server for server in servers if MIGRATED_LOG not in server.logs()]
    (migrator,) = [server for server in servers if server is not other]
    assert migrator.terminate() == 0
    rows_before = len(archived(postgres_url))
    written_before = other.health()["counters"].get("archive_events_written", 0)
    sent |= post_bursts([other], range(6, 10))
    sends = e2e.wait_sends(10)
    wait_messages_archived(postgres_url, 10)
    wait_stream_empty(e2e)
    assert_messages_archived_once(postgres_url, sent, sends)
    written_alone = len(archived(postgres_url)) - rows_before
    assert other.health()["counters"]["archive_events_written"] == written_before + written_alone
    for server in servers:
        assert "archive writer round failed" not in server.logs()


def test_an_idle_archive_writer_leaves_the_buffer_in_redis(e2e: Harness, postgres_url: str) -> None:
    # The writer's blocking read of an empty stream must not look like a Redis outage to the process: each message
    # of these seconds (several of its blocking reads) must be buffered in Redis, none in the process's memory.
    server = e2e.python_server(DATABASE_URL=postgres_url, DEBOUNCE_SECONDS=30, REDIS_RETRY_SECONDS=2)
    wait_group(e2e)
    for n in range(20):
        response = server.post(upsert(f"Mensagem {n}", jid=jid(n)))
        assert response.json()["status"] == "buffered", response.text
        assert e2e.redis.zscore(f"{REDIS_PREFIX}:due", f"evolution:{INSTANCE}:{jid(n)}") is not None, (
            f"message {n} was not buffered in Redis"
        )
        time.sleep(0.2)
    assert "redis unavailable" not in server.logs()


def test_without_database_url_the_archive_is_off_and_replies_go_on(e2e: Harness) -> None:
    server = e2e.python_server()
    health = server.health()
    assert health["archive"] == {"state": "off", "backlog": 0}
    assert health["status"] == "ok"

    sent = post_bursts([server], range(3))
    sends = e2e.wait_sends(3)
    assert {send.json["number"] for send in sends} == set(sent)
    assert not e2e.redis.exists(STREAM), "nothing is journaled when the archive is off"
    assert server.health()["archive"] == {"state": "off", "backlog": 0}
