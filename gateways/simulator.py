"""The WhatsApp simulator as a gateway: the simulator page posts what a made-up customer (or the person playing the
business) types, and the replies the assistant would send land in the simulator's transcript (simulator.py)
instead of WhatsApp. Everything in between is the real pipeline: dedupe, debounce, history, knowledge, media,
conversation control, split parts with their typing pause.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any

from errors import MediaError, PayloadError
from gateways.base import Gateway, InboundRequest, Parsed, WebhookAnswer
from models import READABLE_MEDIA_KINDS, ChatRef, IncomingMessage, MediaRef
from simulator import Transcript, chat_of

NAME = "simulator"
MAX_TEXT_CHARS = 4096
_NUMBER = re.compile(r"^[0-9]{6,20}$")
MEDIA_KINDS = {"image", "document", "audio"}


def parse_simulator(body: Any, *, max_text_chars: int) -> list[Parsed]:
    """{"number", "name", "text", "id", "as": "customer"|"person", "media": {"kind", "mime", "data" (base64),
    "file_name", "voice", "seconds"}} -> one message. Raises PayloadError on a body the page never sends."""
    if not isinstance(body, dict):
        raise PayloadError("expected a JSON object")
    number = str(body.get("number") or "")
    if not _NUMBER.match(number):
        raise PayloadError("number must be 6 to 20 digits")
    text = str(body.get("text") or "").strip()[:max_text_chars]
    media = _media(body.get("media"))
    if not text and media is None:
        raise PayloadError("a message needs a text or a media item")
    message_id = str(body.get("id") or uuid.uuid4().hex)[:64]
    return [
        IncomingMessage(
            chat=chat_of(number),
            message_id=message_id,
            text=text,
            kind=media.kind if media is not None else "text",
            media=media,
            push_name=str(body.get("name") or "")[:80],
            timestamp=int(time.time()),
            from_me=body.get("as") == "person",
        )
    ]


def _media(raw: Any) -> MediaRef | None:
    if not isinstance(raw, dict) or raw.get("kind") not in MEDIA_KINDS:
        return None
    data = raw.get("data") if isinstance(raw.get("data"), str) else ""
    kind = str(raw["kind"])
    return MediaRef(
        kind=kind,
        mime=str(raw.get("mime") or "")[:100],
        size=len(data) * 3 // 4,
        seconds=int(raw.get("seconds") or 0) if str(raw.get("seconds") or "0").isdigit() else 0,
        voice=raw.get("voice") is True,
        file_name=str(raw.get("file_name") or "")[:200] if kind == "document" else "",
        inline=data if kind in READABLE_MEDIA_KINDS else "",
    )


class SimulatorGateway(Gateway):
    """The simulator's adapter: no signature (the page is behind the admin login when a real gateway is on)."""

    name = NAME
    max_text_chars = MAX_TEXT_CHARS

    def __init__(self, transcript: Transcript) -> None:
        self.transcript = transcript

    def verify(self, request: InboundRequest) -> None:
        """The simulator's routes check access themselves (web/simulator.py)."""

    def handshake(self, query: Mapping[str, str]) -> str | None:
        """The simulator has no subscription handshake."""
        return None

    def parse(self, request: InboundRequest, *, accept_groups: bool, max_text_chars: int) -> list[Parsed]:
        try:
            body = json.loads(request.body)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise PayloadError("body is not valid JSON") from exc
        return parse_simulator(body, max_text_chars=max_text_chars)

    def answer(self, summary: dict[str, object]) -> WebhookAnswer | None:
        return None

    def send_text(self, chat: ChatRef, text: str, *, typing_ms: int = 0, reply_to: str = "") -> str:
        """ "Sent" = shown in the simulator, after the same typing pause a customer would see."""
        if typing_ms > 0:
            time.sleep(typing_ms / 1000)
        message_id = "SIM" + uuid.uuid4().hex[:16]
        self.transcript.add(chat, "bot", text, id=message_id, typing_ms=typing_ms)
        return message_id

    def mark_read(self, chat: ChatRef, message_id: str) -> None:
        """Nothing to mark in the simulator."""

    def find_sent(self, chat: ChatRef, text: str, *, since: float) -> bool | None:
        """The transcript knows what went out."""
        return any(e["role"] == "bot" and e["text"] == text and e["at"] >= since for e in self.transcript.entries(chat))

    def fetch_media(self, chat: ChatRef, media: MediaRef, *, max_bytes: int) -> tuple[bytes, str]:
        raise MediaError("the simulator keeps a media item only with its message, for a day")
