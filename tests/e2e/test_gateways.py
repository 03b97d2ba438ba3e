"""End-to-end: the real `python webhook.py` with the Meta Cloud API, Twilio and Mega API gateways switched on and
pointed at local fakes of the Graph API, Twilio's Messages API and Mega's sendMessage.

For each gateway: a burst gets exactly one reply through that gateway, with its own body and auth, and Gemini sees
every text once; forged signatures (Meta, Twilio) or a missing WEBHOOK_TOKEN (Mega) buffer nothing; Meta's
handshake and status-only webhooks; Twilio's TwiML answer and replies split under 1600 characters (also when a
send fails halfway); one number on several gateways is several chats; Graph's 131047 is dead-lettered at once.
"""

from __future__ import annotations

import json
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from tests.e2e.conftest import (
    GEMINI_KEY,
    QUIET_SECONDS,
    REDIS_PREFIX,
    REPLY_TIMEOUT_SECONDS,
    Harness,
    ServerProcess,
    last_user_text,
    prompt_turns,
    upsert,
    wait_count,
    wait_until,
)
from tests.e2e.fakes_e2e_gateways import (
    CUSTOMER_JID,
    CUSTOMER_NUMBER,
    CUSTOMER_TWILIO,
    MEGA_API_TOKEN,
    MEGA_INSTANCE,
    META_ACCESS_TOKEN,
    META_API_VERSION,
    META_APP_SECRET,
    META_PHONE_NUMBER_ID,
    META_VERIFY_TOKEN,
    TWILIO_ACCOUNT_SID,
    TWILIO_AUTH_TOKEN,
    TWILIO_MESSAGES_PATH,
    TWILIO_PUBLIC_URL,
    TWILIO_WHATSAPP_FROM,
    WEBHOOK_TOKEN,
    FakeGraph,
    FakeMega,
    FakeTwilio,
    basic_auth,
    form_of,
    gateway_env,
    graph_error,
    mega_text,
    meta_body,
    meta_signature,
    meta_statuses,
    meta_text,
    post_meta,
    post_twilio,
    twilio_error,
    twilio_form,
    twilio_signature,
)
from tests.fakes import Canned, Recorded, gemini_answer

TWILIO_LIMIT = 1600
SECRETS = (META_APP_SECRET, META_ACCESS_TOKEN, TWILIO_AUTH_TOKEN, MEGA_API_TOKEN, WEBHOOK_TOKEN, GEMINI_KEY)


@pytest.fixture
def graph() -> Iterator[FakeGraph]:
    fake = FakeGraph()
    yield fake
    fake.close()


@pytest.fixture
def twilio() -> Iterator[FakeTwilio]:
    fake = FakeTwilio()
    yield fake
    fake.close()


@pytest.fixture
def mega() -> Iterator[FakeMega]:
    fake = FakeMega()
    yield fake
    fake.close()


# ----- helpers ------------------------------------------------------------------------------------------------


def wait_requests(fake: Any, expected: int, what: str, timeout: float = REPLY_TIMEOUT_SECONDS) -> list[Recorded]:
    wait_count(lambda: len(fake.received()), expected, timeout=timeout, what=what)
    return fake.received()


def assert_quiet(
    e2e: Harness,
    *,
    prompts: int,
    fakes: dict[str, tuple[Callable[[], list[Any]], int]],
    evolution: int = 0,
    seconds: float = QUIET_SECONDS,
) -> None:
    """For `seconds`: no further request reaches any fake and Gemini gets no further prompt."""
    watched = {**fakes, "evolution sendText": (e2e.sends, evolution)}
    deadline = time.time() + seconds
    while time.time() < deadline:
        for name, (received, expected) in watched.items():
            assert len(received()) == expected, f"{name}: expected {expected} requests, got {len(received())}"
        assert len(e2e.prompts()) == prompts, f"expected {prompts} Gemini calls, got {len(e2e.prompts())}"
        time.sleep(0.05)


