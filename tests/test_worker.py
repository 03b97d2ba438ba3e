"""The worker end to end on a real Redis, a fake Gemini and a fake Evolution, driven by `run_once(wait=True)`.

The pipeline is wired as `webhook.create_app` wires it, but built here directly so nothing starts on its
own; the clock is a plain object the test moves forward.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import redis

from buffer import Buffer
from components import build_components
from config import Settings
from counters import Counters
from errors import SendError
from gateways.base import Gateway
from memory import History, Turn
from models import ChatRef, IncomingMessage
from redis_keys import RedisKeys
from redis_link import RedisLink
from tests.fakes import Canned, FakeEvolution, FakeGemini, gemini_answer, gemini_error
from tests.gateway_doubles import WrappedGateway, real_evolution
from usage import UsageLedger
from worker import Worker

T0 = 1_700_000_000.0
CHAT = ChatRef(gateway="evolution", instance="loja", chat_id="5511987654321@s.whatsapp.net")
FALLBACK = "Desculpe, estou com uma instabilidade. Já volto!"


class Clock:
    """A hand-moved clock for Worker(clock=...) and the buffer's `now=`."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@dataclass
class Pipeline:
    settings: Settings
    worker: Worker
    buffer: Buffer
    history: History
    counters: Counters
    clock: Clock
    keys: RedisKeys

    def receive(self, n: int | str, text: str, *, chat: ChatRef = CHAT, kind: str = "text") -> None:
        message = IncomingMessage(chat=chat, message_id=f"MSG{n}", text=text, kind=kind)
        assert self.buffer.append(message, now=self.clock()).store == "redis"


PipelineFactory = Callable[..., Pipeline]


@pytest.fixture
def pipeline(settings: Settings) -> Iterator[PipelineFactory]:
    """Builds a worker and its parts from the test settings (plus overrides), as create_app does."""
    links: list[RedisLink] = []

    def make(*, clock: Clock | None = None, senders: dict[str, Gateway] | None = None, **overrides: object) -> Pipeline:
        current = dataclasses.replace(settings, **{"fallback_reply": FALLBACK, **overrides})  # type: ignore[arg-type]
        clock = clock or Clock()
        parts = build_components(current, gateways=senders, clock=clock)
        links.append(parts.link)
        return Pipeline(current, parts.worker, parts.buffer, parts.history, parts.counters, clock, parts.keys)

    yield make
    for link in links:
        assert link.client is not None
        link.client.close()


def sent_texts(fake: FakeEvolution) -> list[str]:
    return [r.json["text"] for r in fake.sends()]


def prompt_turns(prompt: dict) -> list[tuple[str, list[str]]]:
    return [(c["role"], [p["text"] for p in c["parts"]]) for c in prompt["contents"]]


def roles_and_texts(turns: list[Turn]) -> list[tuple[str, str]]:
    return [(t.role, t.text) for t in turns]


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


# ----- the happy path ---------------------------------------------------------------------------------------


