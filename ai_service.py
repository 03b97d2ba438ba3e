"""One Gemini call: the chat's history plus the new burst -> one reply text. Knows nothing about WhatsApp.

The system instruction is built per call: the persona, then the grounding rule and the knowledge that
knowledge.py selected for this burst.

Retries with exponential backoff on 408/429/5xx and transport errors are the SDK's own (HttpRetryOptions);
whatever still fails is raised as AIServiceError for the worker to decide (fallback reply).
"""

from __future__ import annotations

import logging

import httpx2  # google-genai 3.x transport (a maintained httpx fork)
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from config import Settings
from errors import AIServiceError
from knowledge import KnowledgeBase
from memory import Turn

log = logging.getLogger(__name__)

RETRY_STATUS_CODES = [408, 429, 500, 502, 503, 504]


def build_prompt(history: list[Turn], user_text: str) -> list[types.Content]:
    """History as real user/model turns, then the new burst as the last user turn.

    Consecutive turns of the same role (a fallback that was not recorded, say) are merged, because
    Gemini expects the roles to alternate.
    """
    contents: list[types.Content] = []
    for role, text in [(turn.role, turn.text) for turn in history] + [("user", user_text)]:
        role = "model" if role == "model" else "user"
        if contents and contents[-1].role == role:
            parts = contents[-1].parts or []
            parts.append(types.Part(text=text))
            contents[-1] = types.Content(role=role, parts=parts)
        else:
            contents.append(types.Content(role=role, parts=[types.Part(text=text)]))
    while contents and contents[0].role == "model":  # a conversation must open with the user
        contents.pop(0)
    return contents


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

    def build_prompt(self, history: list[Turn], user_text: str) -> list[types.Content]:
        return build_prompt(history, user_text)

    def generate_reply(self, history: list[Turn], user_text: str) -> str:
        """Ask Gemini for one reply.

        Raises:
            AIServiceError: not configured, every attempt failed, or the answer was empty or blocked.
        """
        if self._client is None:
            raise AIServiceError("GEMINI_API_KEY is not set", transient=False)
        knowledge_block = self.knowledge.context_for(history, user_text) if self.knowledge is not None else ""
        instruction = system_instruction(self.settings, knowledge_block)
        try:
            response = self._client.models.generate_content(
                model=self.settings.gemini_model,
                contents=build_prompt(history, user_text),
                config=types.GenerateContentConfig(system_instruction=instruction),
            )
        except genai_errors.APIError as exc:
            transient = exc.code in RETRY_STATUS_CODES
            raise AIServiceError(f"gemini answered {exc.code} {exc.status or ''}".strip(), transient=transient) from exc
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
