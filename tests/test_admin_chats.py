"""The owner's chats API (/admin/api/chats/<gateway:instance:chat_id>, GET, and POST .../pause, .../resume,
.../close) on the app from the factory with a real Redis: the ADMIN_TOKEN check, bad and unknown chats, what a
chat shows (state, pending burst, last messages, opt-out), and what the actions change, count and log.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pytest
from flask import Flask
from flask.testing import FlaskClient

import web.chats_api as chats_api_module
from conversation import Changes
from memory import Turn
from models import ChatRef, IncomingMessage
from tests.fakes import Canned, FakeEvolution
from webhook import Components

ADMIN_TOKEN = "admin-token-chats-7c1e04"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
NUMBER = "5511987654321"
CHAT = ChatRef(gateway="evolution", instance="loja", chat_id=f"{NUMBER}@s.whatsapp.net")
ROUTES = [("GET", ""), ("POST", "pause"), ("POST", "resume"), ("POST", "close")]


def url(chat_key: str, action: str = "") -> str:
    path = f"/admin/api/chats/{quote(chat_key, safe='')}"
    return f"{path}/{action}" if action else path


class Clock:
    """The chats API's clock, pinned (monkeypatch is for the clock), so that the tests at the end can put the time
    just where it rounds up to the millisecond the conversation store keeps."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


def whole_second() -> float:
    return float(int(time.time()))


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock(whole_second() + 0.2504)  # stored as ".250": a little before now, as with most real clocks
    monkeypatch.setattr(chats_api_module, "time", clock)
    return clock


@pytest.fixture
def app_settings(clock: Clock) -> dict[str, object]:
    return {"admin_token": ADMIN_TOKEN}  # with the clock pinned


@pytest.fixture
def parts(app: Flask) -> Components:
    return app.extensions["assistant"]


def call(client: FlaskClient, method: str, chat_key: str, action: str = "", **kwargs: Any) -> Any:
    return client.open(url(chat_key, action), method=method, **kwargs)


def message(chat: ChatRef, message_id: str, text: str) -> IncomingMessage:
    return IncomingMessage(chat=chat, message_id=message_id, text=text)


# ----- access -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "action"), ROUTES)
def test_disabled_without_admin_token(make_app: Callable[..., Flask], method: str, action: str) -> None:
    app = make_app(admin_token="")
    client = app.test_client()
    for headers in ({}, AUTH, {"Authorization": "Bearer "}):
        response = call(client, method, CHAT.key, action, headers=headers)
        assert response.status_code == 404
        assert response.json["detail"] == "admin endpoints are disabled: ADMIN_TOKEN is not set"
    assert app.extensions["assistant"].conversations.status(CHAT).state == ""


@pytest.mark.parametrize(("method", "action"), ROUTES)
@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing bearer token"),
        ({"Authorization": "Bearer "}, "missing bearer token"),
        ({"Authorization": ADMIN_TOKEN}, "missing bearer token"),
        ({"Authorization": f"Basic {ADMIN_TOKEN}"}, "missing bearer token"),
        ({"Authorization": "Bearer admin-token-chats-7c1e05"}, "invalid admin token"),
        ({"Authorization": f"Bearer {ADMIN_TOKEN}x"}, "invalid admin token"),
    ],
)
def test_refused_without_the_right_token(
    client: FlaskClient, parts: Components, method: str, action: str, headers: dict[str, str], reason: str
) -> None:
    response = call(client, method, CHAT.key, action, headers=headers, json={"minutes": 30} if action else None)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.json["error"] == "unauthorized"
    assert response.json["reason"].startswith(reason)
    assert parts.counters.snapshot() == {"admin_auth_failures": 1}
    assert parts.conversations.status(CHAT).state == ""  # a refused action changes nothing


def test_right_token_is_accepted_on_every_route(client: FlaskClient) -> None:
    for method, action in [("POST", "pause"), ("POST", "resume"), ("POST", "close"), ("GET", "")]:
        response = call(client, method, CHAT.key, action, headers=AUTH)
        assert response.status_code == 200, (method, action, response.json)
        assert response.json["chat"] == CHAT.key


