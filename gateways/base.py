"""The interface every gateway adapter implements, the request/response values it works on, and the typing
pause adapters share.

Adapters never see Flask: the webhook turns a request into an `InboundRequest` and the adapter's
`WebhookAnswer` back into a response, so adapters stay testable with plain values.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from models import ChatRef, IgnoredEvent, IncomingMessage, MediaRef

Parsed = IncomingMessage | IgnoredEvent


@dataclass(frozen=True, slots=True, kw_only=True)
class InboundRequest:
    """What an adapter may look at in a webhook request."""

    method: str = "POST"
    path: str = ""  # the route's path, without query, e.g. "/webhook/twilio"
    query_string: str = ""  # raw query string as received (signed by Twilio)
    query: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)  # keys lower-cased
    body: bytes = b""
    form: Mapping[str, str] = field(default_factory=dict)  # decoded form fields (Twilio)
    event_hint: str = ""  # Evolution's "webhook by events" path segment

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")


@dataclass(frozen=True, slots=True)
class WebhookAnswer:
    """The HTTP answer an adapter wants to give (JSON by default; Twilio wants TwiML)."""

    body: str
    status: int = 200
    content_type: str = "application/json"


class Gateway(Protocol):
    """One WhatsApp gateway: verify and parse its webhooks, send texts through it."""

    name: str
    max_text_chars: int  # longer replies are split at paragraph/sentence boundaries
    uses_shared_token: bool  # True: unsigned, so the route checks WEBHOOK_TOKEN (and WEBHOOK_JWT_SECRET)

    def verify(self, request: InboundRequest) -> None:
        """Raise AuthError when the request is not signed/authorized as this gateway requires."""
        ...

    def parse(self, request: InboundRequest, *, accept_groups: bool, max_text_chars: int) -> list[Parsed]:
        """Normalized messages and ignored events in the request. Raises PayloadError if unreadable."""
        ...

    def send_text(self, chat: ChatRef, text: str, *, typing_ms: int = 0, reply_to: str = "") -> str:
        """Send one text (within max_text_chars); first show "typing…" for about `typing_ms` where the gateway
        can (0 = none beyond the gateway's own defaults). `reply_to` is the id of the customer's last message
        (Meta needs it for its typing indicator). Returns the gateway's message id ('' when none). Raises
        SendError."""
        ...

    def answer(self, summary: dict[str, object]) -> WebhookAnswer | None:
        """A gateway-specific answer to a handled webhook, or None for the default JSON summary."""
        ...

    def mark_read(self, chat: ChatRef, message_id: str) -> None:
        """Best effort read receipt for the burst's last message (a no-op where not configured)."""
        ...

    def fetch_media(self, chat: ChatRef, media: MediaRef, *, max_bytes: int) -> tuple[bytes, str]:
        """(bytes, mime type) of a media item from its `source`, at most `max_bytes`. Called by the worker,
        never in a webhook request. Raises MediaError."""
        ...


def typing_pause(typing_ms: int) -> None:
    """Wait `typing_ms` before a send, so a reply in parts does not arrive all at once. Blocks the caller (the
    worker), never a webhook request."""
    if typing_ms > 0:
        time.sleep(typing_ms / 1000)