def test_a_burst_gets_one_reply(
    pipeline: PipelineFactory, fake_gemini: FakeGemini, fake_evolution: FakeEvolution, redis_client: redis.Redis
) -> None:
    p = pipeline()
    p.receive(1, "Oi")
    p.clock.advance(0.3)
    p.receive(2, "Tudo bem?")
    p.clock.advance(0.3)
    p.receive(3, "Quanto custa a pizza?")
    p.clock.advance(0.9)  # 1.5 s after the first message, 0.9 s after the last: still typing
    assert p.worker.run_once(wait=True) == 0
    assert fake_gemini.received() == []

    p.clock.advance(0.1)
    assert p.worker.run_once(wait=True) == 1
    burst = "Oi\nTudo bem?\nQuanto custa a pizza?"
    (prompt,) = fake_gemini.prompts()
    assert prompt_turns(prompt) == [("user", [burst])]
    (send,) = fake_evolution.sends()
    assert send.path == "/message/sendText/loja"
    assert send.json == {"number": CHAT.chat_id, "text": f"Resposta: {burst}"}
    assert roles_and_texts(p.history.recent(CHAT)) == [("user", burst), ("model", f"Resposta: {burst}")]
    assert p.buffer.counts() == {"chats_pending": 0, "chats_in_progress": 0, "dead_letters": 0}
    assert p.counters.snapshot() == {"replies_sent": 1}
    leftovers = {k for k in redis_client.keys("*") if ":seen:" not in k}
    assert leftovers == {
        p.keys.history(CHAT.key),
        p.keys.replies_this_hour(CHAT.key),
        p.keys.conversation(CHAT.key),  # the conversation: open, last message at...
        p.keys.outbox(CHAT.key),  # the reply's text hash, so its echo is known as ours
        p.keys.own_message(CHAT.key, "FAKE000001"),  # the id the send returned, likewise
        p.keys.usage(CHAT.key),  # the tokens the reply cost, for the chat...
        p.keys.conversation_usage(CHAT.key, f"{T0:.3f}"),  # ... for its conversation (opened by the first message)
        p.keys.usage_day(UsageLedger.day(p.clock())),  # ... and for the day
    }
    assert all(redis_client.ttl(key) > 0 for key in leftovers), "every key left behind expires"

    p.clock.advance(3600)
    assert p.worker.run_once(wait=True) == 0
    assert len(fake_gemini.received()) == 1
    assert len(fake_evolution.sends()) == 1


def test_the_reply_cost_is_summed_with_the_fence_even_after_a_script_flush(
    pipeline: PipelineFactory, settings: Settings, fake_evolution: FakeEvolution, redis_client: redis.Redis
) -> None:
    model = settings.gemini_model
    p = pipeline(model_prices=f"{model}:1/2")  # USD per million input / output tokens
    redis_client.script_flush()  # the sums go in the fence's pipeline, which cannot reload a missing script
    p.receive(1, "Oi")
    p.clock.advance(5)

    assert p.worker.run_once(wait=True) == 1

    assert len(fake_evolution.sends()) == 1
    # The fake model reports 10 input and 5 output tokens: 10 * 1 + 5 * 2 = 20 micro-USD.
    expected = {"input_tokens": "10", "output_tokens": "5", "cost_micro_usd": "20"}
    assert redis_client.hgetall(p.keys.usage(CHAT.key)) == expected
    assert redis_client.hgetall(p.keys.conversation_usage(CHAT.key, f"{T0:.3f}")) == expected
    day = redis_client.hgetall(p.keys.usage_day(UsageLedger.day(p.clock())))
    assert day[f"gemini:{model}:calls"] == "1"
    assert day["cost_micro_usd"] == "20"


def test_history_reaches_the_next_burst(
    pipeline: PipelineFactory, fake_gemini: FakeGemini, fake_evolution: FakeEvolution
) -> None:
    p = pipeline()
    p.receive(1, "Quero uma pizza")
    p.clock.advance(5)
    p.worker.run_once(wait=True)
    p.receive(2, "E o frete?")
    p.clock.advance(5)
    assert p.worker.run_once(wait=True) == 1
    first, second = fake_gemini.prompts()
    assert prompt_turns(second) == [
        ("user", ["Quero uma pizza"]),
        ("model", ["Resposta: Quero uma pizza"]),
        ("user", ["E o frete?"]),
    ]
    assert sent_texts(fake_evolution) == ["Resposta: Quero uma pizza", "Resposta: E o frete?"]
    assert len(p.history.recent(CHAT)) == 4