def test_bearer_scheme_is_case_insensitive(client: FlaskClient) -> None:
    response = call(client, "POST", CHAT.key, "pause", headers={"Authorization": f"bearer {ADMIN_TOKEN}"})
    assert response.status_code == 200


# ----- bad and unknown chats --------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "action"), ROUTES)
@pytest.mark.parametrize(
    "raw",
    [
        "not-a-chat",
        "evolution:loja",
        "whatsapp:x:y",
        "Evolution:loja:5511987654321@s.whatsapp.net",
        "evolution::5511987654321@s.whatsapp.net",
        "evolution:loja:",
        ":loja:5511987654321@s.whatsapp.net",
        "::",
    ],
)
def test_bad_chat_is_a_400(client: FlaskClient, parts: Components, method: str, action: str, raw: str) -> None:
    response = call(client, method, raw, action, headers=AUTH)
    assert response.status_code == 400
    assert response.json == {"error": "bad chat", "detail": "expected gateway:instance:chat_id of a known gateway"}
    assert parts.counters.snapshot() == {}


def test_unknown_chat_is_a_404(client: FlaskClient) -> None:
    other = ChatRef(gateway="meta", instance="123456789", chat_id="5511900000000")
    response = call(client, "GET", other.key, headers=AUTH)
    assert response.status_code == 404
    assert response.json == {"error": "unknown chat", "chat": "meta:123456789:5511900000000"}


# ----- GET --------------------------------------------------------------------------------------------------


def test_a_pending_burst_shows_before_any_conversation(client: FlaskClient, parts: Components) -> None:
    first = whole_second() - 0.75
    assert parts.buffer.append(message(CHAT, "MSG-1", "Oi"), now=first).accepted
    assert parts.buffer.append(message(CHAT, "MSG-2", "tem bolo de cenoura?"), now=first + 0.5).accepted

    response = call(client, "GET", CHAT.key, headers=AUTH)
    assert response.status_code == 200
    assert response.json == {
        "chat": "evolution:loja:5511987654321@s.whatsapp.net",
        "tenant": "default",
        "gateway": "evolution",
        "instance": "loja",
        "chat_id": "5511987654321@s.whatsapp.net",
        "state": "closed",  # the worker has not handled the burst: no conversation yet
        "paused_until": None,
        "opted_out": False,
        "pending": {"messages": 2, "deadline": first + 0.5 + 1.0, "answering": False},  # DEBOUNCE_SECONDS=1
        "conversation": {"opened_at": None, "last_message_at": None, "last_human_action_at": None},
        "last_messages": [],
        "usage": {"input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0},  # nothing asked of a model yet
        "usage_total": {"input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0},
    }


def test_last_messages_say_who_wrote_them(client: FlaskClient, parts: Components, clock: Clock) -> None:
    at = clock.now - 60
    parts.history.append(
        CHAT,
        [
            Turn(role="user", text="Oi", at=at),
            Turn(role="model", text="Olá! Como posso ajudar?", at=at + 1),
            Turn(role="model", text="Sou a Ana, da loja", at=at + 2, author="human"),
        ],
    )

    response = call(client, "GET", CHAT.key, headers=AUTH)
    assert response.status_code == 200
    assert response.json["last_messages"] == [
        {"role": "customer", "text": "Oi", "at": at},
        {"role": "bot", "text": "Olá! Como posso ajudar?", "at": at + 1},
        {"role": "human", "text": "Sou a Ana, da loja", "at": at + 2},
    ]
    assert response.json["pending"] is None
    assert response.json["opted_out"] is False


def test_an_opted_out_chat_says_so(client: FlaskClient, parts: Components, clock: Clock) -> None:
    assert call(client, "GET", CHAT.key, headers=AUTH).status_code == 404
    parts.conversations.settle(CHAT, Changes(opt="out"), now=clock.now - 5)

    response = call(client, "GET", CHAT.key, headers=AUTH)
    assert response.status_code == 200
    assert response.json["opted_out"] is True
    assert response.json["chat_id"] == CHAT.chat_id

    parts.conversations.settle(CHAT, Changes(opt="in"), now=clock.now - 1)
    assert call(client, "GET", CHAT.key, headers=AUTH).status_code == 404  # nothing else is known of it


# ----- POST pause / resume / close --------------------------------------------------------------------------


def test_pause_for_minutes(client: FlaskClient, parts: Components, clock: Clock) -> None:
    response = call(client, "POST", CHAT.key, "pause", headers=AUTH, json={"minutes": 30})
    assert response.status_code == 200
    body = response.json
    assert body["chat"] == CHAT.key
    assert body["state"] == "paused"
    assert body["paused_until"] == pytest.approx(clock.now + 1800, abs=0.001)
    assert body["conversation"]["last_human_action_at"] == pytest.approx(clock.now, abs=0.001)
    assert body["conversation"]["opened_at"] == pytest.approx(clock.now, abs=0.001)
    assert parts.counters.snapshot() == {"handoffs": 1}
    assert parts.conversations.status(CHAT).state == "paused"

    clock.now += 1799
    assert call(client, "GET", CHAT.key, headers=AUTH).json["state"] == "paused"
    clock.now += 2  # the pause ends by itself
    later = call(client, "GET", CHAT.key, headers=AUTH).json
    assert (later["state"], later["paused_until"]) == ("open", None)


def test_a_pause_in_force_is_only_lengthened(client: FlaskClient, clock: Clock) -> None:
    call(client, "POST", CHAT.key, "pause", headers=AUTH, json={"minutes": 30})
    shorter = call(client, "POST", CHAT.key, "pause", headers=AUTH, json={"minutes": 10}).json
    assert shorter["paused_until"] == pytest.approx(clock.now + 1800, abs=0.001)
    longer = call(client, "POST", CHAT.key, "pause", headers=AUTH, json={"minutes": 60}).json
    assert longer["paused_until"] == pytest.approx(clock.now + 3600, abs=0.001)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"data": b"", "content_type": "application/json"},
        {"json": {}},
        {"json": {"minutes": None}},
    ],
    ids=["no body", "empty json body", "empty object", "minutes null"],
)
def test_pause_without_minutes_lasts_until_resumed(
    client: FlaskClient, parts: Components, clock: Clock, kwargs: dict[str, Any]
) -> None:
    response = call(client, "POST", CHAT.key, "pause", headers=AUTH, **kwargs)
    assert response.status_code == 200
    assert (response.json["state"], response.json["paused_until"]) == ("paused", None)
    assert parts.conversations.status(CHAT).paused_until == math.inf

    clock.now += 23 * 3600
    later = call(client, "GET", CHAT.key, headers=AUTH).json
    assert (later["state"], later["paused_until"]) == ("paused", None)
    clock.now += 2 * 3600  # CONVERSATION_IDLE_MINUTES (a day) without messages closes even this pause
    assert call(client, "GET", CHAT.key, headers=AUTH).json["state"] == "closed"


