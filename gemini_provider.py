"""Gemini through google-genai: the one module that knows its request shapes, its errors and its usage metadata.

A burst with media (voice notes, images, PDFs) goes as one user turn whose parts keep the burst's order: text,
a label such as `[mídia 1: mensagem de voz, 7 s]`, then the item's bytes as an inline part with its mime type.
Gemini then answers JSON (response schema) with the reply and, per numbered item, a transcript or short
description, which the history keeps as text.

The request is built in the REST API's JSON shape and posted through the SDK's API client (its key, base URL,
timeout and retries); the parts that do not change between replies (the system instruction per knowledge snapshot,
the media answer's schema) are built once. Retries with exponential backoff on 408/429/5xx and transport errors are
the SDK's own (HttpRetryOptions); whatever still fails is raised as AIServiceError for the chain (ai_service.py) to
decide.
"""

from __future__ import annotations

import base64
import functools
import json
from typing import Any

import httpx2  # google-genai 3.x transport (a maintained httpx fork)
from google import genai
from google.genai import _transformers as genai_transformers
from google.genai import errors as genai_errors
from google.genai import types

from config import Settings
from errors import AIServiceError
from media import BurstPart
from memory import Turn
from prompt import MEDIA_INSTRUCTION, Generated, alternating_turns, read_media_answer
from usage import Usage

RETRY_STATUS_CODES = [408, 429, 500, 502, 503, 504]
# The media answer's JSON shape, as the REST API's `responseSchema`.
MEDIA_REPLY_SCHEMA: dict[str, Any] = {
    "type": "OBJECT",
    "properties": {
        "reply": {"type": "STRING"},
        "media": {
            "type": "ARRAY",
            "items": {
                "type": "OBJECT",
                "properties": {"n": {"type": "INTEGER"}, "text": {"type": "STRING"}},
                "required": ["n", "text"],
            },
        },
    },
    "required": ["reply", "media"],
}
MEDIA_CONFIG = {"responseMimeType": "application/json", "responseSchema": MEDIA_REPLY_SCHEMA}

Part = dict[str, Any]
Content = dict[str, Any]


def burst_parts(burst: list[BurstPart]) -> list[Part]:
    """The burst as the parts of one user turn, in arrival order; media bytes as inline parts."""
    parts: list[Part] = []
    number = 0
    for item in burst:
        if item.readable:
            number += 1
            parts.append({"text": item.prompt_label(number)})
            data = base64.b64encode(item.data or b"").decode("ascii")
            parts.append({"inlineData": {"mimeType": item.mime, "data": data}})
            if item.text:
                parts.append({"text": item.text})
        else:
            parts.append({"text": item.describe()})
    return parts


def build_prompt(history: list[Turn], user_text: str | list[Part]) -> list[Content]:
    """History as real user/model turns, then the new burst (text, or parts with media) as the last user turn
    (see prompt.alternating_turns), as the REST API's `contents`."""
    return [
        {"role": role, "parts": [p if isinstance(p, dict) else {"text": str(p)} for p in pieces]}
        for role, pieces in alternating_turns(history, user_text)
    ]


@functools.lru_cache(maxsize=64)
def system_instruction(texts: tuple[str, ...]) -> Content:
    """The instruction (persona, knowledge, rules) as `systemInstruction`: built once per distinct text, which
    changes only when the knowledge or the settings do."""
    return {"parts": [{"text": text} for text in texts]}


def _answer(body: str, model: str) -> tuple[str, str, Usage]:
    """The answer's text (its non-thought text parts), why there is none, and what the call used."""
    data = json.loads(body) if body else {}
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    candidates = data.get("candidates") or []
    first = candidates[0] if candidates and isinstance(candidates[0], dict) else {}
    parts = (first.get("content") or {}).get("parts") or []
    text = "".join(
        p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str) and not p.get("thought")
    )
    reason = str(first.get("finishReason") or (data.get("promptFeedback") or {}).get("blockReason") or "")
    return text, reason, _usage(data.get("usageMetadata") or {}, model)


def _usage(meta: dict[str, Any], model: str) -> Usage:
    # Thinking tokens are billed as output.
    output = int(meta.get("candidatesTokenCount") or 0) + int(meta.get("thoughtsTokenCount") or 0)
    return Usage(
        provider="gemini", model=model, input_tokens=int(meta.get("promptTokenCount") or 0), output_tokens=output
    )


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
            self._path = f"{genai_transformers.t_model(self._client._api_client, self.model)}:generateContent"

    def generate(self, history: list[Turn], burst: list[BurstPart], *, instruction: list[str]) -> Generated:
        """One reply to the burst; with media bytes, JSON with their transcripts/descriptions.

        Raises:
            AIServiceError: not configured, every attempt failed, or the answer was empty or blocked.
        """
        if not any(item.readable for item in burst):
            text = "\n".join(filter(None, (item.describe() for item in burst)))
            body = {
                "contents": build_prompt(history, text),
                "systemInstruction": system_instruction(tuple(instruction)),
            }
            reply, usage = self._generate(body)
            return Generated(reply, usage=(usage,))
        body = {
            "contents": build_prompt(history, burst_parts(burst)),
            "systemInstruction": system_instruction((*instruction, MEDIA_INSTRUCTION)),
            "generationConfig": MEDIA_CONFIG,
        }
        answer, usage = self._generate(body)
        generated = read_media_answer(answer, usage=(usage,))
        if not generated.reply:
            raise AIServiceError("gemini returned an empty reply in its JSON answer", transient=False)
        return generated

    def _generate(self, body: dict[str, Any]) -> tuple[str, Usage]:
        """POST generateContent through the SDK's API client (its auth, base URL, timeout and retries), with the
        request already in the REST API's shape: `models.generate_content` would validate the same pieces into
        pydantic models and convert them back to these dicts on every reply, half the CPU of a reply (see
        bench/profiles/). The answer is read from its JSON the same way."""
        if self._client is None:
            raise AIServiceError("GEMINI_API_KEY is not set", transient=False)
        try:
            response = self._client._api_client.request("post", self._path, body)
            text, reason, usage = _answer(response.body or "", self.model)
        except genai_errors.APIError as exc:
            transient = exc.code in RETRY_STATUS_CODES
            message = f"gemini answered {exc.code} {exc.status or ''}".strip()
            raise AIServiceError(message, transient=transient, status_code=exc.code) from exc
        except httpx2.HTTPError as exc:
            raise AIServiceError(f"gemini unreachable: {exc.__class__.__name__}") from exc
        except (ValueError, AttributeError, TypeError) as exc:  # a body that is not Gemini's JSON
            raise AIServiceError(f"gemini answer unreadable: {exc.__class__.__name__}") from exc
        text = text.strip()
        if not text:
            raise AIServiceError(f"gemini returned no text {reason}".strip(), transient=False)
        return text, usage
