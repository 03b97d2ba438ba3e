"""End-to-end HTTP surface: webhook auth, bad bodies, /health, start-up without config, SIGTERM, log privacy."""

from __future__ import annotations

import json
import socket
import time

import jwt
import requests

from tests.e2e.conftest import (
    CUSTOMER_JID,
    EVOLUTION_APIKEY,
    GEMINI_KEY,
    OTHER_JID,
    PAYLOAD_APIKEY,
    REDIS_PREFIX,
    REPLY_TIMEOUT_SECONDS,
    Harness,
    last_user_text,
    upsert,
    wait_until,
)
from tests.fakes import Canned, gemini_answer

TOKEN = "e2e-webhook-token-3c9d7a"
JWT_SECRET = "e2e-jwt-secret-5b1f0e9a2d-4c8e71f3a6b2"


def test_webhook_token(e2e: Harness) -> None:
    server = e2e.python_server(WEBHOOK_TOKEN=TOKEN)
    rejected = {
        "no credentials": server.post(upsert("sem token")),
        "wrong bearer": server.post(upsert("token errado"), headers={"Authorization": "Bearer nao-e-o-token"}),
        "wrong query": server.post(upsert("query errada"), params={"token": "nao-e-o-token"}),
        "not bearer": server.post(upsert("sem bearer"), headers={"Authorization": TOKEN}),
    }
    for case, response in rejected.items():
        assert response.status_code == 401, (case, response.text)
    assert e2e.redis_keys() == [], "a rejected post must not be buffered"
    assert requests.get(server.url + "/health", timeout=5).status_code == 200  # never behind auth

    bearer = server.post(upsert("com bearer"), headers={"Authorization": f"Bearer {TOKEN}"})
    query = server.post(upsert("com query"), params={"token": TOKEN})
    assert (bearer.status_code, bearer.json()["status"]) == (200, "buffered")
    assert (query.status_code, query.json()["status"]) == (200, "buffered")

    e2e.wait_sends(1)
    burst_text = last_user_text(e2e.prompts()[0])
    assert "com bearer" in burst_text and "com query" in burst_text
    assert not any(text in burst_text for text in ("sem token", "token errado", "query errada", "sem bearer"))
    e2e.assert_no_more(sends=1, prompts=1)
    assert server.health()["counters"]["auth_failures"] == 4
    server.assert_logs_private(TOKEN)


def test_webhook_jwt(e2e: Harness) -> None:
    server = e2e.python_server(WEBHOOK_JWT_SECRET=JWT_SECRET)
    now = int(time.time())
    good = jwt.encode({"iat": now, "exp": now + 600, "app": "evolution"}, JWT_SECRET, algorithm="HS256")
    forged = jwt.encode({"iat": now, "exp": now + 600}, "outro-segredo-qualquer-de-32-bytes-ou-mais", algorithm="HS256")
    expired = jwt.encode({"iat": now - 7200, "exp": now - 3600}, JWT_SECRET, algorithm="HS256")

    assert server.post(upsert("jwt falso"), headers={"Authorization": f"Bearer {forged}"}).status_code == 401
    assert server.post(upsert("jwt vencido"), headers={"Authorization": f"Bearer {expired}"}).status_code == 401
    assert server.post(upsert("sem jwt")).status_code == 401
    assert server.post(upsert("segredo puro"), headers={"Authorization": f"Bearer {JWT_SECRET}"}).status_code == 401
    assert e2e.redis_keys() == []
    assert requests.get(server.url + "/health", timeout=5).status_code == 200

    accepted = server.post(upsert("jwt valido"), headers={"Authorization": f"Bearer {good}"})
    assert (accepted.status_code, accepted.json()["status"]) == (200, "buffered")
    e2e.wait_sends(1)
    assert last_user_text(e2e.prompts()[0]) == "jwt valido"
    e2e.assert_no_more(sends=1, prompts=1)


def compact(text: str) -> dict[str, object]:
    """A messages.upsert event without the envelope's extras, so that two fit in MAX_BODY_BYTES=1000."""
    event = upsert(text)
    data = event["data"]
    return {
        "event": event["event"],
        "instance": event["instance"],
        "data": {"key": data["key"], "message": data["message"]},
    }


