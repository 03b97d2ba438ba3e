"""Twilio (WhatsApp): validate X-Twilio-Signature, parse the form-encoded webhook, answer empty TwiML, send
with the Messages API (a typing time is a plain wait: no indicator), and download media from `MediaUrl0` with
the account's basic auth.

A chat is (twilio, the business number `To`, the customer's `From`), both as `whatsapp:+55...`. Signature:
base64(HMAC-SHA1(auth token, public URL + each POST field name and value, sorted by name)), Twilio's
documented algorithm, computed against TWILIO_PUBLIC_URL because the service sits behind a proxy. As in Twilio's
own validator, a signature over the URL with the scheme's default port written out (`https://host:443/...`) or
left out is accepted whichever form TWILIO_PUBLIC_URL uses, since Twilio signs either; no other port is.

With several businesses (TENANTS_FILE), a number may belong to a business's own Twilio sub-account, which signs its
webhooks with its own auth token: a request is checked with the token of the business claiming its `To` (the
environment's when it sets none, or when no business claims it), and, when that business sets its own
TWILIO_ACCOUNT_SID, its `AccountSid` must be that one. Replies then go out from the number the customer wrote to.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import requests

from errors import MediaError, PayloadError, SendError, SignatureError
from gateways.base import Businesses, Gateway, InboundRequest, Parsed, WebhookAnswer, typing_pause
from gateways.http import download_session, fetch_bytes, post_or_raise, retry_after_seconds, retrying_session
from models import READABLE_MEDIA_KINDS, ChatRef, IgnoredEvent, IncomingMessage, MediaRef, location_detail
from parser import replace_lone_surrogates

log = logging.getLogger(__name__)

NAME = "twilio"
FIND_MAX_BYTES = 2 * 1024 * 1024  # one page of the Messages list
FIND_PAGE = 50
MAX_TEXT_CHARS = 1600
WEBHOOK_PATH = "/webhook/twilio"
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'
# Twilio error codes a later retry cannot fix (invalid number, outside the 24 h window, ...).
PERMANENT_ERRORS = frozenset({21211, 21408, 21610, 21614, 63016, 63024})
# "Too many requests" (20429) and the WhatsApp sender's rate limits (63017, 63018): the number must slow down.
RATE_LIMIT_ERRORS = frozenset({20429, 63017, 63018})
DEFAULT_PORTS = {"http": 80, "https": 443}


def expected_signature(url: str, params: Mapping[str, str], auth_token: str) -> str:
    data = url + "".join(f"{name}{params[name]}" for name in sorted(params))
    # "surrogatepass": a forged form may hold lone surrogates; they must cost a refusal, never an exception.
    digest = hmac.new(auth_token.encode(), data.encode("utf-8", "surrogatepass"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def signature_is_valid(url: str, params: Mapping[str, str], signature: str, auth_token: str) -> bool:
    """True when `signature` signs `params` for `url` in either of its default-port forms (see `url_forms`)."""
    if not signature or not auth_token:
        return False
    given = signature.encode("utf-8", "surrogatepass")
    # Every form is computed and compared, so the time taken does not tell which one matched.
    matches = [
        hmac.compare_digest(given, expected_signature(form, params, auth_token).encode()) for form in url_forms(url)
    ]
    return any(matches)


def url_forms(url: str) -> list[str]:
    """`url`, and the same URL with the scheme's default port written out when it has none, or left out when it
    has that one (Twilio signs either form). A URL with another port, or one that cannot be read, stands alone."""
    parts = urlsplit(url)
    default_port = DEFAULT_PORTS.get(parts.scheme)
    try:
        port = parts.port
    except ValueError:  # not a port number
        return [url]
    scheme, separator, rest = url.partition("://")
    if default_port is None or not parts.netloc or not rest.startswith(parts.netloc):
        return [url]
    if port is None:
        other = f"{parts.netloc}:{default_port}"
    elif port == default_port:
        other = parts.netloc.rpartition(":")[0]  # rpartition: an IPv6 host "[::1]:443" has colons of its own
    else:
        return [url]
    return [url, f"{scheme}{separator}{other}{rest[len(parts.netloc) :]}"]


def parse_twilio(form: Mapping[str, str], *, max_text_chars: int = 4000) -> list[Parsed]:
    """One inbound message per request; status callbacks and non-WhatsApp traffic are ignored. Lone surrogates
    in any field (as a form decoder may leave them) are replaced first, as for every gateway."""
    form = replace_lone_surrogates(dict(form))
    message_id = form.get("MessageSid") or form.get("SmsMessageSid") or ""
    sender = form.get("From", "")
    business = form.get("To", "")
    if form.get("MessageStatus") and "Body" not in form:
        return [IgnoredEvent(reason=f"status:{form['MessageStatus']}", message_id=message_id)]
    if not message_id or not sender or not business:
        return [IgnoredEvent(reason="no_message_key", message_id=message_id)]
    if not sender.startswith("whatsapp:"):
        return [IgnoredEvent(reason="not_whatsapp", message_id=message_id)]
    chat = ChatRef(gateway=NAME, instance=business, chat_id=sender)
    text = (form.get("ButtonText") or form.get("Body") or "").strip()
    kind = "button_reply" if form.get("ButtonText") else "text"
    media = _media(form)
    if media is not None:
        kind = media.kind
    if not text and media is None:
        return [IgnoredEvent(reason="empty", message_id=message_id, chat=chat)]
    return [
        IncomingMessage(
            chat=chat,
            message_id=message_id,
            text=text[:max_text_chars],
            kind=kind,
            media=media,
            phone_jid=f"{form['WaId']}@s.whatsapp.net" if form.get("WaId") else None,
            push_name=form.get("ProfileName", ""),
        )
    ]


def _media(form: Mapping[str, str]) -> MediaRef | None:
    """The message's media: `MediaUrl0` (a WhatsApp message carries one item), or a shared location."""
    try:
        num_media = int(form.get("NumMedia") or 0)
    except ValueError:
        num_media = 0
    url = form.get("MediaUrl0", "")
    if num_media and url:
        mime = form.get("MediaContentType0", "")
        kind = _media_kind(mime)
        return MediaRef(kind=kind, mime=mime, source={"url": url} if kind in READABLE_MEDIA_KINDS else {})
    if form.get("Latitude") and form.get("Longitude"):
        detail = location_detail(form.get("Label"), form.get("Address"), form["Latitude"], form["Longitude"])
        return MediaRef(kind="location", detail=detail)
    return None


