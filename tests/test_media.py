"""Media end to end inside one process: Evolution webhooks posted to the real Flask app, buffered in a real
Redis, answered by the real worker with the real google-genai client against the fake Gemini, media fetched
from the fake Evolution's getBase64FromMediaMessage. The media are real files made by tests/media_samples.py.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from config import Settings
from media import BurstPart, failed_notice, user_record
from models import ChatRef, MediaRef
from tests.fakes import Canned, FakeEvolution, FakeGemini, Recorded, gemini_error
from tests.gateway_doubles import WrappedGateway
from tests.media_samples import ogg_opus_voice_note, pdf, png
from webhook import Components, create_app

INSTANCE = "loja-midia"
JID = "5511912345678@s.whatsapp.net"
CHAT = ChatRef(gateway="evolution", instance=INSTANCE, chat_id=JID)
NOTICE = "Não consegui abrir {items}. Pode reenviar?"

VOICE = ogg_opus_voice_note(2.0)
PHOTO = png(6, 4, (20, 90, 200))
BUDGET_PDF = pdf("Orcamento 42")
OPUS = "audio/ogg; codecs=opus"


# ----- payloads (our own values, Evolution v2 shapes) -------------------------------------------------------


def media_fields(mime: str, size: int, **extra: Any) -> dict[str, Any]:
    """What WhatsApp puts in a media message (the download reference), with a thumbnail we must not keep."""
    return {
        "url": "https://mmg.whatsapp.net/v/t62.7117-24/11111111_222_333_n.enc?ccb=11-4&mms3=true",
        "mimetype": mime,
        "fileSha256": "c2hhLTI1Ni1vZi10aGUtZmlsZS10ZXN0LTAwMDAwMDA=",
        "fileLength": str(size),
        "mediaKey": "bWVkaWEta2V5LW9mLXRoZS10ZXN0LW1lc3NhZ2UtMDA=",
        "fileEncSha256": "ZW5jLXNoYS0yNTYtb2YtdGhlLXRlc3QtZmlsZS0wMDA=",
        "directPath": "/v/t62.7117-24/11111111_222_333_n.enc?ccb=11-4",
        "mediaKeyTimestamp": "1763900000",
        "jpegThumbnail": "/9j/4AAQSkZJRgABAQ-thumbnail-of-the-test",
        **extra,
    }


def event(msg_id: str, message: dict[str, Any]) -> dict[str, Any]:
    return {
        "event": "messages.upsert",
        "instance": INSTANCE,
        "data": {
            "key": {"remoteJid": JID, "fromMe": False, "id": msg_id},
            "pushName": "Joana",
            "message": message,
            "messageType": next(iter(message)),
            "messageTimestamp": int(time.time()),
        },
    }


def text_event(msg_id: str, text: str) -> dict[str, Any]:
    return event(msg_id, {"conversation": text})


def audio_event(msg_id: str, data: bytes = VOICE, *, inline: bool, mime: str = OPUS) -> dict[str, Any]:
    message: dict[str, Any] = {"audioMessage": media_fields(mime, len(data), seconds=2, ptt=True)}
    if inline:
        message["base64"] = base64.b64encode(data).decode()
    return event(msg_id, message)


def image_event(msg_id: str, data: bytes = PHOTO, *, inline: bool, caption: str = "") -> dict[str, Any]:
    message: dict[str, Any] = {"imageMessage": media_fields("image/png", len(data), caption=caption)}
    if inline:
        message["base64"] = base64.b64encode(data).decode()
    return event(msg_id, message)


def document_event(msg_id: str, data: bytes, *, mime: str, name: str, caption: str = "") -> dict[str, Any]:
    fields = media_fields(mime, len(data), fileName=name, caption=caption)
    return event(msg_id, {"documentWithCaptionMessage": {"message": {"documentMessage": fields}}})


def msg_id() -> str:
    return "3EB0" + uuid.uuid4().hex[:16].upper()


# ----- harness ----------------------------------------------------------------------------------------------


@dataclass
class App:
    client: FlaskClient
    parts: Components
    settings: Settings
    gemini: FakeGemini
    evolution: FakeEvolution
    redis: redis.Redis

    def post(self, *events: dict[str, Any]) -> None:
        for body in events:
            response = self.client.post("/webhook", json=body)
            assert response.status_code == 200, response.get_json()
            assert response.get_json()["status"] == "buffered", response.get_json()

    def answer(self) -> int:
        """Claim and answer whatever is due now; returns how many chats were claimed."""
        return self.parts.worker.run_once(wait=True)

    def history_texts(self) -> list[tuple[str, str]]:
        return [(t.role, t.text) for t in self.parts.history.recent(CHAT)]

    def sent(self) -> list[str]:
        return [r.json["text"] for r in self.evolution.sends()]


@pytest.fixture
def media_app(
    settings: Settings, fake_gemini: FakeGemini, fake_evolution: FakeEvolution, redis_client: redis.Redis
) -> Iterator[Callable[..., App]]:
    links = []

    def make(**overrides: Any) -> App:
        current = dataclasses.replace(settings, **{"debounce_seconds": 0.0, "media_failed_notice": NOTICE, **overrides})
        flask_app = create_app(current, start_worker=False)
        parts: Components = flask_app.extensions["assistant"]
        links.append(parts.link)
        return App(flask_app.test_client(), parts, current, fake_gemini, fake_evolution, redis_client)

    yield make
    for link in links:
        if link.client is not None:
            link.client.close()


def transcribing(*transcripts: str, reply: str = "Oi Joana! O tênis azul custa R$ 199.") -> Callable[[Recorded], str]:
    """A fake Gemini answer in the JSON shape the media prompt asks for."""

    def answer(recorded: Recorded) -> str:
        return json.dumps({"reply": reply, "media": [{"n": n, "text": t} for n, t in enumerate(transcripts, 1)]})

    return answer


def last_user_parts(prompt: dict[str, Any]) -> list[dict[str, Any]]:
    contents = prompt["contents"]
    assert contents[-1]["role"] == "user"
    return contents[-1]["parts"]


def inline_parts(prompt: dict[str, Any]) -> list[tuple[str, bytes]]:
    # google-genai writes `mime_type` inside `inlineData` and URL-safe base64; the API's JSON mapping (proto3)
    # accepts both spellings and both base64 alphabets
    return [
        (
            part["inlineData"].get("mimeType") or part["inlineData"]["mime_type"],
            base64.urlsafe_b64decode(part["inlineData"]["data"].replace("+", "-").replace("/", "_")),
        )
        for part in last_user_parts(prompt)
        if "inlineData" in part
    ]


def texts_of(prompt: dict[str, Any]) -> list[str]:
    return [part["text"] for part in last_user_parts(prompt) if "text" in part]


# ----- the burst reaches Gemini whole, in order ---------------------------------------------------------------


def test_text_voice_note_and_photo_with_webhook_base64_reach_gemini_in_order(media_app: Callable[..., App]) -> None:
    a = media_app()
    a.gemini.reply_for = transcribing("Queria saber o preço desse tênis", "Foto de um tênis azul de corrida")
    a.post(
        text_event(msg_id(), "Oi"),
        audio_event(msg_id(), inline=True),
        image_event(msg_id(), inline=True, caption="esse aqui"),
    )
    assert a.answer() == 1

    (prompt,) = a.gemini.prompts()
    assert inline_parts(prompt) == [(OPUS, VOICE), ("image/png", PHOTO)]
    texts = texts_of(prompt)
    assert texts == ["Oi", "[mídia 1: mensagem de voz, 2 s]", "[mídia 2: imagem]", "esse aqui"]
    parts = last_user_parts(prompt)
    # each item's bytes come right after its label, the caption right after its image
    assert [("inlineData" in p, p.get("text")) for p in parts] == [
        (False, "Oi"),
        (False, "[mídia 1: mensagem de voz, 2 s]"),
        (True, None),
        (False, "[mídia 2: imagem]"),
        (True, None),
        (False, "esse aqui"),
    ]
    config = prompt["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    instruction = [part["text"] for part in prompt["systemInstruction"]["parts"]]
    assert instruction[0] == a.settings.system_prompt and "transcrição" in instruction[-1]

    assert a.evolution.media_requests() == []  # the webhook already carried the bytes
    assert a.sent() == ["Oi Joana! O tênis azul custa R$ 199."]
    assert a.history_texts() == [
        (
            "user",
            "Oi\n[mensagem de voz] Queria saber o preço desse tênis\n"
            "[imagem] Foto de um tênis azul de corrida\nesse aqui",
        ),
        ("model", "Oi Joana! O tênis azul custa R$ 199."),
    ]


def test_without_webhook_base64_the_worker_asks_evolution_for_each_item(media_app: Callable[..., App]) -> None:
    a = media_app()
    audio_id, image_id = msg_id(), msg_id()
    a.evolution.media = {audio_id: (VOICE, OPUS), image_id: (PHOTO, "image/png")}
    a.gemini.reply_for = transcribing("Vocês entregam no sábado?", "Print de um pedido")
    audio, image = audio_event(audio_id, inline=False), image_event(image_id, inline=False)
    a.post(audio, image)
    assert a.evolution.media_requests() == []  # never inside the webhook request

    a.answer()

    requests = a.evolution.media_requests()
    assert [r.path for r in requests] == [f"/chat/getBase64FromMediaMessage/{INSTANCE}"] * 2
    assert all(r.headers["apikey"] == a.settings.authentication_api_key for r in requests)
    first = requests[0].json
    assert first["convertToMp4"] is False
    assert first["message"]["key"] == audio["data"]["key"]  # the webhook's record, so no database is needed
    sent_fields = first["message"]["message"]["audioMessage"]
    expected_fields = {k: v for k, v in audio["data"]["message"]["audioMessage"].items() if k != "jpegThumbnail"}
    assert sent_fields == expected_fields
    (prompt,) = a.gemini.prompts()
    assert inline_parts(prompt) == [(OPUS, VOICE), ("image/png", PHOTO)]
    assert a.history_texts()[0] == ("user", "[mensagem de voz] Vocês entregam no sábado?\n[imagem] Print de um pedido")
    assert len(a.sent()) == 1


def test_evolution_is_asked_only_for_items_the_webhook_did_not_carry(media_app: Callable[..., App]) -> None:
    a = media_app()
    fetched_id = msg_id()
    a.evolution.media = {fetched_id: (BUDGET_PDF, "application/pdf")}
    a.gemini.reply_for = transcribing("Áudio pedindo orçamento", "Orçamento número 42", reply="Recebido!")
    a.post(
        audio_event(msg_id(), inline=True),
        document_event(fetched_id, BUDGET_PDF, mime="application/pdf", name="orcamento.pdf", caption="segue"),
    )
    a.answer()
    assert [r.json["message"]["key"]["id"] for r in a.evolution.media_requests()] == [fetched_id]
    (prompt,) = a.gemini.prompts()
    assert inline_parts(prompt) == [(OPUS, VOICE), ("application/pdf", BUDGET_PDF)]
    assert '[mídia 2: documento, arquivo "orcamento.pdf"]' in texts_of(prompt)


def test_the_webhook_base64_is_kept_apart_and_dropped_once_the_reply_is_stored(media_app: Callable[..., App]) -> None:
    a = media_app()
    a.gemini.reply_for = transcribing("Bom dia")
    audio_id = msg_id()
    a.post(audio_event(audio_id, inline=True))
    media_key = a.parts.keys.media(CHAT.key, audio_id)
    assert base64.b64decode(a.redis.get(media_key) or "") == VOICE
    assert 0 < a.redis.ttl(media_key) <= a.settings.dedup_ttl_seconds
    pending = a.redis.lrange(a.parts.keys.pending(CHAT.key), 0, -1)
    assert len(pending) == 1 and "base64" not in pending[0] and "jpegThumbnail" not in pending[0]

    a.answer()
    assert a.redis.exists(media_key) == 0
    assert a.sent() == ["Oi Joana! O tênis azul custa R$ 199."]


# ----- what cannot be read never blocks the burst --------------------------------------------------------------


def test_oversized_item_is_not_fetched_and_the_reply_says_so_once(media_app: Callable[..., App]) -> None:
    a = media_app(media_max_bytes=len(PHOTO) + 10)
    big_id = msg_id()
    big = audio_event(big_id, data=VOICE + b"\0" * len(PHOTO), inline=False)
    a.evolution.media = {big_id: (VOICE, OPUS)}
    a.gemini.reply_for = transcribing("Uma foto de tênis", reply="Que lindo tênis!")
    a.post(text_event(msg_id(), "Olha"), big, image_event(msg_id(), inline=True))
    a.answer()
    a.answer()

    assert a.evolution.media_requests() == []
    (prompt,) = a.gemini.prompts()
    assert inline_parts(prompt) == [("image/png", PHOTO)]
    assert "[mensagem de voz que não pôde ser ouvida]" in texts_of(prompt)
    assert a.sent() == ["Que lindo tênis!\n\nNão consegui abrir o áudio. Pode reenviar?"]
    assert a.history_texts()[0][1] == "Olha\n[mensagem de voz que não pôde ser ouvida]\n[imagem] Uma foto de tênis"
    assert a.parts.counters.snapshot()["media_unreadable"] == 1


def test_base64_over_the_limit_is_not_stored(media_app: Callable[..., App]) -> None:
    a = media_app(media_max_bytes=len(VOICE) - 1)
    audio_id = msg_id()
    a.post(audio_event(audio_id, inline=True))
    assert a.redis.exists(a.parts.keys.media(CHAT.key, audio_id)) == 0


def test_unsupported_type_is_described_and_the_rest_answered(media_app: Callable[..., App]) -> None:
    a = media_app()
    zip_id = msg_id()
    a.evolution.media = {zip_id: (b"PK\x03\x04zipdata", "application/zip")}
    a.gemini.reply_for = transcribing("Foto de uma nota fiscal", reply="Vou verificar a nota.")
    a.post(
        document_event(zip_id, b"PK\x03\x04zipdata", mime="application/zip", name="notas.zip"),
        image_event(msg_id(), inline=True),
    )
    a.answer()
    assert a.evolution.media_requests() == []
    (prompt,) = a.gemini.prompts()
    assert inline_parts(prompt) == [("image/png", PHOTO)]
    assert a.sent() == ["Vou verificar a nota.\n\nNão consegui abrir o documento. Pode reenviar?"]


def test_fetch_failing_three_times_still_gets_one_reply(media_app: Callable[..., App]) -> None:
    a = media_app()
    a.evolution.queue(*[Canned(500, {"error": "Internal Server Error"})] * 3)
    a.gemini.reply_for = lambda recorded: "Oi! Como posso ajudar?"  # text-only prompt: no JSON asked
    audio_id = msg_id()
    a.post(text_event(msg_id(), "Oi, mandei um áudio"), audio_event(audio_id, inline=False))

    a.answer()

    requests = a.evolution.media_requests()
    assert len(requests) == 3 and {r.json["message"]["key"]["id"] for r in requests} == {audio_id}
    (prompt,) = a.gemini.prompts()
    assert inline_parts(prompt) == []
    assert "responseMimeType" not in prompt.get("generationConfig", {})
    assert texts_of(prompt) == ["Oi, mandei um áudio\n[mensagem de voz que não pôde ser ouvida]"]
    assert a.sent() == ["Oi! Como posso ajudar?\n\nNão consegui abrir o áudio. Pode reenviar?"]
    assert a.answer() == 0
    time.sleep(0.3)
    assert a.answer() == 0 and len(a.sent()) == 1


def test_items_past_the_burst_budget_are_unreadable_in_burst_order(media_app: Callable[..., App]) -> None:
    second = png(40, 40, (1, 2, 3))
    a = media_app(media_max_burst_bytes=len(PHOTO) + len(second) // 2)
    a.gemini.reply_for = transcribing("Primeira foto", reply="Vi a primeira foto.")
    a.post(image_event(msg_id(), inline=True), image_event(msg_id(), data=second, inline=True))
    a.answer()
    (prompt,) = a.gemini.prompts()
    assert inline_parts(prompt) == [("image/png", PHOTO)]
    assert a.sent() == ["Vi a primeira foto.\n\nNão consegui abrir a imagem. Pode reenviar?"]


def test_video_and_sticker_are_described_not_dropped(media_app: Callable[..., App]) -> None:
    a = media_app()
    a.gemini.reply_for = lambda recorded: "Recebi!"
    video = {"videoMessage": media_fields("video/mp4", 90_000, seconds=5, caption="olha o defeito")}
    video["base64"] = base64.b64encode(b"\0\0\0\x18ftypmp42").decode()
    a.post(event(msg_id(), video), event(msg_id(), {"stickerMessage": media_fields("image/webp", 3000)}))
    a.answer()
    (prompt,) = a.gemini.prompts()
    assert inline_parts(prompt) == []
    assert texts_of(prompt) == [
        "[vídeo recebido (o assistente não assiste vídeos)]\nolha o defeito\n[figurinha recebida]"
    ]
    assert a.sent() == ["Recebi!"]  # nothing failed: no notice
    assert a.evolution.media_requests() == []


def test_gemini_answering_without_json_still_replies(media_app: Callable[..., App]) -> None:
    a = media_app()
    a.gemini.reply_for = lambda recorded: "Oi! Recebi sua foto."
    a.post(image_event(msg_id(), inline=True))
    a.answer()
    assert a.sent() == ["Oi! Recebi sua foto."]
    assert a.history_texts() == [("user", "[imagem recebida]"), ("model", "Oi! Recebi sua foto.")]


def test_gemini_failing_sends_the_fallback_and_keeps_the_media_in_words(media_app: Callable[..., App]) -> None:
    a = media_app(gemini_max_attempts=1)
    a.gemini.queue(Canned(500, gemini_error(500, "INTERNAL")))
    a.post(audio_event(msg_id(), inline=True))
    a.answer()
    assert a.sent() == [a.settings.fallback_reply]
    assert a.history_texts() == [("user", "[mensagem de voz recebida]")]


def test_a_retried_send_keeps_the_transcripts_without_asking_gemini_or_evolution_again(
    media_app: Callable[..., App],
) -> None:
    a = media_app(delivery_retry_base_seconds=0.2)
    audio_id = msg_id()
    a.evolution.media = {audio_id: (VOICE, OPUS)}
    a.gemini.reply_for = transcribing("Qual o horário de sábado?", reply="Sábado abrimos das 9h às 13h.")
    a.post(audio_event(audio_id, inline=False))
    a.evolution.queue(Canned(), Canned(503, {"error": "down"}), Canned(503), Canned(503))  # media ok, send fails
    a.answer()
    assert a.history_texts() == []
    time.sleep(0.3)
    a.answer()
    assert a.sent()[-1] == "Sábado abrimos das 9h às 13h."
    assert len(a.gemini.prompts()) == 1 and len(a.evolution.media_requests()) == 1
    assert a.history_texts() == [
        ("user", "[mensagem de voz] Qual o horário de sábado?"),
        ("model", "Sábado abrimos das 9h às 13h."),
    ]


def test_transcripts_never_reach_info_logs(media_app: Callable[..., App], caplog: pytest.LogCaptureFixture) -> None:
    a = media_app()
    secret_words = "meu CPF é 123.456.789-00 e moro na rua das Flores"
    a.gemini.reply_for = transcribing(secret_words, "Documento de identidade", reply="Obrigado!")
    caplog.set_level(logging.INFO)
    a.post(audio_event(msg_id(), inline=True), image_event(msg_id(), inline=True))
    a.answer()
    assert a.sent() == ["Obrigado!"]
    info = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert info and not any("CPF" in line or "identidade" in line or "Flores" in line for line in info)


# ----- words and limits ------------------------------------------------------------------------------------------


def test_failed_notice_names_every_kind_once() -> None:
    audio = BurstPart(media=MediaRef(kind="audio", voice=True), problem="unreadable")
    image = BurstPart(media=MediaRef(kind="image"), problem="too_large")
    doc = BurstPart(media=MediaRef(kind="document"), problem="unsupported")
    ok = BurstPart(media=MediaRef(kind="image"), data=b"x", mime="image/png")
    template = "Não consegui abrir {items}."
    assert failed_notice([ok], template) == ""
    assert failed_notice([audio, audio], template) == "Não consegui abrir o áudio."
    assert failed_notice([audio, image, doc], template) == "Não consegui abrir o áudio, a imagem e o documento."
    assert failed_notice([audio], "") == ""
    assert failed_notice([audio], "Falhou {outra}") == "Falhou {outra}"


def test_user_record_numbers_transcripts_by_readable_items_only() -> None:
    parts = [
        BurstPart(text="Oi"),
        BurstPart(media=MediaRef(kind="audio"), problem="too_large"),
        BurstPart(media=MediaRef(kind="image"), data=b"x", mime="image/png", text="legenda"),
        BurstPart(media=MediaRef(kind="location", detail="Rua A, 10")),
    ]
    assert user_record(parts, {1: "uma foto"}) == (
        "Oi\n[áudio que não pôde ser ouvido]\n[imagem] uma foto\nlegenda\n[localização compartilhada: Rua A, 10]"
    )


def test_webhook_body_limit_admits_base64_of_the_largest_item(media_app: Callable[..., App]) -> None:
    a = media_app(max_body_bytes=8 * 1024, media_max_bytes=len(VOICE) * 40)
    bigger_voice = ogg_opus_voice_note(60.0)
    assert 8 * 1024 < len(json.dumps(audio_event(msg_id(), bigger_voice, inline=True)))
    a.post(audio_event(msg_id(), bigger_voice, inline=True))
    too_big = {"padding": "x" * (a.settings.webhook_body_limit + 1)}
    assert a.client.post("/webhook", json=too_big).status_code == 413


def test_history_keeps_media_as_text(media_app: Callable[..., App]) -> None:
    """The next burst's prompt carries the earlier transcript as plain text, not the bytes again."""
    a = media_app()
    a.gemini.reply_for = transcribing("Quero dois cafés", reply="Anotado: dois cafés.")
    a.post(audio_event(msg_id(), inline=True))
    a.answer()
    a.gemini.reply_for = None
    a.post(text_event(msg_id(), "E um pão de queijo"))
    a.answer()
    second = a.gemini.prompts()[1]
    assert [c["role"] for c in second["contents"]] == ["user", "model", "user"]
    assert second["contents"][0]["parts"] == [{"text": "[mensagem de voz] Quero dois cafés"}]
    assert inline_parts(second) == []