def test_chats_are_answered_separately(
    pipeline: PipelineFactory, fake_gemini: FakeGemini, fake_evolution: FakeEvolution
) -> None:
    other_number = ChatRef(gateway="evolution", instance="loja", chat_id="5521999990000@s.whatsapp.net")
    other_instance = ChatRef(gateway="evolution", instance="filial", chat_id=CHAT.chat_id)
    p = pipeline()
    p.receive(1, "Oi da loja", chat=CHAT)
    p.receive(2, "Oi de outro número", chat=other_number)
    p.receive(3, "Oi da filial", chat=other_instance)
    p.receive(4, "Tudo bem?", chat=CHAT)
    p.clock.advance(5)
    assert p.worker.run_once(wait=True) == 3

    user_texts = sorted(prompt_turns(prompt)[-1][1][0] for prompt in fake_gemini.prompts())
    assert user_texts == ["Oi da filial", "Oi da loja\nTudo bem?", "Oi de outro número"]
    sends = {(r.path, r.json["number"]): r.json["text"] for r in fake_evolution.sends()}
    assert sends == {
        ("/message/sendText/loja", CHAT.chat_id): "Resposta: Oi da loja\nTudo bem?",
        ("/message/sendText/loja", other_number.chat_id): "Resposta: Oi de outro número",
        ("/message/sendText/filial", CHAT.chat_id): "Resposta: Oi da filial",
    }
    assert [t.text for t in p.history.recent(other_instance)] == ["Oi da filial", "Resposta: Oi da filial"]
    assert [t.text for t in p.history.recent(other_number)] == ["Oi de outro número", "Resposta: Oi de outro número"]


def test_a_burst_without_text_is_acked_without_a_reply(
    pipeline: PipelineFactory, fake_gemini: FakeGemini, fake_evolution: FakeEvolution
) -> None:
    p = pipeline()
    p.receive(1, "", kind="image")
    p.clock.advance(5)
    assert p.worker.run_once(wait=True) == 1
    assert fake_gemini.received() == [] and fake_evolution.received() == []
    assert p.buffer.counts() == {"chats_pending": 0, "chats_in_progress": 0, "dead_letters": 0}


# ----- Gemini failures --------------------------------------------------------------------------------------


def test_gemini_503_twice_then_ok_sends_gemini_text(
    pipeline: PipelineFactory, fake_gemini: FakeGemini, fake_evolution: FakeEvolution
) -> None:
    fake_gemini.queue(Canned(503, gemini_error(503)), Canned(503, gemini_error(503)))
    p = pipeline()
    p.receive(1, "Oi")
    p.clock.advance(5)
    assert p.worker.run_once(wait=True) == 1
    assert len(fake_gemini.received()) == 3
    assert sent_texts(fake_evolution) == ["Resposta: Oi"]
    assert p.counters.snapshot() == {"replies_sent": 1}


def test_gemini_down_sends_the_fallback_once_and_keeps_it_out_of_history(
    pipeline: PipelineFactory, fake_gemini: FakeGemini, fake_evolution: FakeEvolution
) -> None:
    fake_gemini.queue(*[Canned(500, gemini_error(500, "INTERNAL"))] * 10)
    p = pipeline(gemini_max_attempts=2)
    p.receive(1, "Oi")
    p.clock.advance(5)
    assert p.worker.run_once(wait=True) == 1
    assert len(fake_gemini.received()) == 2
    assert sent_texts(fake_evolution) == [FALLBACK]
    assert roles_and_texts(p.history.recent(CHAT)) == [("user", "Oi")]
    assert p.counters.snapshot() == {"ai_failures": 1, "ai_failures_gemini": 1, "fallbacks": 1, "replies_sent": 1}
    p.clock.advance(3600)
    assert p.worker.run_once(wait=True) == 0
    assert sent_texts(fake_evolution) == [FALLBACK]

    # Gemini is back: the unanswered question reaches it with the new one, as one user turn.
    fake_gemini.reset()
    p.receive(2, "Alguém aí?")
    p.clock.advance(5)
    assert p.worker.run_once(wait=True) == 1
    (prompt,) = fake_gemini.prompts()
    assert prompt_turns(prompt) == [("user", ["Oi", "Alguém aí?"])]
    assert sent_texts(fake_evolution) == [FALLBACK, "Resposta: Alguém aí?"]


