"""gateways/http.GatewaySession: the environment's proxy settings still apply, read once per host, and its
lighter POST for sends does what requests would."""

from __future__ import annotations

import base64
import email.utils
import time
from collections.abc import Iterator
from urllib.parse import parse_qs

import pytest

from errors import SendError
from gateways.http import post_or_raise, retry_after_seconds, retrying_session
from models import ChatRef
from tests.fakes import Canned, FakeServer
from tests.redis_server import free_port


def test_proxy_variables_apply_per_host_and_are_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.local:3128")
    monkeypatch.setenv("NO_PROXY", "gateway.internal")
    session = retrying_session(0)

    def proxies(url: str) -> dict[str, str]:
        found = session.merge_environment_settings(url, {}, None, None, None)["proxies"]
        return {scheme: proxy for scheme, proxy in found.items() if scheme != "no"}

    assert proxies("http://evolution.example:8080/message/sendText/loja") == {"http": "http://proxy.local:3128"}
    assert proxies("http://gateway.internal/message/sendText/loja") == {}  # NO_PROXY
    monkeypatch.delenv("HTTP_PROXY")
    # The same host again: what was read the first time (the environment does not change under a running service).
    assert proxies("http://evolution.example:8080/chat/whatsappNumbers/loja") == {"http": "http://proxy.local:3128"}
    assert proxies("http://other.example/") == {}  # a new host reads the environment as it is now
    # Explicit proxies on a call are honoured as given, never cached.
    given = session.merge_environment_settings(
        "http://evolution.example:8080/", {"http": "http://p:1"}, None, None, None
    )
    assert given["proxies"]["http"] == "http://p:1"


# ----- send_post: the sends' lighter POST keeps what requests would have done -----------------------------


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    server = FakeServer()
    yield server
    server.close()


def test_send_post_goes_through_the_environments_proxy_with_the_full_url(
    fake: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fake stands in for the proxy: plain HTTP through a proxy asks it for the absolute URL.
    monkeypatch.setenv("HTTP_PROXY", fake.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    session = retrying_session(0)

    answer = session.send_post(
        "http://evolution.example:8080/message/sendText/Loja Centro", timeout=(2, 5), json={"text": "Olá"}
    )

    assert answer.status_code == 200
    (request,) = fake.received()
    assert request.path == "http://evolution.example:8080/message/sendText/Loja%20Centro"
    assert request.json == {"text": "Olá"}
    assert request.headers["content-type"] == "application/json"


def test_send_post_sends_a_form_with_basic_auth_and_retries_a_503(
    fake: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    fake.queue(Canned(503, {"error": "busy"}), Canned(201, {"sid": "SM1"}))
    session = retrying_session(2, backoff_seconds=0.01)

    answer = session.send_post(
        f"{fake.url}/Messages.json?x=1", timeout=(2, 5), data={"Body": "Oi, tudo bem?"}, auth=("AC1", "segredo")
    )

    assert (answer.status_code, answer.json()) == (201, {"sid": "SM1"})
    first, second = fake.received()
    assert second.path == first.path == "/Messages.json?x=1"
    assert parse_qs(second.body.decode()) == {"Body": ["Oi, tudo bem?"]}
    assert second.headers["authorization"] == "Basic " + base64.b64encode(b"AC1:segredo").decode()


def test_a_send_to_nowhere_is_a_transient_send_error_naming_the_cause() -> None:
    session = retrying_session(0)
    chat = ChatRef(gateway="evolution", instance="loja", chat_id="5511987654321@s.whatsapp.net")

    with pytest.raises(SendError) as raised:
        post_or_raise(
            session, f"http://127.0.0.1:{free_port()}/x", gateway="evolution", chat=chat, timeout=(1, 1), json={}
        )

    assert raised.value.transient
    assert "NewConnectionError" in str(raised.value)
    assert "5511987654321" not in str(raised.value)


def test_retry_after_is_read_as_seconds_or_a_date() -> None:
    assert retry_after_seconds({"Retry-After": "3"}) == 3.0
    soon = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= (retry_after_seconds({"Retry-After": soon}) or 0) <= 31
    assert retry_after_seconds({"Retry-After": "amanhã"}) is None
    assert retry_after_seconds({}) is None
