"""End-to-end conversation control on the real server processes: a person who writes from the phone is never
talked over (and their own echoes never count as a person), the attendant's commands, a customer asking for a
person, opt-out across kill -9 / restart / Redis restart, business hours, split replies, and the chats API.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import pytest
import requests

from config import (
    DEFAULT_HANDOFF_REPLY,
    DEFAULT_OPT_IN_REPLY,
    DEFAULT_OPT_OUT_REPLY,
)
from tests.conftest import RedisServer
from tests.e2e.conftest import (
    CUSTOMER_JID,
    DEBOUNCE_SECONDS,
    INSTANCE,
    OTHER_JID,
    QUIET_SECONDS,
    REPLY_TIMEOUT_SECONDS,
    Harness,
    ServerProcess,
    prompt_turns,
    upsert,
    wait_count,
    wait_until,
)
from tests.fakes import Canned, FakeServer, Recorded, gemini_answer

ADMIN_TOKEN = "e2e-admin-token-8d1f"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CUSTOMER = f"evolution:{INSTANCE}:{CUSTOMER_JID}"
OTHER = f"evolution:{INSTANCE}:{OTHER_JID}"


def from_phone(text: str, *, jid: str = CUSTOMER_JID, msg_id: str | None = None) -> dict[str, Any]:
    """What Evolution posts when the owner types in the chat on the phone: a fromMe messages.upsert."""
    return upsert(text, jid=jid, from_me=True, msg_id=msg_id or "3EB0" + uuid.uuid4().hex[:16].upper())


def send_message_event(text: str, msg_id: str, jid: str) -> dict[str, Any]:
    """Evolution's `send.message` webhook for a message that went out through its API."""
    event = upsert(text, jid=jid, from_me=True, msg_id=msg_id, event="send.message")
    event["data"]["status"] = "PENDING"
    return event


def chat_view(server: ServerProcess, chat: str) -> dict[str, Any]:
    response = requests.get(f"{server.url}/admin/api/chats/{quote(chat, safe='')}", headers=ADMIN, timeout=5)
    assert response.status_code == 200, response.text
    return response.json()


def sent_to(e2e: Harness, jid: str) -> list[str]:
    return [send.json["text"] for send in e2e.sends() if send.json["number"] == jid]


def echo_every_send(e2e: Harness, server: ServerProcess, ids: list[str]) -> list[threading.Thread]:
    """Make the fake Evolution behave like the real one: for each sendText it posts `send.message` to the
    assistant *before* answering (so the id is not known yet), and the fromMe `messages.upsert` just after.
    The ids it answers are appended to `ids`."""
    threads: list[threading.Thread] = []

    def on_send(recorded: Recorded, answer: dict[str, Any]) -> None:
        msg_id, jid, text = answer["key"]["id"], recorded.json["number"], recorded.json["text"]
        ids.append(msg_id)
        early = server.post(send_message_event(text, msg_id, jid))
        assert early.status_code == 200, early.text

        def late_upsert() -> None:
            time.sleep(0.05)
            server.post(from_phone(text, jid=jid, msg_id=msg_id))

        thread = threading.Thread(target=late_upsert)
        thread.start()
        threads.append(thread)

    e2e.evolution.on_send = on_send
    return threads


# ----- a person takes over -----------------------------------------------------------------------------------


def test_a_persons_message_cancels_the_pending_burst_and_holds_while_another_chat_is_answered(
    e2e: Harness,
) -> None:
    # Two servers on one Redis: the customer's burst lands on one, the owner's phone message on the other.
    python = e2e.python_server(ADMIN_TOKEN=ADMIN_TOKEN)
    gunicorn = e2e.gunicorn_server(workers=2, ADMIN_TOKEN=ADMIN_TOKEN)
    python.burst(["Oi", "Quanto custa o bolo de cenoura?"])
    answer = gunicorn.post(from_phone("Oi! Custa R$ 48, quer encomendar?"))
    assert answer.json() == {"status": "buffered", "buffered": 0, "duplicates": 0, "ignored": 0, "human": 1}
    gunicorn.burst(["Bom dia, vocês abrem amanhã?"], jid=OTHER_JID)

    e2e.wait_sends(1)
    assert sent_to(e2e, OTHER_JID) == ["Resposta: Bom dia, vocês abrem amanhã?"]
    python.burst(["Quero sim, para sábado"])  # during the pause: kept, not answered
    e2e.assert_no_more(sends=1, prompts=1, seconds=QUIET_SECONDS + DEBOUNCE_SECONDS)

    view = chat_view(python, CUSTOMER)
    assert (view["state"], view["opted_out"], view["pending"]) == ("paused", False, None)
    assert view["paused_until"] == pytest.approx(time.time() + 120 * 60, abs=60)
    assert [(m["role"], m["text"]) for m in view["last_messages"]] == [
        ("customer", "Oi\nQuanto custa o bolo de cenoura?"),
        ("human", "Oi! Custa R$ 48, quer encomendar?"),
        ("customer", "Quero sim, para sábado"),
    ]
    assert chat_view(gunicorn, OTHER)["state"] == "open"

    # The person hands the chat back; what the customer writes next is answered, knowing what the person said.
    assert gunicorn.post(from_phone("#bot")).json()["human"] == 1
    python.burst(["Aceita pix?"])
    e2e.wait_sends(2)
    assert sent_to(e2e, CUSTOMER_JID) == ["Resposta: Aceita pix?"]
    assert prompt_turns(e2e.prompts()[-1]) == [
        ("user", "Oi\nQuanto custa o bolo de cenoura?"),
        ("model", "Oi! Custa R$ 48, quer encomendar?"),
        ("user", "Quero sim, para sábado"),
        ("user", "Aceita pix?"),
    ]
    python.assert_logs_private("5511987654321", "Custa R$ 48")


