"""The Evolution sender against a local fake sendText server: URLs, headers, bodies, retries and errors."""

from __future__ import annotations

import pytest

from errors import SendError
from gateways.evolution import EvolutionGateway
from gateways.shared_secret import SharedSecretVerifier
from models import ChatRef
from sender import EvolutionSender, evolution_body, evolution_send_url
from tests.conftest import free_port, make_settings
from tests.fakes import Canned, FakeEvolution

CHAT = ChatRef(gateway="evolution", instance="Loja Centro/1", chat_id="5511987654321@s.whatsapp.net")


def sender(fake: FakeEvolution, **overrides: object) -> EvolutionSender:
    values: dict[str, object] = {"evolution_api": fake.url, **overrides}
    return EvolutionSender(make_settings(**values))


@pytest.mark.parametrize(
    ("evolution_api", "expected"),
    [
        ("http://evo:8080", "http://evo:8080/message/sendText/Loja%20Centro%2F1"),
        ("http://evo:8080/", "http://evo:8080/message/sendText/Loja%20Centro%2F1"),
        ("https://evo.example.com/api/", "https://evo.example.com/api/message/sendText/Loja%20Centro%2F1"),
        ("http://evo:8080/message/sendText/fixa", "http://evo:8080/message/sendText/fixa"),
    ],
)
def test_send_url_from_a_base_url_or_a_full_send_text_url(evolution_api: str, expected: str) -> None:
    assert evolution_send_url(evolution_api, CHAT.instance) == expected


def test_bodies_of_v2_and_v1() -> None:
    assert evolution_body("5511", "Oi", version=2, delay_ms=0) == {"number": "5511", "text": "Oi"}
    assert evolution_body("5511", "Oi", version=2, delay_ms=1200) == {"number": "5511", "text": "Oi", "delay": 1200}
    assert evolution_body("5511", "Oi", version=1, delay_ms=0) == {"number": "5511", "textMessage": {"text": "Oi"}}
    assert evolution_body("5511", "Oi", version=1, delay_ms=800) == {
        "number": "5511",
        "textMessage": {"text": "Oi"},
        "options": {"delay": 800, "presence": "composing"},
    }


def test_sends_to_the_chat_instance_with_the_api_key(fake_evolution: FakeEvolution) -> None:
    fake_evolution.queue(Canned(201, {"key": {"id": "3EB0ABC123"}, "status": "PENDING"}))
    message_id = sender(fake_evolution).send_text(CHAT, "Olá, tudo bem?")
    assert message_id == "3EB0ABC123"
    (request,) = fake_evolution.received()
    assert request.path == "/message/sendText/Loja%20Centro%2F1"
    assert request.headers["apikey"] == "test-evolution-key"
    assert request.headers["content-type"] == "application/json"
    assert request.json == {"number": CHAT.chat_id, "text": "Olá, tudo bem?"}


def test_a_full_send_text_url_is_used_as_is(fake_evolution: FakeEvolution) -> None:
    sender(fake_evolution, evolution_api=f"{fake_evolution.url}/message/sendText/fixa").send_text(CHAT, "Oi")
    (request,) = fake_evolution.received()
    assert request.path == "/message/sendText/fixa"


def test_v1_body_and_typing_delay(fake_evolution: FakeEvolution) -> None:
    sender(fake_evolution, evolution_api_version=1, send_delay_ms=1500).send_text(CHAT, "Oi")
    assert fake_evolution.received()[0].json == {
        "number": CHAT.chat_id,
        "textMessage": {"text": "Oi"},
        "options": {"delay": 1500, "presence": "composing"},
    }


def test_v2_typing_delay(fake_evolution: FakeEvolution) -> None:
    sender(fake_evolution, send_delay_ms=1500).send_text(CHAT, "Oi")
    assert fake_evolution.received()[0].json == {"number": CHAT.chat_id, "text": "Oi", "delay": 1500}


@pytest.mark.parametrize("send_delay_ms", [0, 1500])
def test_typing_ms_is_the_delay_of_this_send(fake_evolution: FakeEvolution, send_delay_ms: int) -> None:
    """A caller's typing time wins over SEND_DELAY_MS, in both API versions."""
    sender(fake_evolution, send_delay_ms=send_delay_ms).send_text(CHAT, "Oi", typing_ms=2300, reply_to="3A0001")
    sender(fake_evolution, send_delay_ms=send_delay_ms, evolution_api_version=1).send_text(CHAT, "Oi", typing_ms=900)
    v2, v1 = fake_evolution.received()
    assert v2.json == {"number": CHAT.chat_id, "text": "Oi", "delay": 2300}
    assert v1.json == {
        "number": CHAT.chat_id,
        "textMessage": {"text": "Oi"},
        "options": {"delay": 900, "presence": "composing"},
    }