def test_an_empty_fallback_sends_nothing_and_acks(
    pipeline: PipelineFactory, fake_gemini: FakeGemini, fake_evolution: FakeEvolution
) -> None:
    fake_gemini.queue(*[Canned(500, gemini_error(500, "INTERNAL"))] * 10)
    p = pipeline(gemini_max_attempts=2, fallback_reply="")
    p.receive(1, "Oi")
    p.clock.advance(5)
    assert p.worker.run_once(wait=True) == 1
    assert fake_evolution.received() == []
    assert p.buffer.counts() == {"chats_pending": 0, "chats_in_progress": 0, "dead_letters": 0}
    assert roles_and_texts(p.history.recent(CHAT)) == [("user", "Oi")]
    p.clock.advance(3600)
    assert p.worker.run_once(wait=True) == 0
    assert len(fake_gemini.received()) == 2


# ----- send failures ----------------------------------------------------------------------------------------


def test_a_failed_send_is_retried_later_with_the_stored_reply(
    pipeline: PipelineFactory, fake_gemini: FakeGemini, fake_evolution: FakeEvolution
) -> None:
    # Two 500s exhaust the session's single retry; the worker gives the batch back and tries again.
    fake_evolution.queue(Canned(500, {"error": "down"}), Canned(500, {"error": "down"}))
    p = pipeline(send_max_retries=1)
    p.receive(1, "Oi")
    p.clock.advance(5)
    assert p.worker.run_once(wait=True) == 1
    assert len(fake_evolution.sends()) == 2
    assert p.history.recent(CHAT) == []
    assert p.buffer.counts()["chats_in_progress"] == 1
    assert p.worker.run_once(wait=True) == 0  # not before the retry delay

    p.clock.advance(p.settings.delivery_retry_base_seconds)
    assert p.worker.run_once(wait=True) == 1
    assert len(fake_gemini.received()) == 1  # the stored reply was reused
    assert sent_texts(fake_evolution) == ["Resposta: Oi"] * 3
    assert roles_and_texts(p.history.recent(CHAT)) == [("user", "Oi"), ("model", "Resposta: Oi")]
    assert p.counters.snapshot() == {"replies_sent": 1, "send_failures": 1}
    assert p.buffer.counts() == {"chats_pending": 0, "chats_in_progress": 0, "dead_letters": 0}


def test_a_rejected_send_is_dead_lettered(
    pipeline: PipelineFactory, fake_evolution: FakeEvolution, redis_client: redis.Redis
) -> None:
    fake_evolution.queue(Canned(400, {"status": 400, "response": {"message": [{"exists": False}]}}))
    p = pipeline()
    p.receive(1, "Oi")
    p.clock.advance(5)
    assert p.worker.run_once(wait=True) == 1
    assert len(fake_evolution.sends()) == 1
    assert p.counters.snapshot() == {"dead_lettered": 1, "send_failures": 1}
    assert redis_client.hget(p.keys.stats(), "dead_lettered") == "1"
    (record,) = [json.loads(item) for item in redis_client.lrange(p.keys.dead_letters(), 0, -1)]
    assert record["chat"] == CHAT.key
    assert "400" in record["error"]
    assert [m["text"] for m in record["messages"]] == ["Oi"]
    assert (record["reply"], record["unsent"], record["attempts"]) == ("Resposta: Oi", ["Resposta: Oi"], 1)
    assert len(record["id"]) == 16  # the owner retries or discards it by this id
    assert p.history.recent(CHAT) == []  # nothing was delivered
    p.clock.advance(3600)
    assert p.worker.run_once(wait=True) == 0
    assert len(fake_evolution.sends()) == 1


def test_transient_send_failures_are_dead_lettered_after_max_attempts(
    pipeline: PipelineFactory, fake_gemini: FakeGemini, fake_evolution: FakeEvolution
) -> None:
    fake_evolution.queue(*[Canned(503, {"error": "down"})] * 10)
    p = pipeline(send_max_retries=0, delivery_max_attempts=3)
    p.receive(1, "Oi")
    for _ in range(3):
        p.clock.advance(60)
        assert p.worker.run_once(wait=True) == 1
    p.clock.advance(3600)
    assert p.worker.run_once(wait=True) == 0
    assert len(fake_evolution.sends()) == 3
    assert len(fake_gemini.received()) == 1
    assert p.counters.snapshot() == {"dead_lettered": 1, "send_failures": 3}
    assert p.buffer.counts()["dead_letters"] == 1


