"""pacing.py on a real Redis: sends of one number spaced by its rate across processes, the gap to one customer, a
gateway's rate-limit answer slowing the number down, and the same schedule kept in-process while Redis is down; and
the worker sending a part again after a 429 instead of failing the reply."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable

import pytest
import redis

from components import build_components
from config import Settings
from models import ChatRef, IncomingMessage
from pacing import JITTER_MARGIN, PaceLimits, Pacer
from redis_keys import RedisKeys
from redis_link import RedisLink
from tests.fakes import Canned, FakeEvolution
from tests.redis_server import RedisServer, free_port

NUMBER = "loja"
CUSTOMER = ChatRef(gateway="evolution", instance=NUMBER, chat_id="5511987654321@s.whatsapp.net")
OTHER_CUSTOMER = ChatRef(gateway="evolution", instance=NUMBER, chat_id="5521912345678@s.whatsapp.net")
OTHER_NUMBER = ChatRef(gateway="evolution", instance="filial", chat_id="5511987654321@s.whatsapp.net")


def customer(n: int) -> ChatRef:
    return ChatRef(gateway="evolution", instance=NUMBER, chat_id=f"55119{n:08d}@s.whatsapp.net")


@pytest.fixture
def make_pacer(redis_server: RedisServer) -> Callable[..., Pacer]:
    links: list[RedisLink] = []
    keys = RedisKeys(f"pacing-test-{uuid.uuid4().hex[:8]}")  # this test's own schedule

    def make(*, rate: float = 10.0, gap: float = 0.0, url: str | None = None) -> Pacer:
        link = RedisLink(url or redis_server.url, retry_seconds=30)
        links.append(link)
        return Pacer(link, keys, PaceLimits({"evolution": rate, "meta": 0.0}, gap))

    yield make
    for link in links:
        if link.client is not None:
            link.client.close()


def most_in_one_second(moments: list[float]) -> int:
    """The most moments in any half-open 1-second window."""
    moments = sorted(moments)
    return max(sum(1 for m in moments[i:] if m < start + 1.0) for i, start in enumerate(moments))


def test_one_numbers_sends_are_spaced_by_its_rate_across_processes(make_pacer: Callable[..., Pacer]) -> None:
    first, second = make_pacer(rate=10), make_pacer(rate=10)  # two processes' pacers on one Redis
    moments = []
    for n in range(30):
        pacer = (first, second)[n % 2]
        moments.append(time.time() + pacer.reserve(customer(n)))

    moments.sort()
    gaps = [b - a for a, b in zip(moments, moments[1:], strict=False)]
    assert min(gaps) >= 0.1 - 0.005  # Redis's clock and this one are the same host's
    assert most_in_one_second(moments) <= 10
    assert moments[-1] - moments[0] >= 29 * 0.1
    # Another number is not held back by this one's queue.
    assert first.reserve(OTHER_NUMBER) < 0.05


def test_a_customer_keeps_its_gap_and_others_only_the_numbers_spacing(make_pacer: Callable[..., Pacer]) -> None:
    pacer = make_pacer(rate=20, gap=1.5)
    assert pacer.reserve(CUSTOMER) < 0.05
    assert pacer.reserve(CUSTOMER) == pytest.approx(1.5, abs=0.05)
    # The number's next slot after the first send: the first customer's gap holds only that customer back.
    assert pacer.reserve(OTHER_CUSTOMER) == pytest.approx(JITTER_MARGIN / 20, abs=0.05)


def test_a_rate_limit_answer_slows_the_number_down_and_never_speeds_it_up(make_pacer: Callable[..., Pacer]) -> None:
    pacer = make_pacer(rate=0)  # not paced: a gateway's "too fast" is honoured all the same
    assert pacer.wait_for_turn(CUSTOMER) == 0
    pacer.slow_down(CUSTOMER, 3.0)
    pacer.slow_down(CUSTOMER, 1.0)  # a shorter one does not bring the next moment forward
    assert pacer.reserve(OTHER_CUSTOMER) == pytest.approx(3.0, abs=0.1)
    pacer.slow_down(OTHER_NUMBER, 2.0, scope="customer")  # one customer's conversation (Meta's pair limit)
    assert pacer.reserve(OTHER_NUMBER) == pytest.approx(2.0, abs=0.1)
    assert pacer.health()["slowdowns"] == 3


def test_the_schedule_is_kept_in_process_while_redis_is_down(make_pacer: Callable[..., Pacer]) -> None:
    pacer = make_pacer(rate=5, url=f"redis://127.0.0.1:{free_port()}/0")
    waits = [pacer.reserve(customer(n)) for n in range(4)]
    assert waits[0] < 0.05
    assert [round(b - a, 2) for a, b in zip(waits, waits[1:], strict=False)] == [round(JITTER_MARGIN / 5, 2)] * 3


def test_a_send_waits_for_its_moment_and_health_shows_it(make_pacer: Callable[..., Pacer]) -> None:
    pacer = make_pacer(rate=2)
    pacer.wait_for_turn(customer(1))
    seen: list[dict[str, object]] = []
    pacer._sleep = lambda seconds: (seen.append(pacer.health()), time.sleep(seconds))  # type: ignore[method-assign]
    began = time.monotonic()
    waited = pacer.wait_for_turn(customer(2))

    assert waited == pytest.approx(JITTER_MARGIN / 2, abs=0.05)
    assert time.monotonic() - began >= waited - 0.01
    (during,) = seen
    assert during["waiting_sends"] == 1
    assert 0 < float(during["longest_wait_seconds"]) <= waited + 0.001  # type: ignore[arg-type]
    assert during["waiting_by_number"] == {"evolution:loja": pytest.approx(waited, abs=0.05)}
    after = pacer.health()
    assert (after["waiting_sends"], after["delayed_sends"]) == (0, 1)


# ----- the worker --------------------------------------------------------------------------------------------


def test_a_429_from_the_gateway_slows_the_number_and_the_part_goes_out_once(
    settings: Settings, fake_evolution: FakeEvolution, redis_client: redis.Redis
) -> None:
    paced = dataclasses.replace(settings, outbound_rate_evolution=50.0)
    parts = build_components(paced)
    try:
        fake_evolution.queue(Canned(429, {"error": "Too Many Requests"}))
        message = IncomingMessage(chat=CUSTOMER, message_id="MSG1", text="Oi, tem pão?")
        parts.buffer.append(message, now=time.time() - 5)

        assert parts.worker.run_once(wait=True) == 1

        first, second = fake_evolution.sends()
        assert first.json == second.json
        assert second.at - first.at >= 2.0 - 0.05  # Evolution gave no Retry-After: the number's default slow-down
        assert parts.counters.snapshot() == {"rate_limited_sends": 1, "replies_sent": 1}
        assert parts.buffer.counts() == {"chats_pending": 0, "chats_in_progress": 0, "dead_letters": 0}
    finally:
        if parts.link.client is not None:
            parts.link.client.close()