def test_no_typing_ms_keeps_send_delay_ms(fake_evolution: FakeEvolution) -> None:
    sender(fake_evolution, send_delay_ms=1500).send_text(CHAT, "Oi", typing_ms=0)
    sender(fake_evolution).send_text(CHAT, "Oi", typing_ms=0)
    with_setting, without = fake_evolution.received()
    assert with_setting.json == {"number": CHAT.chat_id, "text": "Oi", "delay": 1500}
    assert without.json == {"number": CHAT.chat_id, "text": "Oi"}


def test_the_read_timeout_covers_the_typing_delay(fake_evolution: FakeEvolution) -> None:
    """Evolution holds the request while it shows "typing…", so a long typing time is not a timeout."""
    fake_evolution.queue(Canned(201, {"key": {"id": "3EB0LATE"}}, delay=0.5))
    assert sender(fake_evolution, send_timeout_seconds=0.2).send_text(CHAT, "Oi", typing_ms=600) == "3EB0LATE"


def test_the_gateway_passes_the_typing_time_on(fake_evolution: FakeEvolution) -> None:
    gateway = EvolutionGateway(make_settings(evolution_api=fake_evolution.url), shared_secret=SharedSecretVerifier())
    assert gateway.send_text(CHAT, "Oi", typing_ms=1200, reply_to="3A0001").startswith("FAKE")
    assert fake_evolution.received()[0].json == {"number": CHAT.chat_id, "text": "Oi", "delay": 1200}


def test_an_answer_without_a_message_id_gives_an_empty_id(fake_evolution: FakeEvolution) -> None:
    fake_evolution.queue(Canned(200, {"status": "ok"}))
    assert sender(fake_evolution).send_text(CHAT, "Oi") == ""


def test_a_5xx_is_retried_and_delivered_once(fake_evolution: FakeEvolution) -> None:
    fake_evolution.queue(Canned(500, {"error": "Internal Server Error"}))
    assert sender(fake_evolution).send_text(CHAT, "Oi").startswith("FAKE")
    requests = fake_evolution.received()
    assert len(requests) == 2
    assert requests[0].json == requests[1].json == {"number": CHAT.chat_id, "text": "Oi"}


def test_5xx_beyond_the_retries_is_a_transient_error(fake_evolution: FakeEvolution) -> None:
    fake_evolution.queue(*[Canned(503, {"error": "Service Unavailable"})] * 3)
    with pytest.raises(SendError) as info:
        sender(fake_evolution, send_max_retries=1).send_text(CHAT, "Oi")
    assert (info.value.status_code, info.value.transient) == (503, True)
    assert "503" in str(info.value)
    assert CHAT.chat_id not in str(info.value)  # the number is masked
    assert len(fake_evolution.received()) == 2


@pytest.mark.parametrize("status", [400, 422])
def test_a_rejected_message_is_permanent_and_not_retried(fake_evolution: FakeEvolution, status: int) -> None:
    fake_evolution.queue(Canned(status, {"status": status, "response": {"message": [{"exists": False}]}}))
    with pytest.raises(SendError) as info:
        sender(fake_evolution).send_text(CHAT, "Oi")
    assert (info.value.status_code, info.value.transient) == (status, False)
    assert len(fake_evolution.received()) == 1


def test_unauthorized_is_transient_and_not_retried_by_the_session(fake_evolution: FakeEvolution) -> None:
    """A wrong apikey is fixed by the operator, so the worker retries later rather than dropping the reply."""
    fake_evolution.queue(Canned(401, {"error": "Unauthorized"}))
    with pytest.raises(SendError) as info:
        sender(fake_evolution).send_text(CHAT, "Oi")
    assert (info.value.status_code, info.value.transient) == (401, True)
    assert len(fake_evolution.received()) == 1


def test_connection_refused_is_transient() -> None:
    settings = make_settings(evolution_api=f"http://127.0.0.1:{free_port()}", send_max_retries=1)
    with pytest.raises(SendError, match="unreachable") as info:
        EvolutionSender(settings).send_text(CHAT, "Oi")
    assert info.value.transient
    assert info.value.status_code is None
    assert isinstance(info.value.__cause__, Exception)


def test_a_read_timeout_is_not_retried(fake_evolution: FakeEvolution) -> None:
    """The gateway may have delivered a message whose answer timed out: sending it again could duplicate it."""
    fake_evolution.queue(Canned(200, delay=1.0))
    with pytest.raises(SendError, match="unreachable") as info:
        sender(fake_evolution, send_timeout_seconds=0.2).send_text(CHAT, "Oi")
    assert info.value.transient
    assert len(fake_evolution.received()) == 1


def test_missing_evolution_api_is_an_error_without_a_request(fake_evolution: FakeEvolution) -> None:
    with pytest.raises(SendError, match="EVOLUTION_API"):
        sender(fake_evolution, evolution_api="").send_text(CHAT, "Oi")
    assert fake_evolution.received() == []
