"""Meta WhatsApp Cloud API: verify handshake and X-Hub-Signature-256, parse `entry[].changes[].value`, send
with the Graph API (after a typing indicator when asked), and download media (media id -> `GET /{id}` for a
short-lived URL -> bytes, both with the access token).

A chat is (meta, phone_number_id, customer wa_id); replies go out from the phone number id the message came
in on. The `smb_message_echoes` field (what the business typed in the WhatsApp Business app beside the Cloud
API) comes out as messages with `from_me=True`. Graph errors are translated with their meaning and retried
only where retrying can help. The Cloud API has no lookup of sent messages, so `find_sent` cannot tell.

A cart sent from the business's catalog (`type: "order"`) becomes a message of kind "order" whose text states
the order in pt-BR words, then the customer's note on its own line:

    [pedido pelo catálogo: 2 x bolo-cenoura (R$ 48,00 cada), 1 x pao-queijo-kg (R$ 39,90 cada); total R$ 135,90]
    Quero para amanhã

Prices in BRL read "R$ 1.234,50"; another currency reads "USD 3.50" (its code, dot decimals); a price without a
currency is a bare "48,00". An item without a readable product id is left out; one without a readable quantity
or price is listed without it, and then no total is given (nor when the items' currencies differ). Past
ORDER_MAX_ITEMS_LISTED items the rest are counted ("e mais 3 itens"), so the note survives the text limit. An
order with no readable item still says one came: "[pedido pelo catálogo recebido, sem itens legíveis]".

With several businesses (TENANTS_FILE), their numbers may be under different Meta apps, each signing with its own
secret. The signature covers the whole body, before anything in it can be read: a body is accepted when one of the
app secrets in play (the environment's and the businesses') signs it, and each of its messages is then kept only if
the business claiming its number has that secret (else it is ignored as `wrong_app`). The handshake accepts any of
the verify tokens in play. With one secret in play, one HMAC is computed, as for a single business.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

import requests

from errors import MediaError, PayloadError, SendError, SignatureError
from gateways.base import Businesses, Gateway, InboundRequest, Parsed, WebhookAnswer, typing_pause
from gateways.http import download_session, fetch_bytes, fetch_json, post_or_raise, retrying_session
from models import READABLE_MEDIA_KINDS, ChatRef, IgnoredEvent, IncomingMessage, MediaRef, location_detail, words_detail
from parser import decode_json

log = logging.getLogger(__name__)

NAME = "meta"
MAX_TEXT_CHARS = 4096
MEDIA_TYPES = frozenset({"image", "video", "document", "audio", "sticker"})
MEDIA_INFO_MAX_BYTES = 64 * 1024  # the JSON that `GET /{media id}` answers
MESSAGES_FIELD = "messages"
ECHOES_FIELD = "smb_message_echoes"  # messages the business sent from the WhatsApp Business app

# Graph error codes worth a name in the logs; `transient` says whether a later retry can succeed.
GRAPH_ERRORS: dict[int, tuple[str, bool]] = {
    131047: ("outside the 24 h customer service window: only a template message can be sent", False),
    130429: ("rate limit hit (throughput of this phone number)", True),
    131056: ("too many messages to this customer in a short time (pair rate limit)", True),
    131048: ("spam rate limit: messages from this number are being restricted", True),
    190: ("access token expired or invalid: renew META_ACCESS_TOKEN", True),
    131026: ("message undeliverable: the customer cannot receive it", False),
    131051: ("unsupported message type", False),
    131000: ("Meta had an internal error", True),
    133010: ("phone number not registered on the Cloud API", True),
    4: ("application request limit reached", True),
    80007: ("WhatsApp Business Account rate limit", True),
}


# The Graph errors that mean "slow down": the number's throughput, the app's or the account's request rate, or this
# one customer's conversation (the pair rate limit: about one message every 6 s to the same user).
RATE_LIMIT_ERRORS = {130429: "number", 4: "number", 80007: "number", 131056: "customer"}


def signature_is_valid(body: bytes, header: str, app_secret: str) -> bool:
    """X-Hub-Signature-256 is "sha256=" + hex HMAC-SHA256 of the raw body with the app secret."""
    if not header.startswith("sha256=") or not app_secret:
        return False
    expected = hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(header[7:].strip().lower(), expected)


def verify_handshake(query: Mapping[str, str], verify_token: str) -> str | None:
    """The challenge to echo for a valid subscription handshake, else None."""
    mode = query.get("hub.mode", "")
    token = query.get("hub.verify_token", "")
    challenge = query.get("hub.challenge", "")
    if mode == "subscribe" and verify_token and hmac.compare_digest(token.encode(), verify_token.encode()):
        return challenge
    return None


def parse_meta(payload: Any, *, max_text_chars: int = 4000) -> list[Parsed]:
    """Messages and ignored events of a Cloud API webhook body (already decoded)."""
    if not isinstance(payload, dict):
        raise PayloadError("body must be a JSON object")
    results: list[Parsed] = []
    for entry in _dicts(payload.get("entry")):
        for change in _dicts(entry.get("changes")):
            value = change.get("value")
            if not isinstance(value, dict):
                results.append(IgnoredEvent(reason="no_value"))
                continue
            field_name = change.get("field", MESSAGES_FIELD)
            if field_name == MESSAGES_FIELD:
                results.extend(_parse_value(value, max_text_chars))
            elif field_name == ECHOES_FIELD:
                results.extend(_parse_echoes(value, max_text_chars))
            else:
                results.append(IgnoredEvent(reason=f"field:{field_name}"))
    return results or [IgnoredEvent(reason="no_messages")]


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _field(record: dict[str, Any], outer: str, inner: str) -> Any:
    """record[outer][inner] when record[outer] is an object, else None (payloads put odd types anywhere)."""
    container = record.get(outer)
    return container.get(inner) if isinstance(container, dict) else None


def _phone_number_id(value: dict[str, Any]) -> str:
    metadata = value.get("metadata") if isinstance(value.get("metadata"), dict) else {}
    return str(metadata.get("phone_number_id") or "")


def _parse_value(value: dict[str, Any], max_chars: int) -> list[Parsed]:
    phone_number_id = _phone_number_id(value)
    names = {str(c.get("wa_id")): str(_field(c, "profile", "name") or "") for c in _dicts(value.get("contacts"))}
    results: list[Parsed] = []
    for status in _dicts(value.get("statuses")):
        results.append(
            IgnoredEvent(reason=f"status:{status.get('status', 'unknown')}", message_id=str(status.get("id", "")))
        )
    for message in _dicts(value.get("messages")):
        results.append(_parse_message(message, phone_number_id, names, max_chars))
    if not results:
        results.append(IgnoredEvent(reason="no_messages"))
    return results


def _parse_echoes(value: dict[str, Any], max_chars: int) -> list[Parsed]:
    """The business's own messages in a `smb_message_echoes` value: same shape as inbound messages, with the
    customer in `to` instead of `from`."""
    phone_number_id = _phone_number_id(value)
    echoes = _dicts(value.get("message_echoes"))
    results: list[Parsed] = [_parse_message(echo, phone_number_id, {}, max_chars, from_me=True) for echo in echoes]
    return results or [IgnoredEvent(reason="no_messages")]


def _parse_message(
    message: dict[str, Any], phone_number_id: str, names: dict[str, str], max_chars: int, *, from_me: bool = False
) -> Parsed:
    """A customer's message, or with `from_me` an echo of the business's own (the customer is then `to`)."""
    customer = str(message.get("to" if from_me else "from") or "")
    message_id = str(message.get("id") or "")
    if not customer or not message_id or not phone_number_id:
        return IgnoredEvent(reason="no_message_key", message_id=message_id)
    chat = ChatRef(gateway=NAME, instance=phone_number_id, chat_id=customer)
    kind, text = _content(message)
    if text is None:
        return IgnoredEvent(reason=kind, message_id=message_id, chat=chat)
    text = text.strip()
    media = _media(kind, message)
    if not text and media is None:
        return IgnoredEvent(reason="empty", message_id=message_id, chat=chat)
    try:
        timestamp = int(message.get("timestamp") or 0)
    except (TypeError, ValueError, OverflowError):  # OverflowError: Infinity
        timestamp = 0
    return IncomingMessage(
        chat=chat,
        message_id=message_id,
        text=text[:max_chars],
        kind=kind,
        media=media,
        phone_jid=f"{customer}@s.whatsapp.net",
        push_name=names.get(customer, ""),
        timestamp=timestamp,
        from_me=from_me,
    )


def _content(message: dict[str, Any]) -> tuple[str, str | None]:
    """(kind, text); text None means "not answerable now" and kind is the ignore reason."""
    kind = str(message.get("type") or "")
    body = message.get(kind) if isinstance(message.get(kind), dict) else {}
    if kind == "text":
        return "text", str(body.get("body") or "")
    if kind == "interactive":
        for reply_type, our_kind in (("button_reply", "button_reply"), ("list_reply", "list_reply")):
            reply = body.get(reply_type)
            if isinstance(reply, dict) and reply.get("title"):
                return our_kind, str(reply["title"])
        return "unsupported", None
    if kind == "button":  # quick reply of a template
        return "button_reply", str(body.get("text") or body.get("payload") or "")
    if kind in MEDIA_TYPES:
        return kind, str(body.get("caption") or "")
    if kind == "order":
        return "order", order_text(message.get("order"))
    if kind == "location":
        return "location", ""
    if kind == "contacts":
        return "contact", ""
    if kind == "reaction":
        return "reaction", None
    if kind == "system":
        return "system", None
    return "unsupported", None


ORDER_MAX_ITEMS_LISTED = 30
_ORDER_MAX_AMOUNT = Decimal(10) ** 9  # beyond any real price or quantity; keeps garbage like 1e999999 out
_ORDER_MAX_ID_CHARS = 100
_ORDER_MAX_NUMBER_CHARS = 40
_ORDER_PLACES = Decimal("0.001")


def order_text(order: Any) -> str:
    """A catalog order in words (see the module docstring); never raises, whatever `order` holds."""
    order = order if isinstance(order, dict) else {}
    items = order.get("product_items")
    lines = [p for p in (_order_line(item) for item in items) if p] if isinstance(items, list) else []
    if lines:
        described = [words for words, _, _ in lines[:ORDER_MAX_ITEMS_LISTED]]
        unlisted = len(lines) - ORDER_MAX_ITEMS_LISTED
        if unlisted > 0:
            described.append(f"e mais {unlisted} {'item' if unlisted == 1 else 'itens'}")
        summary = "pedido pelo catálogo: " + ", ".join(described)
        total = _order_total([(amount, currency) for _, amount, currency in lines])
        summary = f"[{summary}; total {total}]" if total else f"[{summary}]"
    else:
        summary = "[pedido pelo catálogo recebido, sem itens legíveis]"
    note = order.get("text")
    return f"{summary}\n{note.strip()}" if isinstance(note, str) and note.strip() else summary


def _order_line(item: Any) -> tuple[str, Decimal | None, str] | None:
    """(words, quantity x price or None when either is unreadable, currency) of one cart item; None when the
    item names no product."""
    if not isinstance(item, dict):
        return None
    product = item.get("product_retailer_id")
    if isinstance(product, bool) or not isinstance(product, str | int):
        return None
    product = str(product).strip()[:_ORDER_MAX_ID_CHARS]
    if not product:
        return None
    quantity = _order_number(item.get("quantity"))
    if quantity == 0:
        quantity = None  # no one orders none of something: the field is garbled
    price = _order_number(item.get("item_price"))
    words = product if quantity is None else f"{_plain_number(quantity)} x {product}"
    currency = _currency(item.get("currency"))
    if price is not None:
        words += f" ({_money(price, currency)} cada)"
    amount = None if quantity is None or price is None else quantity * price
    return words, amount, currency


def _currency(value: Any) -> str:
    """An ISO 4217 code ("BRL", "USD"), or '' when the field holds none."""
    code = value.strip().upper() if isinstance(value, str) else ""
    return code if len(code) == 3 and code.isascii() and code.isalpha() else ""


def _order_total(amounts: list[tuple[Decimal | None, str]]) -> str:
    """The order's total, or '' when an item lacks its quantity or price or the currencies differ."""
    currencies = {currency for _, currency in amounts}
    if len(currencies) != 1 or any(amount is None for amount, _ in amounts):
        return ""
    return _money(sum((amount for amount, _ in amounts if amount is not None), Decimal(0)), currencies.pop())