def test_bad_bodies_never_get_a_500(e2e: Harness) -> None:
    # the body limit admits base64 media up to MEDIA_MAX_BYTES plus its envelope (256 KiB)
    server = e2e.python_server(MAX_BODY_BYTES=1000, MEDIA_MAX_BYTES=1000)
    json_header = {"Content-Type": "application/json"}

    def status(data: bytes | str, **kwargs: object) -> int:
        return server.post(data=data, headers=json_header, **kwargs).status_code  # type: ignore[arg-type]

    assert status(b"") == 400
    assert status(b"   \n") == 400
    assert status(b"isto nao e json") == 400
    assert status(b"\xff\xfe\x00garbage") == 400
    assert status(b'"apenas uma string"') == 400
    assert status(b"42") == 400
    assert status(b"null") == 400
    assert status(b"[" * 990) == 400  # nested too deep for the JSON decoder
    big = json.dumps(upsert("x" * 300_000)).encode()
    assert len(big) > 256 * 1024 + 1000 * 4 // 3
    assert status(big) == 413
    assert requests.get(server.url + "/webhook", timeout=5).status_code == 405

    ignored = [b"{}", b"[]", b'[1, "x", null]', b'{"event": "messages.upsert"}', b'{"event": 7, "data": []}']
    for body in ignored:
        response = server.post(data=body, headers=json_header)
        assert (response.status_code, response.json()["status"]) == (200, "ignored"), (body, response.text)

    as_list = server.post([compact("primeira da lista"), compact("segunda da lista")])
    assert (as_list.status_code, as_list.json()["buffered"]) == (200, 2), as_list.text
    as_string = server.post(json.dumps(compact("evento dentro de uma string")))  # a JSON string holding the event
    assert (as_string.status_code, as_string.json()["buffered"]) == (200, 1), as_string.text
    body = compact("timestamp absurdo")
    body["data"]["messageTimestamp"] = 1e999  # json.dumps writes Infinity, which json.loads reads back
    response = server.post(data=json.dumps(body), headers=json_header)
    assert (response.status_code, response.json().get("buffered")) == (200, 1), response.text

    e2e.wait_sends(1)
    burst_text = last_user_text(e2e.prompts()[0])
    for text in ("primeira da lista", "segunda da lista", "evento dentro de uma string", "timestamp absurdo"):
        assert burst_text.count(text) == 1, burst_text
    e2e.assert_no_more(sends=1, prompts=1)
    assert "Traceback" not in server.logs()


def test_health_fields(e2e: Harness) -> None:
    server = e2e.python_server(DEBOUNCE_SECONDS=1.5)
    health = server.health()
    assert health["status"] == "ok"
    assert health["redis"] == "up"
    assert health["gemini"] == "configured"
    assert health["gateway"] == "configured"
    assert health["worker"] == "alive"
    assert (health["chats_pending"], health["chats_in_progress"], health["dead_letters"]) == (0, 0, 0)
    assert isinstance(health["counters"], dict)

    server.burst(["Uma pergunta"])
    assert server.health()["chats_pending"] == 1
    e2e.wait_sends(1)
    health = server.health()
    assert (health["chats_pending"], health["chats_in_progress"]) == (0, 0)
    assert health["counters"]["received"] == 1 and health["counters"]["replies_sent"] == 1


def test_starts_without_gemini_key_and_gateway(e2e: Harness) -> None:
    server = e2e.python_server(GEMINI_API_KEY="", EVOLUTION_API="")
    health = server.health()
    assert health["status"] == "not_configured"  # not "ok": nothing could be answered yet
    assert health["gemini"] == "missing GEMINI_API_KEY"
    assert health["gateway"] == "missing EVOLUTION_API"
    assert health["worker"] == "alive"
    logs = server.logs()
    assert "GEMINI_API_KEY" in logs and "EVOLUTION_API" in logs
    assert server.post(upsert("mensagem sem configuracao")).status_code == 200  # still buffers
    # Its reply (the apology: no Gemini) cannot go anywhere: dead-lettered at once, not retried for an hour.
    wait_until(lambda: server.health()["dead_letters"] == 1, timeout=REPLY_TIMEOUT_SECONDS, what="a dead letter")
    assert server.health()["counters"]["send_failures"] == 1


