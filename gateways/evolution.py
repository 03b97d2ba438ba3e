"""Evolution API: webhook payloads via `parser.parse_evolution`, replies via `sender.EvolutionSender`, media
via `POST /chat/getBase64FromMediaMessage/{instance}`, and "did this part go out?" after a crash via
`POST /chat/findMessages/{instance}`.

Evolution signs nothing: its webhook is protected by WEBHOOK_TOKEN or WEBHOOK_JWT_SECRET, checked by the route.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from config import Settings
from errors import MediaError
from gateways.base import InboundRequest, Parsed, WebhookAnswer
from gateways.downloads import base64_limit, decode_base64, download_session, fetch_bytes, fetch_json
from models import ChatRef, MediaRef
from parser import GATEWAY, extract_content, load_body, parse_evolution
from sender import EvolutionSender, evolution_server_url

log = logging.getLogger(__name__)

NAME = GATEWAY
MAX_TEXT_CHARS = 4096
FIND_MAX_BYTES = 4 * 1024 * 1024  # one page of recent messages of one chat
FIND_PAGE = 50
CLOCK_SKEW_SECONDS = 120  # WhatsApp's messageTimestamp against this host's clock


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

    def find_sent(self, chat: ChatRef, text: str, *, since: float) -> bool | None:
        """Whether Evolution holds a message of ours (`fromMe`) with exactly this text in this chat, sent at or
        after `since` (unix seconds); None when it cannot tell (not configured, unreachable, an odd answer).

        Evolution applies a `messageTimestamp` bound only when both `gte` and `lte` are given, and reads each with
        JavaScript's `new Date(value)`: an ISO 8601 string (a number would be taken as milliseconds since 1970).
        """
        if not self.settings.evolution_api:
            return None
        url = f"{evolution_server_url(self.settings.evolution_api)}/chat/findMessages/{quote(chat.instance, safe='')}"
        window = {"gte": _iso(since - CLOCK_SKEW_SECONDS), "lte": _iso(time.time() + CLOCK_SKEW_SECONDS)}
        query = {
            "where": {"key": {"remoteJid": chat.chat_id, "fromMe": True}, "messageTimestamp": window},
            "offset": FIND_PAGE,
            "page": 1,
        }
        try:
            body, _ = fetch_bytes(
                self.media_session,
                "POST",
                url,
                what="evolution findMessages",
                max_bytes=FIND_MAX_BYTES,
                timeout=self.settings.send_timeout_seconds,
                json=query,
                headers={"apikey": self.settings.authentication_api_key},
            )
            records = _records(json.loads(body))
        except (MediaError, ValueError) as exc:
            log.warning("cannot ask Evolution whether a part went out chat=%s: %s", chat.label, exc)
            return None
        if records is None:
            return None
        wanted = text.strip()
        for record in records:
            if isinstance(record, dict) and (extract_content(record.get("message"))[1] or "").strip() == wanted:
                return True
        return False


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")


def _records(answer: Any) -> list[Any] | None:
    """The messages of a findMessages answer: v2 `{"messages": {"records": [...]}}`, v1 a list."""
    if isinstance(answer, list):
        return answer
    messages = answer.get("messages") if isinstance(answer, dict) else None
    records = messages.get("records") if isinstance(messages, dict) else messages
    return records if isinstance(records, list) else None
