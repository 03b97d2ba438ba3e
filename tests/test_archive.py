"""The archive inside one process, on a real PostgreSQL and a real Redis that the suite started: Evolution webhooks
posted to the real Flask app, answered by the real worker (google-genai against the fake Gemini), archive events
through the Redis Stream, and the writer's rounds (`step()`) storing them; search, paging, export and erasure.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
import redis

from archive.events import Event, message_events, reply_part_event
from archive.journal import FIELD
from archive.store import ArchiveStore, chat_hash, migrations
from archive.writer import ARCHIVE_GROUP, ArchiveWriter
from config import Settings
from models import ChatRef
from tests.conftest import ROOT
from tests.fakes import Canned, FakeEvolution, FakeGemini
from tests.postgres_server import PostgresServer
from tests.test_media import App, audio_event, msg_id, text_event, transcribing
from webhook import Components, create_app

ADMIN_TOKEN = "admin-token-arquivo-5c1e"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
INSTANCE = "loja-midia"  # tests.test_media's payloads
JID = "5511912345678@s.whatsapp.net"
CHAT = ChatRef(gateway="evolution", instance=INSTANCE, chat_id=JID)
OTHER = ChatRef(gateway="evolution", instance=INSTANCE, chat_id="5521998877665@s.whatsapp.net")


@pytest.fixture
def archived_app(
    settings: Settings,
    postgres_url: str,
    fake_gemini: FakeGemini,
    fake_evolution: FakeEvolution,
    redis_client: redis.Redis,
) -> Iterator[Callable[..., App]]:
    """Apps on this test's PostgreSQL database (worker and writer driven by the test)."""
    made: list[Components] = []

    def make(**overrides: Any) -> App:
        values = {"debounce_seconds": 0.0, "database_url": postgres_url, "admin_token": ADMIN_TOKEN, **overrides}
        flask_app = create_app(dataclasses.replace(settings, **values), start_worker=False)
        parts: Components = flask_app.extensions["assistant"]
        if parts.archive.writer is not None:
            parts.archive.writer.block_ms = 10  # a round without new entries returns at once
        made.append(parts)
        return App(flask_app.test_client(), parts, parts.settings, fake_gemini, fake_evolution, redis_client)

    yield make
    for parts in made:
        if parts.archive.store is not None:
            parts.archive.store.close()
        if parts.link.client is not None:
            parts.link.client.close()


def drain(parts: Components, *, rounds: int = 50) -> None:
    """Writer rounds until the stream and this process's memory hold no event."""
    writer = parts.archive.writer
    assert writer is not None
    for _ in range(rounds):
        writer.step()
        if writer.backlog() == 0:
            return
    raise AssertionError(f"archive backlog still {writer.backlog()} after {rounds} rounds")


def rows(url: str, sql: str = "SELECT * FROM archive_events ORDER BY at, id", *args: Any) -> list[dict[str, Any]]:
    with psycopg.connect(url, row_factory=psycopg.rows.dict_row) as conn:
        return conn.execute(sql, args).fetchall()


def events_of(chat: ChatRef, texts: list[str], *, at: float) -> list[Event]:
    records = [{"id": f"M{i}-{chat.chat_id[:6]}", "text": text, "at": at + i} for i, text in enumerate(texts)]
    return message_events(chat, records, now=at)


# ----- what is archived -------------------------------------------------------------------------------------