def _media_kind(content_type: str) -> str:
    major = content_type.split("/", 1)[0]
    return {"image": "image", "video": "video", "audio": "audio"}.get(major, "document")


class TwilioGateway(Gateway):
    """Twilio WhatsApp adapter."""

    name = NAME
    max_text_chars = MAX_TEXT_CHARS

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        whatsapp_from: str,
        public_url: str,
        api_url: str = "https://api.twilio.com",
        timeout_seconds: float = 15.0,
        max_retries: int = 3,
        media_attempts: int = 3,
        media_timeout_seconds: float = 30.0,
        session: requests.Session | None = None,
        businesses: Businesses | None = None,
    ) -> None:
        self.media_session = download_session(media_attempts)
        self.media_timeout_seconds = media_timeout_seconds
        self.businesses = businesses  # TENANTS_FILE: whose account each business number `To` belongs to
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.whatsapp_from = whatsapp_from
        self.public_url = public_url.rstrip("/")
        self.api_url = api_url.rstrip("/")
        self.timeout_seconds = timeout_seconds
        self.session = session or retrying_session(max_retries)

    def signed_url(self, request: InboundRequest) -> str:
        query = f"?{request.query_string}" if request.query_string else ""
        return f"{self.public_url}{request.path or WEBHOOK_PATH}{query}"

    def verify(self, request: InboundRequest) -> None:
        """Every webhook request is signed with the auth token of the account its number belongs to
        (X-Twilio-Signature, see the module docstring)."""
        auth_token, sub_account = self.auth_token, ""
        if self.businesses is not None:
            own = self.businesses.settings_for(NAME, request.form.get("To", ""))
            if own is not None:
                auth_token = own.twilio_auth_token or self.auth_token
                if own.twilio_account_sid and own.twilio_account_sid != self.account_sid:
                    sub_account = own.twilio_account_sid
        signature = request.header("X-Twilio-Signature")
        if not signature_is_valid(self.signed_url(request), request.form, signature, auth_token):
            raise SignatureError("missing or invalid X-Twilio-Signature")
        if sub_account and request.form.get("AccountSid", "") != sub_account:
            raise SignatureError("AccountSid is not the sub-account of the business that claims the number")

    def handshake(self, query: Mapping[str, str]) -> str | None:
        """Twilio has no subscription handshake."""
        return None

    def parse(self, request: InboundRequest, *, accept_groups: bool, max_text_chars: int) -> list[Parsed]:
        if not request.form:
            raise PayloadError("expected a form-encoded body")
        return parse_twilio(request.form, max_text_chars=max_text_chars)

    def answer(self, summary: dict[str, object]) -> WebhookAnswer | None:
        # An empty TwiML answer: Twilio must not send anything itself, the worker replies later.
        return WebhookAnswer(EMPTY_TWIML, 200, "text/xml")

    def send_text(self, chat: ChatRef, text: str, *, typing_ms: int = 0, reply_to: str = "") -> str:
        """Send one text after waiting `typing_ms` (Twilio has no typing indicator); `reply_to` is unused."""
        typing_pause(typing_ms)
        url = f"{self.api_url}/2010-04-01/Accounts/{self.account_sid}/Messages.json"
        sender = self.whatsapp_from or chat.instance
        if not sender.startswith("whatsapp:"):
            sender = f"whatsapp:{sender}"
        response = post_or_raise(
            self.session,
            url,
            gateway=NAME,
            chat=chat,
            timeout=(min(5.0, self.timeout_seconds), self.timeout_seconds),
            data={"From": sender, "To": chat.chat_id, "Body": text},
            auth=(self.account_sid, self.auth_token),
        )
        data: Any
        try:
            data = response.json()
        except ValueError:
            data = {}
        if response.status_code >= 400:
            code = data.get("code") if isinstance(data, dict) else None
            transient = code not in PERMANENT_ERRORS and response.status_code not in (400, 404)
            if response.status_code in (401, 403, 429) or response.status_code >= 500:
                transient = True
            limited = response.status_code == 429 or code in RATE_LIMIT_ERRORS
            raise SendError(
                f"twilio answered {response.status_code} (code {code}) for {chat.label}",
                status_code=response.status_code,
                transient=transient,
                rate_limit="number" if limited else "",
                retry_after=retry_after_seconds(response.headers) if limited else None,
            )
        return str(data.get("sid") or "") if isinstance(data, dict) else ""

    def find_sent(self, chat: ChatRef, text: str, *, since: float) -> bool | None:
        """Whether Twilio lists a message from our number to this chat with exactly this text, sent on or after
        `since`'s UTC date (the list's `DateSent>` filter takes a date, not a time); None when it cannot tell."""
        sender = self.whatsapp_from or chat.instance
        if not sender.startswith("whatsapp:"):
            sender = f"whatsapp:{sender}"
        day = datetime.fromtimestamp(since, UTC).strftime("%Y-%m-%d")
        try:
            body, _ = fetch_bytes(
                self.media_session,
                "GET",
                f"{self.api_url}/2010-04-01/Accounts/{self.account_sid}/Messages.json",
                what="twilio messages list",
                max_bytes=FIND_MAX_BYTES,
                timeout=self.timeout_seconds,
                params={"To": chat.chat_id, "From": sender, "DateSent>": day, "PageSize": FIND_PAGE},
                auth=(self.account_sid, self.auth_token),
            )
            messages = json.loads(body).get("messages")
        except (MediaError, ValueError, AttributeError) as exc:
            log.warning("cannot ask Twilio whether a part went out chat=%s: %s", chat.label, exc.__class__.__name__)
            return None
        if not isinstance(messages, list):
            return None
        wanted = text.strip()
        return any(isinstance(m, dict) and str(m.get("body") or "").strip() == wanted for m in messages)

    def mark_read(self, chat: ChatRef, message_id: str) -> None:
        """Twilio has no read receipts for WhatsApp through the Messages API."""

    def fetch_media(self, chat: ChatRef, media: MediaRef, *, max_bytes: int) -> tuple[bytes, str]:
        """`MediaUrl0` with basic auth; Twilio redirects to a signed storage URL (requests drops the
        credentials when the host changes)."""
        url = str(media.source.get("url") or "")
        if not url:
            raise MediaError("no media URL kept for this message")
        data, content_type = fetch_bytes(
            self.media_session,
            "GET",
            url,
            what="twilio media",
            max_bytes=max_bytes,
            timeout=self.media_timeout_seconds,
            auth=(self.account_sid, self.auth_token),
        )
        return data, media.mime or content_type
