"""Evolution API: webhook payloads via `parser.parse_evolution`, replies via `sender.EvolutionSender`.

Evolution signs nothing: its webhook is protected by WEBHOOK_TOKEN or WEBHOOK_JWT_SECRET, checked by the route.
"""

from __future__ import annotations

from config import Settings
from gateways.base import InboundRequest, Parsed, WebhookAnswer
from models import ChatRef
from parser import GATEWAY, load_body, parse_evolution
from sender import EvolutionSender

NAME = GATEWAY
MAX_TEXT_CHARS = 4096


class EvolutionGateway:
    """Evolution API adapter (v1 1.8.x and v2 2.x)."""

    name = NAME
    max_text_chars = MAX_TEXT_CHARS
    uses_shared_token = True

    def __init__(self, settings: Settings) -> None:
        self.sender = EvolutionSender(settings)

    def verify(self, request: InboundRequest) -> None:
        """Evolution signs nothing; the route checks WEBHOOK_TOKEN / WEBHOOK_JWT_SECRET."""

    def parse(self, request: InboundRequest, *, accept_groups: bool, max_text_chars: int) -> list[Parsed]:
        return parse_evolution(
            load_body(request.body),
            event_hint=request.event_hint,
            accept_groups=accept_groups,
            max_text_chars=max_text_chars,
        )

    def answer(self, summary: dict[str, object]) -> WebhookAnswer | None:
        return None

    def send_text(self, chat: ChatRef, text: str) -> str:
        return self.sender.send_text(chat, text)

    def mark_read(self, chat: ChatRef, message_id: str) -> None:
        """Not used for Evolution (its instance setting `read_messages` does it)."""
