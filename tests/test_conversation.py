"""Conversation state (conversation.py) on a real Redis, and the same table on the in-process store: a person's
message pauses and extends, commands resume, pause without limit and close, the assistant's own echoes are known
by text and by id, opt-outs have no expiry, the lifecycle closes idle conversations, and a reply is withheld when a
person acted after the decision. Times are injected (`now=`), from a fixed epoch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import redis

from buffer import Buffer
from conversation import ECHO_WINDOW_SECONDS, Changes, Commands, Conversations, Params, text_hash
from models import ChatRef, IncomingMessage
from redis_keys import RedisKeys
from redis_link import RedisLink
from tests.conftest import RedisServer

T0 = 1_800_000_000.0
PAUSE = 7200.0
IDLE = 86400.0
KEYS = RedisKeys("conv")
CHAT = ChatRef(gateway="evolution", instance="loja", chat_id="5511987654321@s.whatsapp.net")
OTHER = ChatRef(gateway="evolution", instance="loja", chat_id="5521912345678@s.whatsapp.net")


def business(n: int | str, text: str, *, chat: ChatRef = CHAT, kind: str = "text") -> IncomingMessage:
    return IncomingMessage(chat=chat, message_id=f"HUMAN{n}", text=text, kind=kind, from_me=True)


def customer(n: int | str, text: str, *, chat: ChatRef = CHAT) -> IncomingMessage:
    return IncomingMessage(chat=chat, message_id=f"CUST{n}", text=text)


@dataclass
class Setup:
    conversations: Conversations
    buffer: Buffer
    store: str


@pytest.fixture(params=["redis", "local"])
def setup(request: pytest.FixtureRequest) -> Iterator[Setup]:
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        request.getfixturevalue("redis_client")  # flushes the db
        link = RedisLink(server.url)
    else:
        link = RedisLink(None)
    buffer = Buffer(link, KEYS, debounce_seconds=10, max_wait_seconds=60, dedup_ttl_seconds=3600, lease_seconds=30)
    conversations = Conversations(
        link,
        KEYS,
        buffer,
        params=Params(debounce=10, max_wait=60, dedup_ttl=3600, idle=IDLE),
        commands=Commands(handoff_seconds=PAUSE),
    )
    yield Setup(conversations, buffer, request.param)
    if link.client is not None:
        link.client.close()


def state(s: Setup, now: float, chat: ChatRef = CHAT) -> str:
    return s.conversations.status(chat).state_at(now, IDLE)


# ----- a person on the business side -------------------------------------------------------------------------


def test_a_persons_message_pauses_the_chat_and_joins_its_burst(setup: Setup) -> None:
    s = setup
    assert s.buffer.append(customer(1, "Oi, quanto custa?"), now=T0).accepted
    assert s.conversations.from_business_side(business(1, "Olá! Custa R$ 10."), now=T0 + 5) == "pause"
    status = s.conversations.status(CHAT)
    assert (status.state, status.paused_at, status.paused_until) == ("paused", T0 + 5, T0 + 5 + PAUSE)
    assert (status.business_at, status.last_at, status.opened_at) == (T0 + 5, T0 + 5, T0 + 5)
    assert state(s, T0 + 6) == "paused" and state(s, T0 + 5 + PAUSE) == "open"  # it ends by itself
    assert state(s, T0 + 6, OTHER) == "closed"  # another chat is untouched
    (claim,) = s.buffer.claim_due(now=T0 + 20, limit=5)
    assert [(m["id"], m.get("by")) for m in claim.messages] == [("CUST1", None), ("HUMAN1", "human")]


def test_each_further_message_extends_the_pause(setup: Setup) -> None:
    s = setup
    s.conversations.from_business_side(business(1, "Olá"), now=T0)
    s.conversations.from_business_side(business(2, "Já te respondo"), now=T0 + 600)
    status = s.conversations.status(CHAT)
    assert (status.paused_at, status.paused_until) == (T0, T0 + 600 + PAUSE)


def test_commands_pause_without_limit_resume_and_close(setup: Setup) -> None:
    s = setup
    assert s.conversations.from_business_side(business(1, "#HUMANO"), now=T0) == "pause"
    assert s.conversations.status(CHAT).paused_until == math.inf
    s.conversations.from_business_side(business(2, "ainda aqui"), now=T0 + 60)  # stays without limit
    assert s.conversations.status(CHAT).paused_until == math.inf
    assert state(s, T0 + 60 + IDLE - 1) == "paused"  # no limit, for as long as the conversation lasts
    assert s.conversations.from_business_side(business(3, " #bot "), now=T0 + 120) == "resume"
    assert state(s, T0 + 121) == "open"
    assert s.conversations.from_business_side(business(4, "#encerrar"), now=T0 + 180) == "close"
    assert state(s, T0 + 181) == "closed"
    # Commands are not kept for the history: only the plain message joined the burst.
    (claim,) = s.buffer.claim_due(now=T0 + 1000, limit=5)
    assert [m["text"] for m in claim.messages] == ["ainda aqui"]


def test_a_message_after_a_close_opens_a_new_conversation(setup: Setup) -> None:
    s = setup
    s.conversations.from_business_side(business(1, "#humano"), now=T0)
    s.conversations.from_business_side(business(2, "#encerrar"), now=T0 + 10)
    s.conversations.from_business_side(business(3, "Bom dia!"), now=T0 + 20)
    status = s.conversations.status(CHAT)
    assert (status.state, status.opened_at, status.paused_at, status.paused_until) == (
        "paused",
        T0 + 20,
        T0 + 20,
        T0 + 20 + PAUSE,
    )


def test_handoff_off_ignores_a_persons_messages_but_not_the_commands(setup: Setup) -> None:
    s = setup
    s.conversations.commands = Commands(handoff_seconds=0)
    assert s.conversations.from_business_side(business(1, "Olá"), now=T0) == "ignored"
    assert state(s, T0 + 1) == "closed"
    assert s.conversations.from_business_side(business(2, "#humano"), now=T0) == "pause"


def test_a_redelivered_message_counts_once(setup: Setup) -> None:
    s = setup
    assert s.conversations.from_business_side(business(1, "Olá"), now=T0) == "pause"
    assert s.conversations.from_business_side(business(1, "Olá"), now=T0 + 30) == "duplicate"
    assert s.conversations.from_business_side(business(2, "#bot"), now=T0 + 40) == "resume"
    assert s.conversations.from_business_side(business(2, "#bot"), now=T0 + 50) == "duplicate"
    assert s.conversations.status(CHAT).business_at == T0 + 40


# ----- the assistant's own echoes ----------------------------------------------------------------------------


def test_an_echo_of_a_part_being_sent_is_known_by_its_text(setup: Setup) -> None:
    s = setup
    assert s.conversations.settle(CHAT, Changes(), now=T0, sending=["Olá! Tudo bem?", "Custa R$ 10."])
    # Evolution posts send.message before sendText returns the id: only the text can tell.
    assert s.conversations.from_business_side(business("E1", "  Custa R$ 10. "), now=T0 + 1) == "own_echo"
    # ... and the fromMe upsert of the same message then matches by its id, whatever its text says.
    assert s.conversations.from_business_side(business("E1", ""), now=T0 + 2) == "own_echo"
    assert state(s, T0 + 3) == "closed", "an echo must never pause the chat"
    # Another chat, or the same text much later, is a person's.
    assert s.conversations.from_business_side(business("E2", "Custa R$ 10.", chat=OTHER), now=T0 + 3) == "pause"
    later = T0 + ECHO_WINDOW_SECONDS + 1
    assert s.conversations.from_business_side(business("E3", "Olá! Tudo bem?"), now=later) == "pause"


def test_an_echo_with_an_id_a_send_returned_is_ours_for_the_dedup_ttl(setup: Setup) -> None:
    s = setup
    s.conversations.mark_sent(CHAT, "3EB0SENT", now=T0)
    late = T0 + ECHO_WINDOW_SECONDS + 60
    assert s.conversations.from_business_side(business("ignored", "x"), now=late) == "pause"
    echo = IncomingMessage(chat=CHAT, message_id="3EB0SENT", text="texto diferente", from_me=True)
    assert s.conversations.from_business_side(echo, now=late + 1) == "own_echo"


def test_a_media_message_from_the_phone_is_a_persons_even_with_a_caption_we_sent(setup: Setup) -> None:
    s = setup
    s.conversations.settle(CHAT, Changes(), now=T0, sending=["Segue a foto"])
    assert s.conversations.from_business_side(business(1, "Segue a foto", kind="image"), now=T0 + 1) == "pause"


# ----- what the worker records -------------------------------------------------------------------------------


def test_a_reply_is_withheld_when_a_person_acted_after_the_decision(setup: Setup) -> None:
    s = setup
    decided_with = s.conversations.status(CHAT).business_at
    s.conversations.from_business_side(business(1, "Deixa comigo"), now=T0 + 10)
    assert not s.conversations.settle(CHAT, Changes(), now=T0 + 11, sending=["Resposta"], decided_with=decided_with)
    # Not marked: an identical text typed by the person later is theirs.
    assert s.conversations.from_business_side(business(2, "Resposta"), now=T0 + 12) == "pause"
    fresh = s.conversations.status(CHAT).business_at
    assert s.conversations.settle(CHAT, Changes(), now=T0 + 13, sending=["Outra"], decided_with=fresh)


def test_a_settle_in_the_fences_round_trip_records_only_while_the_claim_holds_the_batch(
    setup: Setup, request: pytest.FixtureRequest
) -> None:
    if setup.store != "redis":
        pytest.skip("the fence's round trip is Redis's; in memory the worker settles on its own")
    s = setup
    client: redis.Redis = request.getfixturevalue("redis_client")
    assert s.buffer.append(customer(1, "Oi"), now=T0).accepted
    (claim,) = s.buffer.claim_due(now=T0 + 20, limit=1)
    decided_with = s.conversations.status(CHAT).business_at
    client.script_flush()  # Redis forgot its scripts (a restart): the fence and the settle are each run again
    fenced = s.conversations.settle_in_fence(
        CHAT,
        Changes(first_at=T0, last_at=T0, opt="out"),
        token=claim.token,
        now=T0 + 20,
        sending=["Resposta"],
        decided_with=decided_with,
    )
    assert fenced is not None
    assert s.buffer.renew(claim, now=T0 + 20, also=fenced)
    assert (fenced.held, fenced.go_ahead) == (True, True)
    assert s.conversations.status(CHAT).opted_out
    assert s.conversations.from_business_side(business("E1", "Resposta"), now=T0 + 21) == "own_echo"

    # A person answers after the decision: the claim holds, the reply is withheld and not marked as ours.
    s.conversations.from_business_side(business(2, "Deixa comigo"), now=T0 + 22)
    withheld = s.conversations.settle_in_fence(
        CHAT, Changes(), token=claim.token, now=T0 + 23, sending=["Outra"], decided_with=decided_with
    )
    assert s.buffer.renew(claim, now=T0 + 23, also=withheld)
    assert withheld is not None and (withheld.held, withheld.go_ahead) == (True, False)

    # The lease runs out and another worker takes the batch: the first one's settle records nothing.
    (taken,) = s.buffer.claim_due(now=T0 + 23 + 31, limit=1)
    assert taken.token != claim.token
    late = s.conversations.settle_in_fence(
        CHAT, Changes(opt="in"), token=claim.token, now=T0 + 55, sending=["Tarde"], decided_with=None
    )
    assert not s.buffer.renew(claim, now=T0 + 55, also=late)
    assert late is not None and (late.held, late.go_ahead) == (False, False)
    assert s.conversations.status(CHAT).opted_out, "the opt-in of a claim that lost its lease must not be recorded"
    assert s.conversations.from_business_side(business(3, "Tarde"), now=T0 + 56) == "pause"


def test_opt_out_has_no_expiry_and_opt_in_clears_it(setup: Setup, request: pytest.FixtureRequest) -> None:
    s = setup
    s.conversations.settle(CHAT, Changes(first_at=T0, last_at=T0, opt="out"), now=T0)
    assert s.conversations.status(CHAT).opted_out
    assert not s.conversations.status(OTHER).opted_out
    if s.store == "redis":
        client: redis.Redis = request.getfixturevalue("redis_client")
        assert client.ttl(KEYS.opt_out(CHAT.key)) == -1  # no TTL: it outlives conversations
        assert 0 < client.ttl(KEYS.conversation(CHAT.key)) <= IDLE + 86400
    s.conversations.settle(CHAT, Changes(opt="in"), now=T0 + 60)
    assert not s.conversations.status(CHAT).opted_out


def test_a_customers_request_pauses_from_its_time_without_being_a_persons_action(setup: Setup) -> None:
    s = setup
    s.conversations.settle(CHAT, Changes(first_at=T0, last_at=T0, pause_from=T0, pause_seconds=PAUSE), now=T0 + 120)
    status = s.conversations.status(CHAT)
    assert (status.state, status.paused_at, status.paused_until, status.business_at) == (
        "paused",
        T0,
        T0 + PAUSE,
        0.0,
    )


def test_the_notice_is_remembered_until_the_conversation_closes(setup: Setup) -> None:
    s = setup
    s.conversations.settle(CHAT, Changes(first_at=T0, last_at=T0, notice_for="2027-01-04T08:00:00-03:00"), now=T0)
    assert s.conversations.status(CHAT).notice_for == "2027-01-04T08:00:00-03:00"
    s.conversations.business_action(CHAT, action="close", now=T0 + 10)
    assert s.conversations.status(CHAT).notice_for == ""


def test_an_idle_conversation_closes_and_the_next_message_opens_another(setup: Setup) -> None:
    s = setup
    s.conversations.settle(CHAT, Changes(first_at=T0, last_at=T0 + 30), now=T0 + 40)
    assert s.conversations.status(CHAT).opened_at == T0
    assert state(s, T0 + 30 + IDLE) == "open"
    assert state(s, T0 + 31 + IDLE) == "closed"
    s.conversations.from_business_side(business(1, "#humano"), now=T0 + 2 * IDLE)
    later = T0 + 3 * IDLE + 1  # a day and a second after the command
    s.conversations.settle(CHAT, Changes(first_at=later, last_at=later), now=later)
    status = s.conversations.status(CHAT)
    # Idle for a day: closing cleared even the pause without limit.
    assert (status.opened_at, status.state, status.paused_until) == (later, "open", 0.0)


def test_a_batch_from_before_a_close_does_not_reopen_the_conversation(setup: Setup) -> None:
    s = setup
    s.conversations.settle(CHAT, Changes(first_at=T0, last_at=T0), now=T0)
    s.conversations.business_action(CHAT, action="close", now=T0 + 50)
    s.conversations.settle(CHAT, Changes(first_at=T0 + 40, last_at=T0 + 40), now=T0 + 60)  # came in before it
    assert state(s, T0 + 61) == "closed"


# ----- Redis down ------------------------------------------------------------------------------------------


def on_redis(redis_server: RedisServer, *, retry_seconds: float) -> tuple[RedisLink, Buffer, Conversations]:
    """A buffer and conversations on their own link, which the test marks down and waits to come back."""
    link = RedisLink(redis_server.url, retry_seconds=retry_seconds)
    buffer = Buffer(link, KEYS, debounce_seconds=1, max_wait_seconds=5, dedup_ttl_seconds=60, lease_seconds=5)
    conversations = Conversations(link, KEYS, buffer, params=Params(debounce=1, max_wait=5, dedup_ttl=60, idle=IDLE))
    return link, buffer, conversations


def test_opt_outs_decided_while_redis_is_down_reach_redis_when_it_is_back(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    link, buffer, conversations = on_redis(redis_server, retry_seconds=0.05)
    assert not conversations.status(CHAT).opted_out  # read from Redis, remembered here
    link.mark_down(redis.ConnectionError("test"))
    conversations.settle(CHAT, Changes(opt="out"), now=T0)  # decided on this process's store
    assert conversations.status(CHAT).opted_out
    assert not redis_client.exists(KEYS.opt_out(CHAT.key))
    wait_until(lambda: link.available())
    assert conversations.status(CHAT).opted_out  # the first call after the outage writes it to Redis
    assert redis_client.exists(KEYS.opt_out(CHAT.key))
    link.client.close()  # type: ignore[union-attr]


def test_opt_outs_decided_while_redis_is_down_reach_redis_with_the_next_fenced_settle(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    link, buffer, conversations = on_redis(redis_server, retry_seconds=0.05)
    link.mark_down(redis.ConnectionError("test"))
    conversations.settle(CHAT, Changes(opt="out"), now=T0)
    wait_until(lambda: link.available())
    # The worker's next reply, another chat's, settles in its fence's round trip (no `settle` call of its own).
    assert buffer.append(customer(1, "Oi", chat=OTHER), now=T0).accepted
    (claim,) = buffer.claim_due(now=T0 + 10, limit=1)
    fenced = conversations.settle_in_fence(OTHER, Changes(), token=claim.token, now=T0 + 10, sending=["Olá"])
    assert buffer.renew(claim, now=T0 + 10, also=fenced)
    assert redis_client.exists(KEYS.opt_out(CHAT.key))
    link.client.close()  # type: ignore[union-attr]


def test_an_opt_out_read_from_redis_still_holds_while_redis_is_down(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    redis_client.set(KEYS.opt_out(CHAT.key), str(T0))
    link, buffer, conversations = on_redis(redis_server, retry_seconds=60)
    assert conversations.status(CHAT).opted_out
    link.mark_down(redis.ConnectionError("test"))
    assert conversations.status(CHAT).opted_out, "stop must still mean stop during an outage"
    link.client.close()  # type: ignore[union-attr]


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_text_hash_ignores_surrounding_whitespace_only() -> None:
    assert text_hash(" Olá! \n") == text_hash("Olá!")
    assert text_hash("Olá!") != text_hash("Olá")