def test_a_chat_of_an_unknown_gateway_is_dead_lettered(pipeline: PipelineFactory, fake_gemini: FakeGemini) -> None:
    p = pipeline()
    p.receive(1, "Oi", chat=ChatRef(gateway="zapi", instance="x", chat_id=CHAT.chat_id))
    p.clock.advance(5)
    assert p.worker.run_once(wait=True) == 1
    assert p.counters.snapshot() == {"dead_lettered": 1, "send_failures": 1}
    assert p.buffer.counts()["dead_letters"] == 1


# ----- leases -----------------------------------------------------------------------------------------------


def test_a_worker_whose_lease_was_taken_over_does_not_send(
    pipeline: PipelineFactory, fake_gemini: FakeGemini, fake_evolution: FakeEvolution
) -> None:
    slow = pipeline()
    slow.receive(1, "Oi")
    slow.clock.advance(5)
    fake_gemini.queue(Canned(200, delay=1.0))  # the first Gemini answer hangs past the lease
    stalled = threading.Thread(target=slow.worker.run_once, kwargs={"wait": True})
    stalled.start()
    try:
        fake_gemini.wait_for(1)
        # Another process sees the lease expired and takes the batch over.
        other = pipeline(clock=Clock(slow.clock() + slow.settings.lease_seconds))
        assert other.worker.run_once(wait=True) == 1
    finally:
        stalled.join(10)
    assert not stalled.is_alive()
    assert len(fake_gemini.received()) == 2
    (send,) = fake_evolution.sends()  # only the new owner's
    assert send.json["text"] == "Resposta: Oi"
    assert slow.counters.snapshot() == {}
    assert other.counters.snapshot() == {"replies_sent": 1}
    assert roles_and_texts(slow.history.recent(CHAT)) == [("user", "Oi"), ("model", "Resposta: Oi")]
    assert slow.buffer.counts() == {"chats_pending": 0, "chats_in_progress": 0, "dead_letters": 0}


# ----- the background thread --------------------------------------------------------------------------------


class BrokenForOneChat(WrappedGateway):
    """A gateway double: raises an unexpected (non-SendError) exception for one chat, delegates the rest."""

    def __init__(self, broken: ChatRef, real: Gateway) -> None:
        super().__init__(real)
        self.broken = broken

    def send_text(self, chat: ChatRef, text: str, *, typing_ms: int = 0, reply_to: str = "") -> str:
        if chat == self.broken:
            raise RuntimeError("gateway client bug")
        return self.real.send_text(chat, text, typing_ms=typing_ms, reply_to=reply_to)


def test_the_background_thread_survives_a_failing_chat(
    pipeline: PipelineFactory, settings: Settings, fake_evolution: FakeEvolution
) -> None:
    broken = ChatRef(gateway="evolution", instance="loja", chat_id="5521999990000@s.whatsapp.net")
    p = pipeline(
        clock=time.time,
        senders={"evolution": BrokenForOneChat(broken, real_evolution(settings))},
        worker_poll_seconds=0.02,
        worker_concurrency=4,
    )
    past = time.time() - 60  # already due
    p.buffer.append(IncomingMessage(chat=broken, message_id="B1", text="Oi"), now=past)
    p.buffer.append(IncomingMessage(chat=CHAT, message_id="G1", text="Oi"), now=past)
    p.worker.start()
    try:
        assert p.worker.is_alive()
        fake_evolution.wait_for(1)
        wait_until(lambda: p.counters.snapshot().get("worker_errors") == 1)
        # The loop is still claiming: a later burst of the healthy chat is answered too.
        p.buffer.append(IncomingMessage(chat=CHAT, message_id="G2", text="Ainda aí?"), now=time.time() - 60)
        fake_evolution.wait_for(2)
        assert p.worker.is_alive()
    finally:
        p.worker.stop(timeout=5)
    assert not p.worker.is_alive()
    assert sent_texts(fake_evolution) == ["Resposta: Oi", "Resposta: Ainda aí?"]
    assert {r.json["number"] for r in fake_evolution.sends()} == {CHAT.chat_id}
    # The failing chat keeps its lease; another worker retries it once the lease expires.
    assert p.buffer.counts()["chats_in_progress"] == 1
    assert p.counters.snapshot()["replies_sent"] == 2


