"""Evolution API: webhook payloads via `parser.parse_evolution`, replies via `sender.EvolutionSender`, media
via `POST /chat/getBase64FromMediaMessage/{instance}`.

Evolution signs nothing: its webhook is protected by WEBHOOK_TOKEN or WEBHOOK_JWT_SECRET, checked by the route.
"""

from __future__ import annotations

from urllib.parse import quote

from config import Settings
from errors import MediaError
from gateways.base import InboundRequest, Parsed, WebhookAnswer
from gateways.downloads import base64_limit, decode_base64, download_session, fetch_json
from models import ChatRef, MediaRef
from parser import GATEWAY, load_body, parse_evolution
from sender import EvolutionSender, evolution_server_url

NAME = GATEWAY
MAX_TEXT_CHARS = 4096


class EvolutionGateway:
    """Evolution API adapter (v1 1.8.x and v2 2.x)."""

    name = NAME
    max_text_chars = MAX_TEXT_CHARS
    uses_shared_token = True

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sender = EvolutionSender(settings)
        self.media_session = download_session(settings.media_fetch_attempts)

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

    def send_text(self, chat: ChatRef, text: str, *, typing_ms: int = 0, reply_to: str = "") -> str:
        return self.sender.send_text(chat, text, typing_ms=typing_ms, reply_to=reply_to)

    def mark_read(self, chat: ChatRef, message_id: str) -> None:
        """Not used for Evolution (its instance setting `read_messages` does it)."""

    def fetch_media(self, chat: ChatRef, media: MediaRef, *, max_bytes: int) -> tuple[bytes, str]:
        """Ask Evolution to download and decrypt the media, passing the webhook's message record (key and
        media fields) so it works even when Evolution does not keep messages in its database."""
        if not self.settings.evolution_api:
            raise MediaError("EVOLUTION_API is not set")
        if not media.source.get("key") or not media.source.get("message"):
            raise MediaError("no media reference kept for this message")
        url = f"{evolution_server_url(self.settings.evolution_api)}/chat/getBase64FromMediaMessage/"
        answer = fetch_json(
            self.media_session,
            "POST",
            url + quote(chat.instance, safe=""),
            what="evolution getBase64FromMediaMessage",
            max_bytes=base64_limit(max_bytes),
            timeout=self.settings.media_fetch_timeout_seconds,
            json={"message": media.source, "convertToMp4": False},
            headers={"apikey": self.settings.authentication_api_key},
        )
        data = decode_base64(answer.get("base64"), what="evolution media", max_bytes=max_bytes)
        return data, str(answer.get("mimetype") or media.mime)
