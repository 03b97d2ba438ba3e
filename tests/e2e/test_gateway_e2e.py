"""End-to-end on the real server for Meta, Twilio and Mega: a burst gets one reply through the gateway it came
in on, with the right body and auth; duplicates count once; forged signatures or a missing token buffer
nothing; long replies are split under the gateway's limit; the same number on two gateways is two chats."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs

import pytest
import requests

from tests.e2e.conftest import CUSTOMER_JID, Harness, last_user_text, upsert, wait_count
from tests.fakes import Canned, FakeServer, Recorded, gemini_answer

APP_SECRET = "e2e-meta-secret"
VERIFY_TOKEN = "e2e-verify"
ACCESS_TOKEN = "e2e-meta-access"
PHONE_NUMBER_ID = "106540352242922"
TWILIO_SID = "AC0000000000000000000000000000e2e0"
TWILIO_TOKEN = "e2e-twilio-token"
TWILIO_FROM = "whatsapp:+14155550123"
PUBLIC_URL = "https://atendimento.example.com.br"
MEGA_INSTANCE = "megastart-E2E"
MEGA_TOKEN = "e2e-mega-token"
WEBHOOK_TOKEN = "e2e-webhook-token"
NUMBER = CUSTOMER_JID.split("@", 1)[0]
BURST = ["Olá", "Vocês abrem sábado?", "E até que horas?"]


class FakeGateway(FakeServer):
    """Graph, Twilio Messages and Mega send APIs in one server, told apart by path."""

    def default_answer(self, recorded: Recorded) -> Any:
        n = len(self.requests)
        if "/Messages.json" in recorded.path:
            return {"sid": f"SM{n:032d}", "status": "queued"}
        if "/rest/sendMessage/" in recorded.path:
            return {"error": False, "message": "Message sent", "key": {"id": f"3EB0MEGA{n:06d}"}}
        return {"messaging_product": "whatsapp", "contacts": [{"wa_id": NUMBER}], "messages": [{"id": f"wamid.E2E{n}"}]}

    def sends_to(self, fragment: str) -> list[Recorded]:
        return [r for r in self.received() if fragment in r.path]


@pytest.fixture
def gateway_api() -> Iterator[FakeGateway]:
    fake = FakeGateway()
    yield fake
    fake.close()


def gateway_env(api: FakeGateway, **overrides: Any) -> dict[str, Any]:
    env: dict[str, Any] = {
        "META_APP_SECRET": APP_SECRET,
        "META_VERIFY_TOKEN": VERIFY_TOKEN,
        "META_ACCESS_TOKEN": ACCESS_TOKEN,
        "META_PHONE_NUMBER_ID": PHONE_NUMBER_ID,
        "META_GRAPH_URL": api.url,
        "META_API_VERSION": "v23.0",
        "TWILIO_ACCOUNT_SID": TWILIO_SID,
        "TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
        "TWILIO_WHATSAPP_FROM": TWILIO_FROM,
        "TWILIO_PUBLIC_URL": PUBLIC_URL,
        "TWILIO_API_URL": api.url,
        "MEGA_API_BASE_URL": api.url,
        "MEGA_INSTANCE_ID": MEGA_INSTANCE,
        "MEGA_API_TOKEN": MEGA_TOKEN,
        "WEBHOOK_TOKEN": WEBHOOK_TOKEN,
    }
    env.update(overrides)
    return env


def meta_payload(text: str, msg_id: str | None = None) -> bytes:
    message = {"from": NUMBER, "id": msg_id or f"wamid.{uuid.uuid4().hex}", "timestamp": "1763900000", "type": "text"}
    message["text"] = {"body": text}
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "5511930000000", "phone_number_id": PHONE_NUMBER_ID},
        "contacts": [{"profile": {"name": "Ana"}, "wa_id": NUMBER}],
        "messages": [message],
    }
    body = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "1", "changes": [{"value": value, "field": "messages"}]}],
    }
    return json.dumps(body).encode()


def post_meta(url: str, body: bytes, secret: str = APP_SECRET) -> requests.Response:
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": signature}
    return requests.post(f"{url}/webhook/meta", data=body, headers=headers, timeout=10)


def twilio_form(text: str, sid: str | None = None) -> dict[str, str]:
    return {
        "MessageSid": sid or f"SM{uuid.uuid4().hex}",
        "AccountSid": TWILIO_SID,
        "From": f"whatsapp:+{NUMBER}",
        "To": TWILIO_FROM,
        "Body": text,
        "NumMedia": "0",
        "ProfileName": "Ana",
        "WaId": NUMBER,
    }


def post_twilio(url: str, form: dict[str, str], token: str = TWILIO_TOKEN) -> requests.Response:
    signed = f"{PUBLIC_URL}/webhook/twilio" + "".join(k + form[k] for k in sorted(form))
    signature = base64.b64encode(hmac.new(token.encode(), signed.encode(), hashlib.sha1).digest()).decode()
    return requests.post(f"{url}/webhook/twilio", data=form, headers={"X-Twilio-Signature": signature}, timeout=10)


def mega_payload(text: str, msg_id: str | None = None) -> dict[str, Any]:
    return {
        "instance_key": MEGA_INSTANCE,
        "jid": "5511930000000@s.whatsapp.net",
        "messageType": "conversation",
        "key": {"remoteJid": CUSTOMER_JID, "fromMe": False, "id": msg_id or uuid.uuid4().hex.upper()},
        "messageTimestamp": 1763900000,
        "pushName": "Ana",
        "message": {"conversation": text},
    }


def assert_quiet(e2e: Harness, api: FakeGateway, *, sends: int, prompts: int, seconds: float = 2.5) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        assert len(api.received()) == sends, api.received()
        assert len(e2e.prompts()) == prompts
        time.sleep(0.05)


def test_meta_burst_handshake_and_forged_signature(e2e: Harness, gateway_api: FakeGateway) -> None:
    e2e.gemini.queue(Canned(200, gemini_answer("Abrimos sábado das 9h às 13h.")))
    server = e2e.python_server(**gateway_env(gateway_api))

    challenge = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "424242"}
    assert requests.get(f"{server.url}/webhook/meta", params=challenge, timeout=5).text == "424242"
    wrong = {**challenge, "hub.verify_token": "outro"}
    assert requests.get(f"{server.url}/webhook/meta", params=wrong, timeout=5).status_code == 403

    assert post_meta(server.url, meta_payload("Quero comprar"), secret="forjado").status_code == 401
    bodies = [meta_payload(text) for text in BURST]
    for body in bodies:
        assert post_meta(server.url, body).json()["status"] == "buffered"
    duplicate = post_meta(server.url, bodies[0]).json()
    assert duplicate["duplicates"] == 1

    wait_count(lambda: len(gateway_api.received()), 1, timeout=10, what="Graph sends")
    (send,) = gateway_api.received()
    assert send.path == f"/v23.0/{PHONE_NUMBER_ID}/messages"
    assert send.headers["authorization"] == f"Bearer {ACCESS_TOKEN}"
    assert send.json["to"] == NUMBER and send.json["text"]["body"] == "Abrimos sábado das 9h às 13h."
    (prompt,) = e2e.prompts()
    assert last_user_text(prompt) == "\n".join(BURST)
    statuses = {
        "entry": [
            {
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "metadata": {"phone_number_id": PHONE_NUMBER_ID},
                            "statuses": [{"id": "wamid.X", "status": "read"}],
                        },
                    }
                ]
            }
        ]
    }
    assert post_meta(server.url, json.dumps(statuses).encode()).json() == {"status": "ignored", "reason": "status:read"}
    assert_quiet(e2e, gateway_api, sends=1, prompts=1)
    assert server.health()["counters"]["signature_failures"] == 2  # the refused handshake and the forged post


def test_twilio_burst_gets_one_reply_split_under_1600(e2e: Harness, gateway_api: FakeGateway) -> None:
    long_reply = " ".join(f"Opção {i}: entrega expressa em até {i} dias úteis." for i in range(80))
    assert len(long_reply) > 3000
    e2e.gemini.queue(Canned(200, gemini_answer(long_reply)))
    server = e2e.python_server(**gateway_env(gateway_api))

    assert post_twilio(server.url, twilio_form("Oi"), token="forjado").status_code == 401
    forms = [twilio_form(text) for text in BURST]
    for form in forms:
        answer = post_twilio(server.url, form)
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/xml")
        assert "<Response/>" in answer.text
    post_twilio(server.url, forms[1])  # Twilio retry of the same MessageSid

    wait_count(lambda: len(gateway_api.received()), 3, timeout=10, what="Twilio sends")
    sends = gateway_api.received()
    bodies = [parse_qs(r.body.decode()) for r in sends]
    assert all(r.path == f"/2010-04-01/Accounts/{TWILIO_SID}/Messages.json" for r in sends)
    basic = base64.b64encode(f"{TWILIO_SID}:{TWILIO_TOKEN}".encode()).decode()
    assert all(r.headers["authorization"] == f"Basic {basic}" for r in sends)
    assert all(b["From"] == [TWILIO_FROM] and b["To"] == [f"whatsapp:+{NUMBER}"] for b in bodies)
    parts = [b["Body"][0] for b in bodies]
    assert all(len(part) <= 1600 for part in parts)
    assert " ".join(parts) == long_reply
    (prompt,) = e2e.prompts()
    assert last_user_text(prompt) == "\n".join(BURST)
    assert_quiet(e2e, gateway_api, sends=3, prompts=1)


def test_mega_burst_needs_the_token_and_dedupes(e2e: Harness, gateway_api: FakeGateway) -> None:
    e2e.gemini.queue(Canned(200, gemini_answer("Abrimos até as 18h.")))
    server = e2e.python_server(**gateway_env(gateway_api))

    assert server.post(mega_payload("sem token"), path="/webhook/mega").status_code == 401
    payloads = [mega_payload(text) for text in BURST]
    for payload in payloads + [payloads[2]]:
        assert server.post(payload, path="/webhook/mega", params={"token": WEBHOOK_TOKEN}).status_code == 200

    wait_count(lambda: len(gateway_api.received()), 1, timeout=10, what="Mega sends")
    (send,) = gateway_api.received()
    assert send.path == f"/rest/sendMessage/{MEGA_INSTANCE}/text"
    assert send.headers["authorization"] == f"Bearer {MEGA_TOKEN}"
    assert send.json == {"messageData": {"to": CUSTOMER_JID, "text": "Abrimos até as 18h."}}
    (prompt,) = e2e.prompts()
    assert last_user_text(prompt) == "\n".join(BURST)
    assert_quiet(e2e, gateway_api, sends=1, prompts=1)


def test_same_number_on_two_gateways_is_two_chats(e2e: Harness, gateway_api: FakeGateway) -> None:
    server = e2e.python_server(**gateway_env(gateway_api))
    assert server.post(upsert("Oi pelo Evolution"), params={"token": WEBHOOK_TOKEN}).status_code == 200
    assert post_meta(server.url, meta_payload("Oi pelo Meta")).status_code == 200

    e2e.wait_sends(1)
    wait_count(lambda: len(gateway_api.received()), 1, timeout=10, what="Graph sends")
    assert e2e.sends()[0].json["text"] == "Resposta: Oi pelo Evolution"
    assert gateway_api.received()[0].json["text"]["body"] == "Resposta: Oi pelo Meta"
    assert sorted(last_user_text(p) for p in e2e.prompts()) == ["Oi pelo Evolution", "Oi pelo Meta"]


def test_meta_outside_the_window_is_dead_lettered_not_retried(e2e: Harness, gateway_api: FakeGateway) -> None:
    error = {"error": {"message": "Re-engagement message", "type": "OAuthException", "code": 131047}}
    gateway_api.queue(Canned(400, error))
    server = e2e.python_server(**gateway_env(gateway_api))
    assert post_meta(server.url, meta_payload("Oi de novo")).status_code == 200

    wait_count(lambda: server.health()["counters"].get("dead_lettered", 0), 1, timeout=10, what="dead letters")
    assert len(gateway_api.received()) == 1
    assert_quiet(e2e, gateway_api, sends=1, prompts=1)
    assert "outside the 24 h" in server.logs()