def test_gemini_refusing_the_media_is_asked_again_without_it(media_app: Callable[..., App]) -> None:
    """A corrupt voice note makes Gemini answer 400 for the whole request: the text still gets its answer."""
    a = media_app()
    a.gemini.queue(Canned(400, gemini_error(400, "INVALID_ARGUMENT")))
    a.gemini.reply_for = lambda recorded: "Temos sim, a pronta entrega."
    a.post(text_event(msg_id(), "Tem pronta entrega?"), audio_event(msg_id(), data=b"OggS-corrompido", inline=True))
    a.answer()
    first, second = a.gemini.prompts()
    assert inline_parts(first) == [(OPUS, b"OggS-corrompido")]
    assert inline_parts(second) == []
    assert texts_of(second) == ["Tem pronta entrega?\n[mensagem de voz que não pôde ser ouvida]"]
    assert a.sent() == ["Temos sim, a pronta entrega.\n\nNão consegui abrir o áudio. Pode reenviar?"]
    assert a.parts.counters.snapshot().get("fallbacks") is None


def test_a_crashing_download_costs_the_item_not_the_burst(media_app: Callable[..., App]) -> None:
    class Broken(WrappedGateway):
        def fetch_media(self, chat: ChatRef, media: MediaRef, *, max_bytes: int) -> tuple[bytes, str]:
            raise KeyError("a bug in an adapter")

    a = media_app()
    a.gemini.reply_for = lambda recorded: "Oi!"
    a.post(text_event(msg_id(), "Oi"), audio_event(msg_id(), inline=False))
    a.parts.worker.gateways = {"evolution": Broken(a.parts.gateways["evolution"])}
    a.parts.worker.media.gateways = a.parts.worker.gateways
    a.answer()
    assert a.sent() == ["Oi!\n\nNão consegui abrir o áudio. Pode reenviar?"]


def test_a_media_burst_is_grounded_in_the_knowledge_base_too(media_app: Callable[..., App]) -> None:
    """The caption and the media labels search the knowledge base; the media instruction comes after it."""
    knowledge = str(Path(__file__).parent / "fixtures" / "knowledge")
    a = media_app(knowledge_dir=knowledge, rag_whole_max_chars=0)
    a.gemini.reply_for = transcribing("Foto de um bolo de cenoura", reply="O bolo de cenoura custa R$ 48,00.")
    a.post(image_event(msg_id(), inline=True, caption="quanto custa esse bolo de cenoura?"))
    a.answer()
    (prompt,) = a.gemini.prompts()
    persona, knowledge_block, media_rule = [part["text"] for part in prompt["systemInstruction"]["parts"]]
    assert persona == a.settings.system_prompt
    assert "produtos/bolos.md" in knowledge_block and "Bolo de cenoura com cobertura de chocolate: R$ 48,00" in (
        knowledge_block
    )
    assert "transcrição" in media_rule
    assert inline_parts(prompt) == [("image/png", PHOTO)]
    assert a.sent() == ["O bolo de cenoura custa R$ 48,00."]