def test_the_assistants_own_echoes_never_pause_the_chat(e2e: Harness) -> None:
    e2e.gemini.queue(Canned(200, gemini_answer("Temos sim! Bolo de cenoura, R$ 48.")))
    server = e2e.gunicorn_server(workers=4, ADMIN_TOKEN=ADMIN_TOKEN)
    sent_ids: list[str] = []
    threads = echo_every_send(e2e, server, sent_ids)
    server.burst(["Tem bolo de cenoura?"])
    e2e.wait_sends(1)
    for thread in threads:
        thread.join(5)
    # Both echo forms arrived (send.message before sendText answered, then the fromMe upsert), and neither
    # paused the chat: the customer's next message is answered.
    assert chat_view(server, CUSTOMER)["state"] == "open"
    server.burst(["Vou querer um"])
    e2e.wait_sends(2)
    for thread in threads:
        thread.join(5)
    assert sent_to(e2e, CUSTOMER_JID) == ["Temos sim! Bolo de cenoura, R$ 48.", "Resposta: Vou querer um"]
    # A late echo is known by the id sendText returned, whatever its text looks like by then.
    late = server.post(from_phone("(mensagem editada)", msg_id=sent_ids[0]))
    assert late.json() == {"status": "ignored", "reason": "own_echo"}
    assert chat_view(server, CUSTOMER)["state"] == "open"
    e2e.assert_no_more(sends=2, prompts=2)


def test_attendant_commands_pause_without_limit_and_close(e2e: Harness) -> None:
    server = e2e.python_server(ADMIN_TOKEN=ADMIN_TOKEN)
    server.burst(["Oi, bom dia"])
    e2e.wait_sends(1)

    assert server.post(from_phone("#humano")).json()["human"] == 1
    view = chat_view(server, CUSTOMER)
    assert (view["state"], view["paused_until"]) == ("paused", None)  # null: until resumed
    server.burst(["Alguém aí?"])
    e2e.assert_no_more(sends=1, prompts=1, seconds=DEBOUNCE_SECONDS + 1)

    server.post(from_phone("#encerrar"))
    assert chat_view(server, CUSTOMER)["state"] == "closed"
    # The next message opens a new conversation: answered, with the earlier one dated in the prompt.
    server.burst(["Oi de novo"])
    e2e.wait_sends(2)
    turns = prompt_turns(e2e.prompts()[-1])
    assert turns[-1] == ("user", "Oi de novo")
    assert all(text.startswith("[conversa anterior, ") for _, text in turns[:-1]), turns
    assert "#humano" not in str(turns) and "#encerrar" not in str(turns)
    assert chat_view(server, CUSTOMER)["state"] == "open"
    counters = server.health()["counters"]
    assert (counters["handoffs"], counters.get("conversations_closed")) == (1, 1)


