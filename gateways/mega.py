"""Mega API: parse its Baileys-like webhook (`instance_key`, `key`, `message`, `messageType`) and send with
`POST {base}/rest/sendMessage/{instance}/text`. Mega signs nothing: its webhook is protected by WEBHOOK_TOKEN.

A chat is (mega, instance key, key.remoteJid as received). Message content is read by the same extractors as
Evolution's, since both carry WhatsApp's own message object.
"""

from __future__ import annotations

import json
from typing import Any

import requests

from errors import PayloadError
from gateways.base import InboundRequest, Parsed, WebhookAnswer
from models import ChatRef, IgnoredEvent
from parser import message_from_baileys
from sender import key_id_or_raise, post_or_raise, retrying_session

NAME = "mega"
MAX_TEXT_CHARS = 4096


def parse_mega(payload: Any, *, accept_groups: bool = False, max_text_chars: int = 4000) -> list[Parsed]:
    events = payload if isinstance(payload, list) else [payload]
    results: list[Parsed] = []
    for event in events:
        if not isinstance(event, dict):
            results.append(IgnoredEvent(reason="not_an_object"))
            continue
        if "key" not in event or "message" not in event:
            # connection, qrcode, message-ack and similar notifications
            results.append(IgnoredEvent(reason=f"event:{event.get('messageType') or event.get('type') or 'other'}"))
            continue
        instance = str(event.get("instance_key") or event.get("instance") or "default")
        results.append(
            message_from_baileys(
                event,
                gateway=NAME,
                instance=instance,
                accept_groups=accept_groups,
                max_chars=max_text_chars,
            )
        )
    return results


class MegaGateway:
    """Mega API adapter."""

    name = NAME
    max_text_chars = MAX_TEXT_CHARS
    uses_shared_token = True

    def __init__(
        self,
        *,
        base_url: str,
        instance_id: str,
        token: str,
        timeout_seconds: float = 15.0,
        max_retries: int = 3,
        session: requests.Session | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.instance_id = instance_id
        self.token = token
        self.timeout_seconds = timeout_seconds
        self.session = session or retrying_session(max_retries)

    def verify(self, request: InboundRequest) -> None:
        """Mega signs nothing; the route checks WEBHOOK_TOKEN (see `uses_shared_token`)."""

    def parse(self, request: InboundRequest, *, accept_groups: bool, max_text_chars: int) -> list[Parsed]:
        try:
            payload = json.loads(request.body)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise PayloadError("body is not valid JSON") from exc
        return parse_mega(payload, accept_groups=accept_groups, max_text_chars=max_text_chars)

    def answer(self, summary: dict[str, object]) -> WebhookAnswer | None:
        return None

    def send_text(self, chat: ChatRef, text: str) -> str:
        instance = self.instance_id or chat.instance
        url = f"{self.base_url}/rest/sendMessage/{instance}/text"
        response = post_or_raise(
            self.session,
            url,
            gateway=NAME,
            chat=chat,
            timeout=(min(5.0, self.timeout_seconds), self.timeout_seconds),
            json={"messageData": {"to": chat.chat_id, "text": text}},
            headers={"Authorization": f"Bearer {self.token}"},
        )
        return key_id_or_raise(response, gateway=NAME, chat=chat)

    def mark_read(self, chat: ChatRef, message_id: str) -> None:
        """Not used for Mega."""
