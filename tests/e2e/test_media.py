"""End-to-end media: the real server process receives a burst of text + voice note + image through Evolution,
Meta and Twilio webhooks, fetches the media outside the request, and sends exactly one reply that Gemini wrote
with every item inline, in burst order; the history keeps the transcripts as text and the logs keep none.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import pytest

from tests.e2e.conftest import CUSTOMER_JID, INSTANCE, Harness, upsert, wait_count
from tests.e2e.fakes_e2e_gateways import (
    CUSTOMER_NUMBER,
    META_ACCESS_TOKEN,
    META_DISPLAY_NUMBER,
    META_PHONE_NUMBER_ID,
    TWILIO_ACCOUNT_SID,
    TWILIO_AUTH_TOKEN,
    FakeGraph,
    FakeTwilio,
    basic_auth,
    form_of,
    gateway_env,
    meta_envelope,
    meta_text,
    post_meta,
    post_twilio,
    twilio_form,
    wamid,
)
from tests.e2e.test_gateways import assert_quiet, wait_requests
from tests.fakes import Recorded
from tests.media_samples import ogg_opus_voice_note, png

VOICE = ogg_opus_voice_note(3.0, serial=0xE2E)
PHOTO = png(8, 8, (250, 180, 0))
OPUS = "audio/ogg; codecs=opus"
TRANSCRIPT = "Queria saber se tem esse modelo no tamanho 40"
DESCRIPTION = "Foto de um tênis amarelo de corrida"
REPLY = "Temos sim o tênis amarelo no 40! Quer que eu separe um para você?"


def gemini_with_transcripts(recorded: Recorded) -> str:
    return json.dumps({"reply": REPLY, "media": [{"n": 1, "text": TRANSCRIPT}, {"n": 2, "text": DESCRIPTION}]})


def inline_parts(prompt: dict[str, Any]) -> list[tuple[str, bytes]]:
    parts = prompt["contents"][-1]["parts"]
    return [
        (
            part["inlineData"].get("mimeType") or part["inlineData"]["mime_type"],
            base64.urlsafe_b64decode(part["inlineData"]["data"].replace("+", "-").replace("/", "_")),
        )
        for part in parts
        if "inlineData" in part
    ]


def burst_texts(prompt: dict[str, Any]) -> list[str]:
    return [part["text"] for part in prompt["contents"][-1]["parts"] if "text" in part]


def history(e2e: Harness, chat_key: str) -> list[dict[str, Any]]:
    key = next(k for k in e2e.redis_keys() if k.endswith(chat_key) and ":history:" in k)
    return [json.loads(item) for item in e2e.redis.lrange(key, 0, -1)]


def media_fields(mime: str, size: int, **extra: Any) -> dict[str, Any]:
    return {
        "url": "https://mmg.whatsapp.net/v/t62.7117-24/99999999_1_2_n.enc?ccb=11-4&mms3=true",
        "mimetype": mime,
        "fileLength": str(size),
        "mediaKey": "ZTJlLW1lZGlhLWtleS1vZi10aGUtdGVzdC1tZXNzYWdl",
        "directPath": "/v/t62.7117-24/99999999_1_2_n.enc?ccb=11-4",
        "fileEncSha256": "ZTJlLWVuYy1zaGEtMjU2LW9mLXRoZS10ZXN0LWZpbGU=",
        "mediaKeyTimestamp": str(int(time.time())),
        **extra,
    }


# ----- Evolution ----------------------------------------------------------------------------------------------


def test_evolution_text_voice_note_and_photo_get_one_reply(e2e: Harness) -> None:
    e2e.gemini.reply_for = gemini_with_transcripts
    audio_id = "3EB0" + uuid.uuid4().hex[:16].upper()
    e2e.evolution.media = {audio_id: (VOICE, OPUS)}
    server = e2e.python_server()

    voice = {"audioMessage": media_fields(OPUS, len(VOICE), seconds=3, ptt=True)}  # webhook base64 off
    photo = {
        "imageMessage": media_fields("image/png", len(PHOTO), caption="esse aqui"),
        "base64": base64.b64encode(PHOTO).decode(),  # webhook base64 on for this one
    }
    for body in (upsert("Oi, boa tarde"), upsert(message=voice, msg_id=audio_id), upsert(message=photo)):
        response = server.post(body)
        assert response.status_code == 200 and response.json()["status"] == "buffered", response.text
    assert e2e.evolution.media_requests() == []  # nothing fetched inside the webhook requests

    (send,) = e2e.wait_sends(1)
    assert send.json["text"] == REPLY
    (fetch,) = e2e.evolution.media_requests()
    assert fetch.path == f"/chat/getBase64FromMediaMessage/{INSTANCE}"
    assert fetch.json["message"]["key"]["id"] == audio_id
    (prompt,) = e2e.prompts()
    assert inline_parts(prompt) == [(OPUS, VOICE), ("image/png", PHOTO)]
    assert burst_texts(prompt) == ["Oi, boa tarde", "[mídia 1: mensagem de voz, 3 s]", "[mídia 2: imagem]", "esse aqui"]
    e2e.assert_no_more(sends=1, prompts=1)

    turns = history(e2e, f"evolution:{INSTANCE}:{CUSTOMER_JID}")
    assert [(t["role"], t["text"]) for t in turns] == [
        ("user", f"Oi, boa tarde\n[mensagem de voz] {TRANSCRIPT}\n[imagem] {DESCRIPTION}\nesse aqui"),
        ("model", REPLY),
    ]
    assert not [k for k in e2e.redis_keys() if ":media:" in k]  # the webhook's base64 is gone once answered
    server.assert_logs_private(TRANSCRIPT, DESCRIPTION, REPLY)


def test_evolution_media_that_cannot_be_fetched_still_gets_one_reply(e2e: Harness) -> None:
    """getBase64FromMediaMessage keeps failing (400: message not found): the text is answered, with the notice."""
    e2e.gemini.reply_for = lambda recorded: "Claro, me diga o que precisa!"
    server = e2e.python_server(MEDIA_FAILED_NOTICE="Não consegui abrir {items}.")
    voice = {"audioMessage": media_fields(OPUS, len(VOICE), seconds=3, ptt=True)}
    for body in (upsert("Oi"), upsert(message=voice)):
        assert server.post(body).status_code == 200
    (send,) = e2e.wait_sends(1)
    assert send.json["text"] == "Claro, me diga o que precisa!\n\nNão consegui abrir o áudio."
    assert len(e2e.evolution.media_requests()) == 1  # a 400 is final: not retried
    e2e.assert_no_more(sends=1, prompts=1)
    assert server.health()["counters"]["media_unreadable"] == 1


# ----- Meta ---------------------------------------------------------------------------------------------------


def meta_media(kind: str, media: dict[str, Any]) -> dict[str, Any]:
    return meta_envelope(
        {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": META_DISPLAY_NUMBER, "phone_number_id": META_PHONE_NUMBER_ID},
            "contacts": [{"profile": {"name": "Mariana Souza"}, "wa_id": CUSTOMER_NUMBER}],
            "messages": [
                {"from": CUSTOMER_NUMBER, "id": wamid(), "timestamp": str(int(time.time())), "type": kind, kind: media}
            ],
        }
    )


@pytest.fixture
def graph() -> Any:
    fake = FakeGraph()
    yield fake
    fake.close()


@pytest.fixture
def twilio() -> Any:
    fake = FakeTwilio()
    yield fake
    fake.close()


def test_meta_text_voice_note_and_photo_get_one_reply(e2e: Harness, graph: FakeGraph) -> None:
    e2e.gemini.reply_for = gemini_with_transcripts
    graph.media = {"1029384756": (VOICE, OPUS), "5647382910": (PHOTO, "image/png")}
    server = e2e.python_server(**gateway_env(graph))
    payloads = [
        meta_text("Oi, boa tarde"),
        meta_media("audio", {"mime_type": OPUS, "sha256": "x", "id": "1029384756", "voice": True}),
        meta_media("image", {"mime_type": "image/png", "sha256": "y", "id": "5647382910", "caption": "esse aqui"}),
    ]
    for payload in payloads:
        response = post_meta(server.url, payload)
        assert response.status_code == 200 and response.json()["status"] == "buffered", response.text

    wait_count(lambda: len(graph.texts()), 1, timeout=15, what="Graph API text sends")
    (send,) = graph.texts()
    assert send.json["text"]["body"] == REPLY
    downloads = graph.media_requests()
    assert [r.path.split("?")[0] for r in downloads] == [
        "/v23.0/1029384756",
        "/files/1029384756",
        "/v23.0/5647382910",
        "/files/5647382910",
    ]
    assert {r.headers["authorization"] for r in downloads} == {f"Bearer {META_ACCESS_TOKEN}"}
    (prompt,) = e2e.prompts()
    assert inline_parts(prompt) == [(OPUS, VOICE), ("image/png", PHOTO)]
    assert_quiet(e2e, prompts=1, fakes={"Graph API": (graph.received, 5)})
    server.assert_logs_private(TRANSCRIPT, DESCRIPTION, REPLY)


# ----- Twilio -------------------------------------------------------------------------------------------------


def test_twilio_text_voice_note_and_photo_get_one_reply(e2e: Harness, twilio: FakeTwilio) -> None:
    e2e.gemini.reply_for = gemini_with_transcripts
    base = f"/2010-04-01/Accounts/{TWILIO_ACCOUNT_SID}/Messages"
    twilio.media = {f"{base}/MMa1/Media/MEa1": VOICE, f"{base}/MMb2/Media/MEb2": PHOTO}
    server = e2e.python_server(**gateway_env(twilio=twilio))

    def with_media(path: str, mime: str, kind: str) -> dict[str, str]:
        form = twilio_form("")
        form |= {"NumMedia": "1", "MediaContentType0": mime, "MediaUrl0": twilio.url + path, "MessageType": kind}
        return form

    forms = [
        twilio_form("Oi, boa tarde"),
        with_media(f"{base}/MMa1/Media/MEa1", "audio/ogg", "audio"),
        with_media(f"{base}/MMb2/Media/MEb2", "image/png", "image"),
    ]
    for form in forms:
        assert post_twilio(server.url, form).status_code == 200

    wait_count(lambda: len(twilio.sends()), 1, timeout=15, what="Twilio sends")
    (send,) = twilio.sends()
    assert form_of(send)["Body"] == REPLY
    downloads = [r for r in twilio.received() if r.method == "GET"]
    assert [r.path for r in downloads] == [f"{base}/MMa1/Media/MEa1", f"{base}/MMb2/Media/MEb2"]
    assert {r.headers["authorization"] for r in downloads} == {basic_auth(TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN)}
    (prompt,) = e2e.prompts()
    assert inline_parts(prompt) == [("audio/ogg", VOICE), ("image/png", PHOTO)]
    assert_quiet(e2e, prompts=1, fakes={"Twilio": (twilio.received, 3)})
    server.assert_logs_private(TRANSCRIPT, DESCRIPTION, REPLY)


def test_media_burst_survives_kill_9_of_the_worker_that_fetched_it(e2e: Harness) -> None:
    """The first process fetches the voice note and dies inside Gemini; the next one answers once."""
    e2e.gemini.reply_for = gemini_with_transcripts
    e2e.gemini.delay = 3.0
    audio_id = "3EB0" + uuid.uuid4().hex[:16].upper()
    e2e.evolution.media = {audio_id: (VOICE, OPUS)}
    first = e2e.python_server(LEASE_SECONDS=2)
    voice = {"audioMessage": media_fields(OPUS, len(VOICE), seconds=3, ptt=True)}
    assert first.post(upsert("Oi")).status_code == 200
    assert first.post(upsert(message=voice, msg_id=audio_id)).status_code == 200
    wait_requests(e2e.gemini, 1, "Gemini call of the first process")
    first.kill()
    e2e.gemini.delay = 0.0
    second = e2e.python_server(LEASE_SECONDS=2)
    (send,) = e2e.wait_sends(1, timeout=20)
    assert send.json["text"] == REPLY
    e2e.assert_no_more(sends=1)
    assert len(e2e.evolution.media_requests()) == 2  # fetched again by the process that answered
    second.assert_logs_private(TRANSCRIPT, REPLY)
