"""Gateway doubles for the worker and media tests: a real adapter behind the whole `Gateway` contract, with the one
method a test changes overridden in a subclass (a crash after a send, a download that raises...)."""

from __future__ import annotations

from collections.abc import Mapping

from config import Settings
from gateways.base import Gateway, InboundRequest, Parsed, WebhookAnswer
from gateways.evolution import EvolutionGateway
from gateways.shared_secret import SharedSecretVerifier
from models import ChatRef, MediaRef


def real_evolution(settings: Settings) -> EvolutionGateway:
    """The real Evolution adapter for `settings`; its webhook refuses every request (these tests never post)."""
    return EvolutionGateway(settings, shared_secret=SharedSecretVerifier())


class WrappedGateway(Gateway):
    """Passes every call to `real`; a subclass overrides what its test changes."""

    def __init__(self, real: Gateway) -> None:
        self.real = real
        self.name = real.name
        self.max_text_chars = real.max_text_chars

    def verify(self, request: InboundRequest) -> None:
        self.real.verify(request)

    def handshake(self, query: Mapping[str, str]) -> str | None:
        return self.real.handshake(query)

    def parse(self, request: InboundRequest, *, accept_groups: bool, max_text_chars: int) -> list[Parsed]:
        return self.real.parse(request, accept_groups=accept_groups, max_text_chars=max_text_chars)

    def answer(self, summary: dict[str, object]) -> WebhookAnswer | None:
        return self.real.answer(summary)

    def send_text(self, chat: ChatRef, text: str, *, typing_ms: int = 0, reply_to: str = "") -> str:
        return self.real.send_text(chat, text, typing_ms=typing_ms, reply_to=reply_to)

    def mark_read(self, chat: ChatRef, message_id: str) -> None:
        self.real.mark_read(chat, message_id)

    def fetch_media(self, chat: ChatRef, media: MediaRef, *, max_bytes: int) -> tuple[bytes, str]:
        return self.real.fetch_media(chat, media, max_bytes=max_bytes)

    def find_sent(self, chat: ChatRef, text: str, *, since: float) -> bool | None:
        return self.real.find_sent(chat, text, since=since)
