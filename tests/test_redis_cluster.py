"""The service on a real 3-master Redis Cluster (CACHE_REDIS_CLUSTER, tests/redis_cluster.py): every Lua call of a
chat touches one hash slot, the shards spread over the masters, and the whole path runs there: webhooks, the
owner's messages, claims, replies, histories, usage, dead letters, the chat list, the archive's sharded streams,
export and erasure, and a manual failover in the middle of a drain."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
from flask import Flask

import chat_list
import privacy
from models import ChatRef, IncomingMessage
from redis_keys import RedisKeys
from tests.fakes import Canned, FakeEvolution, FakeGemini
from tests.redis_cluster import RedisClusterGroup
from usage import UsageLedger
from webhook import Components

SHARDS = 16


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterGroup]:
    group = RedisClusterGroup(tmp_path_factory.mktemp("cluster")).start()
    yield group
    group.stop()


@pytest.fixture
def cluster_app(make_app: Callable[..., Flask], cluster: RedisClusterGroup) -> Flask:
    """The service from the factory on the cluster, under a prefix of its own (the cluster outlives the test)."""
    return make_app(
        redis_uri=cluster.url,
        redis_cluster=True,
        due_shards=SHARDS,
        redis_prefix=f"t{uuid.uuid4().hex[:8]}",
        debounce_seconds=0.05,
        admin_token="cluster-admin-token",
    )


@pytest.fixture
def parts(cluster_app: Flask) -> Components:
    return cluster_app.extensions["assistant"]


def chat(n: int) -> ChatRef:
    return ChatRef(gateway="evolution", instance="loja", chat_id=f"55119{n:08d}@s.whatsapp.net")


def upsert(ref: ChatRef, text: str, message_id: str, *, from_me: bool = False) -> dict[str, object]:
    key = {"remoteJid": ref.chat_id, "fromMe": from_me, "id": message_id}
    data = {"key": key, "message": {"conversation": text}}
    return {"event": "messages.upsert", "instance": ref.instance, "data": data}


def drain(parts: Components, expected: int, timeout: float = 20.0) -> int:
    """Run the worker until `expected` replies went out in total (the debounce is 50 ms)."""
    answered = 0
    deadline = time.monotonic() + timeout
    while answered < expected:
        assert time.monotonic() < deadline, f"{answered} of {expected} answered"
        time.sleep(0.06)
        answered += parts.worker.run_once(wait=True)
    return answered


def test_every_key_of_a_chat_is_in_the_slot_of_its_shard(cluster: RedisClusterGroup) -> None:
    keys = RedisKeys("wa", shards=SHARDS)
    client = cluster.client()
    for n in range(60):
        key = chat(n).key
        shard = keys.shard(key)
        of_chat = [k for k in keys.chat_keys(key) if k != keys.pace_customer(key)]  # paced by number: its own tag
        of_chat += [keys.seen(key, "M1"), keys.own_message(key, "M1"), keys.media(key, "M1")]
        of_chat += [keys.conversation_usage(key, "1700000000.000")]
        of_shard = [keys.due(shard), keys.leases(shard), keys.dead_letters(shard), keys.stats(shard)]
        of_shard += [keys.archive_stream(shard), keys.usage_day("2026-12-06", shard)]
        assert {client.keyslot(k) for k in of_chat + of_shard} == {client.keyslot(keys.due(shard))}, key
    # The shards land on every master, so the work spreads over them.
    owners = {client.get_node_from_key(keys.due(shard)).port for shard in keys.all_shards()}
    assert owners == set(cluster.masters())
    client.close()


def test_one_server_keeps_its_key_names() -> None:
    keys = RedisKeys("wa")
    key = chat(1).key
    assert (keys.due(), keys.pending(key), keys.history(key), keys.archive_stream()) == (
        "wa:due",
        f"wa:chat:{key}:pending",
        f"wa:history:{key}",
        "wa:archive",
    )
    assert keys.chats_pending()[0] == "wa:chat:*:pending"


def test_bursts_on_many_chats_are_answered_once_with_history_and_usage(
    cluster_app: Flask, parts: Components, fake_gemini: FakeGemini, fake_evolution: FakeEvolution
) -> None:
    client = cluster_app.test_client()
    chats = [chat(n) for n in range(40)]
    for n, ref in enumerate(chats):
        for part, text in enumerate(("Oi", f"Quero o pedido {n}")):
            assert client.post("/webhook", json=upsert(ref, text, f"3EB0{n:04d}{part}")).json["buffered"] == 1
        assert client.post("/webhook", json=upsert(ref, "Oi", f"3EB0{n:04d}0")).json["duplicates"] == 1
    assert {parts.keys.shard(ref.key) for ref in chats} == set(parts.keys.all_shards())

    assert drain(parts, len(chats)) == len(chats)
    sends = fake_evolution.sends()
    assert sorted(s.json["number"] for s in sends) == sorted(ref.chat_id for ref in chats)
    assert len(fake_gemini.prompts()) == len(chats)
    assert parts.buffer.counts() == {"chats_pending": 0, "chats_in_progress": 0, "dead_letters": 0}
    turns = parts.history.recent(chats[7])
    assert [(t.role, t.text) for t in turns][0] == ("user", "Oi\nQuero o pedido 7")
    assert turns[1].role == "model"
    day = UsageLedger.day(time.time())
    by_chat = sum(parts.usage.of_chat(ref)["input_tokens"] for ref in chats)
    assert parts.usage.of_day(day)["input_tokens"] == by_chat > 0  # the day's sums of every shard, added up
    assert {ref.key for ref in chat_list.chat_keys(parts)} == {ref.key for ref in chats}
    assert parts.worker.run_once(wait=True) == 0
    assert len(fake_evolution.sends()) == len(chats)


def test_the_owners_message_pauses_the_chat_on_its_shard(
    cluster_app: Flask, parts: Components, fake_evolution: FakeEvolution
) -> None:
    client = cluster_app.test_client()
    ref = chat(100)
    assert client.post("/webhook", json=upsert(ref, "Tem horário amanhã?", "3EB0C1")).json["buffered"] == 1
    answer = client.post("/webhook", json=upsert(ref, "Tem sim, às 10h", "3EB0B1", from_me=True)).json
    assert answer["human"] == 1
    time.sleep(0.1)
    parts.worker.run_once(wait=True)
    assert fake_evolution.sends() == []  # a person answered: the assistant keeps quiet
    assert parts.conversations.status(ref).state == "paused"
    assert [(t.role, t.text) for t in parts.history.recent(ref)] == [
        ("user", "Tem horário amanhã?"),
        ("model", "Tem sim, às 10h"),
    ]


def test_dead_letters_of_every_shard_are_listed_taken_and_put_back(
    parts: Components, fake_evolution: FakeEvolution
) -> None:
    chats = [chat(n) for n in range(200, 206)]
    assert len({parts.keys.shard(ref.key) for ref in chats}) > 1
    for ref in chats:
        fake_evolution.queue(Canned(400, {"error": "number not on WhatsApp"}))
        message = IncomingMessage(chat=ref, message_id=f"D{ref.chat_id}", text="Oi")
        parts.buffer.append(message, now=time.time() - 600)
    parts.worker.run_once(wait=True)
    letters = parts.buffer.dead_letters()
    assert sorted(letter["chat"] for letter in letters) == sorted(ref.key for ref in chats)
    assert parts.buffer.counts()["dead_letters"] == len(chats)
    taken = parts.buffer.take_dead_letter(letters[-1]["id"])
    assert taken is not None and parts.buffer.take_dead_letter(letters[-1]["id"]) is None
    parts.buffer.put_dead_letter(taken)
    assert sorted(letter["id"] for letter in parts.buffer.dead_letters()) == sorted(x["id"] for x in letters)


def test_export_and_erasure_find_every_key_of_the_chat_across_the_masters(
    cluster_app: Flask, parts: Components, cluster: RedisClusterGroup
) -> None:
    client = cluster_app.test_client()
    ref, other = chat(300), chat(301)
    for n, target in enumerate((ref, other)):
        assert client.post("/webhook", json=upsert(target, "Oi", f"3EB0E{n}")).json["buffered"] == 1
    drain(parts, 2)
    assert client.post("/webhook", json=upsert(ref, "Mais uma coisa", "3EB0E9")).json["buffered"] == 1

    exported = privacy.export(parts, ref)
    assert [m["text"] for m in exported["pending_messages"]] == ["Mais uma coisa"]
    assert [turn["text"] for turn in exported["history"]][0] == "Oi"

    erased = privacy.erase(parts, ref)
    assert erased.redis_keys > 3 and erased.queues == 1
    store = cluster.client()
    left = [key for key in store.scan_iter(match=f"{parts.keys.prefix}:*", count=1000) if ref.chat_id in key]
    assert left == []
    assert any(other.chat_id in key for key in store.scan_iter(match=f"{parts.keys.prefix}:*", count=1000))
    store.close()


def test_a_manual_failover_mid_drain_answers_every_chat_once(
    cluster_app: Flask, parts: Components, cluster: RedisClusterGroup, fake_evolution: FakeEvolution
) -> None:
    client = cluster_app.test_client()
    chats = [chat(n) for n in range(400, 448)]
    for n, ref in enumerate(chats[:24]):
        assert client.post("/webhook", json=upsert(ref, f"Antes {n}", f"3EB0F{n}")).json["buffered"] == 1
    time.sleep(0.1)
    parts.worker.run_once(wait=True)  # some answered before the failover
    cluster.failover(cluster.masters()[0])
    for n, ref in enumerate(chats[24:], start=24):
        body = upsert(ref, f"Depois {n}", f"3EB0F{n}")
        for _ in range(50):  # what a gateway does: post again after anything but a 2xx
            response = client.post("/webhook", json=body)
            if response.status_code == 200:
                break
            time.sleep(0.1)
        assert response.status_code == 200
    drain(parts, len(chats) - len(fake_evolution.sends()), timeout=40)
    numbers = [s.json["number"] for s in fake_evolution.sends()]
    assert sorted(numbers) == sorted(ref.chat_id for ref in chats)  # each once


def test_the_archive_reads_every_shards_stream_into_postgresql(
    make_app: Callable[..., Flask], cluster: RedisClusterGroup, postgres_url: str, fake_evolution: FakeEvolution
) -> None:
    flask_app = make_app(
        redis_uri=cluster.url,
        redis_cluster=True,
        due_shards=SHARDS,
        redis_prefix=f"t{uuid.uuid4().hex[:8]}",
        debounce_seconds=0.05,
        database_url=postgres_url,
    )
    parts: Components = flask_app.extensions["assistant"]
    writer = parts.archive.writer
    assert writer is not None
    writer.block_ms = 10
    client = flask_app.test_client()
    chats = [chat(n) for n in range(500, 524)]
    for n, ref in enumerate(chats):
        assert client.post("/webhook", json=upsert(ref, f"Pedido {n}", f"3EB0A{n}")).json["buffered"] == 1
    drain(parts, len(chats))
    assert len({parts.keys.shard(ref.key) for ref in chats}) > 8
    for _ in range(50):
        writer.step()
        if writer.backlog() == 0:
            break
    assert writer.backlog() == 0
    with psycopg.connect(postgres_url) as conn:
        archived = conn.execute("SELECT chat, author FROM archive_events WHERE kind = 'message'").fetchall()
    by_chat: dict[str, list[str]] = {}
    for key, author in archived:
        by_chat.setdefault(key, []).append(author)
    assert set(by_chat) == {ref.key for ref in chats}
    assert all(sorted(authors) == ["bot", "customer"] for authors in by_chat.values()), by_chat
    store = cluster.client()
    assert sum(store.xlen(parts.keys.archive_stream(shard)) for shard in parts.keys.all_shards()) == 0
    store.close()
    parts.archive.store.close()
