"""One Gemini call: the chat's history plus the new burst -> one reply text. Knows nothing about WhatsApp.

The system instruction is built per call: the persona, then the grounding rule and the knowledge that
knowledge.py selected for this burst.

A burst with media (voice notes, images, PDFs) goes as one user turn whose parts keep the burst's order: text,
a label such as `[mídia 1: mensagem de voz, 7 s]`, then the item's bytes as an inline part with its mime type.
Gemini then answers JSON (response schema) with the reply and, per numbered item, a transcript or short
description, which the history keeps as text.

Retries with exponential backoff on 408/429/5xx and transport errors are the SDK's own (HttpRetryOptions);
whatever still fails is raised as AIServiceError for the worker to decide (fallback reply).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import httpx2  # google-genai 3.x transport (a maintained httpx fork)
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from config import Settings
from errors import AIServiceError
from knowledge import KnowledgeBase
from media import BurstPart
from memory import Turn

log = logging.getLogger(__name__)

RETRY_STATUS_CODES = [408, 429, 500, 502, 503, 504]
BUSINESS_FIRST = "(a conversa começou com uma mensagem da empresa)"  # model-facing, see build_prompt

# Added to the system instruction when the burst carries media bytes (model-facing, in the persona's language).
MEDIA_INSTRUCTION = (
    "A última mensagem do cliente inclui mídias numeradas ([mídia 1], [mídia 2], ...), na ordem em que ele "
    "enviou. Considere tudo (textos, áudios, imagens e documentos) e responda numa única mensagem. Responda "
    'somente com JSON: "reply" é o texto da resposta ao cliente; "media" tem um item por mídia numerada, com '
    '"n" (o número da mídia) e "text" (a transcrição fiel do áudio, ou uma descrição curta e objetiva da imagem '
    "ou do documento). Se alguma mídia aparece como não lida, não tente adivinhar o conteúdo nem peça desculpas "
    "por ela: um aviso ao cliente é acrescentado automaticamente."
)
MEDIA_REPLY_SCHEMA = types.Schema(
    type=types.Type.OBJECT,
    properties={
        "reply": types.Schema(type=types.Type.STRING),
        "media": types.Schema(
            type=types.Type.ARRAY,
            items=types.Schema(
                type=types.Type.OBJECT,
                properties={"n": types.Schema(type=types.Type.INTEGER), "text": types.Schema(type=types.Type.STRING)},
                required=["n", "text"],
            ),
        ),
    },
    required=["reply", "media"],
)


@dataclass(frozen=True, slots=True)
class Generated:
    """Gemini's reply, and per media item number (1-based, in burst order) its transcript or description."""

    reply: str
    transcripts: dict[int, str] = field(default_factory=dict)


def burst_parts(burst: list[BurstPart]) -> list[types.Part]:
    """The burst as the parts of one user turn, in arrival order; media bytes as inline parts."""
    parts: list[types.Part] = []
    number = 0
    for item in burst:
        if item.readable:
            number += 1
            parts.append(types.Part(text=item.prompt_label(number)))
            parts.append(types.Part.from_bytes(data=item.data or b"", mime_type=item.mime))
            if item.text:
                parts.append(types.Part(text=item.text))
        else:
            parts.append(types.Part(text=item.describe()))
    return parts


def build_prompt(history: list[Turn], user_text: str | list[types.Part]) -> list[types.Content]:
    """History as real user/model turns, then the new burst (text, or parts with media) as the last user turn.

    Consecutive turns of the same role (a fallback that was not recorded, say) are merged, because
    Gemini expects the roles to alternate. The business's turns (the bot's and a person's) are model turns.
    """
    burst = [types.Part(text=user_text)] if isinstance(user_text, str) else user_text
    turns = [(turn.role, [types.Part(text=turn.text)]) for turn in history] + [("user", burst)]
    contents: list[types.Content] = []
    for role, new_parts in turns:
        role = "model" if role == "model" else "user"
        if contents and contents[-1].role == role:
            contents[-1] = types.Content(role=role, parts=[*(contents[-1].parts or []), *new_parts])
        else:
            contents.append(types.Content(role=role, parts=list(new_parts)))
    if contents and contents[0].role == "model":
        # A conversation must open with the user; when the business wrote first (a person on the phone, say),
        # what it said still matters, so it follows a short user placeholder instead of being dropped.
        contents.insert(0, types.Content(role="user", parts=[types.Part(text=BUSINESS_FIRST)]))
    return contents


def read_media_answer(text: str) -> Generated:
    """The reply and transcripts of a JSON answer; a non-JSON answer is taken whole as the reply."""
    try:
        data = json.loads(text)
    except ValueError:
        log.warning("gemini answered a media burst without JSON; using its text as the reply, no transcripts")
        return Generated(text.strip())
    if not isinstance(data, dict) or not isinstance(data.get("reply"), str):
        log.warning("gemini's JSON answer has no reply; using its text as the reply")
        return Generated(text.strip())
    transcripts: dict[int, str] = {}
    for item in data.get("media") or []:
        if isinstance(item, dict) and isinstance(item.get("n"), int) and isinstance(item.get("text"), str):
            transcripts[item["n"]] = item["text"].strip()
    return Generated(data["reply"].strip(), transcripts)


