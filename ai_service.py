"""The model layer the worker calls: one provider interface (`Provider`: Gemini in gemini_provider.py, OpenAI and
compatible servers in openai_provider.py) and `AIService`, the chain that asks AI_PROVIDER and, when it keeps
failing (after its own retries), AI_FALLBACK_PROVIDER. Knows nothing about WhatsApp.

The system instruction is built here, the same for every provider: the persona, then the grounding rule and the
knowledge that knowledge.py selected for this burst, then a note (the date, when earlier conversations are in the
history). Only when every provider failed does the caller get AIServiceError (and the customer FALLBACK_REPLY).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

from config import Settings
from counters import Counters
from errors import AIServiceError
from gemini_provider import GeminiProvider
from knowledge import KnowledgeBase
from media import BurstPart
from memory import Turn
from metrics import Metrics
from openai_provider import OpenAIProvider
from prompt import Generated, dry_run_reply, persona

log = logging.getLogger(__name__)

__all__ = ["AIService", "Generated", "Provider", "build_provider"]


class Provider(Protocol):
    """A model behind one API. `generate` raises AIServiceError (with the HTTP status when there is one; 400 for
    content the model refuses, so the caller can ask again with the media as words)."""

    name: str
    model: str
    configured: bool

    def generate(self, history: list[Turn], burst: list[BurstPart], *, instruction: list[str]) -> Generated: ...


def build_provider(name: str, settings: Settings) -> Provider:
    return OpenAIProvider(settings) if name == "openai" else GeminiProvider(settings)


def provider_names(settings: Settings) -> list[str]:
    """AI_PROVIDER, then AI_FALLBACK_PROVIDER when it is another one."""
    names = [settings.ai_provider]
    if settings.ai_fallback_provider and settings.ai_fallback_provider != settings.ai_provider:
        names.append(settings.ai_fallback_provider)
    return names


# What a provider is built from: tenants (tenants.py) that agree on these share one client. A client costs tens of
# milliseconds to build and a TLS context of its own in memory, so fifty tenants on one key must not hold fifty.
PROVIDER_SETTINGS = {
    "gemini": (
        "gemini_api_key",
        "gemini_base_url",
        "gemini_model",
        "gemini_timeout_seconds",
        "gemini_max_attempts",
        "gemini_retry_initial_seconds",
    ),
    "openai": (
        "openai_api_key",
        "openai_base_url",
        "openai_model",
        "openai_transcribe_model",
        "openai_timeout_seconds",
        "openai_max_retries",
    ),
}


class ProviderPool:
    """The providers of one process, one per distinct PROVIDER_SETTINGS."""

    def __init__(self) -> None:
        self._built: dict[tuple[object, ...], Provider] = {}
        self._lock = threading.Lock()

    def providers(self, settings: Settings) -> list[Provider]:
        return [self.provider(name, settings) for name in provider_names(settings)]

    def provider(self, name: str, settings: Settings) -> Provider:
        key = (name, *(getattr(settings, attr) for attr in PROVIDER_SETTINGS.get(name, PROVIDER_SETTINGS["gemini"])))
        with self._lock:
            if key not in self._built:
                self._built[key] = build_provider(name, settings)
            return self._built[key]


class AIService:
    """The providers in order (AI_PROVIDER, then AI_FALLBACK_PROVIDER) and the instruction they share."""

    def __init__(
        self,
        settings: Settings,
        knowledge: KnowledgeBase | None = None,
        *,
        counters: Counters | None = None,
        metrics: Metrics | None = None,
        providers: list[Provider] | None = None,
    ) -> None:
        self.settings = settings
        self.knowledge = knowledge
        self.counters = counters or Counters()
        self.metrics = metrics or Metrics(enabled=False)
        if providers is None:
            providers = [build_provider(name, settings) for name in provider_names(settings)]
        self.providers = providers

    @property
    def configured(self) -> bool:
        return self.providers[0].configured

    def generate(self, history: list[Turn], burst: list[BurstPart], *, note: str = "") -> Generated:
        """One reply to a burst that may carry media; with media bytes, also their transcripts/descriptions.

        Raises:
            AIServiceError: every provider failed (the last one's error), or the first refused the burst's media
                (status 400: asked again with the media as words, by the caller, before any fallback).
        """
        if self.settings.ai_dry_run:
            return dry_run_reply(burst)
        # The burst in words (texts, captions, media labels) is what the knowledge base is searched with.
        text = "\n".join(filter(None, (item.describe() for item in burst)))
        instruction = self.instruction(history, text, note)
        has_media = any(item.readable for item in burst)
        error: AIServiceError | None = None
        for position, provider in enumerate(self.providers):
            began = time.monotonic()
            try:
                generated = provider.generate(history, burst, instruction=instruction)
            except AIServiceError as exc:
                self.metrics.model_call(provider.name, provider.model, time.monotonic() - began, ok=False)
                self.counters.add(f"ai_failures_{provider.name}")
                if exc.status_code == 400 and has_media:
                    raise  # the caller asks again with the media as words, from the first provider
                error = exc
                log.warning("%s (%s) failed: %s", provider.name, provider.model, exc)
                continue
            self.metrics.model_call(provider.name, provider.model, time.monotonic() - began, ok=True)
            for call in generated.usage:
                self.metrics.model_tokens(call.provider, call.model, call.input_tokens, call.output_tokens)
            if position:
                self.counters.add("ai_fallbacks")
                log.warning("answered by the fallback provider %s (%s)", provider.name, provider.model)
            return generated
        assert error is not None
        raise error

    def generate_reply(self, history: list[Turn], user_text: str, *, note: str = "") -> str:
        """A reply to a text burst (see `generate`)."""
        return self.generate(history, [BurstPart(text=user_text)], note=note).reply

    def instruction(self, history: list[Turn], burst_text: str, note: str = "") -> list[str]:
        """Persona, then the grounding rule with the knowledge retrieved for this burst (when configured), then
        `note`."""
        knowledge_block = self.knowledge.context_for(history, burst_text) if self.knowledge is not None else ""
        return [persona(self.settings), *filter(None, [knowledge_block, note])]