def assert_burst_prompt(prompt: dict[str, Any], texts: list[str]) -> None:
    """The prompt's new user turn holds every text of the burst exactly once, in the order sent."""
    burst = last_user_text(prompt)
    assert [burst.count(text) for text in texts] == [1] * len(texts), burst
    positions = [burst.find(text) for text in texts]
    assert positions == sorted(positions), f"burst out of order: {burst!r}"


def counters(server: ServerProcess) -> dict[str, int]:
    return server.health()["counters"]


def normalized(text: str) -> str:
    return " ".join(text.split())


def is_empty_twiml(response: requests.Response) -> bool:
    root = ET.fromstring(response.content)
    return response.headers["Content-Type"].startswith("text/xml") and root.tag == "Response" and len(root) == 0


# ----- Meta Cloud API ------------------------------------------------------------------------------------------

META_BURST = ["Oi, boa tarde!", "Vocês entregam em Campinas?", "Quanto fica o frete para o CEP 13010-000?"]


def test_meta_handshake_echoes_the_challenge_only_for_the_verify_token(e2e: Harness, graph: FakeGraph) -> None:
    server = e2e.python_server(**gateway_env(graph))
    url = f"{server.url}/webhook/meta"
    good = {"hub.mode": "subscribe", "hub.verify_token": META_VERIFY_TOKEN, "hub.challenge": "1158201444"}

    answer = requests.get(url, params=good, timeout=5)
    assert answer.status_code == 200
    assert answer.text == "1158201444"  # echoed as is, nothing around it
    assert answer.headers["Content-Type"].startswith("text/plain")

    refused = [
        {**good, "hub.verify_token": "token-errado"},
        {**good, "hub.verify_token": META_VERIFY_TOKEN + "x"},
        {key: value for key, value in good.items() if key != "hub.verify_token"},
        {**good, "hub.mode": "unsubscribe"},
    ]
    for params in refused:
        answer = requests.get(url, params=params, timeout=5)
        assert answer.status_code == 403, (params, answer.text)
        assert "1158201444" not in answer.text
    assert counters(server).get("signature_failures") == len(refused)
    assert graph.received() == [] and e2e.prompts() == []


def test_meta_burst_gets_one_graph_send(e2e: Harness, graph: FakeGraph) -> None:
    reply = "Boa tarde, Mariana! Entregamos em Campinas sim. O frete para o CEP 13010-000 fica R$ 18,90."
    e2e.gemini.queue(Canned(200, gemini_answer(reply)))
    server = e2e.python_server(**gateway_env(graph))

    payloads = [meta_text(text) for text in META_BURST]
    for n, payload in enumerate(payloads):
        # Meta escapes non-ASCII; one body goes as raw UTF-8 to prove the signature covers the bytes received.
        answer = post_meta(server.url, payload, ascii_only=n != 1)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"status": "buffered", "buffered": 1, "duplicates": 0, "ignored": 0}
    redelivered = post_meta(server.url, payloads[1])  # Meta redelivers a webhook it thinks failed
    assert redelivered.json() == {"status": "buffered", "buffered": 0, "duplicates": 1, "ignored": 0}

    (send,) = wait_requests(graph, 1, "Graph API sends")
    assert send.path == f"/{META_API_VERSION}/{META_PHONE_NUMBER_ID}/messages"
    assert send.headers["authorization"] == f"Bearer {META_ACCESS_TOKEN}"
    assert send.headers["content-type"].startswith("application/json")
    assert send.json == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": CUSTOMER_NUMBER,
        "type": "text",
        "text": {"preview_url": False, "body": reply},
    }
    (prompt,) = e2e.prompts()
    assert_burst_prompt(prompt, META_BURST)

    assert_quiet(e2e, prompts=1, fakes={"Graph API": (graph.received, 1)})
    seen = counters(server)
    assert (seen.get("received"), seen.get("duplicates"), seen.get("replies_sent")) == (3, 1, 1)
    server.assert_logs_private(CUSTOMER_NUMBER, *SECRETS, *META_BURST, reply)