@pytest.mark.parametrize(
    ("kwargs", "detail"),
    [
        ({"json": {"minutes": 0}}, "minutes must be more than 0"),
        ({"json": {"minutes": -1}}, "minutes must be more than 0"),
        ({"json": {"minutes": 366 * 24 * 60 + 1}}, "minutes must be more than 0 and at most 527040"),
        ({"json": {"minutes": "dez"}}, "minutes must be a number"),
        ({"json": {"minutes": "30"}}, "minutes must be a number"),
        ({"json": {"minutes": True}}, "minutes must be a number"),
        ({"json": {"minutes": [30]}}, "minutes must be a number"),
        ({"data": b'{"minutes": NaN}', "content_type": "application/json"}, "minutes must be a number"),
        ({"data": b"abc", "content_type": "application/json"}, "the body must be JSON"),
        ({"data": b"abc"}, "the body must be JSON"),
        ({"json": []}, "the body must be a JSON object"),
        ({"json": 30}, "the body must be a JSON object"),
    ],
)
def test_pause_refuses_a_bad_body(client: FlaskClient, parts: Components, kwargs: dict[str, Any], detail: str) -> None:
    response = call(client, "POST", CHAT.key, "pause", headers=AUTH, **kwargs)
    assert response.status_code == 400
    assert response.json["error"] == "bad request"
    assert response.json["detail"].startswith(detail)
    assert parts.conversations.status(CHAT).state == ""
    assert parts.counters.snapshot() == {}