def test_a_voice_note_burst_and_its_reply_are_archived_with_the_transcript(
    archived_app: Callable[..., App], postgres_url: str
) -> None:
    a = archived_app()
    a.gemini.reply_for = transcribing("Vocês entregam no domingo?", reply="Entregamos sim, das 9h às 13h!")
    voice_id, text_id = msg_id(), msg_id()
    a.post(text_event(text_id, "Oi, boa tarde"), audio_event(voice_id, inline=True))
    assert a.answer() == 1
    drain(a.parts)

    archived = rows(postgres_url)
    customer = [r for r in archived if r["author"] == "customer"]
    assert [(r["gateway_message_id"], r["text"], r["media_kind"], r["transcript"]) for r in customer] == [
        (text_id, "Oi, boa tarde", "", ""),
        (voice_id, "", "voice", "Vocês entregam no domingo?"),
    ]
    bot = [r for r in archived if r["author"] == "bot"]
    assert [(r["text"], r["delivery"]) for r in bot] == [("Entregamos sim, das 9h às 13h!", "sent")]
    assert bot[0]["gateway_message_id"].startswith("FAKE")  # the id the gateway gave
    assert {r["chat"] for r in archived} == {CHAT.key}
    usage = bot[0]["data"]["usage"]  # what the model call that wrote the reply cost, with its first part
    assert (usage["input_tokens"], usage["output_tokens"], usage["calls"][0]["provider"]) == (10, 5, "gemini")
    assert {r["kind"] for r in archived} == {"message"}


def test_the_transcript_is_searchable(archived_app: Callable[..., App]) -> None:
    a = archived_app()
    a.gemini.reply_for = transcribing("Qual o preço do bolo de cenoura?", reply="R$ 48,00.")
    a.post(audio_event(msg_id(), inline=True))
    a.answer()
    drain(a.parts)
    found = a.client.get("/admin/api/search?q=preco cenoura", headers=AUTH)
    assert found.status_code == 200
    results = found.get_json()["results"]
    assert [(r["chat"], r["transcript"]) for r in results] == [(CHAT.key, "Qual o preço do bolo de cenoura?")]


def test_a_reply_from_the_panel_is_archived_as_a_human_message(
    archived_app: Callable[..., App], postgres_url: str
) -> None:
    a = archived_app()
    a.post(text_event(msg_id(), "Quero falar com alguém sobre meu pedido"))
    sent = a.client.post(
        f"/admin/api/chats/{quote(CHAT.key, safe='')}/messages", json={"text": "Oi! Aqui é a Ana."}, headers=AUTH
    )
    assert sent.status_code == 200, sent.get_json()
    drain(a.parts)
    human = rows(postgres_url, "SELECT * FROM archive_events WHERE author = 'human'")
    assert [(r["text"], r["gateway_message_id"], r["data"]) for r in human] == [
        ("Oi! Aqui é a Ana.", sent.get_json()["message_id"], {"via": "panel"})
    ]
    # The burst the person's message joined is settled without a reply (a person answers); archiving it again
    # inserts nothing twice.
    a.answer()
    drain(a.parts)
    archived = rows(postgres_url)
    assert sorted(r["author"] for r in archived) == ["customer", "human"]
    assert not [s for s in a.evolution.sends() if s.json["text"] != "Oi! Aqui é a Ana."]


def test_decisions_and_panel_actions_are_archived_as_events(
    archived_app: Callable[..., App], postgres_url: str
) -> None:
    a = archived_app()
    a.post(text_event(msg_id(), "parar"))
    a.answer()
    paused = a.client.post(f"/admin/api/chats/{quote(CHAT.key, safe='')}/pause", headers=AUTH)
    assert paused.status_code == 200
    drain(a.parts)
    archived = rows(postgres_url)
    assert [(r["kind"], r["author"]) for r in archived] == [
        ("message", "customer"),
        ("opt_out", None),
        ("message", "bot"),
        ("pause", "human"),
    ]
    assert archived[2]["text"] == a.settings.opt_out_reply
    assert archived[3]["data"] == {"by": "panel"}


def test_a_dead_letter_is_archived(archived_app: Callable[..., App], postgres_url: str) -> None:
    a = archived_app(delivery_max_attempts=1)
    a.evolution.queue(Canned(400, {"status": 400, "error": "Bad Request"}))
    a.post(text_event(msg_id(), "Oi"))
    a.answer()
    drain(a.parts)
    dead = rows(postgres_url, "SELECT * FROM archive_events WHERE kind = 'dead_letter'")
    assert len(dead) == 1
    assert dead[0]["delivery"] == "failed" and dead[0]["data"]["unsent_parts"] == 1
    assert dead[0]["text"] == "Resposta: Oi"


