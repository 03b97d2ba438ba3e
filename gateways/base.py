"""The contract every gateway adapter implements (`Gateway`), the request/response values it works on, and the
typing pause adapters share.

Adapters never see Flask: the webhook turns a request into an `InboundRequest` and the adapter's
`WebhookAnswer` back into a response, so adapters stay testable with plain values. Every method of `Gateway` is
required: a gateway without some feature says so in its own way (a no-op, None), so the web layer and the worker
call each method without asking first whether it is there.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from config import Settings
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


class Businesses(Protocol):
    """The businesses one deployment serves (TENANTS_FILE, `tenants.TenantDirectory`), as the adapters whose webhooks
    are signed with a business's own secret (a Twilio sub-account's auth token, a Meta app's secret) see them."""

    def settings_for(self, gateway: str, instance: str) -> Settings | None:
        """The settings of the business that claims this identity (its own secrets, or the environment's when it
        sets none); None when no business does."""
        ...

    def every_settings(self) -> list[Settings]:
        """The environment's settings, then every business's."""
        ...


@dataclass(frozen=True, slots=True)
class WebhookAnswer:
    """The HTTP answer an adapter wants to give (JSON by default; Twilio wants TwiML)."""

    body: str
    status: int = 200
    content_type: str = "application/json"


class Gateway(ABC):
    """One WhatsApp gateway, whole: check and read its webhooks (in the web layer), send texts through it and
    fetch its media (in the worker)."""

    name: str  # the `gateway` of every ChatRef it parses, and its key in `build_gateways`
    max_text_chars: int  # the longest text one message may carry; longer replies are split before `send_text`

    # ----- webhook side (web/webhooks.py) -------------------------------------------------------------------

    @abstractmethod
    def verify(self, request: InboundRequest) -> None:
        """Check a webhook request's credentials: its signature (SignatureError), or the shared token / JWT
        (AuthError) for a gateway that signs nothing. Returns None when the request may go on."""

    @abstractmethod
    def handshake(self, query: Mapping[str, str]) -> str | None:
        """The text to answer a subscription handshake (`GET` on the gateway's webhook with this query) with, or
        None to refuse it. Only Meta has one; the others always answer None."""

    @abstractmethod
    def parse(self, request: InboundRequest, *, accept_groups: bool, max_text_chars: int) -> list[Parsed]:
        """Normalized messages and ignored events in a verified request; texts cut to `max_text_chars`, group
        chats kept only with `accept_groups`. Raises PayloadError when the body cannot be read at all."""

    @abstractmethod
    def answer(self, summary: dict[str, object]) -> WebhookAnswer | None:
        """A gateway-specific answer to a handled webhook (Twilio's empty TwiML), or None for the default JSON
        `summary`."""

    # ----- worker side (worker.py, media.py) ----------------------------------------------------------------

    @abstractmethod
    def send_text(self, chat: ChatRef, text: str, *, typing_ms: int = 0, reply_to: str = "") -> str:
        """Send one text (within `max_text_chars`); first show "typing…" for about `typing_ms` where the gateway
        can, else just wait that long (0 = none beyond the gateway's own defaults). `reply_to` is the id of the
        customer's last message (Meta needs it for its typing indicator). Returns the gateway's message id ('' when
        it gives none). Raises SendError (`.transient`: whether a later retry can succeed)."""

    @abstractmethod
    def mark_read(self, chat: ChatRef, message_id: str) -> None:
        """Best effort read receipt for the customer's last message (a no-op where the gateway has none or it is
        not configured); a failure is logged, not raised."""

    @abstractmethod
    def fetch_media(self, chat: ChatRef, media: MediaRef, *, max_bytes: int) -> tuple[bytes, str]:
        """(bytes, mime type) of a media item from its `source`, at most `max_bytes`. Called by the worker, never
        in a webhook request. Raises MediaError."""

    @abstractmethod
    def find_sent(self, chat: ChatRef, text: str, *, since: float) -> bool | None:
        """Whether the gateway holds a message of ours with exactly this text in this chat, sent at or after
        `since` (unix seconds): asked after a crash between the gateway taking a part and the progress reaching
        Redis. None when it cannot tell (no such lookup, unreachable, an odd answer): the part is then sent
        again. Never raises."""


def typing_pause(typing_ms: int) -> None:
    """Wait `typing_ms` before a send, so a reply in parts does not arrive all at once. Blocks the caller (the
    worker), never a webhook request."""
    if typing_ms > 0:
        time.sleep(typing_ms / 1000)