def test_start_is_idempotent_and_stop_ends_the_thread(pipeline: PipelineFactory) -> None:
    p = pipeline(clock=time.time, worker_poll_seconds=0.02)
    p.worker.start()
    try:
        thread = p.worker._thread
        p.worker.start()
        assert p.worker._thread is thread
        assert p.worker.is_alive()
        wait_until(lambda: p.worker.last_loop_at > 0)
    finally:
        p.worker.stop(timeout=5)
    assert not p.worker.is_alive()


def test_a_send_error_is_not_an_unexpected_worker_error(pipeline: PipelineFactory, settings: Settings) -> None:
    class Refusing(WrappedGateway):
        def send_text(self, chat: ChatRef, text: str, *, typing_ms: int = 0, reply_to: str = "") -> str:
            raise SendError("number not on WhatsApp", status_code=400, transient=False)

    p = pipeline(senders={"evolution": Refusing(real_evolution(settings))})
    p.receive(1, "Oi")
    p.clock.advance(5)
    assert p.worker.run_once(wait=True) == 1
    assert "worker_errors" not in p.counters.snapshot()
    assert p.counters.snapshot()["dead_lettered"] == 1


# ----- loop guard -------------------------------------------------------------------------------------------


def test_a_chat_over_the_hourly_reply_limit_is_not_answered(
    pipeline: PipelineFactory, fake_gemini: FakeGemini, fake_evolution: FakeEvolution, redis_client: redis.Redis
) -> None:
    p = pipeline(max_replies_per_hour=2)
    for n, text in enumerate(["Mensagem automática 1", "Mensagem automática 2", "Mensagem automática 3"]):
        p.receive(n, text)
        p.clock.advance(5)
        assert p.worker.run_once(wait=True) == 1
    assert sent_texts(fake_evolution) == ["Resposta: Mensagem automática 1", "Resposta: Mensagem automática 2"]
    assert len(fake_gemini.prompts()) == 2
    assert p.counters.snapshot()["loop_guard"] == 1
    # the customer's turn is dated when the message came in (5 s before the worker took it)
    assert p.history.recent(CHAT)[-1] == Turn(role="user", text="Mensagem automática 3", at=p.clock() - 5)
    assert p.buffer.counts()["chats_in_progress"] == 0  # acked, not left to be retried
    assert 0 < redis_client.ttl(p.keys.replies_this_hour(CHAT.key)) <= 3600
    # The count, read with each claim and added with each fence, is of the replies that went out.
    assert redis_client.get(p.keys.replies_this_hour(CHAT.key)) == "2"
    other = ChatRef(gateway="evolution", instance=CHAT.instance, chat_id="5521912345678@s.whatsapp.net")
    p.receive(9, "Outro cliente", chat=other)
    p.clock.advance(5)
    p.worker.run_once(wait=True)
    assert sent_texts(fake_evolution)[-1] == "Resposta: Outro cliente"  # the limit is per chat


def test_the_reply_limit_can_be_turned_off(pipeline: PipelineFactory, fake_evolution: FakeEvolution) -> None:
    p = pipeline(max_replies_per_hour=0)
    for n in range(4):
        p.receive(n, f"Oi {n}")
        p.clock.advance(5)
        p.worker.run_once(wait=True)
    assert len(fake_evolution.sends()) == 4


