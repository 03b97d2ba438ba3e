"""End-to-end: `python webhook.py` over HTTP -> Redis debounce -> fake Gemini -> fake Evolution sendText.

Bursts become one reply after the debounce, duplicates and non-customer events are dropped, chats stay
apart, and the history of one burst reaches the next prompt.
"""

from __future__ import annotations

import time

from tests.e2e.conftest import (
    CUSTOMER_JID,
    DEBOUNCE_SECONDS,
    EVOLUTION_APIKEY,
    GEMINI_KEY,
    GROUP_JID,
    INSTANCE,
    OTHER_JID,
    PAYLOAD_APIKEY,
    REPLY_TIMEOUT_SECONDS,
    Harness,
    last_user_text,
    prompt_turns,
    upsert,
)
from tests.fakes import Canned, gemini_answer

BURST = ["Oi", "Tudo bem?", "Queria saber o preço"]


def test_burst_gets_one_reply_after_the_debounce(e2e: Harness) -> None:
    reply = "Olá! Tudo ótimo. O preço do kit é R$ 49,90."
    e2e.gemini.queue(Canned(200, gemini_answer(reply)))
    server = e2e.python_server()

    last_post_started = 0.0
    for text in BURST:
        last_post_started = time.time()
        response = server.post(upsert(text))
        assert response.status_code == 200
        assert response.json()["status"] == "buffered"
        assert response.json()["buffered"] == 1

    (send,) = e2e.wait_sends(1)
    assert send.path == f"/message/sendText/{INSTANCE}"  # EVOLUTION_API is a base URL: the webhook's instance
    assert send.json["number"] == CUSTOMER_JID
    assert send.json["text"] == reply
    assert send.headers["apikey"] == EVOLUTION_APIKEY
    assert send.at >= last_post_started + DEBOUNCE_SECONDS - 0.01, "replied before the debounce elapsed"
    assert send.at <= last_post_started + DEBOUNCE_SECONDS + 5, "reply came far too late"

    (prompt,) = e2e.prompts()
    burst_text = last_user_text(prompt)
    positions = [burst_text.find(text) for text in BURST]
    assert all(p >= 0 for p in positions), burst_text
    assert positions == sorted(positions), f"burst out of order: {burst_text!r}"
    assert e2e.gemini.received()[0].at >= last_post_started + DEBOUNCE_SECONDS - 0.01

    e2e.assert_no_more(sends=1, prompts=1)
    server.assert_logs_private(
        "5511987654321", EVOLUTION_APIKEY, GEMINI_KEY, PAYLOAD_APIKEY, "Tudo bem?", "Queria saber o preço", reply
    )


def test_duplicate_deliveries_are_counted_once(e2e: Harness) -> None:
    server = e2e.python_server()
    retried = upsert("Vocês abrem no sábado?")
    answers = [server.post(retried).json() for _ in range(3)]  # the gateway retrying one delivery
    assert [a["status"] for a in answers] == ["buffered"] * 3
    assert [(a["buffered"], a["duplicates"]) for a in answers] == [(1, 0), (0, 1), (0, 1)]

    both = upsert("E no domingo?")  # global webhook and instance webhook both fire for one message
    first = server.post(both)
    second = server.post(both, path="/webhook/messages-upsert")
    assert (first.json()["buffered"], first.json()["duplicates"]) == (1, 0)
    assert (second.json()["buffered"], second.json()["duplicates"]) == (0, 1)

    e2e.wait_sends(1)
    (prompt,) = e2e.prompts()
    burst_text = last_user_text(prompt)
    assert burst_text.count("Vocês abrem no sábado?") == 1, burst_text
    assert burst_text.count("E no domingo?") == 1, burst_text
    assert server.health()["counters"]["duplicates"] == 3

    # A retry after the reply went out is still a duplicate: no second answer.
    late = server.post(retried)
    assert (late.json()["buffered"], late.json()["duplicates"]) == (0, 1)
    e2e.assert_no_more(sends=1, prompts=1)


def test_non_customer_events_are_ignored(e2e: Harness) -> None:
    # With handoff off, a person's message from the phone is ignored as before (tests/e2e/test_handoff.py: on).
    server = e2e.python_server(HANDOFF_PAUSE_MINUTES=0)
    reaction = {"reactionMessage": {"key": {"remoteJid": CUSTOMER_JID, "fromMe": True, "id": "3EB0AAA"}, "text": "👍"}}
    ignored = {
        "from_me": upsert("Mensagem do atendente humano", from_me=True),
        "status_broadcast": upsert("Status do dia", jid="status@broadcast", participant=CUSTOMER_JID),
        "group": upsert("Oi grupo", jid=GROUP_JID, participant=CUSTOMER_JID),
        "reaction": upsert(message=reaction),
        "event:messages.update": {
            "event": "messages.update",
            "instance": INSTANCE,
            "data": {
                "keyId": "3EB0BBB",
                "remoteJid": CUSTOMER_JID,
                "fromMe": False,
                "status": "READ",
                "message": {"conversation": "texto de um update"},
            },
        },
    }
    for reason, payload in ignored.items():
        response = server.post(payload)
        assert response.status_code == 200, (reason, response.text)
        assert response.json()["status"] == "ignored", (reason, response.text)
        assert response.json()["reason"] == reason

    # A real message afterwards proves the pipeline runs: its prompt must hold nothing ignored above.
    server.burst(["Mensagem de controle"])
    e2e.wait_sends(1)
    (prompt,) = e2e.prompts()
    assert [text for _, text in prompt_turns(prompt)] == ["Mensagem de controle"]
    assert e2e.sends()[0].json["number"] == CUSTOMER_JID
    e2e.assert_no_more(sends=1, prompts=1)


