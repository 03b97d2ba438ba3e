"""The archive in PostgreSQL: the schema (SQL migrations in archive/migrations, applied under an advisory lock by the
first process that gets there), batched idempotent writes, search, a chat's history page by page, export, erasure
and the retention purge. psycopg 3 with a small psycopg_pool pool; nothing here runs on the reply path.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from archive.events import Event

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
# pg_advisory_xact_lock key of the migrations: any constant that other applications on the database do not use.
MIGRATION_LOCK = 0x7761_6172_6368  # "wa arch"
# Errors that mean "PostgreSQL is not reachable (now)", as opposed to a bug in a statement.
UNAVAILABLE: tuple[type[BaseException], ...] = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout)
SEARCH_LIMIT = 50
PAGE_LIMIT = 50

_COLUMNS = "event_id, chat, tenant, gateway, instance, chat_id, kind, author, text, media_kind, transcript, " + (
    "gateway_message_id, delivery, at, data"
)
# One statement per batch (arrays unnested, sent in binary: quoting them as text cost most of a batch's time), so a
# batch costs one round trip. An event of a chat dated before its
# erasure is not written: a writer may have read it from the stream before the erasure deleted the rest.
_INSERT = f"""
INSERT INTO archive_events ({_COLUMNS})
SELECT e.event_id, e.chat, e.tenant, e.gateway, e.instance, e.chat_id, e.kind, NULLIF(e.author, ''), e.text,
       e.media_kind, e.transcript, e.gateway_message_id, e.delivery, to_timestamp(e.at), e.data
FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[],
            %b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::float8[], %b::jsonb[])
     AS e(event_id, chat, tenant, gateway, instance, chat_id, kind, author, text, media_kind, transcript,
          gateway_message_id, delivery, at, data)
WHERE NOT EXISTS (
  SELECT 1 FROM archive_erasures x
  WHERE x.chat_hash = encode(sha256(convert_to(e.chat, 'UTF8')), 'hex') AND x.erased_at >= to_timestamp(e.at)
)
ON CONFLICT (event_id) DO NOTHING
"""
_ROW = """id, chat, tenant, kind, author, text, media_kind, transcript, gateway_message_id, delivery,
          extract(epoch from at)::float8 AS at, data"""


def chat_hash(chat: str) -> str:
    """What an erasure keeps of a chat: a one-way hash of its identity."""
    return hashlib.sha256(chat.encode("utf-8")).hexdigest()


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, SQL) of the migrations in the repository, in order (`001_init.sql` is version 1)."""
    found = []
    for path in sorted(MIGRATIONS.glob("*.sql")):
        version = int(path.name.split("_", 1)[0])
        found.append((version, path.stem, path.read_text(encoding="utf-8")))
    return found