# ----- newcomer issues: stop, stale replies, an unconfigured gateway, the reply in DEBUG logs ------------------


def test_stop_lets_a_running_reply_finish(
    pipeline: PipelineFactory, fake_gemini: FakeGemini, fake_evolution: FakeEvolution
) -> None:
    fake_gemini.delay = 1.0  # the reply is being written when stop() is called
    p = pipeline(clock=time.time, worker_poll_seconds=0.02)
    p.buffer.append(IncomingMessage(chat=CHAT, message_id="S1", text="Oi"), now=time.time() - 60)
    p.worker.start()
    fake_gemini.wait_for(1)
    p.worker.stop(timeout=10)
    assert sent_texts(fake_evolution) == ["Resposta: Oi"], "stop() must let the running reply finish"
    assert p.counters.snapshot()["replies_sent"] == 1
    assert p.buffer.counts() == {"chats_pending": 0, "chats_in_progress": 0, "dead_letters": 0}


def test_a_reply_older_than_reply_max_age_is_dead_lettered_not_sent(
    pipeline: PipelineFactory, fake_evolution: FakeEvolution
) -> None:
    p = pipeline(reply_max_age_minutes=30, send_max_retries=0)
    p.receive(1, "Oi, tudo bem?")
    p.clock.advance(5)
    fake_evolution.queue(Canned(503, {"error": "down"}))  # the gateway is down: retried later
    assert p.worker.run_once(wait=True) == 1
    assert p.counters.snapshot()["send_failures"] == 1
    p.clock.advance(31 * 60)  # it comes back half an hour later: too late for that reply
    assert p.worker.run_once(wait=True) == 1
    assert len(fake_evolution.sends()) == 1, "the stale reply must not go out"
    assert p.counters.snapshot()["stale_replies"] == 1
    assert p.buffer.counts()["dead_letters"] == 1
    reason = json.loads(p.buffer.redis.client.lindex(p.keys.dead_letters(), 0))["error"]  # type: ignore[union-attr]
    assert reason.startswith("stale: not delivered within REPLY_MAX_AGE_MINUTES (30 min)")


def test_a_chat_whose_gateway_is_not_configured_is_dead_lettered_at_once(
    pipeline: PipelineFactory, fake_evolution: FakeEvolution
) -> None:
    p = pipeline(evolution_api="")
    p.receive(1, "Oi")
    p.clock.advance(5)
    assert p.worker.run_once(wait=True) == 1
    assert p.buffer.counts() == {"chats_pending": 0, "chats_in_progress": 0, "dead_letters": 1}
    assert fake_evolution.sends() == []
    p.clock.advance(3600)
    assert p.worker.run_once(wait=True) == 0  # nothing left to retry


def test_the_reply_text_is_logged_at_debug_only(pipeline: PipelineFactory, caplog: pytest.LogCaptureFixture) -> None:
    p = pipeline()
    p.receive(1, "Qual o horário?")
    p.clock.advance(5)
    with caplog.at_level("DEBUG", logger="worker"):
        p.worker.run_once(wait=True)
    debug = [r.getMessage() for r in caplog.records if r.levelname == "DEBUG" and "reply text" in r.getMessage()]
    assert debug == ["reply text chat=evolution:loja:5511*****4321 text='Resposta: Qual o horário?'"]
    assert all("Resposta" not in r.getMessage() for r in caplog.records if r.levelname != "DEBUG")


# ----- a crash between the gateway taking a part and the progress reaching Redis ------------------------------


class Crash(BaseException):
    """Stands for SIGKILL: nothing after it runs (not even the worker's own error handling)."""


class CrashAfterAccepting(WrappedGateway):
    """The real Evolution adapter, but the process "dies" right after the gateway took the part `crash_on`."""

    def __init__(self, real: Gateway, crash_on: str) -> None:
        super().__init__(real)
        self.crash_on = crash_on
        self.crashed = False

    def send_text(self, chat: ChatRef, text: str, *, typing_ms: int = 0, reply_to: str = "") -> str:
        message_id = self.real.send_text(chat, text, typing_ms=typing_ms, reply_to=reply_to)
        if text == self.crash_on and not self.crashed:
            self.crashed = True
            raise Crash
        return message_id