def _order_number(value: Any) -> Decimal | None:
    """A non-negative number from a JSON number or a numeric string, to 3 decimal places; None for anything
    else."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        text = str(value).strip()
        number = Decimal(text) if len(text) <= _ORDER_MAX_NUMBER_CHARS else None
    except (InvalidOperation, ValueError):  # ValueError: an int too long for str()
        return None
    if number is None or not number.is_finite() or not 0 <= number < _ORDER_MAX_AMOUNT:
        return None
    # Rounded so "1e-999999" cannot be written out digit by digit; abs() because "-0" passes the bound and
    # "-0,00" would read as a debt.
    return abs(number.quantize(_ORDER_PLACES))


def _plain_number(number: Decimal) -> str:
    """2 -> "2", 1.5 -> "1,5" (a quantity, pt-BR)."""
    return f"{number.normalize():f}".replace(".", ",")


def _money(amount: Decimal, currency: str) -> str:
    """ "R$ 1.234,50" for BRL, "USD 1,234.50" for another currency, "1.234,50" when the currency is unknown."""
    if currency and currency != "BRL":
        return f"{currency} {amount:,.2f}"
    brazilian = f"{amount:,.2f}".replace(",", "_").replace(".", ",").replace("_", ".")
    return f"R$ {brazilian}" if currency else brazilian


def _media(kind: str, message: dict[str, Any]) -> MediaRef | None:
    """The media of a Cloud API message: the media id to fetch later, or words for locations and contacts."""
    if kind == "location" and isinstance(message.get("location"), dict):
        place = message["location"]
        detail = location_detail(place.get("name"), place.get("address"), place.get("latitude"), place.get("longitude"))
        return MediaRef(kind="location", detail=detail)
    if kind == "contact":
        names = [_field(c, "name", "formatted_name") for c in _dicts(message.get("contacts"))]
        return MediaRef(kind="contact", detail=words_detail(names))
    body = message.get(kind)
    if kind not in MEDIA_TYPES or not isinstance(body, dict):
        return None
    media_id = str(body.get("id") or "")
    readable = kind in READABLE_MEDIA_KINDS and bool(media_id)
    return MediaRef(
        kind=kind,
        mime=str(body.get("mime_type") or ""),
        voice=body.get("voice") is True,
        file_name=str(body.get("filename") or "")[:200],
        source={"id": media_id} if readable else {},
    )


class MetaGateway(Gateway):
    """Cloud API adapter."""

    name = NAME
    max_text_chars = MAX_TEXT_CHARS

    def __init__(
        self,
        *,
        app_secret: str,
        verify_token: str,
        access_token: str,
        phone_number_id: str,
        graph_url: str = "https://graph.facebook.com",
        api_version: str = "v23.0",
        mark_as_read: bool = False,
        timeout_seconds: float = 15.0,
        max_retries: int = 3,
        media_attempts: int = 3,
        media_timeout_seconds: float = 30.0,
        session: requests.Session | None = None,
        businesses: Businesses | None = None,
    ) -> None:
        self.media_session = download_session(media_attempts)
        self.media_timeout_seconds = media_timeout_seconds
        self.businesses = businesses  # TENANTS_FILE: the app secret of the business each number belongs to
        self.app_secret = app_secret
        self.verify_token = verify_token
        self.access_token = access_token
        self.phone_number_id = phone_number_id
        self.graph_url = graph_url.rstrip("/")
        self.api_version = api_version
        self.mark_as_read = mark_as_read
        self.timeout_seconds = timeout_seconds
        self.session = session or retrying_session(max_retries)

    def verify(self, request: InboundRequest) -> None:
        """Every webhook request is signed with an app secret in play (X-Hub-Signature-256): the environment's, or
        with several businesses one of theirs."""
        if self._signer(request, self._secrets()) is None:
            raise SignatureError("missing or invalid X-Hub-Signature-256")

    def handshake(self, query: Mapping[str, str]) -> str | None:
        """`hub.challenge` when the subscription handshake carries META_VERIFY_TOKEN (or a business's), else None."""
        tokens = [self.verify_token]
        if self.businesses is not None:
            tokens += [own.meta_verify_token for own in self.businesses.every_settings()]
        for token in dict.fromkeys(tokens):
            challenge = verify_handshake(query, token)
            if challenge is not None:
                return challenge
        return None

    def parse(self, request: InboundRequest, *, accept_groups: bool, max_text_chars: int) -> list[Parsed]:
        """The body's messages; with several businesses under different apps, a message for a number whose
        business's app did not sign the body is ignored as `wrong_app` (never buffered under that business)."""
        payload = decode_json(request.body)  # lone surrogates replaced, as for every gateway
        parsed = parse_meta(payload, max_text_chars=max_text_chars)
        secrets = self._secrets()
        if len(secrets) < 2:
            return parsed  # one secret in play: it signed the body (verify), and every number's business has it
        signer = self._signer(request, secrets)
        return [self._signed_for_its_business(item, signer) for item in parsed]

    def _secrets(self) -> list[str]:
        """The distinct app secrets in play, the environment's first."""
        if self.businesses is None:
            return [self.app_secret]
        every = [self.app_secret, *(own.meta_app_secret for own in self.businesses.every_settings())]
        return [secret for secret in dict.fromkeys(every) if secret]

    def _signer(self, request: InboundRequest, secrets: list[str]) -> str | None:
        """Which of `secrets` signed the body (the environment's is tried first: one HMAC for a single business)."""
        header = request.header("X-Hub-Signature-256")
        for secret in secrets:
            if signature_is_valid(request.body, header, secret):
                return secret
        return None

    def _signed_for_its_business(self, item: Parsed, signer: str | None) -> Parsed:
        if item.chat is None or self.businesses is None:
            return item
        own = self.businesses.settings_for(NAME, item.chat.instance)
        if own is None or (own.meta_app_secret or self.app_secret) == signer:
            return item  # no business claims it (ignored as no_tenant later), or its app signed the body
        return IgnoredEvent(reason="wrong_app", chat=item.chat, message_id=item.message_id)

    def answer(self, summary: dict[str, object]) -> WebhookAnswer | None:
        return None

    def _messages_url(self, phone_number_id: str) -> str:
        return f"{self.graph_url}/{self.api_version}/{phone_number_id or self.phone_number_id}/messages"

    def send_text(self, chat: ChatRef, text: str, *, typing_ms: int = 0, reply_to: str = "") -> str:
        """Send one text; with `typing_ms`, first show "typing…" on `reply_to` (the customer's last message,
        which the indicator also marks read) and wait that long. Returns the message id ('' when none)."""
        if typing_ms > 0 and reply_to:
            self._show_typing(chat, reply_to)
        # The indicator stays until our message arrives (or 25 s pass), so this wait is the time it shows.
        typing_pause(typing_ms)
        body = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": chat.chat_id,
            "type": "text",
            "text": {"preview_url": False, "body": text},
        }
        data = self._post(chat, body)
        messages = data.get("messages") if isinstance(data, dict) else None
        if isinstance(messages, list) and messages and isinstance(messages[0], dict):
            return str(messages[0].get("id") or "")
        return ""

    def mark_read(self, chat: ChatRef, message_id: str) -> None:
        """Blue ticks on the customer's last message, when META_MARK_AS_READ is on; best effort."""
        if not self.mark_as_read:
            return
        try:
            self._post(chat, {"messaging_product": "whatsapp", "status": "read", "message_id": message_id})
        except SendError as exc:
            log.info("mark-as-read failed chat=%s: %s", chat.label, exc)

    def find_sent(self, chat: ChatRef, text: str, *, since: float) -> bool | None:
        """The Cloud API offers no lookup of sent messages: cannot tell."""
        return None

    def _show_typing(self, chat: ChatRef, reply_to: str) -> None:
        """Best effort: a refused or failed indicator must not cost the customer the reply."""
        body = {
            "messaging_product": "whatsapp",
            "status": "read",
            "message_id": reply_to,
            "typing_indicator": {"type": "text"},
        }
        try:
            self._post(chat, body)
        except SendError as exc:
            log.info("typing indicator failed chat=%s: %s", chat.label, exc)

    def fetch_media(self, chat: ChatRef, media: MediaRef, *, max_bytes: int) -> tuple[bytes, str]:
        """Media id -> its URL, mime type and size (Graph) -> the bytes, both calls with the access token."""
        media_id = str(media.source.get("id") or "")
        if not media_id:
            raise MediaError("no media id kept for this message")
        auth = {"Authorization": f"Bearer {self.access_token}"}
        info = fetch_json(
            self.media_session,
            "GET",
            f"{self.graph_url}/{self.api_version}/{media_id}",
            what="graph media info",
            max_bytes=MEDIA_INFO_MAX_BYTES,
            timeout=self.media_timeout_seconds,
            headers=auth,
        )
        url = info.get("url")
        if not isinstance(url, str) or not url:
            raise MediaError("graph media info has no url")
        size = str(info.get("file_size") or "")
        if size.isdigit() and int(size) > max_bytes:
            raise MediaError(f"graph media is {size} bytes, over the {max_bytes} limit", problem="too_large")
        data, content_type = fetch_bytes(
            self.media_session,
            "GET",
            url,
            what="graph media download",
            max_bytes=max_bytes,
            timeout=self.media_timeout_seconds,
            headers=auth,
        )
        return data, str(info.get("mime_type") or media.mime or content_type)

    def _post(self, chat: ChatRef, body: dict[str, Any]) -> Any:
        response = post_or_raise(
            self.session,
            self._messages_url(chat.instance),
            gateway="meta",
            chat=chat,
            timeout=(min(5.0, self.timeout_seconds), self.timeout_seconds),
            json=body,
            headers={"Authorization": f"Bearer {self.access_token}"},
        )
        try:
            data = response.json()
        except ValueError:
            data = {}
        if response.status_code >= 400:
            raise graph_error(response.status_code, data, chat)
        return data


def graph_error(status: int, data: Any, chat: ChatRef) -> SendError:
    """A SendError that names the Graph error's meaning and whether retrying can help."""
    error = data.get("error") if isinstance(data, dict) and isinstance(data.get("error"), dict) else {}
    code = error.get("code")
    meaning, transient = GRAPH_ERRORS.get(
        int(code) if isinstance(code, int) else -1, ("", status >= 500 or status == 429)
    )
    detail = f"graph error {code}: {meaning}" if meaning else f"graph answered {status} (code {code})"
    rate_limit = RATE_LIMIT_ERRORS.get(int(code) if isinstance(code, int) else -1, "number" if status == 429 else "")
    return SendError(f"{detail} for {chat.label}", status_code=status, transient=transient, rate_limit=rate_limit)