def test_without_database_url_nothing_is_archived_and_health_says_off(
    make_app: Callable[..., Any], redis_client: redis.Redis
) -> None:
    app = make_app()
    parts: Components = app.extensions["assistant"]
    assert parts.archive.health() == {"state": "off", "backlog": 0}
    assert app.test_client().get("/health").get_json()["archive"] == {"state": "off", "backlog": 0}
    parts.archive.emit(events_of(CHAT, ["Oi"], at=time.time()))
    assert redis_client.exists(parts.keys.archive_stream()) == 0
    found = app.test_client().get("/admin/api/search?q=oi", headers={"Authorization": "Bearer x"})
    assert found.status_code in (401, 404)


# ----- the writer -------------------------------------------------------------------------------------------


def test_postgres_down_keeps_events_in_the_stream_and_writes_them_once_when_back(
    archived_app: Callable[..., App], postgres_server: PostgresServer, postgres_url: str
) -> None:
    a = archived_app()
    writer = a.parts.archive.writer
    assert writer is not None
    drain(a.parts)  # migrated while the database is up
    postgres_server.stop()
    for n in range(30):
        a.post(text_event(msg_id(), f"mensagem {n}"))
        a.answer()
    assert len(a.evolution.sends()) == 30  # replies go on
    writer.step()
    assert writer.database_up is False
    health = a.client.get("/health").get_json()
    # Per burst: the customer's message and the reply.
    assert health["archive"] == {"state": "down", "backlog": 60} and health["status"] == "degraded"
    postgres_server.start()
    deadline = time.monotonic() + 20
    while writer.backlog() and time.monotonic() < deadline:
        writer.step()
    assert writer.backlog() == 0
    archived = rows(postgres_url)
    assert len(archived) == 60 and len({r["event_id"] for r in archived}) == 60
    assert sorted(r["text"] for r in archived if r["author"] == "customer") == sorted(
        f"mensagem {n}" for n in range(30)
    )


def test_redis_down_keeps_events_in_memory_and_the_writer_stores_them(
    settings: Settings, postgres_url: str, redis_server: Any
) -> None:
    from tests.conftest import free_port

    down = dataclasses.replace(
        settings, redis_uri=f"redis://127.0.0.1:{free_port()}/0", database_url=postgres_url, debounce_seconds=0.0
    )
    app = create_app(down, start_worker=False)
    parts: Components = app.extensions["assistant"]
    try:
        parts.archive.emit(events_of(CHAT, ["Oi", "Tudo bem?"], at=time.time()))
        assert parts.archive.journal.local_count() == 2
        drain(parts)
        assert [r["text"] for r in rows(postgres_url)] == ["Oi", "Tudo bem?"]
    finally:
        assert parts.archive.store is not None
        parts.archive.store.close()


def test_events_kept_during_a_redis_outage_go_to_the_stream_when_it_is_back(
    archived_app: Callable[..., App], redis_client: redis.Redis, postgres_url: str
) -> None:
    a = archived_app()
    journal = a.parts.archive.journal
    journal._keep([e.encode() for e in events_of(CHAT, ["Oi", "Tem bolo?"], at=time.time())])  # as during an outage
    assert journal.flush_local() == 2
    assert redis_client.xlen(a.parts.keys.archive_stream()) == 2
    drain(a.parts)
    assert [r["text"] for r in rows(postgres_url)] == ["Oi", "Tem bolo?"]


def test_a_dead_writers_entries_are_taken_over_after_the_idle_time_and_written_once(
    archived_app: Callable[..., App], redis_client: redis.Redis, postgres_url: str
) -> None:
    a = archived_app(archive_claim_idle_seconds=0.2)
    stream = a.parts.keys.archive_stream()
    a.parts.archive.emit(events_of(CHAT, ["um", "dois", "três"], at=time.time()))
    # A writer that read the batch and died before writing it: the entries sit in its pending list.
    redis_client.xgroup_create(stream, ARCHIVE_GROUP, id="0", mkstream=True)
    taken = redis_client.xreadgroup(ARCHIVE_GROUP, "dead-writer", {stream: ">"}, count=10)
    assert len(taken[0][1]) == 3
    writer = a.parts.archive.writer
    assert writer is not None
    writer.step()
    assert a.parts.archive.store is not None
    assert a.parts.archive.store.count() == 0  # not idle long enough yet: not taken over
    time.sleep(0.3)
    drain(a.parts)
    assert [r["text"] for r in rows(postgres_url)] == ["um", "dois", "três"]
    assert redis_client.xpending(stream, ARCHIVE_GROUP)["pending"] == 0
    assert a.parts.counters.snapshot()["archive_entries_taken_over"] == 3


