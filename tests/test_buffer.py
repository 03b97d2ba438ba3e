"""The debounce buffer against a real Redis, and the same behaviour table on the in-process LocalStore.

Time is injected through `now=`: every test uses a fixed epoch T0 and moves it by hand, so deadlines,
max-wait caps and lease expiries are exact. The concurrency tests use their own Redis connections, as
separate worker processes would.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from buffer import CLAIM_LUA, Buffer, Claim, LocalStore, RedisStore
from models import ChatRef, IncomingMessage, MediaRef
from redis_keys import RedisKeys
from redis_link import RedisLink
from tests.conftest import RedisServer, free_port

T0 = 1_700_000_000.0
DEBOUNCE = 10.0
MAX_WAIT = 60.0
DEDUP_TTL = 3600
LEASE = 30.0
KEYS = RedisKeys("test")
CHAT_ID = "5511987654321@s.whatsapp.net"


def chat_ref(chat_id: str = CHAT_ID, instance: str = "loja") -> ChatRef:
    return ChatRef(gateway="evolution", instance=instance, chat_id=chat_id)


def message(n: int | str, text: str = "", *, chat_id: str = CHAT_ID, instance: str = "loja") -> IncomingMessage:
    return IncomingMessage(
        chat=chat_ref(chat_id, instance), message_id=f"MSG{n}", text=text or f"texto {n}", push_name="Ana"
    )


def ids(claim: Claim) -> list[str]:
    return [m["id"] for m in claim.messages]


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


BufferFactory = Callable[..., Buffer]


@pytest.fixture(params=["redis", "local"])
def buffers(request: pytest.FixtureRequest) -> Iterator[BufferFactory]:
    """Factory of Buffers over one store. On Redis each call is another process's view (its own
    connection); the LocalStore lives in one process, so there every call returns the same Buffer."""
    links: list[RedisLink] = []
    local: list[Buffer] = []

    def make(**overrides: float) -> Buffer:
        params = {
            "debounce_seconds": DEBOUNCE,
            "max_wait_seconds": MAX_WAIT,
            "dedup_ttl_seconds": DEDUP_TTL,
            "lease_seconds": LEASE,
            **overrides,
        }
        if request.param == "local":
            if not local:
                local.append(Buffer(RedisLink(None), KEYS, **params))  # type: ignore[arg-type]
            return local[0]
        server: RedisServer = request.getfixturevalue("redis_server")
        request.getfixturevalue("redis_client")  # flushes the database
        link = RedisLink(server.url)
        links.append(link)
        return Buffer(link, KEYS, **params)  # type: ignore[arg-type]

    make.store = request.param  # type: ignore[attr-defined]
    yield make
    for link in links:
        assert link.client is not None
        link.client.close()


# ----- the behaviour table, on both stores ---------------------------------------------------------------


def test_each_message_moves_the_deadline_and_the_burst_comes_back_in_order(buffers: BufferFactory) -> None:
    buffer = buffers()
    first = buffer.append(message(1, "Oi"), now=T0)
    assert (first.accepted, first.pending, first.store) == (True, 1, buffers.store)  # type: ignore[attr-defined]
    assert first.deadline == pytest.approx(T0 + DEBOUNCE)
    assert buffer.claim_due(now=T0 + DEBOUNCE - 1, limit=10) == []

    second = buffer.append(message(2, "Tudo bem?"), now=T0 + 9)
    third = buffer.append(message(3, "Quanto custa?"), now=T0 + 15)
    assert (second.pending, third.pending) == (2, 3)
    assert third.deadline == pytest.approx(T0 + 15 + DEBOUNCE)
    # The first deadline has passed, but the burst is still being typed.
    assert buffer.claim_due(now=T0 + DEBOUNCE, limit=10) == []
    assert buffer.claim_due(now=T0 + 15 + DEBOUNCE - 0.01, limit=10) == []

    (claim,) = buffer.claim_due(now=T0 + 15 + DEBOUNCE, limit=10)
    assert claim.chat == chat_ref()
    assert ids(claim) == ["MSG1", "MSG2", "MSG3"]
    assert claim.text == "Oi\nTudo bem?\nQuanto custa?"
    assert (claim.attempts, claim.reply, claim.store) == (1, "", buffers.store)  # type: ignore[attr-defined]
    assert claim.messages[0]["name"] == "Ana"
    assert claim.messages[0]["at"] == pytest.approx(T0)


def test_a_customer_who_keeps_typing_is_answered_at_max_wait(buffers: BufferFactory) -> None:
    buffer = buffers(debounce_seconds=10.0, max_wait_seconds=30.0)
    for i in range(7):  # one message every 5 s, each one closer than the debounce window
        now = T0 + 5 * i
        result = buffer.append(message(i), now=now)
        assert result.deadline == pytest.approx(min(now + 10, T0 + 30))
        if now + 4.9 < T0 + 30:
            assert buffer.claim_due(now=now + 4.9, limit=10) == []
    (claim,) = buffer.claim_due(now=T0 + 30, limit=10)
    assert ids(claim) == [f"MSG{i}" for i in range(7)]


def test_a_redelivered_message_is_accepted_once(buffers: BufferFactory) -> None:
    buffer = buffers()
    assert buffer.append(message(1), now=T0).accepted
    again = buffer.append(message(1), now=T0 + 1)
    assert not again.accepted
    assert buffer.append(message(2), now=T0 + 2).pending == 2
    (claim,) = buffer.claim_due(now=T0 + 2 + DEBOUNCE, limit=10)
    assert ids(claim) == ["MSG1", "MSG2"]
    assert buffer.ack(claim)
    # A late redelivery after the burst was answered is still a duplicate.
    assert not buffer.append(message(1), now=T0 + 100).accepted
    assert buffer.claim_due(now=T0 + 1000, limit=10) == []


def test_the_same_id_in_another_chat_or_instance_is_another_message(buffers: BufferFactory) -> None:
    buffer = buffers()
    assert buffer.append(message(1), now=T0).accepted
    assert buffer.append(message(1, chat_id="5521999990000@s.whatsapp.net"), now=T0).accepted
    assert buffer.append(message(1, instance="Loja Centro"), now=T0).accepted
    claims = buffer.claim_due(now=T0 + DEBOUNCE, limit=10)
    assert sorted((c.chat.instance, c.chat.chat_id) for c in claims) == [
        ("Loja Centro", CHAT_ID),
        ("loja", "5511987654321@s.whatsapp.net"),
        ("loja", "5521999990000@s.whatsapp.net"),
    ]
    assert all(ids(c) == ["MSG1"] for c in claims)


def test_a_claim_is_leased_and_taken_over_with_its_reply_after_expiry(buffers: BufferFactory) -> None:
    buffer, peer = buffers(), buffers()
    buffer.append(message(1), now=T0)
    buffer.append(message(2), now=T0 + 1)
    claimed_at = T0 + 1 + DEBOUNCE
    (first,) = buffer.claim_due(now=claimed_at, limit=10)
    assert peer.claim_due(now=claimed_at, limit=10) == []
    assert buffer.renew(first, now=claimed_at, reply="Olá! Custa R$ 10.")
    assert peer.claim_due(now=claimed_at + LEASE - 0.01, limit=10) == []

    (second,) = peer.claim_due(now=claimed_at + LEASE, limit=10)
    assert ids(second) == ids(first) == ["MSG1", "MSG2"]
    assert (second.attempts, second.reply) == (2, "Olá! Custa R$ 10.")
    assert second.token != first.token
    # The first owner is fenced off: it can neither extend nor finish the batch.
    assert not buffer.renew(first, now=claimed_at + LEASE)
    assert not buffer.ack(first)
    assert peer.claim_due(now=claimed_at + LEASE, limit=10) == []
    assert peer.ack(second)
    assert not peer.ack(second)
    assert buffer.claim_due(now=claimed_at + 10 * LEASE, limit=10) == []


def test_renew_extends_the_lease(buffers: BufferFactory) -> None:
    buffer = buffers()
    buffer.append(message(1), now=T0)
    (claim,) = buffer.claim_due(now=T0 + DEBOUNCE, limit=10)
    assert buffer.renew(claim, now=T0 + DEBOUNCE + 20)
    assert buffer.claim_due(now=T0 + DEBOUNCE + LEASE, limit=10) == []
    (again,) = buffer.claim_due(now=T0 + DEBOUNCE + 20 + LEASE, limit=10)
    assert again.attempts == 2


def test_messages_arriving_during_a_claim_wait_for_its_ack(buffers: BufferFactory) -> None:
    buffer = buffers()
    buffer.append(message(1), now=T0)
    (first,) = buffer.claim_due(now=T0 + DEBOUNCE, limit=10)
    buffer.append(message(2), now=T0 + 11)
    buffer.append(message(3), now=T0 + 12)
    # Their deadline (T0 + 22) has passed, but the chat is still being answered.
    assert buffer.claim_due(now=T0 + 25, limit=10) == []
    assert buffer.counts() == {"chats_pending": 0, "chats_in_progress": 1, "dead_letters": 0}
    assert buffer.ack(first)
    (second,) = buffer.claim_due(now=T0 + 25, limit=10)
    assert ids(second) == ["MSG2", "MSG3"]
    assert second.attempts == 1
    assert buffer.ack(second)
    assert buffer.claim_due(now=T0 + 1000, limit=10) == []


def test_the_next_burst_keeps_its_own_deadline_and_max_wait(buffers: BufferFactory) -> None:
    buffer = buffers(debounce_seconds=10.0, max_wait_seconds=15.0)
    buffer.append(message(1), now=T0)
    (first,) = buffer.claim_due(now=T0 + 10, limit=10)
    # The new burst's max wait counts from its own first message (T0 + 11), not from MSG1's.
    assert buffer.append(message(2), now=T0 + 11).deadline == pytest.approx(T0 + 21)
    assert buffer.ack(first)
    assert buffer.claim_due(now=T0 + 20.9, limit=10) == []
    (second,) = buffer.claim_due(now=T0 + 21, limit=10)
    assert ids(second) == ["MSG2"]


def test_a_reply_stored_for_one_batch_does_not_leak_into_the_next(buffers: BufferFactory) -> None:
    buffer = buffers()
    buffer.append(message(1), now=T0)
    (first,) = buffer.claim_due(now=T0 + DEBOUNCE, limit=10)
    assert buffer.renew(first, now=T0 + DEBOUNCE, reply="resposta 1")
    buffer.append(message(2), now=T0 + 11)
    assert buffer.ack(first)
    (second,) = buffer.claim_due(now=T0 + 11 + DEBOUNCE, limit=10)
    assert (ids(second), second.reply, second.attempts) == (["MSG2"], "", 1)


def test_a_stored_reply_comes_back_on_re_claim_with_its_turns_plan_and_progress(buffers: BufferFactory) -> None:
    buffer, peer = buffers(), buffers()
    buffer.append(message(1), now=T0)
    (first,) = buffer.claim_due(now=T0 + DEBOUNCE, limit=10)
    turns = '[{"role": "user", "text": "[áudio] oi", "at": 1.0}]'
    plan = '{"changes": {"opt": "out"}}'
    assert buffer.renew(first, now=T0 + DEBOUNCE, reply="Olá!\n\nTudo bem?", turns=turns, plan=plan)
    assert buffer.renew(first, now=T0 + DEBOUNCE, sent=1)  # the first part went out; the rest stays
    assert buffer.release(first, retry_at=T0 + DEBOUNCE + 1)  # keeps all of it
    (again,) = peer.claim_due(now=T0 + DEBOUNCE + 1, limit=10)
    assert (again.reply, again.turns, again.plan, again.sent) == ("Olá!\n\nTudo bem?", turns, plan, 1)
    buffer.append(message(2), now=T0 + DEBOUNCE + 2)
    assert peer.ack(again)
    (second,) = peer.claim_due(now=T0 + 2 * DEBOUNCE + 2, limit=10)
    assert (second.reply, second.turns, second.plan, second.sent) == ("", "", "", 0)


def media_message(n: int, blob: str) -> IncomingMessage:
    media = MediaRef(kind="audio", mime="audio/ogg", size=len(blob) * 3 // 4, inline=blob, source={"key": {"id": n}})
    return dataclasses.replace(message(n, " "), text="", kind="audio", media=media)


def test_media_base64_is_kept_beside_the_message_until_dropped(buffers: BufferFactory) -> None:
    buffer = buffers(media_max_bytes=100)
    blob = base64.b64encode(b"OggS fake voice").decode()
    buffer.append(media_message(1, blob), now=T0)
    buffer.append(media_message(2, base64.b64encode(b"x" * 101).decode()), now=T0)  # over the limit: not kept
    assert not buffer.append(media_message(1, "Zm9v"), now=T0).accepted  # a redelivery changes nothing
    (claim,) = buffer.claim_due(now=T0 + DEBOUNCE, limit=10)
    assert [(m["id"], m.get("blob"), m["media"]["kind"]) for m in claim.messages] == [
        ("MSG1", 1, "audio"),
        ("MSG2", None, "audio"),
    ]
    assert all("inline" not in m["media"] for m in claim.messages)
    assert (buffer.media_blob(claim, "MSG1"), buffer.media_blob(claim, "MSG2")) == (blob, None)
    buffer.drop_media(claim)
    assert buffer.media_blob(claim, "MSG1") is None
    assert buffer.ack(claim)


def test_media_base64_goes_with_the_batch_on_ack(buffers: BufferFactory) -> None:
    """Dropped at the latest with the batch on the local store; on Redis it expires with DEDUP_TTL."""
    buffer = buffers(media_max_bytes=100)
    buffer.append(media_message(1, "T2dnUw=="), now=T0)
    (claim,) = buffer.claim_due(now=T0 + DEBOUNCE, limit=10)
    assert buffer.ack(claim)
    if buffers.store == "local":  # type: ignore[attr-defined]
        assert buffer.media_blob(claim, "MSG1") is None
    else:
        assert buffer.redis is not None
        assert 0 < buffer.redis.client.ttl(KEYS.media(claim.chat.key, "MSG1")) <= DEDUP_TTL


def test_release_returns_the_batch_at_retry_at_with_its_reply(buffers: BufferFactory) -> None:
    buffer = buffers()
    buffer.append(message(1), now=T0)
    (claim,) = buffer.claim_due(now=T0 + DEBOUNCE, limit=10)
    retry_at = T0 + DEBOUNCE + 2 * LEASE
    assert buffer.renew(claim, now=T0 + DEBOUNCE, reply="Olá!")
    assert buffer.release(claim, retry_at=retry_at)
    assert buffer.claim_due(now=T0 + DEBOUNCE + LEASE, limit=10) == []
    assert buffer.claim_due(now=retry_at - 0.01, limit=10) == []
    (again,) = buffer.claim_due(now=retry_at, limit=10)
    assert (ids(again), again.attempts, again.reply) == (["MSG1"], 2, "Olá!")
    assert not buffer.release(claim, retry_at=retry_at + 100)


def test_dead_letter_finishes_the_batch_and_keeps_it(buffers: BufferFactory) -> None:
    buffer = buffers()
    buffer.append(message(1), now=T0)
    (claim,) = buffer.claim_due(now=T0 + DEBOUNCE, limit=10)
    assert buffer.dead_letter(claim, reason="evolution answered 400", now=T0 + 11)
    assert not buffer.dead_letter(claim, reason="again", now=T0 + 12)
    assert buffer.counts() == {"chats_pending": 0, "chats_in_progress": 0, "dead_letters": 1}
    assert buffer.claim_due(now=T0 + 1000, limit=10) == []


def test_claims_respect_the_limit_and_counts_follow(buffers: BufferFactory) -> None:
    buffer = buffers()
    for n in range(3):
        buffer.append(message(n, chat_id=f"55119000000{n}@s.whatsapp.net"), now=T0 + n)
    assert buffer.next_deadline() == pytest.approx(T0 + DEBOUNCE)
    assert buffer.counts() == {"chats_pending": 3, "chats_in_progress": 0, "dead_letters": 0}
    assert buffer.claim_due(now=T0 + 100, limit=0) == []
    two = buffer.claim_due(now=T0 + 100, limit=2)
    assert len(two) == 2
    assert buffer.counts() == {"chats_pending": 1, "chats_in_progress": 2, "dead_letters": 0}
    assert buffer.next_deadline() == pytest.approx(T0 + 2 + DEBOUNCE)
    (last,) = buffer.claim_due(now=T0 + 100, limit=2)
    assert sorted(c.chat.chat_id for c in [*two, last]) == [f"55119000000{n}@s.whatsapp.net" for n in range(3)]
    for claim in [*two, last]:
        assert buffer.ack(claim)
    assert buffer.next_deadline() is None


def test_local_seen_ids_expire_after_the_dedup_ttl() -> None:
    store = LocalStore()
    params = {"debounce": DEBOUNCE, "max_wait": MAX_WAIT, "dedup_ttl": DEDUP_TTL}
    assert store.append(message(1), now=T0, **params).accepted
    assert not store.append(message(1), now=T0 + DEDUP_TTL - 1, **params).accepted
    assert store.append(message(1), now=T0 + DEDUP_TTL, **params).accepted


# ----- Redis specifics: key hygiene, TTLs, stats -----------------------------------------------------------


@pytest.fixture
def redis_buffer(redis_server: RedisServer, redis_client: redis.Redis) -> Iterator[Buffer]:
    link = RedisLink(redis_server.url)
    yield Buffer(
        link,
        KEYS,
        debounce_seconds=DEBOUNCE,
        max_wait_seconds=MAX_WAIT,
        dedup_ttl_seconds=DEDUP_TTL,
        lease_seconds=LEASE,
    )
    assert link.client is not None
    link.client.close()


def test_the_seen_marker_expires_after_dedup_ttl(redis_buffer: Buffer, redis_client: redis.Redis) -> None:
    redis_buffer.append(message(1), now=T0)
    ttl_ms = redis_client.pttl(KEYS.seen(chat_ref().key, "MSG1"))
    assert DEDUP_TTL * 1000 - 1000 < ttl_ms <= DEDUP_TTL * 1000


def test_claims_survive_a_redis_that_forgot_its_scripts(redis_buffer: Buffer, redis_client: redis.Redis) -> None:
    for n in range(3):
        redis_buffer.append(message(n, chat_id=f"55119000000{n}@s.whatsapp.net"), now=T0 + n)
    redis_client.script_flush()  # a restarted Redis: the claims, sent in one pipeline, meet NOSCRIPT
    claims = redis_buffer.claim_due(now=T0 + 100, limit=5)
    assert sorted(c.chat.chat_id for c in claims) == [f"55119000000{n}@s.whatsapp.net" for n in range(3)]
    assert [ids(c) for c in sorted(claims, key=lambda c: c.chat.chat_id)] == [["MSG0"], ["MSG1"], ["MSG2"]]
    assert redis_buffer.claim_due(now=T0 + 100, limit=5) == []  # each claimed once


def test_commands_given_to_the_ack_run_around_it_in_one_round_trip_and_once(
    redis_buffer: Buffer, redis_client: redis.Redis
) -> None:
    """`before` runs ahead of the ack (the reply's history must be there once the next burst can be claimed), `also`
    after it; on NOSCRIPT only the ack's script is run again."""
    chat = chat_ref().key
    for round_ in range(2):
        redis_buffer.append(message(round_), now=T0 + 100 * round_)
        (claim,) = redis_buffer.claim_due(now=T0 + 100 * round_ + DEBOUNCE, limit=10)
        if round_ == 1:
            redis_client.script_flush()  # a restarted Redis: the ack meets NOSCRIPT in the pipeline

        def before(pipe: redis.client.Pipeline, n: int = round_) -> None:
            pipe.copy(KEYS.batch(chat), f"test:batch-before-ack:{n}")  # the batch still exists before the ack
            pipe.incr("test:before")

        assert redis_buffer.ack(claim, before=before, also=lambda pipe: pipe.incr("test:also"))
        assert redis_client.exists(f"test:batch-before-ack:{round_}")
        assert not redis_client.exists(KEYS.batch(chat))
    assert redis_client.get("test:before") == "2" and redis_client.get("test:also") == "2"


def test_dead_letters_and_stats_in_redis(redis_buffer: Buffer, redis_client: redis.Redis) -> None:
    redis_buffer.append(message(1, "Oi"), now=T0)
    (claim,) = redis_buffer.claim_due(now=T0 + DEBOUNCE, limit=10)
    assert redis_buffer.dead_letter(claim, reason="evolution answered 400", now=T0 + 11)
    (raw,) = redis_client.lrange(KEYS.dead_letters(), 0, -1)
    record = json.loads(raw)
    assert record["chat"] == chat_ref().key
    assert record["error"] == "evolution answered 400"
    assert record["at"] == T0 + 11
    assert [m["text"] for m in record["messages"]] == ["Oi"]
    assert redis_client.hget(KEYS.stats(), "dead_lettered") == "1"


def test_an_idle_chat_leaves_only_its_seen_markers(redis_buffer: Buffer, redis_client: redis.Redis) -> None:
    for n in range(3):
        redis_buffer.append(message(n), now=T0 + n)
    (claim,) = redis_buffer.claim_due(now=T0 + 100, limit=10)
    assert redis_buffer.renew(claim, now=T0 + 100, reply="ok")
    assert redis_buffer.ack(claim)
    assert set(redis_client.keys("*")) == {KEYS.seen(chat_ref().key, f"MSG{n}") for n in range(3)}

    other = chat_ref("5521999990000@s.whatsapp.net")
    redis_buffer.append(message(9, chat_id=other.chat_id), now=T0 + 200)
    (claim,) = redis_buffer.claim_due(now=T0 + 300, limit=10)
    redis_buffer.dead_letter(claim, reason="400", now=T0 + 300)
    leftovers = set(redis_client.keys("*")) - {KEYS.seen(chat_ref().key, f"MSG{n}") for n in range(3)}
    assert leftovers == {KEYS.seen(other.key, "MSG9"), KEYS.dead_letters(), KEYS.stats()}


def test_a_burst_being_typed_holds_its_list_its_due_member_and_its_seen_markers_only(
    redis_buffer: Buffer, redis_client: redis.Redis
) -> None:
    """No `meta` HASH per buffered chat (bench row 5): the deadline is the `due` score, the burst's first message
    time the first record's `at`; the HASH exists only while a batch is claimed."""
    chat = chat_ref().key
    redis_buffer.append(message(1), now=T0)
    redis_buffer.append(message(2), now=T0 + 5)
    seen = {KEYS.seen(chat, "MSG1"), KEYS.seen(chat, "MSG2")}
    assert set(redis_client.keys("*")) == seen | {KEYS.pending(chat), KEYS.due()}
    assert redis_client.zscore(KEYS.due(), chat) == pytest.approx(T0 + 5 + DEBOUNCE)
    assert redis_buffer.pending_info(chat_ref())["deadline"] == pytest.approx(T0 + 5 + DEBOUNCE)

    (claim,) = redis_buffer.claim_due(now=T0 + 5 + DEBOUNCE, limit=10)
    assert redis_client.exists(KEYS.meta(chat))
    redis_buffer.append(message(3), now=T0 + 20)  # typed while the batch is answered: its deadline waits in meta
    assert redis_client.zscore(KEYS.due(), chat) is None
    assert redis_buffer.pending_info(chat_ref())["deadline"] == pytest.approx(T0 + 20 + DEBOUNCE)
    assert redis_buffer.ack(claim)
    assert not redis_client.exists(KEYS.meta(chat))
    assert redis_client.zscore(KEYS.due(), chat) == pytest.approx(T0 + 20 + DEBOUNCE)


def test_a_meta_hash_of_the_older_layout_is_cleared_by_the_claim(
    redis_buffer: Buffer, redis_client: redis.Redis
) -> None:
    """A burst buffered before an upgrade kept first_at and deadline in meta: the claim and ack leave nothing."""
    chat = chat_ref().key
    redis_buffer.append(message(1), now=T0)
    redis_client.hset(KEYS.meta(chat), mapping={"first_at": T0, "deadline": T0 + DEBOUNCE})
    (claim,) = redis_buffer.claim_due(now=T0 + DEBOUNCE, limit=10)
    assert set(redis_client.hkeys(KEYS.meta(chat))) == {"token", "attempts"}
    assert redis_buffer.ack(claim)
    assert set(redis_client.keys("*")) == {KEYS.seen(chat, "MSG1")}


def test_every_key_has_a_ttl_or_is_a_documented_exception(redis_buffer: Buffer, redis_client: redis.Redis) -> None:
    busy, waiting, dead = chat_ref(), chat_ref("5521911112222@s.whatsapp.net"), chat_ref("5531933334444@s.whatsapp.net")
    redis_buffer.append(message(1, chat_id=busy.chat_id), now=T0)
    redis_buffer.append(message(2, chat_id=dead.chat_id), now=T0)
    for claim in redis_buffer.claim_due(now=T0 + DEBOUNCE, limit=10):
        if claim.chat == dead:
            redis_buffer.dead_letter(claim, reason="400", now=T0 + DEBOUNCE)
        else:
            redis_buffer.renew(claim, now=T0 + DEBOUNCE, reply="ok")
    redis_buffer.append(message(3, chat_id=busy.chat_id), now=T0 + 11)  # next burst while busy is claimed
    redis_buffer.append(message(4, chat_id=waiting.chat_id), now=T0 + 12)

    no_ttl = {KEYS.due(), KEYS.leases(), KEYS.dead_letters(), KEYS.stats()}
    for chat in (busy, waiting, dead):
        no_ttl |= {KEYS.pending(chat.key), KEYS.batch(chat.key), KEYS.meta(chat.key)}
    keys = set(redis_client.keys("*"))
    assert {KEYS.due(), KEYS.leases(), KEYS.batch(busy.key), KEYS.pending(busy.key)} <= keys
    for key in keys:
        ttl = redis_client.ttl(key)
        if key.startswith(f"{KEYS.prefix}:seen:"):
            assert 0 < ttl <= DEDUP_TTL, key
        else:
            assert ttl == -1 and key in no_ttl, key


def test_claiming_reads_only_the_due_chats(redis_buffer: Buffer, redis_client: redis.Redis) -> None:
    """Claim cost follows the due chats, not the pending ones: no KEYS/SCAN, one script call per due chat."""
    for n in range(5000):
        due_soon = n % 500 == 0  # 10 of them
        redis_buffer.append(message(n, chat_id=f"55{n:011d}@s.whatsapp.net"), now=T0 if due_soon else T0 + 3600)
    redis_client.script_load(CLAIM_LUA)
    redis_client.config_resetstat()
    claims = redis_buffer.claim_due(now=T0 + DEBOUNCE, limit=16)
    stats = redis_client.info("commandstats")
    assert len(claims) == 10
    assert stats["cmdstat_evalsha"]["calls"] == 10
    assert not {"cmdstat_keys", "cmdstat_scan"} & set(stats)


# ----- concurrency: separate connections, as separate worker processes --------------------------------------


def test_concurrent_appends_and_claims_lose_and_duplicate_nothing(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    appenders, per_appender, chats = 8, 50, 20
    chat_ids = [f"55119{n:08d}@s.whatsapp.net" for n in range(chats)]
    clients: list[redis.Redis] = []
    claimed: list[tuple[str, str]] = []  # (chat key, message id) in claim order
    lock = threading.Lock()
    stop = threading.Event()

    def new_store() -> RedisStore:
        client = redis.Redis.from_url(redis_server.url, decode_responses=True)
        clients.append(client)
        return RedisStore(client, KEYS)

    def append_all(thread: int) -> None:
        store = new_store()
        for i in range(per_appender):
            chat_id = chat_ids[(thread + i) % chats]
            result = store.append(
                message(f"{thread}-{i}", chat_id=chat_id), now=time.time(), debounce=0.002, max_wait=0.01, dedup_ttl=60
            )
            assert result.accepted

    def claim_until_stopped() -> None:
        store = new_store()
        while not stop.is_set():
            claims = store.claim_due(now=time.time(), limit=5, lease_seconds=60)
            for claim in claims:
                with lock:
                    claimed.extend((claim.chat.key, m["id"]) for m in claim.messages)
                assert store.ack(claim)
            if not claims:
                time.sleep(0.001)

    try:
        with ThreadPoolExecutor(appenders + 4) as pool:
            claimers = [pool.submit(claim_until_stopped) for _ in range(4)]
            for future in [pool.submit(append_all, t) for t in range(appenders)]:
                future.result()
            try:
                wait_until(lambda: len(claimed) >= appenders * per_appender or any(f.done() for f in claimers), 20)
            finally:
                stop.set()
            for future in claimers:
                future.result()
    finally:
        for client in clients:
            client.close()

    expected = {f"MSG{t}-{i}" for t in range(appenders) for i in range(per_appender)}
    message_ids = [message_id for _, message_id in claimed]
    assert len(message_ids) == len(expected)
    assert set(message_ids) == expected
    # Within a chat, batches are claimed one after another, so each appender's messages stay in order.
    for chat_id in chat_ids:
        key = chat_ref(chat_id).key
        for thread in range(appenders):
            sequence = [int(m.split("-")[1]) for k, m in claimed if k == key and m.startswith(f"MSG{thread}-")]
            assert sequence == sorted(sequence)
    assert redis_client.zcard(KEYS.due()) == 0
    assert redis_client.zcard(KEYS.leases()) == 0


def test_concurrent_claimers_claim_each_due_chat_once(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    chats, claimers = 200, 8
    setup = RedisStore(redis_client, KEYS)
    for n in range(chats):
        setup.append(message(n, chat_id=f"55219{n:08d}@s.whatsapp.net"), now=T0, debounce=1, max_wait=1, dedup_ttl=60)
    start = threading.Barrier(claimers)
    clients: list[redis.Redis] = []

    def claim_all() -> list[str]:
        client = redis.Redis.from_url(redis_server.url, decode_responses=True)
        clients.append(client)
        store = RedisStore(client, KEYS)
        start.wait(10)
        mine: list[str] = []
        while claims := store.claim_due(now=T0 + 5, limit=7, lease_seconds=60):
            mine.extend(c.chat.key for c in claims)
        return mine

    try:
        with ThreadPoolExecutor(claimers) as pool:
            results = [f.result() for f in [pool.submit(claim_all) for _ in range(claimers)]]
    finally:
        for client in clients:
            client.close()
    everything = [key for result in results for key in result]
    assert len(everything) == chats
    assert set(everything) == {chat_ref(f"55219{n:08d}@s.whatsapp.net").key for n in range(chats)}
    assert setup.claim_due(now=T0 + 5, limit=chats, lease_seconds=60) == []


# ----- Redis down --------------------------------------------------------------------------------------------


def test_unreachable_redis_buffers_in_this_process() -> None:
    link = RedisLink(f"redis://127.0.0.1:{free_port()}/0", retry_seconds=60, timeout_seconds=0.5)
    buffer = Buffer(
        link,
        KEYS,
        debounce_seconds=DEBOUNCE,
        max_wait_seconds=MAX_WAIT,
        dedup_ttl_seconds=DEDUP_TTL,
        lease_seconds=LEASE,
    )
    result = buffer.append(message(1), now=T0)
    assert (result.accepted, result.store) == (True, "local")
    assert link.is_down()
    assert not buffer.append(message(1), now=T0 + 1).accepted
    assert buffer.claim_due(now=T0 + DEBOUNCE - 1, limit=10) == []
    (claim,) = buffer.claim_due(now=T0 + DEBOUNCE, limit=10)
    assert (ids(claim), claim.store) == (["MSG1"], "local")
    assert buffer.ack(claim)
    assert buffer.counts() == {"chats_pending": 0, "chats_in_progress": 0, "dead_letters": 0}


def test_a_redis_outage_falls_back_to_local_and_heals(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    link = RedisLink(redis_server.url, retry_seconds=0.3, timeout_seconds=0.5)
    buffer = Buffer(
        link,
        KEYS,
        debounce_seconds=DEBOUNCE,
        max_wait_seconds=MAX_WAIT,
        dedup_ttl_seconds=DEDUP_TTL,
        lease_seconds=LEASE,
    )
    assert buffer.append(message(1), now=T0).store == "redis"
    redis_server.stop()
    try:
        down = buffer.append(message(2), now=T0 + 1)
        assert (down.accepted, down.store) == (True, "local")
        assert link.is_down()
        assert buffer.claim_due(now=T0 + 2, limit=10) == []
        (claim,) = buffer.claim_due(now=T0 + 1 + DEBOUNCE, limit=10)
        assert (ids(claim), claim.store) == (["MSG2"], "local")
        assert buffer.ack(claim)
    finally:
        redis_server.start()
    wait_until(link.available)
    up = buffer.append(message(3), now=T0 + 20)
    assert (up.accepted, up.store) == (True, "redis")
    assert not link.is_down()
    (claim,) = buffer.claim_due(now=T0 + 20 + DEBOUNCE, limit=10)
    assert (ids(claim), claim.store) == (["MSG3"], "redis")
    assert buffer.ack(claim)
