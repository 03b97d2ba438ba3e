"""Mega API: parse its Baileys-like webhook (`instance_key`, `key`, `message`, `messageType`), send with
`POST {base}/rest/sendMessage/{instance}/text`, and download media with
`POST {base}/rest/instance/downloadMediaMessage/{instance}`. Mega signs nothing: its webhook must carry the shared
token (WEBHOOK_TOKEN or the generated one), checked by the `SharedSecretVerifier` it is built with. It has no way
to look up what was sent (`find_sent` cannot tell) and no read receipts.

A chat is (mega, instance key, key.remoteJid as received). Message content is read by the same extractors as
Evolution's, since both carry WhatsApp's own message object; as there, what the business side sent in a 1:1
chat (`key.fromMe`) comes out with `from_me=True`. Mega has no typing indicator: a typing time is a plain wait.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import requests

from errors import MediaError
from gateways.base import Gateway, InboundRequest, Parsed, WebhookAnswer, typing_pause
from gateways.http import (
    base64_limit,
    decode_base64,
    download_session,
    fetch_json,
    key_id_or_raise,
    post_or_raise,
    retrying_session,
)
from gateways.shared_secret import SharedSecretVerifier
from models import ChatRef, IgnoredEvent, MediaRef
from parser import decode_json, message_from_baileys

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


class MegaGateway(Gateway):
    """Mega API adapter."""

    name = NAME
    max_text_chars = MAX_TEXT_CHARS

    def __init__(
        self,
        *,
        shared_secret: SharedSecretVerifier,
        base_url: str,
        instance_id: str,
        token: str,
        timeout_seconds: float = 15.0,
        max_retries: int = 3,
        media_attempts: int = 3,
        media_timeout_seconds: float = 30.0,
        session: requests.Session | None = None,
    ) -> None:
        self.shared_secret = shared_secret
        self.media_session = download_session(media_attempts)
        self.media_timeout_seconds = media_timeout_seconds
        self.base_url = base_url.rstrip("/")
        self.instance_id = instance_id
        self.token = token
        self.timeout_seconds = timeout_seconds
        self.session = session or retrying_session(max_retries)

    def verify(self, request: InboundRequest) -> None:
        """Mega signs nothing: the request must carry the shared token."""
        self.shared_secret.verify(request)

    def handshake(self, query: Mapping[str, str]) -> str | None:
        """Mega has no subscription handshake."""
        return None

    def parse(self, request: InboundRequest, *, accept_groups: bool, max_text_chars: int) -> list[Parsed]:
        payload = decode_json(request.body)  # lone surrogates replaced, as for every gateway
        return parse_mega(payload, accept_groups=accept_groups, max_text_chars=max_text_chars)

    def answer(self, summary: dict[str, object]) -> WebhookAnswer | None:
        return None

    def send_text(self, chat: ChatRef, text: str, *, typing_ms: int = 0, reply_to: str = "") -> str:
        """Send one text after waiting `typing_ms` (Mega has no typing indicator); `reply_to` is unused."""
        typing_pause(typing_ms)
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

    def find_sent(self, chat: ChatRef, text: str, *, since: float) -> bool | None:
        """Mega offers no lookup of sent messages: cannot tell."""
        return None

    def fetch_media(self, chat: ChatRef, media: MediaRef, *, max_bytes: int) -> tuple[bytes, str]:
        """Mega decrypts the media from the fields of the WhatsApp message and answers its base64 as `data`."""
        fields = next(iter((media.source.get("message") or {}).values()), None)
        if not isinstance(fields, dict) or not fields.get("mediaKey"):
            raise MediaError("no media reference kept for this message")
        keys = {name: fields.get(name) for name in ("mediaKey", "directPath", "url", "mimetype")}
        answer = fetch_json(
            self.media_session,
            "POST",
            f"{self.base_url}/rest/instance/downloadMediaMessage/{self.instance_id or chat.instance}",
            what="mega downloadMediaMessage",
            max_bytes=base64_limit(max_bytes),
            timeout=self.media_timeout_seconds,
            json={"messageKeys": {**keys, "messageType": media.kind}},
            headers={"Authorization": f"Bearer {self.token}"},
        )
        return decode_base64(answer.get("data"), what="mega media", max_bytes=max_bytes), media.mime