def test_meta_forged_or_missing_signature_is_refused(e2e: Harness, graph: FakeGraph) -> None:
    server = e2e.python_server(**gateway_env(graph))
    body = meta_body(meta_text("Quero cancelar meu pedido"))
    other_body = meta_body(meta_text("Quero cancelar meu pedido e receber em dobro"))
    forged = {
        "no header": (body, ""),
        "wrong app secret": (body, meta_signature(body, "segredo-de-outro-app")),
        "signed another body": (other_body, meta_signature(body)),
        "sha1 instead of sha256": (body, "sha1=" + meta_signature(body)[7:47]),
        "truncated digest": (body, meta_signature(body)[:-2]),
        "bare hex, no sha256= prefix": (body, meta_signature(body)[7:]),
    }
    for case, (sent, signature) in forged.items():
        answer = post_meta(server.url, sent, signature=signature)
        assert answer.status_code == 401, (case, answer.text)
        assert answer.json() == {"error": "unauthorized"}, case

    assert_quiet(e2e, prompts=0, fakes={"Graph API": (graph.received, 0)})  # past the debounce: nothing buffered
    health = server.health()
    assert health["counters"].get("signature_failures") == len(forged)
    assert health["counters"].get("received", 0) == 0
    assert health["chats_pending"] == 0 and health["chats_in_progress"] == 0


def test_meta_statuses_only_webhook_is_ignored(e2e: Harness, graph: FakeGraph) -> None:
    server = e2e.python_server(**gateway_env(graph))
    answer = post_meta(server.url, meta_statuses("sent", "delivered", "read"))
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"status": "ignored", "reason": "status:sent,status:delivered,status:read"}

    assert_quiet(e2e, prompts=0, fakes={"Graph API": (graph.received, 0)})
    health = server.health()
    assert health["counters"].get("ignored") == 3 and health["counters"].get("received", 0) == 0
    assert health["chats_pending"] == 0