def test_sigterm_exits_cleanly_and_keeps_the_pending_burst(e2e: Harness) -> None:
    first = e2e.python_server(DEBOUNCE_SECONDS=1.5)
    first.burst(["Mensagem antes do desligamento"])
    started = time.time()
    assert first.terminate(timeout=5) == 0
    assert time.time() - started < 5
    assert "worker stopped" in first.logs()
    assert not e2e.sends()

    second = e2e.gunicorn_server(workers=2, DEBOUNCE_SECONDS=1.5)
    (send,) = e2e.wait_sends(1)
    assert send.json["number"] == CUSTOMER_JID
    e2e.assert_no_more(sends=1, prompts=1)
    assert second.terminate(timeout=10) == 0


def test_logs_at_info_hold_no_numbers_keys_or_texts(e2e: Harness) -> None:
    texts = ["Meu CPF é 123.456.789-00", "Endereço Rua das Flores 77", "Pedido número 998877"]
    reply = "Anotado, seu pedido segue hoje para a Rua das Flores."
    e2e.gemini.queue(Canned(200, gemini_answer(reply)))
    server = e2e.python_server(WEBHOOK_TOKEN=TOKEN)
    for text in texts:
        assert server.post(upsert(text), params={"token": TOKEN}).status_code == 200
    # A person answering another chat from the phone: recorded (that chat is paused), never logged in clear.
    human = server.post(upsert(texts[0], jid=OTHER_JID, from_me=True), params={"token": TOKEN}).json()
    assert human.get("human") == 1, human
    assert server.post(upsert("x"), params={"token": "errado"}).status_code == 401
    assert server.post(data=b"nao e json {", params={"token": TOKEN}).status_code == 400
    e2e.wait_sends(1)
    e2e.assert_no_more(sends=1, prompts=1, seconds=0.5)
    logs = server.logs()
    assert "5511*****4321" in logs, logs  # the masked form is what is logged
    server.assert_logs_private(
        CUSTOMER_JID.split("@")[0],
        OTHER_JID.split("@")[0],
        EVOLUTION_APIKEY,
        GEMINI_KEY,
        PAYLOAD_APIKEY,
        TOKEN,
        reply,
        *texts,
    )


def test_a_port_in_use_is_named_before_anything_starts(e2e: Harness) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = e2e.spawn_python(PORT=port)
        assert server.proc is not None
        assert server.proc.wait(20) == 2
    logs = server.logs()
    assert f"PORT {port} is already in use on 127.0.0.1" in logs, logs
    assert "worker started" not in logs and "Traceback" not in logs


def test_closed_by_default_every_process_and_a_restart_take_the_generated_token(e2e: Harness) -> None:
    first = e2e.gunicorn_server(workers=2, WEBHOOK_AUTH="")  # the default: on, and no secret configured
    assert [first.post(upsert(f"sem token {n}")).status_code for n in range(4)] == [401] * 4
    token = e2e.redis.get(f"{REDIS_PREFIX}:webhook:token")
    assert token, "a token was generated and kept in Redis"
    header = {"Authorization": f"Bearer {token}"}
    answers = [first.post(upsert(f"com token {n}"), headers=header) for n in range(4)]  # both gunicorn workers
    answers += [first.post(upsert(f"na URL {n}"), params={"token": token}) for n in range(4)]
    assert [a.json()["status"] for a in answers] == ["buffered"] * 8
    assert first.terminate() == 0
    second = e2e.python_server(WEBHOOK_AUTH="")
    assert second.post(upsert("depois do restart"), headers=header).json()["status"] == "buffered"
    assert second.post(upsert("sem token")).status_code == 401
    opened = e2e.python_server(WEBHOOK_AUTH="off")
    assert opened.post(upsert("aberto")).json()["status"] == "buffered"
