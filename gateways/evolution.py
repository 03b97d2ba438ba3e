"""Evolution API: webhook payloads via `parser.parse_evolution`, replies with
`POST {server}/message/sendText/{instance}` (header `apikey`), media via
`POST /chat/getBase64FromMediaMessage/{instance}`, and "did this part go out?" after a crash via
`POST /chat/findMessages/{instance}`.

Evolution signs nothing: its webhook must carry the shared token (WEBHOOK_TOKEN, the generated one, or a JWT signed
with WEBHOOK_JWT_SECRET), checked by the `SharedSecretVerifier` it is built with.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

import requests

from config import Settings
from errors import MediaError, SendError
from gateways.base import Gateway, InboundRequest, Parsed, WebhookAnswer
from gateways.http import (
    base64_limit,
    decode_base64,
    download_session,
    fetch_bytes,
    fetch_json,
    key_id_or_raise,
    post_or_raise,
    retrying_session,
)
from gateways.shared_secret import SharedSecretVerifier
from models import ChatRef, MediaRef
from parser import GATEWAY, extract_content, load_body, parse_evolution

log = logging.getLogger(__name__)

NAME = GATEWAY
MAX_TEXT_CHARS = 4096
FIND_MAX_BYTES = 4 * 1024 * 1024  # one page of recent messages of one chat
FIND_PAGE = 50
CLOCK_SKEW_SECONDS = 120  # WhatsApp's messageTimestamp against this host's clock


def evolution_send_url(evolution_api: str, instance: str) -> str:
    """EVOLUTION_API is either the full sendText URL (used as is) or the server's base URL."""
    if "/message/sendText/" in urlsplit(evolution_api).path:
        return evolution_api
    return f"{evolution_api.rstrip('/')}/message/sendText/{quote(instance, safe='')}"


def evolution_server_url(evolution_api: str) -> str:
    """The server's base URL, whether EVOLUTION_API is the base URL or one instance's full sendText URL."""
    path = urlsplit(evolution_api).path
    if "/message/sendText/" in path:
        return evolution_api[: evolution_api.index("/message/sendText/")]
    return evolution_api.rstrip("/")


def evolution_body(number: str, text: str, *, version: int, delay_ms: int) -> dict[str, Any]:
    """sendText body: v2 takes `text` at the top level; v1.8 takes `textMessage.text` and `options`. A
    `delay_ms` ("typing…" before the send) is v2's `delay` and v1's `options.delay`; 0 leaves it out."""
    if version == 1:
        body: dict[str, Any] = {"number": number, "textMessage": {"text": text}}
        if delay_ms:
            body["options"] = {"delay": delay_ms, "presence": "composing"}
        return body
    body = {"number": number, "text": text}
    if delay_ms:
        body["delay"] = delay_ms
    return body


class EvolutionSender:
    """sendText on Evolution API: one Session with urllib3 Retry on connection errors and 5xx; failures are raised
    as SendError(.transient)."""

    def __init__(self, settings: Settings, session: requests.Session | None = None) -> None:
        self.settings = settings
        self.session = session or retrying_session(settings.send_max_retries)

    def send_text(self, chat: ChatRef, text: str, *, typing_ms: int = 0, reply_to: str = "") -> str:
        """Send one text; Evolution shows "typing…" for `typing_ms`, else for SEND_DELAY_MS, before it sends.
        `reply_to` is not needed here."""
        if not self.settings.evolution_api:
            # Retrying cannot help until the owner configures it, and a reply sent an hour later would be stale.
            raise SendError("EVOLUTION_API is not set: the gateway is not configured", transient=False)
        url = evolution_send_url(self.settings.evolution_api, chat.instance)
        delay_ms = typing_ms if typing_ms > 0 else self.settings.send_delay_ms
        body = evolution_body(chat.chat_id, text, version=self.settings.evolution_api_version, delay_ms=delay_ms)
        # The typing delay is spent by Evolution before it answers, so the read timeout must cover it.
        read_timeout = self.settings.send_timeout_seconds + delay_ms / 1000
        response = post_or_raise(
            self.session,
            url,
            gateway=NAME,
            chat=chat,
            timeout=(min(5.0, self.settings.send_timeout_seconds), read_timeout),
            json=body,
            headers={"apikey": self.settings.authentication_api_key},
        )
        return key_id_or_raise(response, gateway=NAME, chat=chat)


class EvolutionGateway(Gateway):
    """Evolution API adapter (v1 1.8.x and v2 2.x)."""

    name = NAME
    max_text_chars = MAX_TEXT_CHARS

    def __init__(self, settings: Settings, *, shared_secret: SharedSecretVerifier) -> None:
        self.settings = settings
        self.shared_secret = shared_secret
        self.sender = EvolutionSender(settings)
        self.media_session = download_session(settings.media_fetch_attempts)

    def verify(self, request: InboundRequest) -> None:
        """Evolution signs nothing: the request must carry the shared token or JWT."""
        self.shared_secret.verify(request)

    def handshake(self, query: Mapping[str, str]) -> str | None:
        """Evolution has no subscription handshake."""
        return None

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