def test_resume_and_close(client: FlaskClient, parts: Components, clock: Clock) -> None:
    call(client, "POST", CHAT.key, "pause", headers=AUTH)

    resumed = call(client, "POST", CHAT.key, "resume", headers=AUTH)
    assert resumed.status_code == 200
    assert (resumed.json["state"], resumed.json["paused_until"]) == ("open", None)
    assert parts.conversations.status(CHAT).state == "open"

    clock.now += 1
    closed = call(client, "POST", CHAT.key, "close", headers=AUTH)
    assert closed.status_code == 200
    assert (closed.json["state"], closed.json["paused_until"]) == ("closed", None)
    assert closed.json["conversation"]["last_human_action_at"] == pytest.approx(clock.now, abs=0.001)
    assert parts.conversations.status(CHAT).state == "closed"

    clock.now += 1
    assert call(client, "GET", CHAT.key, headers=AUTH).json["state"] == "closed"
    assert parts.counters.snapshot() == {"handoffs": 1, "bot_resumes": 1, "conversations_closed": 1}


def test_pause_after_close_opens_a_new_conversation(client: FlaskClient, clock: Clock) -> None:
    first = call(client, "POST", CHAT.key, "pause", headers=AUTH).json["conversation"]["opened_at"]
    call(client, "POST", CHAT.key, "close", headers=AUTH)
    clock.now += 10
    body = call(client, "POST", CHAT.key, "pause", headers=AUTH, json={"minutes": 5}).json
    assert body["state"] == "paused"
    assert body["conversation"]["opened_at"] == pytest.approx(clock.now, abs=0.001)
    assert body["conversation"]["opened_at"] > first