def test_the_pause_ends_by_itself_and_only_the_next_message_is_answered(e2e: Harness) -> None:
    pause_minutes = 0.05  # 3 s
    server = e2e.python_server(HANDOFF_PAUSE_MINUTES=pause_minutes, ADMIN_TOKEN=ADMIN_TOKEN)
    started = time.time()
    server.post(from_phone("Olá, aqui é a Maria da loja"))
    server.burst(["Oi Maria"])
    e2e.assert_no_more(sends=0, prompts=0, seconds=DEBOUNCE_SECONDS + 0.5)
    time.sleep(max(0.0, started + pause_minutes * 60 + 0.2 - time.time()))
    assert chat_view(server, CUSTOMER)["state"] == "open"
    e2e.assert_no_more(sends=0, prompts=0, seconds=DEBOUNCE_SECONDS)  # nothing is sent when it ends
    server.burst(["Ainda está aí?"])
    e2e.wait_sends(1)
    # The person spoke first: the prompt keeps what they said, after a placeholder opening.
    assert prompt_turns(e2e.prompts()[0])[1:] == [
        ("model", "Olá, aqui é a Maria da loja"),
        ("user", "Oi Maria"),
        ("user", "Ainda está aí?"),
    ]
    e2e.assert_no_more(sends=1, prompts=1)


# ----- the customer asks for a person ----------------------------------------------------------------------


@pytest.fixture
def notify_endpoint() -> Iterator[FakeServer]:
    fake = FakeServer()
    yield fake
    fake.close()


def test_a_request_for_a_person_gets_one_handoff_reply_no_gemini_and_one_notice(
    e2e: Harness, notify_endpoint: FakeServer
) -> None:
    server = e2e.python_server(HANDOFF_NOTIFY_URL=notify_endpoint.url + "/handoff")
    server.burst(["Boa tarde", "Quero falar com um atendente"])
    (send,) = e2e.wait_sends(1)
    assert send.json["text"] == DEFAULT_HANDOFF_REPLY
    (notice,) = notify_endpoint.wait_for(1)  # (retries on failure: tests/test_notify.py)
    assert notice.path == "/handoff"
    body = notice.json
    assert {k: body[k] for k in ("event", "chat", "gateway", "instance", "chat_id", "customer_name", "text")} == {
        "event": "handoff_request",
        "chat": CUSTOMER,
        "gateway": "evolution",
        "instance": INSTANCE,
        "chat_id": CUSTOMER_JID,
        "customer_name": "Cliente E2E",
        "text": "Boa tarde\nQuero falar com um atendente",
    }
    assert datetime.fromisoformat(body["at"]).timestamp() == pytest.approx(time.time(), abs=30)
    server.burst(["Oi?"])  # the chat now waits for the person
    e2e.assert_no_more(sends=1, prompts=0, seconds=QUIET_SECONDS)
    assert len(notify_endpoint.received()) == 1
    counters = server.health()["counters"]
    assert (counters["handoff_requests"], counters["paused_skips"]) == (1, 1)


# ----- opt-out -------------------------------------------------------------------------------------------------


@pytest.fixture
def persistent_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis-aof", persistent=True).start()
    yield server
    server.stop()


def test_opt_out_holds_across_kill_9_restart_and_redis_restart_until_voltar(
    e2e: Harness, persistent_redis: RedisServer
) -> None:
    env = {"CACHE_REDIS_URI": persistent_redis.url, "LEASE_SECONDS": 2}
    first = e2e.python_server(**env)
    first.burst(["Parar."])
    (send,) = e2e.wait_sends(1)
    assert send.json["text"] == DEFAULT_OPT_OUT_REPLY
    # Done with that batch (the kill below must not land between the send and its ack: that window is known).
    wait_until(lambda: first.health()["counters"].get("replies_sent") == 1, timeout=5, what="the ack")

    first.burst(["Mas e a minha encomenda?"])
    first.kill()  # kill -9 with a burst pending
    second = e2e.python_server(**env)
    e2e.assert_no_more(sends=1, prompts=0, seconds=DEBOUNCE_SECONDS + 1.5)
    assert second.terminate() == 0  # a plain restart

    persistent_redis.stop()  # Redis restarts too: the opt-out is in its append-only file
    persistent_redis.start()
    third = e2e.python_server(**env)
    third.burst(["Oi, tem alguém?", "quero falar com um atendente"])
    e2e.assert_no_more(sends=1, prompts=0, seconds=DEBOUNCE_SECONDS + 1.5)

    third.burst(["Voltar"])
    sends = e2e.wait_sends(2)
    assert sends[-1].json["text"] == DEFAULT_OPT_IN_REPLY
    third.burst(["Qual o horário de vocês?"])
    sends = e2e.wait_sends(3)
    assert sends[-1].json["text"] == "Resposta: Qual o horário de vocês?"
    e2e.assert_no_more(sends=3, prompts=1)
    # The host's totals (every process's, as /metrics counts them): the burst the second process found pending
    # and the third's were both skipped.
    counters = third.health()["counters"]
    assert (counters["opt_ins"], counters["opted_out_skips"]) == (1, 2)


