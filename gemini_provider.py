"""Gemini through google-genai: the one module that knows its request shapes, its errors and its usage metadata.

A burst with media (voice notes, images, PDFs) goes as one user turn whose parts keep the burst's order: text,
a label such as `[mídia 1: mensagem de voz, 7 s]`, then the item's bytes as an inline part with its mime type.
Gemini then answers JSON (response schema) with the reply and, per numbered item, a transcript or short
description, which the history keeps as text.

Retries with exponential backoff on 408/429/5xx and transport errors are the SDK's own (HttpRetryOptions);
whatever still fails is raised as AIServiceError for the chain (ai_service.py) to decide.
"""

from __future__ import annotations

import httpx2  # google-genai 3.x transport (a maintained httpx fork)
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from config import Settings
from errors import AIServiceError
from media import BurstPart
from memory import Turn
from prompt import MEDIA_INSTRUCTION, Generated, alternating_turns, read_media_answer
from usage import Usage

RETRY_STATUS_CODES = [408, 429, 500, 502, 503, 504]
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
    """History as real user/model turns, then the new burst (text, or parts with media) as the last user turn
    (see prompt.alternating_turns)."""
    return [
        types.Content(role=role, parts=[p if isinstance(p, types.Part) else types.Part(text=str(p)) for p in pieces])
        for role, pieces in alternating_turns(history, user_text)
    ]


def _usage(response: types.GenerateContentResponse, model: str) -> Usage:
    meta = response.usage_metadata
    if meta is None:
        return Usage(provider="gemini", model=model)
    # Thinking tokens are billed as output.
    output = (meta.candidates_token_count or 0) + (meta.thoughts_token_count or 0)
    return Usage(provider="gemini", model=model, input_tokens=meta.prompt_token_count or 0, output_tokens=output)


class GeminiProvider:
    """A configured google-genai client."""

    name = "gemini"

    def __init__(self, settings: Settings) -> None:
        self.model = settings.gemini_model
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

    def generate(self, history: list[Turn], burst: list[BurstPart], *, instruction: list[str]) -> Generated:
        """One reply to the burst; with media bytes, JSON with their transcripts/descriptions.

        Raises:
            AIServiceError: not configured, every attempt failed, or the answer was empty or blocked.
        """
        if not any(item.readable for item in burst):
            text = "\n".join(filter(None, (item.describe() for item in burst)))
            config = types.GenerateContentConfig(system_instruction=_instruction(instruction))
            reply, usage = self._generate(build_prompt(history, text), config)
            return Generated(reply, usage=(usage,))
        config = types.GenerateContentConfig(
            system_instruction=_instruction([*instruction, MEDIA_INSTRUCTION]),
            response_mime_type="application/json",
            response_schema=MEDIA_REPLY_SCHEMA,
        )
        answer, usage = self._generate(build_prompt(history, burst_parts(burst)), config)
        generated = read_media_answer(answer, usage=(usage,))
        if not generated.reply:
            raise AIServiceError("gemini returned an empty reply in its JSON answer", transient=False)
        return generated

    def _generate(self, contents: list[types.Content], config: types.GenerateContentConfig) -> tuple[str, Usage]:
        if self._client is None:
            raise AIServiceError("GEMINI_API_KEY is not set", transient=False)
        try:
            response = self._client.models.generate_content(model=self.model, contents=contents, config=config)
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
        return text, _usage(response, self.model)


def _instruction(texts: list[str]) -> types.Content:
    return types.Content(parts=[types.Part(text=text) for text in texts])
