"""A contact's data under the LGPD: `export` gathers everything held about one chat (Redis and the archive) and
`erase` deletes it everywhere: the history, the pending burst and the batch being answered, the conversation state
and opt-out, media blobs, dedupe and own-message markers, the chat's dead letters, its archive events still in the
stream, and its archive rows in PostgreSQL. What remains of an erasure is a one-way hash of the chat id (so that
archive events still in flight are not written afterwards), never the number, the name or any text.

Both are logged without content. The erasure starts with PostgreSQL: when the archive is on and the database cannot
be reached, nothing is erased and the caller is told to try again (a half-done erasure would look like a done one).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import redis

from archive.events import Event
from archive.journal import FIELD
from archive.store import UNAVAILABLE as DATABASE_UNAVAILABLE
from components import Components
from models import ChatRef

log = logging.getLogger(__name__)

STREAM_PAGE = 1000


class ArchiveUnavailable(Exception):
    """PostgreSQL could not be reached: the export or erasure was not done."""


@dataclass(slots=True)
class Erased:
    """What an erasure deleted, by place (counts only)."""

    redis_keys: int = 0
    dead_letters: int = 0
    stream_entries: int = 0
    archive_rows: int = 0
    in_memory: int = 0
    queues: int = 0  # the chat's entries in the due and leases sets

    def to_json(self) -> dict[str, int]:
        return asdict(self)


def export(parts: Components, chat: ChatRef) -> dict[str, Any]:
    """Everything held about the chat, as JSON-ready data."""
    archive = parts.archive
    rows: list[dict[str, Any]] | None = None
    if archive.store is not None:
        try:
            rows = archive.store.export(chat.key)
        except DATABASE_UNAVAILABLE as exc:
            raise ArchiveUnavailable(str(exc.__class__.__name__)) from exc
    keys = parts.keys
    stream = keys.archive_stream(keys.shard(chat.key))
    status = parts.conversations.status(chat)

    def read(client: redis.Redis) -> dict[str, Any]:
        pipe = client.pipeline(transaction=False)
        pipe.lrange(keys.pending(chat.key), 0, -1)
        pipe.lrange(keys.batch(chat.key), 0, -1)
        pipe.hgetall(keys.conversation(chat.key))
        pipe.get(keys.opt_out(chat.key))
        pipe.lrange(keys.simulator_log(chat.key), 0, -1)
        pending, batch, conversation, opted_out_at, simulated = pipe.execute()
        return {
            "pending_messages": [_json(raw) for raw in pending],
            "messages_being_answered": [_json(raw) for raw in batch],
            "conversation": conversation,
            "opted_out_at": opted_out_at,
            "simulator_transcript": [_json(raw) for raw in simulated],
            "archive_events_not_yet_written": [
                _event_json(event) for event in _stream_events(client, stream, chat.key)
            ],
        }

    shared = parts.link.run(read, lambda: {"redis": "unavailable"})
    log.info("export chat=%s archive_rows=%s", chat.label, "off" if rows is None else len(rows))
    parts.counters.add("contact_exports")
    return {
        "chat": chat.address,
        "tenant": chat.tenant,
        "gateway": chat.gateway,
        "instance": chat.instance,
        "chat_id": chat.chat_id,
        "exported_at": time.time(),
        "opted_out": status.opted_out,
        "history": [turn.to_json() for turn in parts.history.recent(chat)],
        "dead_letters": [letter for letter in parts.buffer.dead_letters() if letter.get("chat") == chat.key],
        **shared,
        "archive": "off" if rows is None else rows,
    }


def erase(parts: Components, chat: ChatRef) -> Erased:
    """Delete the chat's data in PostgreSQL, Redis and this process's memory; returns the counts."""
    erased = Erased()
    now = time.time()
    if parts.archive.store is not None:
        try:
            erased.archive_rows = parts.archive.store.erase(chat.key, at=now)
        except DATABASE_UNAVAILABLE as exc:
            raise ArchiveUnavailable(str(exc.__class__.__name__)) from exc
    parts.link.run(lambda client: _erase_in_redis(parts, client, chat, erased), lambda: None)
    erased.in_memory = (
        parts.buffer.local.forget_chat(chat.key)
        + parts.conversations.local.forget_chat(chat.key)
        + parts.history.forget_local(chat.key)
        + parts.transcript.forget_local(chat.key)
        + parts.archive.journal.forget_chat(chat.key)
    )
    parts.counters.add("contact_erasures")
    log.warning("erased chat=%s %s", chat.label, " ".join(f"{k}={v}" for k, v in erased.to_json().items()))
    return erased


def _erase_in_redis(parts: Components, client: redis.Redis, chat: ChatRef, erased: Erased) -> None:
    keys = parts.keys
    found = [key for key in keys.chat_keys(chat.key) if client.exists(key)]
    for pattern in keys.chat_key_patterns(chat.key):
        found += list(client.scan_iter(match=pattern, count=1000))
    if found:
        erased.redis_keys = int(client.delete(*found))
    shard = keys.shard(chat.key)  # the chat's queues, dead letters and events are in its shard's keys
    pipe = client.pipeline(transaction=True)
    pipe.zrem(keys.due(shard), chat.key)
    pipe.zrem(keys.leases(shard), chat.key)
    erased.queues = sum(int(n) for n in pipe.execute())
    erased.dead_letters = _erase_dead_letters(client, keys.dead_letters(shard), chat.key)
    erased.stream_entries = _erase_stream_entries(client, keys.archive_stream(shard), chat.key)


def _erase_dead_letters(client: redis.Redis, key: str, chat: str) -> int:
    removed = 0
    for raw in client.lrange(key, 0, -1):
        record = _json(raw)
        if isinstance(record, dict) and record.get("chat") == chat:
            removed += int(client.lrem(key, 0, raw))
    return removed


def _stream_events(client: redis.Redis, stream: str, chat: str) -> list[Event]:
    return [event for _, event in _stream_entries_of(client, stream, chat)]


def _stream_entries_of(client: redis.Redis, stream: str, chat: str) -> list[tuple[str, Event]]:
    """(entry id, event) of the chat's events still in the stream, oldest first."""
    found: list[tuple[str, Event]] = []
    start = "-"
    while True:
        page: Any = client.xrange(stream, min=start, count=STREAM_PAGE)
        for entry_id, fields in page:
            event = Event.decode(fields.get(FIELD, "")) if fields else None
            if event is not None and event.chat == chat:
                found.append((entry_id, event))
        if len(page) < STREAM_PAGE:
            return found
        start = f"({page[-1][0]}"


def _erase_stream_entries(client: redis.Redis, stream: str, chat: str) -> int:
    ids = [entry_id for entry_id, _ in _stream_entries_of(client, stream, chat)]
    if not ids:
        return 0
    # Only deleted: a writer that had read one of them finds it empty and acknowledges it (archive/writer.py).
    return int(client.xdel(stream, *ids))


def _json(raw: str) -> Any:
    try:
        return json.loads(raw)
    except (TypeError, ValueError):
        return raw


def _event_json(event: Event) -> dict[str, Any]:
    return json.loads(event.encode())