THREE_PARTS = "Olá! Temos sim.\n\nCusta R$ 48.\n\nEntregamos hoje."


def crash_mid_reply(
    pipeline: PipelineFactory, settings: Settings, fake_gemini: FakeGemini, **overrides: object
) -> Pipeline:
    fake_gemini.queue(Canned(200, gemini_answer(THREE_PARTS)))
    real = real_evolution(settings)
    p = pipeline(
        senders={"evolution": CrashAfterAccepting(real, "Custa R$ 48.")},
        split_messages=True,
        typing_ms_per_char=0,
        **overrides,
    )
    p.receive(1, "Tem bolo de cenoura?")
    p.clock.advance(5)
    with pytest.raises(Crash):
        p.worker.run_once(wait=True)
    return p


def test_after_a_crash_a_part_whose_echo_came_back_is_not_sent_again(
    pipeline: PipelineFactory, settings: Settings, fake_gemini: FakeGemini, fake_evolution: FakeEvolution
) -> None:
    p = crash_mid_reply(pipeline, settings, fake_gemini)
    assert sent_texts(fake_evolution) == ["Olá! Temos sim.", "Custa R$ 48."]
    # Evolution's send.message for the part reached the webhook (of any process).
    echo = IncomingMessage(chat=CHAT, message_id="3EB0ECHO", text="Custa R$ 48.", from_me=True)
    assert p.worker.conversations.from_business_side(echo, now=p.clock()) == "own_echo"
    p.clock.advance(p.settings.lease_seconds + 1)
    assert p.worker.run_once(wait=True) == 1
    assert sent_texts(fake_evolution) == ["Olá! Temos sim.", "Custa R$ 48.", "Entregamos hoje."]
    assert not [r for r in fake_evolution.received() if "/chat/findMessages/" in r.path]  # no need to ask
    assert p.counters.snapshot()["parts_found_after_crash"] == 1
    assert roles_and_texts(p.history.recent(CHAT))[-1] == ("model", THREE_PARTS)


def test_after_a_crash_without_an_echo_evolution_is_asked_with_iso_bounds(
    pipeline: PipelineFactory, settings: Settings, fake_gemini: FakeGemini, fake_evolution: FakeEvolution
) -> None:
    p = crash_mid_reply(pipeline, settings, fake_gemini, clock=Clock(time.time()))
    p.clock.advance(p.settings.lease_seconds + 1)
    assert p.worker.run_once(wait=True) == 1
    assert sent_texts(fake_evolution) == ["Olá! Temos sim.", "Custa R$ 48.", "Entregamos hoje."]
    (asked,) = [r for r in fake_evolution.received() if "/chat/findMessages/" in r.path]
    where = asked.json["where"]
    assert where["key"] == {"remoteJid": CHAT.chat_id, "fromMe": True}
    assert all(isinstance(bound, str) and bound.endswith("Z") for bound in where["messageTimestamp"].values())
    assert p.counters.snapshot()["parts_found_after_crash"] == 1


def test_after_a_crash_a_part_found_nowhere_is_sent_again(
    pipeline: PipelineFactory, settings: Settings, fake_gemini: FakeGemini, fake_evolution: FakeEvolution
) -> None:
    p = crash_mid_reply(pipeline, settings, fake_gemini, clock=Clock(time.time()))
    fake_evolution.queue(Canned(200, {"messages": {"total": 0, "records": []}}))  # it has no trace of the part
    p.clock.advance(p.settings.lease_seconds + 1)
    assert p.worker.run_once(wait=True) == 1
    assert sent_texts(fake_evolution) == ["Olá! Temos sim.", "Custa R$ 48.", "Custa R$ 48.", "Entregamos hoje."]
    assert p.counters.snapshot()["parts_resent_after_crash"] == 1