def test_two_chats_are_answered_separately(e2e: Harness) -> None:
    server = e2e.python_server()
    texts = {CUSTOMER_JID: ["Bom dia", "Tem entrega hoje?"], OTHER_JID: ["Boa tarde", "Aceita pix?"]}
    for first, second in zip(texts[CUSTOMER_JID], texts[OTHER_JID], strict=True):
        server.burst([first], jid=CUSTOMER_JID)
        server.burst([second], jid=OTHER_JID)

    sends = e2e.wait_sends(2)
    by_number = {send.json["number"]: send.json["text"] for send in sends}
    assert set(by_number) == {CUSTOMER_JID, OTHER_JID}
    for jid, own in texts.items():
        other = texts[OTHER_JID if jid == CUSTOMER_JID else CUSTOMER_JID]
        reply = by_number[jid]
        assert reply.startswith("Resposta: "), reply  # the fake Gemini's answer to this chat's burst
        assert all(text in reply for text in own), (jid, reply)
        assert not any(text in reply for text in other), (jid, reply)
    e2e.assert_no_more(sends=2, prompts=2)


def test_history_reaches_the_next_prompt(e2e: Harness) -> None:
    server = e2e.python_server()
    first_reply = "O tênis azul custa R$ 199."
    second_reply = "Temos do 38 ao 44."
    e2e.gemini.queue(Canned(200, gemini_answer(first_reply)), Canned(200, gemini_answer(second_reply)))

    server.burst(["Quanto custa o tênis azul?"])
    e2e.wait_sends(1)
    server.burst(["E tem no tamanho 42?"])
    sends = e2e.wait_sends(2)
    assert [s.json["text"] for s in sends] == [first_reply, second_reply]

    first, second = e2e.prompts()
    assert prompt_turns(first) == [("user", "Quanto custa o tênis azul?")]
    assert prompt_turns(second) == [
        ("user", "Quanto custa o tênis azul?"),
        ("model", first_reply),
        ("user", "E tem no tamanho 42?"),
    ]
    e2e.assert_no_more(sends=2, prompts=2)


def test_message_while_the_reply_is_written_gets_its_own_reply(e2e: Harness) -> None:
    e2e.gemini.queue(Canned(200, gemini_answer("Primeira resposta"), delay=2.0))
    server = e2e.python_server()
    server.burst(["Primeira pergunta"])
    e2e.gemini.wait_for(1, timeout=REPLY_TIMEOUT_SECONDS)  # the first burst is claimed and being answered
    posted = time.time()
    server.burst(["Pergunta feita durante a resposta"])

    sends = e2e.wait_sends(2)
    assert [s.json["text"] for s in sends] == ["Primeira resposta", "Resposta: Pergunta feita durante a resposta"]
    assert sends[1].at >= posted + DEBOUNCE_SECONDS - 0.01
    first, second = e2e.prompts()
    assert last_user_text(first) == "Primeira pergunta"
    assert last_user_text(second) == "Pergunta feita durante a resposta"
    e2e.assert_no_more(sends=2, prompts=2)


def test_nonstop_typing_is_answered_at_the_max_wait(e2e: Harness) -> None:
    max_wait = 2.0
    server = e2e.python_server(DEBOUNCE_SECONDS=1.0, DEBOUNCE_MAX_WAIT_SECONDS=max_wait)
    texts = [f"Digitando sem parar {n}" for n in range(1, 9)]
    first_post = time.time()
    for text in texts:  # every 0.4 s: the debounce alone would never end this burst
        server.burst([text])
        time.sleep(0.4)

    sends = e2e.wait_sends(2)
    assert first_post + max_wait - 0.01 <= sends[0].at <= first_post + max_wait + 1.0, "max wait not honoured"
    bursts = [last_user_text(prompt) for prompt in e2e.prompts()]
    assert all(sum(burst.count(text) for burst in bursts) == 1 for text in texts), bursts  # each text answered once
    assert texts[0] in bursts[0] and texts[-1] in bursts[1]
    e2e.assert_no_more(sends=2, prompts=2)