# ----- business hours --------------------------------------------------------------------------------------


def test_outside_business_hours_one_notice_names_the_next_opening(e2e: Harness) -> None:
    today = datetime.now(ZoneInfo("America/Sao_Paulo")).date()
    server = e2e.python_server(
        BUSINESS_HOURS="mon-sun 08:00-18:00",
        HOLIDAYS=f"{today:%Y-%m-%d}",  # closed all of today, whatever the hour the tests run at
        TIMEZONE="America/Sao_Paulo",
        BOT_HOURS="business",
    )
    server.burst(["Oi, vocês entregam hoje?"])
    (send,) = e2e.wait_sends(1)
    assert send.json["text"].startswith("Olá! Recebemos sua mensagem")
    assert "Voltamos amanhã às 08:00" in send.json["text"], send.json["text"]
    server.burst(["Alô?"])
    e2e.assert_no_more(sends=1, prompts=0, seconds=QUIET_SECONDS)
    assert server.health()["counters"]["out_of_hours_notices"] == 1


# ----- split replies -----------------------------------------------------------------------------------------


def test_a_split_reply_whose_second_part_fails_is_finished_without_repeating_the_first(e2e: Harness) -> None:
    reply = "Olá! Temos bolo de cenoura.\n\nCusta R$ 48.\n\nEntregamos até as 18h."
    e2e.gemini.queue(Canned(200, gemini_answer(reply)))
    # The second part is refused twice (SEND_MAX_RETRIES=1: one urllib3 retry), then the gateway recovers.
    e2e.evolution.queue(Canned(200, None), Canned(500, {"error": "boom"}), Canned(500, {"error": "boom"}))
    server = e2e.python_server(SPLIT_MESSAGES="true", TYPING_MS_PER_CHAR=2, TYPING_MAX_MS=40)
    server.burst(["Tem bolo de cenoura?"])
    wait_count(lambda: len(e2e.sends()), 5, timeout=REPLY_TIMEOUT_SECONDS, what="sendText calls")
    sends = e2e.sends()
    assert [s.json["text"] for s in sends] == [
        "Olá! Temos bolo de cenoura.",
        "Custa R$ 48.",
        "Custa R$ 48.",
        "Custa R$ 48.",
        "Entregamos até as 18h.",
    ]
    assert [s.json.get("delay") for s in sends] == [40, 24, 24, 24, 40]  # typing before each part, capped
    e2e.assert_no_more(sends=5, prompts=1)

    server.burst(["Obrigado!"])
    e2e.wait_sends(6)
    assert prompt_turns(e2e.prompts()[-1]) == [
        ("user", "Tem bolo de cenoura?"),
        ("model", reply),  # the whole reply, not what was left after the failure
        ("user", "Obrigado!"),
    ]


# ----- the chats API -----------------------------------------------------------------------------------------


def test_the_chats_api_needs_the_token_and_steers_the_chat(e2e: Harness) -> None:
    closed = e2e.python_server()
    url = f"{closed.url}/admin/api/chats/{quote(CUSTOMER, safe='')}"
    assert requests.get(url, headers=ADMIN, timeout=5).status_code == 404  # ADMIN_TOKEN unset: no API

    server = e2e.python_server(ADMIN_TOKEN=ADMIN_TOKEN)
    url = f"{server.url}/admin/api/chats/{quote(CUSTOMER, safe='')}"
    assert requests.get(url, timeout=5).status_code == 401
    assert requests.get(url, headers={"Authorization": "Bearer errado"}, timeout=5).status_code == 401
    assert requests.post(url + "/pause", timeout=5).status_code == 401
    assert requests.get(url, headers=ADMIN, timeout=5).status_code == 404  # nothing known of it yet

    server.burst(["Oi"])
    e2e.wait_sends(1)
    paused = requests.post(url + "/pause", json={"minutes": 30}, headers=ADMIN, timeout=5).json()
    assert (paused["state"], paused["chat"]) == ("paused", CUSTOMER)
    assert paused["paused_until"] == pytest.approx(time.time() + 1800, abs=30)
    server.burst(["Oi?"])
    e2e.assert_no_more(sends=1, prompts=1, seconds=DEBOUNCE_SECONDS + 1)
    assert requests.post(url + "/resume", headers=ADMIN, timeout=5).json()["state"] == "open"
    server.burst(["E agora?"])
    e2e.wait_sends(2)
    assert requests.post(url + "/close", headers=ADMIN, timeout=5).json()["state"] == "closed"
    assert requests.post(url + "/pause", json={"minutes": "muito"}, headers=ADMIN, timeout=5).status_code == 400