def test_numbers_are_shown_but_not_logged(client: FlaskClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    bodies = [
        call(client, "POST", CHAT.key, "pause", headers=AUTH, json={"minutes": 30}).json,
        call(client, "POST", CHAT.key, "resume", headers=AUTH).json,
        call(client, "POST", CHAT.key, "close", headers=AUTH).json,
        call(client, "GET", CHAT.key, headers=AUTH).json,
    ]
    assert all(body["chat_id"] == f"{NUMBER}@s.whatsapp.net" for body in bodies)
    for action in ("pause", "resume", "close"):
        assert f"admin {action} chat=evolution:loja:5511*****4321" in caplog.text
    assert NUMBER not in caplog.text


def test_an_instance_needing_percent_encoding_round_trips(client: FlaskClient, parts: Components) -> None:
    chat = ChatRef(gateway="evolution", instance="loja centro/1", chat_id=f"{NUMBER}@s.whatsapp.net")
    assert chat.key == "evolution:loja%20centro%2F1:5511987654321@s.whatsapp.net"
    parts.buffer.append(message(chat, "MSG-1", "Oi"), now=time.time())

    shown = call(client, "GET", chat.key, headers=AUTH)
    assert shown.status_code == 200
    assert (shown.json["chat"], shown.json["instance"]) == (chat.key, "loja centro/1")
    assert shown.json["pending"]["messages"] == 1

    paused = call(client, "POST", chat.key, "pause", headers=AUTH, json={"minutes": 30})
    assert paused.status_code == 200
    assert paused.json["chat"] == chat.key
    assert parts.conversations.status(chat).state == "paused"
    assert parts.conversations.status(CHAT).state == ""  # another instance's chat with the same number


# ----- the answer to an action, at the action's own time (stored to the millisecond) --------------------------


def test_pause_answer_says_paused_when_the_time_rounds_up(client: FlaskClient, clock: Clock) -> None:
    clock.now = whole_second() + 0.0006  # stored as ".001"
    response = call(client, "POST", CHAT.key, "pause", headers=AUTH, json={"minutes": 30})
    assert response.json["state"] == "paused"
    assert response.json["paused_until"] == pytest.approx(clock.now + 1800, abs=0.001)


@pytest.mark.parametrize("fraction", [0.25, 0.0006], ids=["exact millisecond", "rounds up"])
def test_close_answer_says_closed(client: FlaskClient, clock: Clock, fraction: float) -> None:
    call(client, "POST", CHAT.key, "pause", headers=AUTH)
    clock.now = whole_second() + 1 + fraction
    response = call(client, "POST", CHAT.key, "close", headers=AUTH)
    assert response.json["state"] == "closed"


@pytest.mark.parametrize("body", ['{"minutes": ' + "9" * 400 + "}", "[" * 1000 + "]" * 1000])
def test_pause_bodies_found_by_fuzzing_get_400(client: FlaskClient, body: str) -> None:
    """A number too large for a float and JSON nested past the decoder's depth answered 500 before."""
    response = client.post(url(CHAT.key, "pause"), data=body, headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 400, response.text


# ----- writing as a person, dead letters ------------------------------------------------------------------------


def test_writing_as_a_person_sends_through_the_gateway_and_pauses_the_bot(
    client: FlaskClient, parts: Components, fake_evolution: FakeEvolution
) -> None:
    response = client.post(url(CHAT.key, "messages"), json={"text": "Oi! Aqui é a Ana da loja."}, headers=AUTH)
    assert response.status_code == 200, response.text
    assert (response.json["status"], response.json["state"]) == ("sent", "paused")
    (send,) = fake_evolution.sends()
    assert send.json == {"number": CHAT.chat_id, "text": "Oi! Aqui é a Ana da loja."}
    assert response.json["pending"]["messages"] == 1  # joins the burst: the history keeps it in order
    # Evolution's echo of it (send.message) is known as ours, not as a second person's message.
    echo = IncomingMessage(chat=CHAT, message_id="3EB0ECHO1", text="Oi! Aqui é a Ana da loja.", from_me=True)
    assert parts.conversations.from_business_side(echo, now=time.time()) == "own_echo"
    refused = [{}, {"text": ""}, {"text": "x" * 5000}, {"texto": "oi"}]
    assert [client.post(url(CHAT.key, "messages"), json=b, headers=AUTH).status_code for b in refused] == [400] * 4
    assert client.post(url(CHAT.key, "messages"), json={"text": "oi"}).status_code == 401


def test_dead_letters_are_listed_retried_and_discarded(
    client: FlaskClient, parts: Components, fake_evolution: FakeEvolution
) -> None:
    fake_evolution.queue(Canned(400, {"error": "number not on WhatsApp"}))
    parts.buffer.append(message(CHAT, "M1", "Oi"), now=time.time() - 600)
    parts.worker.run_once(wait=True)
    (letter,) = client.get("/admin/api/dead-letters", headers=AUTH).json
    assert set(letter) == {"id", "chat", "tenant", "reply", "error", "attempts", "at"}
    assert (letter["chat"], letter["reply"], letter["attempts"]) == (CHAT.key, "Resposta: Oi", 1)
    assert "400" in letter["error"]

    fake_evolution.queue(Canned(400, {"error": "still not"}))
    failed = client.post(f"/admin/api/dead-letters/{letter['id']}/retry", headers=AUTH)
    assert failed.status_code == 502 and "400" in failed.json["detail"]
    (kept,) = client.get("/admin/api/dead-letters", headers=AUTH).json
    assert (kept["id"], kept["attempts"]) == (letter["id"], 2)

    assert client.post(f"/admin/api/dead-letters/{letter['id']}/retry", headers=AUTH).json == {
        "status": "sent",
        "id": letter["id"],
    }
    assert [s.json["text"] for s in fake_evolution.sends()][-1] == "Resposta: Oi"
    assert client.get("/admin/api/dead-letters", headers=AUTH).json == []
    assert [(t.role, t.text) for t in parts.history.recent(CHAT)] == [("user", "Oi"), ("model", "Resposta: Oi")]
    assert client.post(f"/admin/api/dead-letters/{letter['id']}/retry", headers=AUTH).status_code == 404

    fake_evolution.queue(Canned(400, {"error": "no"}))
    parts.buffer.append(message(CHAT, "M2", "De novo"), now=time.time() - 600)
    parts.worker.run_once(wait=True)
    (second,) = client.get("/admin/api/dead-letters", headers=AUTH).json
    assert client.delete(f"/admin/api/dead-letters/{second['id']}", headers=AUTH).json["status"] == "discarded"
    assert client.get("/admin/api/dead-letters", headers=AUTH).json == []
    assert client.delete(f"/admin/api/dead-letters/{second['id']}", headers=AUTH).status_code == 404
    assert client.get("/admin/api/dead-letters").status_code == 401
