"""notify.py against a local HTTP fake: one JSON POST per handoff request, sent on a background thread (the
caller never waits), retried on 429/5xx and connection errors, counted when delivered or given up, never raised.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from counters import Counters
from models import ChatRef
from notify import NOTIFY_RETRIES, HandoffNotifier, handoff_notice
from tests.conftest import free_port
from tests.fakes import Canned, FakeServer

CHAT = ChatRef(gateway="evolution", instance="loja", chat_id="5511987654321@s.whatsapp.net")
NEW_YEAR_2026 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


@pytest.fixture
def endpoint() -> Iterator[FakeServer]:
    fake = FakeServer()
    yield fake
    fake.close()


@pytest.fixture
def make_notifier() -> Iterator[Callable[[str], tuple[HandoffNotifier, Counters]]]:
    notifiers: list[HandoffNotifier] = []

    def build(url: str) -> tuple[HandoffNotifier, Counters]:
        counters = Counters()
        notifier = HandoffNotifier(url, counters, backoff_seconds=0.01)
        notifiers.append(notifier)
        return notifier, counters

    yield build
    for notifier in notifiers:
        notifier.close()


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def notify(notifier: HandoffNotifier, at: float = NEW_YEAR_2026) -> None:
    notifier.notify(CHAT, customer_name="Maria Souza", text="quero falar com um atendente\nurgente", at=at)


def test_handoff_notice_body() -> None:
    body = handoff_notice(CHAT, customer_name="Maria", text="atendente", at=NEW_YEAR_2026 + 0.5)
    assert body.pop("id") == handoff_notice(CHAT, customer_name="", text="", at=NEW_YEAR_2026 + 0.5)["id"]
    assert body == {
        "event": "handoff_request",
        "chat": "evolution:loja:5511987654321@s.whatsapp.net",
        "tenant": "default",
        "gateway": "evolution",
        "instance": "loja",
        "chat_id": "5511987654321@s.whatsapp.net",
        "customer_name": "Maria",
        "text": "atendente",
        "at": "2026-01-01T00:00:00.500000+00:00",
    }


def test_one_notice_is_one_post_with_the_full_chat(endpoint: FakeServer, make_notifier: Callable) -> None:
    chat = ChatRef(gateway="evolution", instance="loja centro/1", chat_id="5511987654321@s.whatsapp.net")
    notifier, counters = make_notifier(f"{endpoint.url}/hooks/handoff")
    notifier.notify(chat, customer_name="Maria Souza", text="quero falar com um atendente", at=NEW_YEAR_2026)

    [request] = endpoint.wait_for(1)
    assert (request.method, request.path) == ("POST", "/hooks/handoff")
    assert request.headers["content-type"] == "application/json"
    body = request.json
    assert len(body.pop("id")) == 20  # the same for a retried or repeated notice of this request
    assert body == {
        "event": "handoff_request",
        "chat": "evolution:loja%20centro%2F1:5511987654321@s.whatsapp.net",
        "tenant": "default",
        "gateway": "evolution",
        "instance": "loja centro/1",
        "chat_id": "5511987654321@s.whatsapp.net",
        "customer_name": "Maria Souza",
        "text": "quero falar com um atendente",
        "at": "2026-01-01T00:00:00+00:00",
    }
    wait_until(lambda: counters.snapshot().get("handoff_notices") == 1)
    time.sleep(0.1)
    assert len(endpoint.received()) == 1
    assert counters.snapshot() == {"handoff_notices": 1}


def test_notify_never_waits_for_the_endpoint(endpoint: FakeServer, make_notifier: Callable) -> None:
    endpoint.queue(Canned(200, {}, delay=2.0))
    notifier, counters = make_notifier(endpoint.url)

    started = time.monotonic()
    notify(notifier)
    assert time.monotonic() - started < 0.5

    endpoint.wait_for(1, timeout=1.5)  # recorded before the fake starts its 2 s wait
    assert counters.snapshot() == {}  # not answered yet
    wait_until(lambda: counters.snapshot() == {"handoff_notices": 1})


@pytest.mark.parametrize(
    ("statuses", "requests", "counter"),
    [
        ([503, 200], 2, "handoff_notices"),
        ([429, 502, 200], 3, "handoff_notices"),
        ([500, 500, 500, 500], 1 + NOTIFY_RETRIES, "handoff_notify_failures"),
        ([400], 1, "handoff_notify_failures"),  # not retried: the same body would be refused again
        ([404], 1, "handoff_notify_failures"),
        ([204], 1, "handoff_notices"),
    ],
)
def test_retries_then_counts(
    endpoint: FakeServer, make_notifier: Callable, statuses: list[int], requests: int, counter: str
) -> None:
    endpoint.queue(*(Canned(status, {}) for status in statuses))
    notifier, counters = make_notifier(endpoint.url)
    notify(notifier)

    wait_until(lambda: counters.snapshot() != {})
    time.sleep(0.1)  # a further retry would show up here
    assert counters.snapshot() == {counter: 1}
    received = endpoint.received()
    assert len(received) == requests
    assert all(r.json == received[0].json for r in received)  # every retry sends the same notice


def test_a_notice_that_still_fails_is_logged_with_the_number_masked(
    endpoint: FakeServer, make_notifier: Callable, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    endpoint.queue(*(Canned(500, {}) for _ in range(4)))
    notifier, counters = make_notifier(endpoint.url)
    notify(notifier)

    wait_until(lambda: counters.snapshot() == {"handoff_notify_failures": 1})
    wait_until(lambda: "not delivered" in caplog.text)
    assert "chat=evolution:loja:5511*****4321" in caplog.text
    assert "answered 500" in caplog.text
    assert "5511987654321" not in caplog.text


def test_an_unreachable_endpoint_is_a_counted_failure(
    make_notifier: Callable, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    notifier, counters = make_notifier(f"http://127.0.0.1:{free_port()}/hook")

    notify(notifier)  # nothing listens there: no exception reaches the caller
    wait_until(lambda: counters.snapshot() != {})
    assert counters.snapshot() == {"handoff_notify_failures": 1}
    wait_until(lambda: "not delivered" in caplog.text)
    assert "ConnectionError" in caplog.text


def test_each_notice_is_sent(endpoint: FakeServer, make_notifier: Callable) -> None:
    notifier, counters = make_notifier(endpoint.url)
    for n in range(5):
        notify(notifier, at=NEW_YEAR_2026 + n)

    wait_until(lambda: counters.snapshot() == {"handoff_notices": 5})
    times = sorted(r.json["at"] for r in endpoint.received())
    assert times == [f"2026-01-01T00:00:0{n}+00:00" for n in range(5)]


def test_no_url_means_off(make_notifier: Callable) -> None:
    threads_before = set(threading.enumerate())
    notifier, counters = make_notifier("")

    notify(notifier)
    time.sleep(0.1)
    started = [t for t in set(threading.enumerate()) - threads_before if t.name.startswith("notify")]
    assert started == []
    assert counters.snapshot() == {}