def test_meta_marks_the_last_message_read_before_replying(e2e: Harness, graph: FakeGraph) -> None:
    server = e2e.python_server(**{**gateway_env(graph), "META_MARK_AS_READ": "true"})
    payloads = [meta_text("Vocês têm a camiseta P?"), meta_text("Na cor verde")]
    for payload in payloads:
        assert post_meta(server.url, payload).json()["buffered"] == 1

    receipt, send = wait_requests(graph, 2, "Graph API calls (read receipt, then the text)")
    last_id = payloads[-1]["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
    assert receipt.json == {"messaging_product": "whatsapp", "status": "read", "message_id": last_id}
    assert receipt.headers["authorization"] == f"Bearer {META_ACCESS_TOKEN}"
    assert send.json["type"] == "text" and send.json["to"] == CUSTOMER_NUMBER
    assert send.json["text"]["body"] == "Resposta: Vocês têm a camiseta P?\nNa cor verde"
    assert_quiet(e2e, prompts=1, fakes={"Graph API": (graph.received, 2)})


def test_meta_outside_the_24h_window_is_dead_lettered_not_retried(e2e: Harness, graph: FakeGraph) -> None:
    graph.queue(Canned(400, graph_error(131047, "Re-engagement message")))
    server = e2e.python_server(**gateway_env(graph))
    assert post_meta(server.url, meta_text("Oi, ainda estão abertos?")).json()["buffered"] == 1

    wait_until(lambda: counters(server).get("dead_lettered") == 1, timeout=REPLY_TIMEOUT_SECONDS, what="a dead letter")
    # DELIVERY_RETRY_BASE_SECONDS is 0.3 s: a retry would show within the quiet window.
    assert_quiet(e2e, prompts=1, fakes={"Graph API": (graph.received, 1)})
    health = server.health()
    assert health["counters"].get("send_failures") == 1
    assert health["counters"].get("replies_sent", 0) == 0
    assert (health["dead_letters"], health["chats_pending"], health["chats_in_progress"]) == (1, 0, 0)
    (record,) = [json.loads(item) for item in e2e.redis.lrange(f"{REDIS_PREFIX}:dead", 0, -1)]
    assert record["chat"] == f"meta:{META_PHONE_NUMBER_ID}:{CUSTOMER_NUMBER}"
    assert "131047" in record["error"] and "24 h" in record["error"]
    assert [m["text"] for m in record["messages"]] == ["Oi, ainda estão abertos?"]
    assert "outside the 24 h customer service window" in server.logs()


def test_meta_rate_limit_slows_the_number_and_sends_the_same_reply_again(e2e: Harness, graph: FakeGraph) -> None:
    graph.queue(Canned(400, graph_error(130429, "Rate limit hit")))
    server = e2e.python_server(**gateway_env(graph))
    assert post_meta(server.url, meta_text("Qual o horário de domingo?")).json()["buffered"] == 1

    first, second = wait_requests(graph, 2, "Graph API sends (rate limited, then sent again)")
    assert first.json == second.json
    assert second.at - first.at >= 2.0 - 0.05  # the number held back (Meta gives no Retry-After), not a tight loop
    # Sent again by the same owner after the slow-down: the model is not asked again, nothing counts as failed.
    assert_quiet(e2e, prompts=1, fakes={"Graph API": (graph.received, 2)})
    seen = counters(server)
    assert (seen.get("rate_limited_sends"), seen.get("replies_sent"), seen.get("send_failures", 0)) == (1, 1, 0)


# ----- Twilio -------------------------------------------------------------------------------------------------

# "+", "&", "=" and an emoji: the signature is computed over the decoded form values.
TWILIO_BURST = ["Olá", "Quero remarcar minha consulta + exames & retorno", "Pode ser quinta às 15h? A=B 🙏"]


def test_twilio_burst_gets_one_send_and_twiml_answers(e2e: Harness, twilio: FakeTwilio) -> None:
    reply = "Claro! Sua consulta foi remarcada para quinta-feira às 15h. Até lá!"
    e2e.gemini.queue(Canned(200, gemini_answer(reply)))
    server = e2e.python_server(**gateway_env(twilio=twilio))

    forms = [twilio_form(text) for text in TWILIO_BURST]
    for n, form in enumerate(forms):
        # The last webhook URL carries a query string, which Twilio's signature covers.
        answer = post_twilio(server.url, form, query="loja=centro&canal=wa" if n == 2 else "")
        assert answer.status_code == 200, answer.text
        assert is_empty_twiml(answer), answer.text  # Twilio must not send anything itself
    assert is_empty_twiml(post_twilio(server.url, forms[0]))  # Twilio retrying one MessageSid

    (send,) = wait_requests(twilio, 1, "Twilio Messages API sends")
    assert send.path == TWILIO_MESSAGES_PATH
    assert send.headers["authorization"] == basic_auth(TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN)
    assert send.headers["content-type"].startswith("application/x-www-form-urlencoded")
    assert form_of(send) == {"From": TWILIO_WHATSAPP_FROM, "To": CUSTOMER_TWILIO, "Body": reply}
    (prompt,) = e2e.prompts()
    assert_burst_prompt(prompt, TWILIO_BURST)

    assert_quiet(e2e, prompts=1, fakes={"Twilio": (twilio.received, 1)})
    seen = counters(server)
    assert (seen.get("received"), seen.get("duplicates"), seen.get("replies_sent")) == (3, 1, 1)
    server.assert_logs_private(CUSTOMER_NUMBER, *SECRETS, *TWILIO_BURST[1:], reply)


def test_twilio_forged_signature_is_refused(e2e: Harness, twilio: FakeTwilio) -> None:
    server = e2e.python_server(**gateway_env(twilio=twilio))
    form = twilio_form("Quero falar com um atendente")
    public = f"{TWILIO_PUBLIC_URL}/webhook/twilio"
    tampered = {**form, "Body": "Quero um reembolso agora"}
    forged: dict[str, dict[str, Any]] = {
        "no header": {"form": form, "signature": ""},
        "wrong auth token": {"form": form, "signature": twilio_signature(public, form, "token-de-outra-conta")},
        "signed for the internal URL": {"form": form, "signed_url": f"{server.url}/webhook/twilio"},
        "body changed after signing": {"form": tampered, "signature": twilio_signature(public, form)},
        "query string left out": {"form": form, "query": "loja=centro", "signed_url": public},
    }
    for case, kwargs in forged.items():
        answer = post_twilio(server.url, kwargs.pop("form"), **kwargs)
        assert answer.status_code == 401, (case, answer.text)

    # A correctly signed status callback is answered with TwiML and ignored.
    callback = {
        "MessageSid": "SM" + "5" * 32,
        "MessageStatus": "delivered",
        "AccountSid": TWILIO_ACCOUNT_SID,
        "From": TWILIO_WHATSAPP_FROM,
        "To": CUSTOMER_TWILIO,
        "ChannelToAddress": "+" + CUSTOMER_NUMBER,
        "ApiVersion": "2010-04-01",
    }
    answer = post_twilio(server.url, callback)
    assert answer.status_code == 200 and is_empty_twiml(answer), answer.text

    assert_quiet(e2e, prompts=0, fakes={"Twilio": (twilio.received, 0)})
    health = server.health()
    assert health["counters"].get("signature_failures") == len(forged)
    assert health["counters"].get("received", 0) == 0 and health["counters"].get("ignored") == 1
    assert health["chats_pending"] == 0


def long_reply() -> tuple[str, list[str]]:
    """A reply of ~4000 characters: short paragraphs and one paragraph longer than Twilio's limit by itself."""
    sentences = [
        f"Opção {n}: entrega expressa na região {n % 7 + 1}, com prazo de {n % 5 + 2} dias úteis e frete de R$ {n},90."
        for n in range(1, 45)
    ]
    paragraphs = [" ".join(sentences[i : i + 3]) for i in range(0, 24, 3)] + [" ".join(sentences[24:])]
    reply = "\n\n".join(paragraphs)
    assert len(paragraphs[-1]) > TWILIO_LIMIT and len(reply) > 2 * TWILIO_LIMIT
    return reply, sentences


def assert_split_reply(bodies: list[str], reply: str, sentences: list[str]) -> None:
    assert len(bodies) >= 3, [len(b) for b in bodies]
    assert all(0 < len(body) <= TWILIO_LIMIT for body in bodies), [len(b) for b in bodies]
    assert normalized(" ".join(bodies)) == normalized(reply)  # everything, once, in order
    for sentence in sentences:  # cut at paragraph or sentence boundaries, never mid-sentence
        assert sum(sentence in body for body in bodies) == 1, sentence


def test_twilio_long_reply_is_split_under_1600_chars(e2e: Harness, twilio: FakeTwilio) -> None:
    reply, sentences = long_reply()
    e2e.gemini.queue(Canned(200, gemini_answer(reply)))
    server = e2e.python_server(**gateway_env(twilio=twilio))
    assert is_empty_twiml(post_twilio(server.url, twilio_form("Quais são as opções de entrega?")))

    wait_until(lambda: counters(server).get("replies_sent") == 1, timeout=REPLY_TIMEOUT_SECONDS, what="the reply")
    sends = twilio.received()
    forms = [form_of(send) for send in sends]
    assert all(f["To"] == CUSTOMER_TWILIO and f["From"] == TWILIO_WHATSAPP_FROM for f in forms)
    assert_split_reply([f["Body"] for f in forms], reply, sentences)
    assert_quiet(e2e, prompts=1, fakes={"Twilio": (twilio.received, len(sends))})


def test_twilio_split_reply_failing_halfway_resends_only_the_rest(e2e: Harness, twilio: FakeTwilio) -> None:
    reply, sentences = long_reply()
    e2e.gemini.queue(Canned(200, gemini_answer(reply)))
    outage = twilio_error(20500, "Internal Server Error", 500)
    # Part 1 goes out; part 2 gets 500 twice (SEND_MAX_RETRIES=1); then Twilio is back.
    twilio.queue(Canned(201), Canned(500, outage), Canned(500, outage))
    server = e2e.python_server(**gateway_env(twilio=twilio))
    assert is_empty_twiml(post_twilio(server.url, twilio_form("Quais são as opções de entrega?")))

    wait_until(lambda: counters(server).get("replies_sent") == 1, timeout=REPLY_TIMEOUT_SECONDS, what="the reply")
    sends = twilio.received()
    bodies = [form_of(send)["Body"] for send in sends]
    assert bodies[1] == bodies[2]  # the same part, retried by the HTTP session
    delivered = [bodies[0], *bodies[3:]]  # what Twilio accepted (201)
    assert_split_reply(delivered, reply, sentences)
    assert_quiet(e2e, prompts=1, fakes={"Twilio": (twilio.received, len(sends))})
    seen = counters(server)
    assert (seen.get("send_failures"), seen.get("dead_lettered", 0)) == (1, 0)


# ----- Mega API -----------------------------------------------------------------------------------------------

MEGA_BURST = ["Bom dia", "O pedido 4821 já saiu para entrega?", "Obrigada desde já!"]


def test_mega_burst_gets_one_send(e2e: Harness, mega: FakeMega) -> None:
    reply = "Bom dia! O pedido 4821 saiu para entrega hoje às 8h e chega até as 18h."
    e2e.gemini.queue(Canned(200, gemini_answer(reply)))
    server = e2e.python_server(**gateway_env(mega=mega))

    payloads = [mega_text(text) for text in MEGA_BURST]
    bearer = {"Authorization": f"Bearer {WEBHOOK_TOKEN}"}
    answers = [server.post(payloads[0], path="/webhook/mega", headers=bearer)]  # token as a header ...
    for payload in payloads[1:] + [payloads[2]]:  # ... or in the URL (Mega's panel only takes a URL)
        answers.append(server.post(payload, path="/webhook/mega", params={"token": WEBHOOK_TOKEN}))
    assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
    assert [(a.json()["buffered"], a.json()["duplicates"]) for a in answers] == [(1, 0), (1, 0), (1, 0), (0, 1)]

    (send,) = wait_requests(mega, 1, "Mega API sends")
    assert send.path == f"/rest/sendMessage/{MEGA_INSTANCE}/text"
    assert send.headers["authorization"] == f"Bearer {MEGA_API_TOKEN}"
    assert send.json == {"messageData": {"to": CUSTOMER_JID, "text": reply}}
    (prompt,) = e2e.prompts()
    assert_burst_prompt(prompt, MEGA_BURST)

    # Mega echoes what we sent as a fromMe message: known as our own (by its text), it neither starts another
    # reply nor pauses the chat as a person's message would.
    echo = server.post(mega_text(reply, from_me=True), path="/webhook/mega", params={"token": WEBHOOK_TOKEN})
    assert echo.json() == {"status": "ignored", "reason": "own_echo"}
    assert_quiet(e2e, prompts=1, fakes={"Mega": (mega.received, 1)})
    seen = counters(server)
    assert (seen.get("received"), seen.get("duplicates"), seen.get("replies_sent")) == (3, 1, 1)
    server.assert_logs_private(CUSTOMER_NUMBER, *SECRETS, *MEGA_BURST, reply)


def test_mega_without_the_webhook_token_is_refused(e2e: Harness, mega: FakeMega) -> None:
    server = e2e.python_server(**gateway_env(mega=mega))
    payload = mega_text("Quero o boleto atualizado")
    attempts = {
        "no token": {},
        "wrong bearer": {"headers": {"Authorization": "Bearer token-errado"}},
        "wrong query token": {"params": {"token": "token-errado"}},
        "Mega's own API token": {"headers": {"Authorization": f"Bearer {MEGA_API_TOKEN}"}},
    }
    for case, kwargs in attempts.items():
        answer = server.post(payload, path="/webhook/mega", **kwargs)
        assert answer.status_code == 401, (case, answer.text)

    assert_quiet(e2e, prompts=0, fakes={"Mega": (mega.received, 0)})
    health = server.health()
    assert health["counters"].get("auth_failures") == len(attempts)
    assert health["counters"].get("received", 0) == 0 and health["chats_pending"] == 0


# ----- across gateways ----------------------------------------------------------------------------------------


def test_same_number_on_every_gateway_is_a_chat_per_gateway(
    e2e: Harness, graph: FakeGraph, twilio: FakeTwilio, mega: FakeMega
) -> None:
    server = e2e.python_server(**gateway_env(graph, twilio, mega))
    assert server.health()["gateways"] == ["evolution", "mega", "meta", "twilio"]
    texts = {
        "evolution": "Oi, escrevi pelo Evolution",
        "meta": "Oi, escrevi pela API oficial",
        "twilio": "Oi, escrevi pelo Twilio",
        "mega": "Oi, escrevi pelo Mega",
    }
    token = {"token": WEBHOOK_TOKEN}
    assert server.post(upsert(texts["evolution"], jid=CUSTOMER_JID), params=token).json()["buffered"] == 1
    assert post_meta(server.url, meta_text(texts["meta"])).json()["buffered"] == 1
    assert is_empty_twiml(post_twilio(server.url, twilio_form(texts["twilio"])))
    assert server.post(mega_text(texts["mega"]), path="/webhook/mega", params=token).json()["buffered"] == 1

    (evolution_send,) = e2e.wait_sends(1)
    (graph_send,) = wait_requests(graph, 1, "Graph API sends")
    (twilio_send,) = wait_requests(twilio, 1, "Twilio sends")
    (mega_send,) = wait_requests(mega, 1, "Mega sends")
    replies = {
        "evolution": (evolution_send.json["number"], evolution_send.json["text"]),
        "meta": (graph_send.json["to"], graph_send.json["text"]["body"]),
        "twilio": (form_of(twilio_send)["To"], form_of(twilio_send)["Body"]),
        "mega": (mega_send.json["messageData"]["to"], mega_send.json["messageData"]["text"]),
    }
    assert {name: to for name, (to, _) in replies.items()} == {
        "evolution": CUSTOMER_JID,
        "meta": CUSTOMER_NUMBER,
        "twilio": CUSTOMER_TWILIO,
        "mega": CUSTOMER_JID,
    }
    for name, (_, text) in replies.items():
        assert text == f"Resposta: {texts[name]}", (name, text)  # only its own chat's burst

    prompts = e2e.prompts()
    assert sorted(prompt_turns(p)[-1][1] for p in prompts) == sorted(texts.values())
    assert all(len(prompt_turns(p)) == 1 for p in prompts)  # no history leaked between the four chats
    fakes = {"Graph API": (graph.received, 1), "Twilio": (twilio.received, 1), "Mega": (mega.received, 1)}
    assert_quiet(e2e, prompts=4, fakes=fakes, evolution=1)


def test_unconfigured_gateways_answer_404(e2e: Harness, graph: FakeGraph) -> None:
    # Meta only partly configured (no access token): it must stay off, like Twilio and Mega.
    partial = {**gateway_env(graph), "META_ACCESS_TOKEN": ""}
    server = e2e.python_server(**partial)
    assert server.health()["gateways"] == ["evolution"]
    body = meta_body(meta_text("Olá?"))
    answers = {
        "meta": post_meta(server.url, body),
        "twilio": post_twilio(server.url, twilio_form("Olá?")),
        "mega": server.post(mega_text("Olá?"), path="/webhook/mega"),
    }
    for name, answer in answers.items():
        assert answer.status_code == 404, (name, answer.text)
        assert answer.json() == {"error": "gateway not configured", "gateway": name}
    handshake = {"hub.mode": "subscribe", "hub.verify_token": META_VERIFY_TOKEN, "hub.challenge": "77"}
    assert requests.get(f"{server.url}/webhook/meta", params=handshake, timeout=5).status_code == 404
    assert re.search(r"Meta .* is only partly configured", server.logs())