def test_a_batch_written_twice_inserts_nothing_the_second_time(postgres_url: str) -> None:
    store = ArchiveStore(postgres_url)
    try:
        events = events_of(CHAT, ["Oi", "Quero um bolo"], at=time.time())
        assert store.write(events) == 2
        assert store.write([*events, *events]) == 0
        assert store.count() == 2
    finally:
        store.close()


def test_several_processes_starting_at_once_migrate_once(postgres_url: str) -> None:
    stores = [ArchiveStore(postgres_url) for _ in range(4)]
    applied: list[list[str]] = []
    threads = [threading.Thread(target=lambda s=s: applied.append(s.migrate())) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert sorted(applied, key=len) == [[], [], [], ["001_init", "002_tenant"]]
        versions = rows(postgres_url, "SELECT version FROM archive_migrations ORDER BY version")
        assert versions == [{"version": 1}, {"version": 2}]
    finally:
        for store in stores:
            store.close()


def test_retention_purges_only_older_events(postgres_url: str, redis_client: redis.Redis) -> None:
    store = ArchiveStore(postgres_url)
    try:
        now = time.time()
        store.write([*events_of(CHAT, ["antigo"], at=now - 40 * 86400), *events_of(OTHER, ["novo"], at=now)])
        assert store.purge(older_than_days=30) == 1
        assert [r["text"] for r in rows(postgres_url)] == ["novo"]
    finally:
        store.close()


# ----- search and paging ------------------------------------------------------------------------------------


@pytest.fixture
def store(postgres_url: str) -> Iterator[ArchiveStore]:
    archive = ArchiveStore(postgres_url)
    yield archive
    archive.close()


def test_search_is_portuguese_and_ignores_accents(store: ArchiveStore) -> None:
    now = time.time()
    store.write(events_of(CHAT, ["Vocês entregam no domingo?", "Qual o preço do bolo?", "Bom dia"], at=now))
    store.write(events_of(OTHER, ["Aceitam cartão?"], at=now))
    assert [r["text"] for r in store.search("entrega")] == ["Vocês entregam no domingo?"]
    assert [r["text"] for r in store.search("preco")] == ["Qual o preço do bolo?"]
    assert [r["text"] for r in store.search("CARTAO")] == ["Aceitam cartão?"]
    assert store.search("pizza") == []


def test_search_api_answers_chat_text_and_time(archived_app: Callable[..., App]) -> None:
    a = archived_app()
    now = time.time()
    assert a.parts.archive.store is not None
    a.parts.archive.store.write(events_of(CHAT, ["Vocês entregam no domingo?"], at=now))
    found = a.client.get("/admin/api/search", query_string={"q": "entrega"}, headers=AUTH)
    assert found.status_code == 200
    [result] = found.get_json()["results"]
    assert (result["chat"], result["text"], result["author"]) == (CHAT.key, "Vocês entregam no domingo?", "customer")
    assert abs(result["at"] - now) < 0.01
    assert a.client.get("/admin/api/search?q=", headers=AUTH).status_code == 400
    assert a.client.get("/admin/api/search?q=entrega").status_code == 401


def test_a_chats_archive_is_paged_newest_first(archived_app: Callable[..., App]) -> None:
    a = archived_app()
    assert a.parts.archive.store is not None
    a.parts.archive.store.write(events_of(CHAT, [f"m{n}" for n in range(7)], at=time.time()))
    url = f"/admin/api/chats/{quote(CHAT.key, safe='')}/archive"
    first = a.client.get(url, query_string={"limit": 3}, headers=AUTH).get_json()
    assert [e["text"] for e in first["events"]] == ["m6", "m5", "m4"]
    second = a.client.get(url, query_string={"limit": 3, "before": first["next_before"]}, headers=AUTH).get_json()
    assert [e["text"] for e in second["events"]] == ["m3", "m2", "m1"]
    third = a.client.get(url, query_string={"limit": 3, "before": second["next_before"]}, headers=AUTH).get_json()
    assert [e["text"] for e in third["events"]] == ["m0"] and third["next_before"] is None
    assert a.client.get(url, query_string={"limit": "x"}, headers=AUTH).status_code == 400


# ----- LGPD: export and erasure -----------------------------------------------------------------------------


def redis_mentions(client: redis.Redis, *needles: str) -> list[str]:
    """Every key whose name or value mentions one of `needles` (scanning the whole database)."""
    found = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == "string":
            values = [client.get(key) or ""]
        elif kind == "list":
            values = client.lrange(key, 0, -1)
        elif kind == "hash":
            values = [f"{k}={v}" for k, v in client.hgetall(key).items()]
        elif kind == "zset":
            values = client.zrange(key, 0, -1)
        elif kind == "set":
            values = list(client.smembers(key))
        elif kind == "stream":
            values = [json.dumps(fields, ensure_ascii=False) for _, fields in client.xrange(key)]
        else:
            values = []
        text = "\n".join([key, *values])
        if any(needle in text for needle in needles):
            found.append(key)
    return found


def postgres_mentions(url: str, *needles: str) -> list[str]:
    """Every row of every table of the public schema whose text mentions one of `needles`."""
    found = []
    with psycopg.connect(url) as conn:
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        for table in tables:
            for (row,) in conn.execute(f'SELECT t::text FROM "{table}" t'):  # noqa: S608 (names from the catalog)
                if any(needle in row for needle in needles):
                    found.append(f"{table}: {row[:80]}")
    return found


def test_export_then_erase_leaves_nothing_of_the_contact_in_either_store(
    archived_app: Callable[..., App], redis_client: redis.Redis, postgres_url: str
) -> None:
    a = archived_app()
    number = JID.split("@")[0]
    a.gemini.reply_for = transcribing("Meu endereço é Rua das Flores 12", reply="Anotado, Joana!")
    a.post(text_event(msg_id(), "Oi, sou a Joana"), audio_event(msg_id(), inline=True))
    a.answer()
    a.gemini.reply_for = None  # Pedro's reply must not mention Joana
    other_body = text_event(msg_id(), "Sou o Pedro, tem pão?")
    other_body["data"]["key"]["remoteJid"] = OTHER.chat_id
    other_body["data"]["pushName"] = "Pedro"
    a.post(other_body)
    a.answer()
    drain(a.parts)
    # Left in flight: an event still in the stream, a new burst pending, a dead letter, the dedupe markers.
    a.parts.archive.emit(events_of(CHAT, ["ainda no stream"], at=time.time()))
    a.post(text_event(msg_id(), "Mais uma coisa"))
    assert redis_mentions(redis_client, number) and postgres_mentions(postgres_url, number)

    exported = a.client.get(f"/admin/api/contacts/{quote(CHAT.key, safe='')}/export", headers=AUTH)
    assert exported.status_code == 200
    body = exported.get_json()
    assert "attachment" in exported.headers["Content-Disposition"]
    archived_texts = [e["text"] for e in body["archive"]]
    assert "Oi, sou a Joana" in archived_texts and "Anotado, Joana!" in archived_texts
    assert [e["transcript"] for e in body["archive"] if e["media_kind"] == "voice"] == [
        "Meu endereço é Rua das Flores 12"
    ]
    assert [m["text"] for m in body["pending_messages"]] == ["Mais uma coisa"]
    assert [e["text"] for e in body["archive_events_not_yet_written"]] == ["ainda no stream"]
    assert [t["role"] for t in body["history"]] == ["user", "model"]
    assert "Pedro" not in json.dumps(body, ensure_ascii=False)

    erased = a.client.delete(f"/admin/api/contacts/{quote(CHAT.key, safe='')}", headers=AUTH)
    assert erased.status_code == 200
    counts = erased.get_json()["erased"]
    assert counts["archive_rows"] == 3 and counts["stream_entries"] == 1 and counts["redis_keys"] > 0
    for needle in (number, "Joana", "Rua das Flores", "Mais uma coisa", "ainda no stream"):
        assert redis_mentions(redis_client, needle) == [], needle
        assert postgres_mentions(postgres_url, needle) == [], needle
    # What remains: the hash of the chat id, nothing else.
    assert rows(postgres_url, "SELECT chat_hash FROM archive_erasures") == [{"chat_hash": chat_hash(CHAT.key)}]
    # The other contact is untouched, in both stores.
    assert redis_mentions(redis_client, OTHER.chat_id) and postgres_mentions(postgres_url, "Sou o Pedro, tem pão?")


def test_an_event_written_after_the_erasure_but_dated_before_it_is_not_stored(store: ArchiveStore) -> None:
    before = time.time() - 1
    assert store.erase(CHAT.key, at=time.time()) == 0
    late = events_of(CHAT, ["lido antes do apagamento"], at=before)
    new = events_of(CHAT, ["mensagem nova"], at=time.time() + 1)
    assert store.write([*late, *new]) == 1
    assert [r["text"] for r in store.export(CHAT.key)] == ["mensagem nova"]


def test_erasure_refuses_while_postgres_is_down_and_erases_nothing(
    archived_app: Callable[..., App], postgres_server: PostgresServer, redis_client: redis.Redis
) -> None:
    a = archived_app()
    a.post(text_event(msg_id(), "Oi"))
    postgres_server.stop()
    try:
        refused = a.client.delete(f"/admin/api/contacts/{quote(CHAT.key, safe='')}", headers=AUTH)
        assert refused.status_code == 503
        assert redis_client.exists(a.parts.keys.pending(CHAT.key))
    finally:
        postgres_server.start()


def test_erasure_logs_no_content(
    archived_app: Callable[..., App], caplog: pytest.LogCaptureFixture, postgres_url: str
) -> None:
    a = archived_app(log_level="INFO")
    a.post(text_event(msg_id(), "Meu CPF é 123.456.789-00"))
    a.answer()
    drain(a.parts)
    with caplog.at_level("INFO"):
        a.client.get(f"/admin/api/contacts/{quote(CHAT.key, safe='')}/export", headers=AUTH)
        a.client.delete(f"/admin/api/contacts/{quote(CHAT.key, safe='')}", headers=AUTH)
    logged = caplog.text
    assert "erased chat=" in logged and "export chat=" in logged
    assert "123.456.789-00" not in logged and JID.split("@")[0] not in logged


def test_unknown_chat_names_are_refused(archived_app: Callable[..., App]) -> None:
    a = archived_app()
    assert a.client.delete("/admin/api/contacts/nope", headers=AUTH).status_code == 400
    assert a.client.get("/admin/api/contacts/nope/export", headers=AUTH).status_code == 400


def test_reply_part_event_ids_name_the_answered_message_and_the_part() -> None:
    one = reply_part_event(CHAT, reply_to="M1", index=0, text="a", message_id="X", at=1.0)
    again = reply_part_event(CHAT, reply_to="M1", index=0, text="a", message_id="Y", at=2.0)
    second = reply_part_event(CHAT, reply_to="M1", index=1, text="b", message_id="Z", at=2.0)
    assert one.event_id == again.event_id != second.event_id
    assert Event.decode(one.encode()) == one
    assert Event.decode("not json") is None


def test_writer_survives_a_corrupt_stream_entry(archived_app: Callable[..., App], redis_client: redis.Redis) -> None:
    a = archived_app()
    redis_client.xadd(a.parts.keys.archive_stream(), {"e": "{broken"})
    a.parts.archive.emit(events_of(CHAT, ["Oi"], at=time.time()))
    drain(a.parts)
    assert a.parts.counters.snapshot()["archive_bad_entries"] == 1
    assert isinstance(a.parts.archive.writer, ArchiveWriter)


def test_writers_of_processes_long_gone_are_removed_from_the_group(
    archived_app: Callable[..., App], redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = archived_app()
    stream = a.parts.keys.archive_stream()
    a.parts.archive.emit(events_of(CHAT, ["Oi"], at=time.time()))
    redis_client.xgroup_create(stream, ARCHIVE_GROUP, id="$", mkstream=True)
    redis_client.xreadgroup(ARCHIVE_GROUP, "gone-without-pending", {stream: ">"}, count=1)  # reads nothing new
    a.parts.archive.emit(events_of(OTHER, ["Olá"], at=time.time()))
    redis_client.xreadgroup(ARCHIVE_GROUP, "gone-with-pending", {stream: ">"}, count=1)
    monkeypatch.setattr("archive.writer.CONSUMER_IDLE_MS", -1)
    writer = a.parts.archive.writer
    assert writer is not None
    writer.step()  # creates nothing: the group is there
    writer.step()  # the hourly look happens on a round that finds the group ready
    names = {c["name"] for c in redis_client.xinfo_consumers(stream, ARCHIVE_GROUP)}
    assert "gone-without-pending" not in names and "gone-with-pending" in names


def test_an_event_postgres_refuses_is_dropped_alone_and_the_rest_written(
    archived_app: Callable[..., App], postgres_url: str
) -> None:
    a = archived_app()
    good = events_of(CHAT, ["antes", "depois"], at=time.time())
    refused = dataclasses.replace(good[0], event_id="refused", author="robot")  # the author CHECK refuses it
    a.parts.archive.emit([good[0], refused, good[1]])
    drain(a.parts)
    assert [r["text"] for r in rows(postgres_url)] == ["antes", "depois"]
    assert a.parts.counters.snapshot()["archive_bad_entries"] == 1


def run_archive_command(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -m archive ...` in a folder without a .env, with only `env` set."""
    return subprocess.run(
        [sys.executable, "-m", "archive", *args],
        cwd=cwd,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_archive_command_upgrades_and_purges(postgres_url: str, tmp_path: Path) -> None:
    env = {"DATABASE_URL": postgres_url}
    first = run_archive_command("upgrade", env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "applied: 001_init" in first.stdout
    again = run_archive_command("upgrade", env=env, cwd=tmp_path)
    assert again.returncode == 0 and "up to date" in again.stdout
    store = ArchiveStore(postgres_url)
    try:
        store.write(events_of(CHAT, ["velho"], at=time.time() - 10 * 86400))
    finally:
        store.close()
    purged = run_archive_command("purge", env={**env, "ARCHIVE_RETENTION_DAYS": "7"}, cwd=tmp_path)
    assert purged.returncode == 0 and "purged 1 events older than 7 days" in purged.stdout
    assert run_archive_command("upgrade", env={}, cwd=tmp_path).returncode == 2  # no DATABASE_URL


def test_events_sent_with_the_buffer_calls_survive_a_redis_that_forgot_its_scripts(
    archived_app: Callable[..., App], redis_client: redis.Redis, postgres_url: str
) -> None:
    """The burst's events ride on the fence and the part's on the ack (one round trip each, EVALSHA in a pipeline);
    a Redis restarted without its script cache answers NOSCRIPT there, and both still happen."""
    a = archived_app()
    a.post(text_event(msg_id(), "Oi"))
    a.answer()
    a.post(text_event(msg_id(), "Tem bolo de cenoura?"))
    redis_client.script_flush()
    assert a.answer() == 1
    journaled = [
        json.loads(fields[FIELD])["event_id"] for _, fields in redis_client.xrange(a.parts.keys.archive_stream())
    ]
    assert len(journaled) == len(set(journaled)) > 0  # each event journaled once, not again by the NOSCRIPT retry
    drain(a.parts)
    texts = [(r["author"], r["text"]) for r in rows(postgres_url)]
    assert texts == [
        ("customer", "Oi"),
        ("bot", "Resposta: Oi"),
        ("customer", "Tem bolo de cenoura?"),
        ("bot", "Resposta: Tem bolo de cenoura?"),
    ]
    assert a.parts.buffer.counts() == {"chats_pending": 0, "chats_in_progress": 0, "dead_letters": 0}


def test_the_writer_waits_while_this_process_is_replying_and_catches_up_after(
    archived_app: Callable[..., App], postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = archived_app()
    assert a.parts.archive.writer is not None
    assert a.parts.archive.writer.busy == a.parts.worker.busy  # the wiring: the writer yields to this process's replies
    replying = threading.Event()
    replying.set()
    writer, store = running_writer(a, replying.is_set, monkeypatch)
    try:
        a.parts.archive.emit(events_of(CHAT, ["primeira"], at=time.time()))
        wait_for(lambda: store.count() == 1)  # an idle writer writes at once
        a.parts.archive.emit(events_of(OTHER, ["segunda", "terceira"], at=time.time()))
        time.sleep(1.0)
        assert store.count() == 1  # replies are running: the archive waits
        assert writer.backlog() == 2
        replying.clear()
        wait_for(lambda: store.count() == 3)
    finally:
        writer.stop()


def test_the_writer_does_not_wait_for_replies_longer_than_its_limit(
    archived_app: Callable[..., App], monkeypatch: pytest.MonkeyPatch
) -> None:
    a = archived_app()
    writer, store = running_writer(a, lambda: True, monkeypatch, max_yield_seconds=0.5)  # always replying
    try:
        a.parts.archive.emit(events_of(CHAT, ["primeira"], at=time.time()))
        wait_for(lambda: store.count() == 1)
        a.parts.archive.emit(events_of(OTHER, ["segunda"], at=time.time()))
        wait_for(lambda: store.count() == 2, timeout=5.0)
    finally:
        writer.stop()


def running_writer(
    a: App, busy: Callable[[], bool], monkeypatch: pytest.MonkeyPatch, *, max_yield_seconds: float = 20.0
) -> tuple[ArchiveWriter, ArchiveStore]:
    """The app's writer on its thread, with short pauses, yielding to `busy`."""
    monkeypatch.setattr("archive.writer.YIELD_POLL_SECONDS", 0.05)
    writer, store = a.parts.archive.writer, a.parts.archive.store
    assert writer is not None and store is not None
    writer.busy = busy
    writer.linger_seconds = 0.05
    writer.max_yield_seconds = max_yield_seconds
    writer.start()
    return writer, store


def wait_for(condition: Callable[[], bool], *, timeout: float = 5.0) -> None:
    until = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > until:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def test_rows_archived_before_the_tenant_column_get_their_tenant(postgres_url: str) -> None:
    """002_tenant on a database that 001 made and rows already fill: the tenant comes from the chat key."""
    (first, *_) = migrations()
    columns = "event_id, chat, gateway, instance, chat_id, kind, author, text, at"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(first[2])
        conn.execute(
            "CREATE TABLE archive_migrations (version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz)"
        )
        conn.execute("INSERT INTO archive_migrations (version, name) VALUES (1, '001_init')")
        for event_id, chat in (("a", "evolution:loja:55@s"), ("b", "padaria/evolution:padaria:55@s")):
            conn.execute(
                f"INSERT INTO archive_events ({columns}) VALUES (%s, %s, 'evolution', 'x', '55@s', 'message', "
                "'customer', 'oi', now())",
                (event_id, chat),
            )
    store = ArchiveStore(postgres_url)
    try:
        assert store.migrate() == ["002_tenant"]
        found = rows(postgres_url, "SELECT event_id, tenant FROM archive_events ORDER BY event_id")
        assert found == [{"event_id": "a", "tenant": "default"}, {"event_id": "b", "tenant": "padaria"}]
        assert [row["tenant"] for row in store.search("oi", tenant="padaria")] == ["padaria"]
        assert len(store.search("oi")) == 2
    finally:
        store.close()
