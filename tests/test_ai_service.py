"""ai_service against a local fake Gemini: the real google-genai client, its retries, and our errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from ai_service import AIService
from config import DEFAULT_SYSTEM_PROMPT
from errors import AIServiceError
from gemini_provider import build_prompt
from knowledge import GROUNDING_RULE, HEADER_NOTHING_FOUND, HEADER_RETRIEVED, HEADER_WHOLE, KnowledgeBase
from memory import Turn
from prompt import BUSINESS_FIRST
from tests.conftest import make_settings
from tests.fakes import Canned, FakeGemini, gemini_answer, gemini_error

KNOWLEDGE = Path(__file__).resolve().parent / "fixtures" / "knowledge"


def service(fake: FakeGemini, **overrides: object) -> AIService:
    return AIService(make_settings(gemini_base_url=fake.url, **overrides))


def test_build_prompt_turns_history_into_alternating_roles() -> None:
    history = [Turn(role="user", text="Oi"), Turn(role="model", text="Olá!"), Turn(role="user", text="Preço?")]
    contents = build_prompt(history, "E o frete?")
    assert [c["role"] for c in contents] == ["user", "model", "user"]
    assert [p["text"] for p in contents[-1]["parts"]] == ["Preço?", "E o frete?"]


def test_build_prompt_never_opens_with_the_model_but_keeps_what_the_business_said_first() -> None:
    contents = build_prompt([Turn(role="model", text="Seu pedido está pronto!", author="human")], "Oba")
    assert [(c["role"], [p["text"] for p in c["parts"]]) for c in contents] == [
        ("user", [BUSINESS_FIRST]),
        ("model", ["Seu pedido está pronto!"]),
        ("user", ["Oba"]),
    ]


def test_generate_reply_sends_system_prompt_history_and_key(fake_gemini: FakeGemini) -> None:
    ai = service(fake_gemini, system_prompt="Você é a Loja Teste.", gemini_model="gemini-test")
    reply = ai.generate_reply([Turn(role="user", text="Oi"), Turn(role="model", text="Olá")], "Quanto custa?")
    assert reply == "Resposta: Quanto custa?"
    (request,) = fake_gemini.received()
    assert request.path.endswith("/models/gemini-test:generateContent")
    assert request.headers["x-goog-api-key"] == "test-gemini-key"
    body = request.json
    assert body["systemInstruction"]["parts"][0]["text"] == "Você é a Loja Teste."
    assert [c["role"] for c in body["contents"]] == ["user", "model", "user"]


def test_retries_503_then_succeeds(fake_gemini: FakeGemini) -> None:
    fake_gemini.queue(Canned(503, gemini_error(503)), Canned(503, gemini_error(503)))
    assert service(fake_gemini).generate_reply([], "Oi") == "Resposta: Oi"
    assert len(fake_gemini.received()) == 3


def test_retries_429(fake_gemini: FakeGemini) -> None:
    fake_gemini.queue(Canned(429, gemini_error(429, "RESOURCE_EXHAUSTED")))
    assert service(fake_gemini).generate_reply([], "Oi") == "Resposta: Oi"
    assert len(fake_gemini.received()) == 2


def test_gives_up_after_max_attempts(fake_gemini: FakeGemini) -> None:
    fake_gemini.queue(*[Canned(500, gemini_error(500, "INTERNAL"))] * 10)
    with pytest.raises(AIServiceError) as info:
        service(fake_gemini, gemini_max_attempts=3).generate_reply([], "Oi")
    assert info.value.transient
    assert len(fake_gemini.received()) == 3


def test_does_not_retry_a_bad_request(fake_gemini: FakeGemini) -> None:
    fake_gemini.queue(Canned(400, gemini_error(400, "INVALID_ARGUMENT")))
    with pytest.raises(AIServiceError) as info:
        service(fake_gemini).generate_reply([], "Oi")
    assert not info.value.transient
    assert len(fake_gemini.received()) == 1


def test_empty_or_blocked_answer_is_an_error(fake_gemini: FakeGemini) -> None:
    fake_gemini.queue(Canned(200, {"candidates": [{"content": {"parts": []}, "finishReason": "SAFETY"}]}))
    with pytest.raises(AIServiceError, match="no text"):
        service(fake_gemini).generate_reply([], "Oi")


@pytest.mark.parametrize(
    "body",
    [
        ["not", "an", "object"],
        {"candidates": [{"content": "texto solto"}]},
        {"candidates": [{"content": {"parts": [{"text": "Oi!"}]}}], "usageMetadata": ["10"]},
        {"candidates": [{"content": {"parts": [{"text": "Oi!"}]}}], "usageMetadata": {"promptTokenCount": "dez"}},
    ],
)
def test_an_answer_that_is_not_geminis_json_is_a_clear_error(fake_gemini: FakeGemini, body: object) -> None:
    fake_gemini.queue(Canned(200, body))
    with pytest.raises(AIServiceError, match="unreadable"):
        service(fake_gemini).generate_reply([], "Oi")


def test_timeout_is_retried_then_reported(fake_gemini: FakeGemini) -> None:
    fake_gemini.delay = 1.5
    with pytest.raises(AIServiceError, match="unreachable"):
        service(fake_gemini, gemini_timeout_seconds=0.3, gemini_max_attempts=2).generate_reply([], "Oi")
    assert len(fake_gemini.received()) == 2


def test_unreachable_gemini_is_an_error() -> None:
    ai = AIService(make_settings(gemini_base_url="http://127.0.0.1:9", gemini_max_attempts=2))
    with pytest.raises(AIServiceError, match="unreachable"):
        ai.generate_reply([], "Oi")


def test_missing_key_is_reported_without_a_call(fake_gemini: FakeGemini) -> None:
    ai = service(fake_gemini, gemini_api_key="")
    assert not ai.configured
    with pytest.raises(AIServiceError, match="GEMINI_API_KEY"):
        ai.generate_reply([], "Oi")
    assert fake_gemini.received() == []


def test_answer_text_is_stripped(fake_gemini: FakeGemini) -> None:
    fake_gemini.queue(Canned(200, gemini_answer("  Olá, tudo bem?  \n")))
    assert service(fake_gemini).generate_reply([], "Oi") == "Olá, tudo bem?"


# ----- persona and knowledge in the system instruction ------------------------------------------------------


def system_parts(fake: FakeGemini) -> list[str]:
    (request,) = fake.received()
    return [part["text"] for part in request.json["systemInstruction"]["parts"]]


def knowledge_base(**options: int) -> KnowledgeBase:
    kb = KnowledgeBase(str(KNOWLEDGE), **options)
    kb.reload()
    return kb


def test_prompt_holds_the_retrieved_chunk_and_the_grounding_rule(fake_gemini: FakeGemini) -> None:
    settings = make_settings(gemini_base_url=fake_gemini.url, business_name="Doceria Flor de Canela")
    ai = AIService(settings, knowledge_base(top_k=3, whole_max_chars=0))
    history = [Turn(role="user", text="Oi"), Turn(role="model", text="Olá! Como posso ajudar?")]
    assert ai.generate_reply(history, "qnto custa o bolo de cenoura??") == "Resposta: qnto custa o bolo de cenoura??"
    persona, knowledge = system_parts(fake_gemini)
    assert persona == DEFAULT_SYSTEM_PROMPT + "\n\nA empresa se chama Doceria Flor de Canela."
    assert knowledge.startswith(f"{GROUNDING_RULE}\n\n{HEADER_RETRIEVED}\n\n--- fonte: produtos/bolos.md | Bolos > ")
    assert "Bolo de cenoura com cobertura de chocolate: R$ 48,00" in knowledge
    assert knowledge.count("--- fonte: ") == 3
    contents = fake_gemini.received()[0].json["contents"]
    assert [c["role"] for c in contents] == ["user", "model", "user"]  # the conversation itself is unchanged


def test_small_knowledge_base_goes_whole_with_the_persona_of_the_owner(fake_gemini: FakeGemini) -> None:
    settings = make_settings(gemini_base_url=fake_gemini.url, system_prompt="Você é a Lurdes, da doceria.")
    AIService(settings, knowledge_base(whole_max_chars=30_000)).generate_reply([], "qual a senha do wifi?")
    persona, knowledge = system_parts(fake_gemini)
    assert persona == "Você é a Lurdes, da doceria."
    assert knowledge.startswith(f"{GROUNDING_RULE}\n\n{HEADER_WHOLE}")
    assert "--- fonte: trabalhe-conosco.txt ---" in knowledge and "--- fonte: produtos/tortas.md ---" in knowledge


def test_unanswerable_question_gets_the_rule_and_no_chunk(fake_gemini: FakeGemini) -> None:
    ai = AIService(make_settings(gemini_base_url=fake_gemini.url), knowledge_base(whole_max_chars=0))
    ai.generate_reply([], "qual a senha do wifi?")
    assert system_parts(fake_gemini)[1] == f"{GROUNDING_RULE}\n\n{HEADER_NOTHING_FOUND}"


def test_without_a_knowledge_dir_the_instruction_is_the_persona_alone(fake_gemini: FakeGemini) -> None:
    ai = AIService(make_settings(gemini_base_url=fake_gemini.url), KnowledgeBase(""))
    ai.generate_reply([], "quanto custa o bolo?")
    assert system_parts(fake_gemini) == [DEFAULT_SYSTEM_PROMPT]