def dry_run_reply(burst: list[BurstPart]) -> Generated:
    """AI_DRY_RUN: a canned pt-BR reply that quotes what the burst consolidated, so the debounce can be seen at work
    without spending tokens."""
    pieces = [item.describe() for item in burst]
    quoted = " / ".join(f"«{piece}»" for piece in pieces if piece)
    noun = "mensagem" if len(pieces) == 1 else "mensagens"
    return Generated(f"[simulação] Recebi {len(pieces)} {noun}: {quoted}")


def system_instruction(settings: Settings, knowledge_block: str = "") -> types.Content:
    """The persona (SYSTEM_PROMPT, naming BUSINESS_NAME) as the first part; the grounding rule with the knowledge
    for this burst (see knowledge.py) as the second, when a knowledge base is configured."""
    persona = settings.system_prompt
    if settings.business_name:
        persona += f"\n\nA empresa se chama {settings.business_name}."
    parts = [types.Part(text=persona)] + ([types.Part(text=knowledge_block)] if knowledge_block else [])
    return types.Content(parts=parts)


class AIService:
    """A configured google-genai client; `generate_reply` is the only call the worker makes."""

    def __init__(self, settings: Settings, knowledge: KnowledgeBase | None = None) -> None:
        self.settings = settings
        self.knowledge = knowledge
        self.configured = settings.gemini_configured
        self._client: genai.Client | None = None
        if self.configured:
            http_options = types.HttpOptions(
                base_url=settings.gemini_base_url or None,
                timeout=int(settings.gemini_timeout_seconds * 1000),
                retry_options=types.HttpRetryOptions(
                    attempts=settings.gemini_max_attempts,
                    initial_delay=settings.gemini_retry_initial_seconds,
                    max_delay=max(settings.gemini_retry_initial_seconds, 20.0),
                    http_status_codes=RETRY_STATUS_CODES,
                ),
            )
            self._client = genai.Client(api_key=settings.gemini_api_key, http_options=http_options)

    def generate_reply(self, history: list[Turn], user_text: str, *, note: str = "") -> str:
        """Ask Gemini for one reply to a text burst; `note` is added to the system instruction (the date, when
        earlier conversations are in the history).

        Raises:
            AIServiceError: not configured, every attempt failed, or the answer was empty or blocked.
        """
        instruction = self._instruction(history, user_text, note)
        config = types.GenerateContentConfig(system_instruction=instruction)
        return self._generate(build_prompt(history, user_text), config)

    def generate(self, history: list[Turn], burst: list[BurstPart], *, note: str = "") -> Generated:
        """One reply to a burst that may carry media; with media bytes, also their transcripts/descriptions.

        Raises:
            AIServiceError: as `generate_reply`.
        """
        # The burst in words (texts, captions, media labels) is what the knowledge base is searched with.
        text = "\n".join(filter(None, (item.describe() for item in burst)))
        if self.settings.ai_dry_run:
            return dry_run_reply(burst)
        if not any(item.readable for item in burst):
            return Generated(self.generate_reply(history, text, note=note))
        instruction = self._instruction(history, text, note)
        instruction.parts = [*(instruction.parts or []), types.Part(text=MEDIA_INSTRUCTION)]
        config = types.GenerateContentConfig(
            system_instruction=instruction,
            response_mime_type="application/json",
            response_schema=MEDIA_REPLY_SCHEMA,
        )
        generated = read_media_answer(self._generate(build_prompt(history, burst_parts(burst)), config))
        if not generated.reply:
            raise AIServiceError("gemini returned an empty reply in its JSON answer", transient=False)
        return generated

    def _instruction(self, history: list[Turn], burst_text: str, note: str = "") -> types.Content:
        """Persona, then the grounding rule with the knowledge retrieved for this burst (when configured), then
        `note`."""
        knowledge_block = self.knowledge.context_for(history, burst_text) if self.knowledge is not None else ""
        instruction = system_instruction(self.settings, knowledge_block)
        if note:
            instruction.parts = [*(instruction.parts or []), types.Part(text=note)]
        return instruction

    def _generate(self, contents: list[types.Content], config: types.GenerateContentConfig) -> str:
        if self._client is None:
            raise AIServiceError("GEMINI_API_KEY is not set", transient=False)
        try:
            response = self._client.models.generate_content(
                model=self.settings.gemini_model, contents=contents, config=config
            )
        except genai_errors.APIError as exc:
            transient = exc.code in RETRY_STATUS_CODES
            message = f"gemini answered {exc.code} {exc.status or ''}".strip()
            raise AIServiceError(message, transient=transient, status_code=exc.code) from exc
        except httpx2.HTTPError as exc:
            raise AIServiceError(f"gemini unreachable: {exc.__class__.__name__}") from exc
        except ValueError as exc:  # a body the SDK cannot read
            raise AIServiceError(f"gemini answer unreadable: {exc.__class__.__name__}") from exc
        text = (response.text or "").strip()
        if not text:
            reason = ""
            if response.candidates and response.candidates[0].finish_reason:
                reason = str(response.candidates[0].finish_reason)
            elif response.prompt_feedback and response.prompt_feedback.block_reason:
                reason = str(response.prompt_feedback.block_reason)
            raise AIServiceError(f"gemini returned no text {reason}".strip(), transient=False)
        return text