class ArchiveStore:
    """The archive's PostgreSQL side. Every method may raise one of UNAVAILABLE while the database is away."""

    def __init__(self, url: str, *, max_connections: int = 4, timeout_seconds: float = 3.0) -> None:
        self.timeout = timeout_seconds
        self.pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max_connections,
            open=False,
            kwargs={"autocommit": True, "connect_timeout": max(1, int(timeout_seconds))},
            check=ConnectionPool.check_connection,
            # Give up a background reconnection soon: the next caller starts a fresh one, so a database that is back is
            # used at once (the default backs off for up to 5 minutes).
            reconnect_timeout=2.0,
            name="archive",
        )
        self._opened = False
        self._migrated = False
        self._lock = threading.Lock()

    def _connection(self, timeout: float | None = None) -> Any:
        with self._lock:
            if not self._opened:
                self.pool.open(wait=False)
                self._opened = True
        return self.pool.connection(timeout=timeout or self.timeout)

    def close(self) -> None:
        if self._opened:
            self.pool.close(timeout=2)

    # ----- schema ----------------------------------------------------------------------------------

    def migrate(self) -> list[str]:
        """Apply the migrations this database lacks, under an advisory lock held for the transaction (so that of
        several processes starting at once, one applies them and the others find them applied); returns the names
        applied here."""
        applied: list[str] = []
        with self._connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS archive_migrations "
                "(version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in conn.execute("SELECT version FROM archive_migrations")}
            for version, name, sql in migrations():
                if version in done:
                    continue
                conn.execute(sql)
                conn.execute("INSERT INTO archive_migrations (version, name) VALUES (%s, %s)", (version, name))
                applied.append(name)
        for name in applied:
            log.info("archive: migration %s applied", name)
        self._migrated = True
        return applied

    @property
    def migrated(self) -> bool:
        """True once this process has seen the schema up to date."""
        return self._migrated

    def ensure_schema(self) -> None:
        """Migrate once per process, before the first statement that needs the tables."""
        if not self._migrated:
            self.migrate()

    def ping(self, *, timeout: float | None = None) -> bool:
        try:
            with self._connection(timeout) as conn:
                conn.execute("SELECT 1")
            return True
        except UNAVAILABLE:
            return False

    # ----- writing ---------------------------------------------------------------------------------

    def write(self, events: Sequence[Event]) -> int:
        """Insert a batch in one statement; an event already there (same event_id) is skipped. Returns how many
        rows were new."""
        if not events:
            return 0
        self.ensure_schema()
        columns: list[list[Any]] = [[] for _ in range(15)]
        for event in events:
            chat = event.chat_ref
            values = (
                event.event_id,
                event.chat,
                chat.tenant,
                chat.gateway,
                chat.instance,
                chat.chat_id,
                event.kind,
                event.author,
                _clean(event.text),
                event.media_kind,
                _clean(event.transcript),
                event.gateway_message_id,
                event.delivery,
                event.at,
                Jsonb(event.data),
            )
            for column, value in zip(columns, values, strict=True):
                column.append(value)
        with self._connection() as conn:
            cursor = conn.execute(_INSERT, columns)
            return max(cursor.rowcount, 0)

    # ----- reading ---------------------------------------------------------------------------------

    def search(self, query: str, *, tenant: str | None = None, limit: int = SEARCH_LIMIT) -> list[dict[str, Any]]:
        """Messages matching `query` (Portuguese full-text, accents ignored), newest first; only `tenant`'s when
        given (filtered in the query, so that its `limit` rows are all its own)."""
        self.ensure_schema()
        only = "" if tenant is None else "AND tenant = %s"
        args = (query, limit) if tenant is None else (query, tenant, limit)
        with self._connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
            cursor.execute(
                f"""SELECT {_ROW} FROM archive_events
                    WHERE search @@ websearch_to_tsquery('pt_unaccent', %s) {only}
                    ORDER BY at DESC, id DESC LIMIT %s""",
                args,
            )
            return cursor.fetchall()

    def history(self, chat: str, *, before: int | None = None, limit: int = PAGE_LIMIT) -> list[dict[str, Any]]:
        """One page of a chat's archived events, newest first; `before` is the `id` of the oldest row of the page
        already shown."""
        self.ensure_schema()
        with self._connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
            if before is None:
                cursor.execute(
                    f"SELECT {_ROW} FROM archive_events WHERE chat = %s ORDER BY at DESC, id DESC LIMIT %s",
                    (chat, limit),
                )
            else:
                cursor.execute(
                    f"""SELECT {_ROW} FROM archive_events
                        WHERE chat = %s AND (at, id) < (SELECT at, id FROM archive_events WHERE id = %s)
                        ORDER BY at DESC, id DESC LIMIT %s""",
                    (chat, before, limit),
                )
            return cursor.fetchall()

    def export(self, chat: str) -> list[dict[str, Any]]:
        """Every archived event of a chat, oldest first."""
        self.ensure_schema()
        with self._connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
            cursor.execute(
                f"SELECT {_ROW}, archived_at FROM archive_events WHERE chat = %s ORDER BY at, id",
                (chat,),
            )
            return [{**row, "archived_at": _iso(row["archived_at"])} for row in cursor.fetchall()]

    def count(self) -> int:
        self.ensure_schema()
        with self._connection() as conn:
            row = conn.execute("SELECT count(*) FROM archive_events").fetchone()
            return int(row[0]) if row else 0

    # ----- privacy ---------------------------------------------------------------------------------

    def erase(self, chat: str, *, at: float) -> int:
        """Delete a chat's rows, and note (as a hash) that it was erased at `at`, so that events of it still in
        flight are not written afterwards. Returns the rows deleted."""
        self.ensure_schema()
        with self._connection() as conn, conn.transaction():
            deleted = conn.execute("DELETE FROM archive_events WHERE chat = %s", (chat,)).rowcount
            conn.execute(
                """INSERT INTO archive_erasures (chat_hash, erased_at) VALUES (%s, to_timestamp(%s))
                   ON CONFLICT (chat_hash) DO UPDATE SET erased_at = excluded.erased_at""",
                (chat_hash(chat), at),
            )
            return max(deleted, 0)

    def purge(self, *, older_than_days: int) -> int:
        """Delete the rows older than `older_than_days` (ARCHIVE_RETENTION_DAYS); returns how many."""
        self.ensure_schema()
        with self._connection() as conn:
            cursor = conn.execute(
                "DELETE FROM archive_events WHERE at < now() - make_interval(days => %s)", (older_than_days,)
            )
            return max(cursor.rowcount, 0)


def _clean(text: str) -> str:
    """PostgreSQL text cannot hold NUL; a customer's message can (rarely)."""
    return text.replace("\x00", "")


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value
