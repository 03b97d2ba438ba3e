"""The webhook app from the factory, with a real Redis: what it tells the owner about odd payloads."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from flask import Flask

from models import ChatRef
from webhook import Components
from webhook_token import TOKEN_FILE_NAME

CUSTOMER = "5511987654321@s.whatsapp.net"


def upsert(text: str, n: int, **envelope: object) -> dict[str, object]:
    data = {"key": {"remoteJid": "5511987654321@s.whatsapp.net", "fromMe": False, "id": f"3EB0{n:016d}"}}
    return {"event": "messages.upsert", "data": {**data, "message": {"conversation": text}}, **envelope}


def test_an_evolution_payload_without_instance_is_said_once(app: Flask, caplog: pytest.LogCaptureFixture) -> None:
    client = app.test_client()
    with caplog.at_level("WARNING", logger="webhook"):
        for n in range(3):
            assert client.post("/webhook", json=upsert("Oi", n)).json["buffered"] == 1
    warnings = [r.getMessage() for r in caplog.records if "named no instance" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "'default'" in warnings[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="webhook"):
        client.post("/webhook", json=upsert("Oi", 9, instance="loja"))
    assert "named no instance" not in caplog.text


# ----- closed by default ------------------------------------------------------------------------------------


@pytest.fixture
def closed(make_app: Callable[..., Flask], tmp_path: Path) -> Callable[..., Flask]:
    """Apps with the default WEBHOOK_AUTH (on) and no secret configured, their .env folder in tmp_path."""
    return lambda **overrides: make_app(**{"webhook_auth": True, "env_file": str(tmp_path / ".env"), **overrides})


def test_without_a_secret_the_webhook_is_closed_with_a_generated_token(
    closed: Callable[..., Flask], redis_client: redis.Redis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="webhook_token"):
        client = closed().test_client()
    assert client.post("/webhook", json=upsert("Oi", 1, instance="loja")).status_code == 401
    assert client.post("/webhook/mega", json={"key": {}, "message": {}}).status_code in (401, 404)
    token = redis_client.get("wa_assistant:webhook:token")
    assert token and len(token) >= 24
    assert (tmp_path / TOKEN_FILE_NAME).read_text().strip() == token  # kept beside .env too
    bearer = client.post(
        "/webhook", json=upsert("Oi", 2, instance="loja"), headers={"Authorization": f"Bearer {token}"}
    )
    query = client.post("/webhook", json=upsert("Oi", 3, instance="loja"), query_string={"token": token})
    assert (bearer.status_code, query.status_code) == (200, 200)
    assert client.post("/webhook", json=upsert("Oi", 4), headers={"Authorization": "Bearer errado"}).status_code == 401
    # The owner is told how to point the gateway at it, once, by the process that generated it.
    (announced,) = [r.getMessage() for r in caplog.records if "closed by default" in r.getMessage()]
    assert f"Authorization: Bearer {token}" in announced and f"/webhook?token={token}" in announced


def test_every_process_and_a_restart_accept_the_same_token(
    closed: Callable[..., Flask], redis_client: redis.Redis, tmp_path: Path
) -> None:
    first = closed().test_client()
    token = redis_client.get("wa_assistant:webhook:token")
    another = closed().test_client()  # another process (or host) on the same Redis
    auth = {"Authorization": f"Bearer {token}"}
    assert another.post("/webhook", json=upsert("Oi", 1, instance="loja"), headers=auth).status_code == 200
    assert first.post("/webhook", json=upsert("Oi", 2, instance="loja"), headers=auth).status_code == 200
    # Redis down (or wiped) at the next start: the file beside .env still has it.
    redis_client.flushdb()
    again = closed(redis_enabled=False).test_client()
    assert again.post("/webhook", json=upsert("Oi", 3, instance="loja"), headers=auth).status_code == 200
    assert again.post("/webhook", json=upsert("Oi", 4, instance="loja")).status_code == 401


def test_webhook_auth_off_opens_it_and_a_configured_token_replaces_the_generated_one(
    closed: Callable[..., Flask], redis_client: redis.Redis
) -> None:
    open_client = closed(webhook_auth=False).test_client()
    assert open_client.post("/webhook", json=upsert("Oi", 1, instance="loja")).status_code == 200
    mine = closed(webhook_token="meu-token-escolhido").test_client()
    assert (
        mine.post(
            "/webhook", json=upsert("Oi", 2, instance="loja"), query_string={"token": "meu-token-escolhido"}
        ).status_code
        == 200
    )
    assert mine.post("/webhook", json=upsert("Oi", 3, instance="loja")).status_code == 401
    assert redis_client.get("wa_assistant:webhook:token") is None  # nothing generated when one is configured


# ----- payloads found by fuzzing (bench/fuzz_webhook.py) -----------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        # a shared contact whose "contacts" is not a list
        {
            "event": "messages.upsert",
            "data": {
                "key": {"remoteJid": "5511900@s.whatsapp.net", "id": "3EB09"},
                "message": {"contactsArrayMessage": {"contacts": True}},
            },
        },
        # an instance that is a list: not an instance name
        {"event": "messages.upsert", "instance": list(range(50)), **upsert("Oi", 77)},
    ],
)
def test_odd_shapes_are_answered_not_500(app: Flask, payload: dict[str, object]) -> None:
    response = app.test_client().post("/webhook", json=payload)
    assert response.status_code in (200, 400), response.text
    if response.status_code == 200 and payload.get("instance") is not None:
        parts: Components = app.extensions["assistant"]
        assert parts.buffer.pending_info(ChatRef(gateway="evolution", instance="default", chat_id=CUSTOMER)) is not None


def test_a_webhook_with_too_many_events_reads_only_the_first_hundred(app: Flask) -> None:
    events = [upsert("Oi", n, instance="loja") for n in range(150)]
    summary = app.test_client().post("/webhook", json=events).json
    assert (summary["buffered"], summary["ignored"]) == (100, 1)
