"""OpenAI and compatible servers, and the provider chain: the real `openai` client against a local fake OpenAI
server (Chat Completions, audio transcription) that records every request; Evolution webhooks posted to the real
app, answered by the real worker on a real Redis. Also the token usage summed and priced (MODEL_PRICES).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import pytest
import redis
from flask.testing import FlaskClient

from ai_service import AIService
from config import Settings
from errors import AIServiceError
from knowledge import GROUNDING_RULE, KnowledgeBase
from media import BurstPart
from memory import Turn
from models import MediaRef
from tests.fakes import Canned, FakeEvolution, FakeGemini, FakeOpenAI, gemini_error, openai_error
from tests.test_ai_service import KNOWLEDGE
from tests.test_console import log_in
from tests.test_media import CHAT, PHOTO, VOICE, audio_event, image_event, msg_id, text_event
from usage import Prices, Usage, parse_prices
from webhook import Components, create_app

OPENAI_KEY = "sk-test-openai-3f9a"
ADMIN_TOKEN = "admin-token-provedores-77"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
NOTICE = "Não consegui abrir {items}. Pode reenviar?"


def openai_settings(settings: Settings, fake: FakeOpenAI, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "ai_provider": "openai",
        "openai_api_key": OPENAI_KEY,
        "openai_base_url": f"{fake.url}/v1",
        "openai_model": "gpt-4o-mini",
        "openai_max_retries": 2,
        "openai_timeout_seconds": 5.0,
        "debounce_seconds": 0.0,
        "media_failed_notice": NOTICE,
        "admin_token": ADMIN_TOKEN,
        **overrides,
    }
    return dataclasses.replace(settings, **values)


@dataclasses.dataclass
class Service:
    client: FlaskClient
    parts: Components

    def post(self, *bodies: dict[str, Any]) -> None:
        for body in bodies:
            response = self.client.post("/webhook", json=body)
            assert response.get_json()["status"] == "buffered", response.get_json()

    def answer(self) -> int:
        return self.parts.worker.run_once(wait=True)


@pytest.fixture
def service(settings: Settings, fake_openai: FakeOpenAI, redis_client: redis.Redis) -> Iterator[Callable[..., Service]]:
    made: list[Components] = []

    def make(**overrides: Any) -> Service:
        app = create_app(openai_settings(settings, fake_openai, **overrides), start_worker=False)
        parts: Components = app.extensions["assistant"]
        made.append(parts)
        return Service(app.test_client(), parts)

    yield make
    for parts in made:
        if parts.link.client is not None:
            parts.link.client.close()


def sent(evolution: FakeEvolution) -> list[str]:
    return [r.json["text"] for r in evolution.sends()]


# ----- the request ------------------------------------------------------------------------------------------


def test_a_text_burst_goes_with_persona_knowledge_and_history(settings: Settings, fake_openai: FakeOpenAI) -> None:
    knowledge = KnowledgeBase(str(KNOWLEDGE), top_k=2, whole_max_chars=0)
    knowledge.reload()
    ai = AIService(openai_settings(settings, fake_openai, business_name="Doceria Flor de Canela"), knowledge)
    history = [Turn(role="user", text="Oi"), Turn(role="model", text="Olá! Como posso ajudar?")]
    generated = ai.generate(history, [BurstPart(text="quanto custa o bolo de cenoura?")])
    assert generated.reply == "Resposta: quanto custa o bolo de cenoura?"
    assert generated.usage == (Usage(provider="openai", model="gpt-4o-mini", input_tokens=12, output_tokens=7),)
    (request,) = fake_openai.received()
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    body = request.json
    assert body["model"] == "gpt-4o-mini" and "response_format" not in body
    system, *turns = body["messages"]
    assert system["role"] == "system"
    assert system["content"].startswith(settings.system_prompt + "\n\nA empresa se chama Doceria Flor de Canela.")
    assert GROUNDING_RULE in system["content"] and "Bolo de cenoura com cobertura de chocolate" in system["content"]
    assert turns == [
        {"role": "user", "content": "Oi"},
        {"role": "assistant", "content": "Olá! Como posso ajudar?"},
        {"role": "user", "content": "quanto custa o bolo de cenoura?"},
    ]


def test_a_compatible_server_without_a_key_is_called_with_a_placeholder(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    """Ollama and other local servers need no key; the client insists on one, so a placeholder goes."""
    ai = AIService(openai_settings(settings, fake_openai, openai_api_key=""))
    assert ai.configured
    assert ai.generate_reply([], "Oi") == "Resposta: Oi"
    assert fake_openai.received()[0].headers["authorization"] == "Bearer not-needed"


def test_an_image_goes_as_an_image_part_and_its_description_is_kept(
    service: Callable[..., Service], fake_openai: FakeOpenAI, fake_evolution: FakeEvolution
) -> None:
    fake_openai.reply_for = lambda _: json.dumps(
        {"reply": "Que bolo lindo! Custa R$ 48.", "media": [{"n": 1, "text": "Foto de um bolo de cenoura"}]}
    )
    s = service()
    s.post(image_event(msg_id(), inline=True, caption="Quanto custa este?"))
    assert s.answer() == 1
    (body,) = fake_openai.completions()
    assert body["response_format"] == {"type": "json_object"}
    content = body["messages"][-1]["content"]
    assert [part["type"] for part in content] == ["text", "image_url", "text"]
    assert content[0]["text"].startswith("[mídia 1: imagem")
    assert content[1]["image_url"]["url"] == "data:image/png;base64," + base64.b64encode(PHOTO).decode()
    assert content[2]["text"] == "Quanto custa este?"
    assert "somente com JSON" in body["messages"][0]["content"]
    assert sent(fake_evolution) == ["Que bolo lindo! Custa R$ 48."]
    user_turn = s.parts.history.recent(CHAT)[0].text
    assert user_turn == "[imagem] Foto de um bolo de cenoura\nQuanto custa este?"


def test_a_voice_note_is_transcribed_then_answered(
    service: Callable[..., Service], fake_openai: FakeOpenAI, fake_evolution: FakeEvolution
) -> None:
    fake_openai.transcript = "Vocês entregam no domingo?"
    s = service(openai_transcribe_model="gpt-4o-mini-transcribe")
    s.post(audio_event(msg_id(), inline=True))
    assert s.answer() == 1
    (transcription,) = fake_openai.transcriptions()
    assert transcription.headers["content-type"].startswith("multipart/form-data")
    assert b'name="model"\r\n\r\ngpt-4o-mini-transcribe' in transcription.body
    assert VOICE in transcription.body  # the voice note's bytes, as sent
    (body,) = fake_openai.completions()
    assert "response_format" not in body  # nothing left for the model to describe
    last = body["messages"][-1]["content"]
    assert last.startswith("[mídia 1: mensagem de voz, 2 s] (transcrição) Vocês entregam no domingo?")
    assert sent(fake_evolution) == [f"Resposta: {last}"]
    assert s.parts.history.recent(CHAT)[0].text == "[mensagem de voz] Vocês entregam no domingo?"


def test_an_item_the_server_refuses_is_sent_again_as_words_with_the_notice(
    service: Callable[..., Service], fake_openai: FakeOpenAI, fake_evolution: FakeEvolution
) -> None:
    """A text-only local model given an image answers 400: asked once more with the image as words."""
    fake_openai.queue(Canned(400, openai_error(400, "image input is not supported")))
    s = service()
    s.post(image_event(msg_id(), inline=True), text_event(msg_id(), "e aí?"))
    assert s.answer() == 1
    first, second = fake_openai.completions()
    assert any(part["type"] == "image_url" for part in first["messages"][-1]["content"])
    words = json.dumps(second, ensure_ascii=False)
    assert "image_url" not in words and "imagem que não pôde ser aberta" in words
    assert sent(fake_evolution) == [
        "Resposta: [imagem que não pôde ser aberta]\ne aí?\n\nNão consegui abrir a imagem. Pode reenviar?"
    ]
    assert s.parts.counters.snapshot()["media_refused"] == 1


def test_a_document_goes_as_a_file_part(settings: Settings, fake_openai: FakeOpenAI) -> None:
    fake_openai.reply_for = lambda _: json.dumps({"reply": "Recebi o orçamento.", "media": [{"n": 1, "text": "PDF"}]})
    pdf = BurstPart(
        media=MediaRef(kind="document", mime="application/pdf", file_name="orcamento.pdf"),
        data=b"%PDF-1.4 fake",
        mime="application/pdf",
    )
    generated = AIService(openai_settings(settings, fake_openai)).generate([], [pdf])
    assert (generated.reply, generated.transcripts) == ("Recebi o orçamento.", {1: "PDF"})
    part = fake_openai.completions()[0]["messages"][-1]["content"][1]
    assert part == {
        "type": "file",
        "file": {
            "filename": "orcamento.pdf",
            "file_data": "data:application/pdf;base64," + base64.b64encode(b"%PDF-1.4 fake").decode(),
        },
    }


# ----- retries and the fallback chain -----------------------------------------------------------------------


def test_429_and_5xx_are_retried_by_the_client(settings: Settings, fake_openai: FakeOpenAI) -> None:
    fake_openai.queue(Canned(429, openai_error(429, "rate limited")), Canned(503, openai_error(503)))
    ai = AIService(openai_settings(settings, fake_openai, openai_max_retries=2))
    assert ai.generate_reply([], "Oi") == "Resposta: Oi"
    assert len(fake_openai.completions()) == 3


def test_retries_run_out_into_an_error(settings: Settings, fake_openai: FakeOpenAI) -> None:
    fake_openai.queue(*[Canned(500, openai_error(500))] * 5)
    ai = AIService(openai_settings(settings, fake_openai, openai_max_retries=1))
    with pytest.raises(AIServiceError, match="answered 500") as info:
        ai.generate_reply([], "Oi")
    assert info.value.transient and len(fake_openai.completions()) == 2


def test_a_bad_key_is_not_retried(settings: Settings, fake_openai: FakeOpenAI) -> None:
    fake_openai.queue(Canned(401, openai_error(401, "invalid api key")))
    with pytest.raises(AIServiceError, match="answered 401") as info:
        AIService(openai_settings(settings, fake_openai)).generate_reply([], "Oi")
    assert not info.value.transient and len(fake_openai.completions()) == 1


def test_gemini_down_every_time_is_answered_by_openai(
    service: Callable[..., Service],
    fake_gemini: FakeGemini,
    fake_openai: FakeOpenAI,
    fake_evolution: FakeEvolution,
    settings: Settings,
) -> None:
    fake_gemini.queue(*[Canned(503, gemini_error(503))] * 10)
    s = service(ai_provider="gemini", ai_fallback_provider="openai", gemini_max_attempts=2)
    s.post(text_event(msg_id(), "Tem bolo de cenoura?"))
    assert s.answer() == 1
    assert len(fake_gemini.received()) == 2 and len(fake_openai.completions()) == 1
    assert sent(fake_evolution) == ["Resposta: Tem bolo de cenoura?"]
    counters = s.parts.counters.snapshot()
    assert counters["ai_failures_gemini"] == 1 and counters["ai_fallbacks"] == 1
    assert "fallbacks" not in counters  # the customer got a real answer, not FALLBACK_REPLY
    health = s.client.get("/health").get_json()
    assert health["counters"]["ai_fallbacks"] == 1
    assert health["ai"]["provider"]["name"] == "gemini" and health["ai"]["fallback"]["name"] == "openai"


def test_both_providers_down_send_one_fallback_reply(
    service: Callable[..., Service],
    fake_gemini: FakeGemini,
    fake_openai: FakeOpenAI,
    fake_evolution: FakeEvolution,
) -> None:
    fake_gemini.queue(*[Canned(503, gemini_error(503))] * 10)
    fake_openai.queue(*[Canned(503, openai_error(503))] * 10)
    s = service(ai_provider="gemini", ai_fallback_provider="openai", gemini_max_attempts=1, openai_max_retries=0)
    s.post(text_event(msg_id(), "Oi"))
    assert s.answer() == 1
    assert sent(fake_evolution) == [s.parts.settings.fallback_reply]
    counters = s.parts.counters.snapshot()
    assert (counters["ai_failures_gemini"], counters["ai_failures_openai"], counters["fallbacks"]) == (1, 1, 1)
    assert "ai_fallbacks" not in counters


def test_openai_first_and_gemini_as_fallback(
    service: Callable[..., Service], fake_gemini: FakeGemini, fake_openai: FakeOpenAI, fake_evolution: FakeEvolution
) -> None:
    fake_openai.queue(*[Canned(500, openai_error(500))] * 3)
    s = service(ai_fallback_provider="gemini", openai_max_retries=0)
    s.post(text_event(msg_id(), "Oi"))
    s.answer()
    assert sent(fake_evolution) == ["Resposta: Oi"] and len(fake_gemini.received()) == 1


# ----- tokens and cost --------------------------------------------------------------------------------------


def test_tokens_are_summed_per_chat_and_day_and_priced(
    service: Callable[..., Service], fake_openai: FakeOpenAI, fake_gemini: FakeGemini
) -> None:
    fake_openai.transcript = "Quero dois bolos"
    s = service(model_prices="gpt-4o-mini:0.15/0.6,gemini-3-flash-preview:0.5/3")
    s.post(text_event(msg_id(), "Oi"))
    s.answer()
    s.post(audio_event(msg_id(), inline=True))
    s.answer()
    chat = s.client.get(f"/admin/api/chats/{quote(CHAT.key, safe='')}", headers=AUTH).get_json()
    # Two chat completions of 12 in / 7 out (whisper-1 reports no tokens).
    expected_cost = round((24 * 0.15 + 14 * 0.6) / 1_000_000, 6)
    assert chat["usage"] == {"input_tokens": 24, "output_tokens": 14, "cost_usd": expected_cost}
    day = s.client.get("/admin/api/usage", headers=AUTH).get_json()
    assert (day["input_tokens"], day["output_tokens"], day["cost_usd"]) == (24, 14, expected_cost)
    assert day["by_model"] == {"openai:gpt-4o-mini": {"input_tokens": 24, "output_tokens": 14, "calls": 2}}
    assert s.client.get("/admin/api/usage?day=ontem", headers=AUTH).status_code == 400
    assert s.client.get("/admin/api/usage").status_code == 401


def test_gemini_usage_metadata_is_counted(service: Callable[..., Service], fake_gemini: FakeGemini) -> None:
    s = service(ai_provider="gemini", model_prices="gemini-3-flash-preview:0.5/3")
    s.post(text_event(msg_id(), "Oi"))
    s.answer()
    usage = s.parts.usage.of_chat(CHAT)
    assert usage == {"input_tokens": 10, "output_tokens": 5, "cost_usd": round((10 * 0.5 + 5 * 3) / 1e6, 6)}


def test_model_prices_are_read_and_checked() -> None:
    assert parse_prices("gemini-3-flash-preview:0.5/3, gpt-4o-mini:0.15/0.6") == {
        "gemini-3-flash-preview": (0.5, 3.0),
        "gpt-4o-mini": (0.15, 0.6),
    }
    assert parse_prices("") == {}
    assert parse_prices("openrouter/meta-llama:3.1:0.1/0.2") == {"openrouter/meta-llama:3.1": (0.1, 0.2)}
    for bad in ("gpt-4o-mini", "gpt-4o-mini:0.15", "gpt-4o-mini:a/b", ":1/2", "m:-1/2"):
        with pytest.raises(ValueError):
            parse_prices(bad)
    prices = Prices(parse_prices("m:1/2"))
    assert prices.cost_usd(Usage(provider="openai", model="m", input_tokens=1_000_000, output_tokens=500_000)) == 2.0
    assert prices.cost_usd(Usage(provider="openai", model="unpriced", input_tokens=10**6)) == 0.0


def test_provider_settings_are_checked() -> None:
    from config import load_settings
    from errors import ConfigError

    with pytest.raises(ConfigError, match="AI_PROVIDER"):
        load_settings({"AI_PROVIDER": "claude"}, dotenv=False)
    with pytest.raises(ConfigError, match="MODEL_PRICES"):
        load_settings({"MODEL_PRICES": "gpt-4o-mini"}, dotenv=False)
    loaded = load_settings(
        {"AI_PROVIDER": "OpenAI", "OPENAI_BASE_URL": "http://localhost:11434/v1", "OPENAI_MAX_RETRIES": "0"},
        dotenv=False,
    )
    assert (loaded.ai_provider, loaded.openai_configured, loaded.openai_max_retries) == ("openai", True, 0)


def test_the_panel_shows_what_the_model_cost_for_the_chat_and_today(
    service: Callable[..., Service], fake_openai: FakeOpenAI
) -> None:
    s = service(model_prices="gpt-4o-mini:150/600")  # prices that make a visible cost from 12 + 7 tokens
    s.post(text_event(msg_id(), "Oi"))
    s.answer()
    log_in(s.client, ADMIN_TOKEN)
    chat_page = s.client.get(f"/admin/chats/{quote(CHAT.key, safe='')}").text
    # 12 * 150 / 1e6 + 7 * 600 / 1e6 = 0.006 USD
    assert "12 tokens de entrada, 7 de saída · US$ 0,0060" in chat_page
    status = s.client.get("/admin/status").text
    assert "openai (gpt-4o-mini)" in status
    assert "12 tokens de entrada, 7 de saída · US$ 0,0060" in status and "openai:gpt-4o-mini: 1 chamada" in status


def test_usage_is_summed_per_conversation_and_per_chat(service: Callable[..., Service]) -> None:
    s = service(model_prices="gpt-4o-mini:0.15/0.6", conversation_idle_minutes=0.01)  # idle 0.6 s closes one
    s.post(text_event(msg_id(), "Oi"))
    s.answer()
    first = s.client.get(f"/admin/api/chats/{quote(CHAT.key, safe='')}", headers=AUTH).get_json()
    assert first["usage"]["input_tokens"] == 12 and first["usage_total"]["input_tokens"] == 12
    time.sleep(0.8)  # the conversation closes; the next message opens another
    s.post(text_event(msg_id(), "Voltei"))
    s.answer()
    second = s.client.get(f"/admin/api/chats/{quote(CHAT.key, safe='')}", headers=AUTH).get_json()
    assert second["conversation"]["opened_at"] > first["conversation"]["opened_at"]
    assert (second["usage"]["input_tokens"], second["usage"]["output_tokens"]) == (12, 7)  # this conversation's
    assert (second["usage_total"]["input_tokens"], second["usage_total"]["output_tokens"]) == (24, 14)
