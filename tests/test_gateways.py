"""Meta, Mega and Twilio adapters: payload parsing, signatures, and sends against local fakes of their APIs;
plus the routes of the Flask app for each gateway (handshake, 401 on forged signatures, TwiML answer)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlencode

import pytest
import redis

from errors import AuthError, MediaError, PayloadError, SendError, SignatureError
from gateways.base import Gateway, InboundRequest
from gateways.mega import MegaGateway, parse_mega
from gateways.meta import MetaGateway, order_text, parse_meta, signature_is_valid, verify_handshake
from gateways.shared_secret import SharedSecretVerifier
from gateways.simulator import SimulatorGateway, parse_simulator
from gateways.twilio import TwilioGateway, parse_twilio, url_forms
from models import ChatRef, IgnoredEvent, IncomingMessage, MediaRef
from redis_keys import RedisKeys
from redis_link import RedisLink
from reply_parts import split_text
from simulator import Transcript, chat_of
from tests.conftest import RedisServer, make_settings
from tests.fakes import Canned, FakeServer, Recorded

APP_SECRET = "meta-app-secret-test"
VERIFY_TOKEN = "verifica-123"
ACCESS_TOKEN = "EAAG-test-token"
PHONE_NUMBER_ID = "109876543210987"
TWILIO_SID = "AC00000000000000000000000000000001"
TWILIO_TOKEN = "twilio-auth-token-test"
TWILIO_FROM = "whatsapp:+14155550100"
PUBLIC_URL = "https://bot.example.com"
CUSTOMER = "5511987654321"


# ----- payload builders (own values, after the documented shapes) ---------------------------------------


def meta_body(*messages: dict[str, Any], statuses: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "5511930000000", "phone_number_id": PHONE_NUMBER_ID},
    }
    if messages:
        value["contacts"] = [{"profile": {"name": "Ana Souza"}, "wa_id": CUSTOMER}]
        value["messages"] = list(messages)
    if statuses:
        value["statuses"] = statuses
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "1000200030004000", "changes": [{"value": value, "field": "messages"}]}],
    }


def meta_message(
    kind: str, content: dict[str, Any], msg_id: str = "wamid.HBgNNTUxMTk4NzY1NDMyMRUCABIYFjNFQjA="
) -> dict[str, Any]:
    return {"from": CUSTOMER, "id": msg_id, "timestamp": "1763900000", "type": kind, kind: content}


def meta_echoes_body(*echoes: dict[str, Any], phone_number_id: str = PHONE_NUMBER_ID) -> dict[str, Any]:
    """A `smb_message_echoes` change: what the business typed in the WhatsApp Business app."""
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "5511930000000", "phone_number_id": phone_number_id},
        "message_echoes": list(echoes),
    }
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "1000200030004000", "changes": [{"field": "smb_message_echoes", "value": value}]}],
    }


def meta_echo(
    kind: str, content: dict[str, Any], msg_id: str = "wamid.HBgNNTUxMTk4NzY1NDMyMRUCABIYEkVDSE8="
) -> dict[str, Any]:
    return {
        "from": "5511930000000",
        "to": CUSTOMER,
        "id": msg_id,
        "timestamp": "1763900100",
        "type": kind,
        kind: content,
    }


def twilio_form(**overrides: str) -> dict[str, str]:
    form = {
        "SmsMessageSid": "SM11111111111111111111111111111111",
        "NumMedia": "0",
        "ProfileName": "Bruno Lima",
        "MessageType": "text",
        "SmsSid": "SM11111111111111111111111111111111",
        "WaId": CUSTOMER,
        "SmsStatus": "received",
        "Body": "Oi, vocês entregam em Campinas?",
        "To": TWILIO_FROM,
        "NumSegments": "1",
        "ReferralNumMedia": "0",
        "MessageSid": "SM11111111111111111111111111111111",
        "AccountSid": TWILIO_SID,
        "From": f"whatsapp:+{CUSTOMER}",
        "ApiVersion": "2010-04-01",
    }
    form.update(overrides)
    return form


def mega_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "instance_key": "megastart-TESTE01",
        "jid": "5511930000000@s.whatsapp.net",
        "messageType": "conversation",
        "key": {"remoteJid": f"{CUSTOMER}@s.whatsapp.net", "fromMe": False, "id": "3EB0AAAABBBBCCCCDDDD01"},
        "messageTimestamp": 1763900000,
        "pushName": "Carla",
        "broadcast": False,
        "message": {"conversation": "Bom dia, qual o horário de hoje?"},
    }
    body.update(overrides)
    return body


# ----- Meta -------------------------------------------------------------------------------------------------


def test_meta_text_message_is_normalized() -> None:
    (message,) = parse_meta(meta_body(meta_message("text", {"body": "Quanto custa a entrega?"})))
    assert message == IncomingMessage(
        chat=ChatRef(gateway="meta", instance=PHONE_NUMBER_ID, chat_id=CUSTOMER),
        message_id="wamid.HBgNNTUxMTk4NzY1NDMyMRUCABIYFjNFQjA=",
        text="Quanto custa a entrega?",
        kind="text",
        phone_jid=f"{CUSTOMER}@s.whatsapp.net",
        push_name="Ana Souza",
        timestamp=1763900000,
    )


@pytest.mark.parametrize(
    ("kind", "content", "expected_kind", "expected_text"),
    [
        (
            "interactive",
            {"type": "button_reply", "button_reply": {"id": "b1", "title": "Ver cardápio"}},
            "button_reply",
            "Ver cardápio",
        ),
        (
            "interactive",
            {"type": "list_reply", "list_reply": {"id": "l2", "title": "Pizza grande", "description": "8 fatias"}},
            "list_reply",
            "Pizza grande",
        ),
        ("button", {"payload": "QUERO", "text": "Quero saber mais"}, "button_reply", "Quero saber mais"),
        (
            "image",
            {"caption": "Tem esse modelo?", "mime_type": "image/jpeg", "sha256": "x", "id": "m1"},
            "image",
            "Tem esse modelo?",
        ),
        (
            "document",
            {"caption": "Segue o pedido", "filename": "pedido.pdf", "mime_type": "application/pdf", "id": "m2"},
            "document",
            "Segue o pedido",
        ),
    ],
)
def test_meta_replies_and_captions_have_text(
    kind: str, content: dict[str, Any], expected_kind: str, expected_text: str
) -> None:
    (message,) = parse_meta(meta_body(meta_message(kind, content)))
    assert isinstance(message, IncomingMessage)
    assert (message.kind, message.text) == (expected_kind, expected_text)


@pytest.mark.parametrize(
    ("kind", "content", "expected"),
    [
        (
            "audio",
            {"mime_type": "audio/ogg; codecs=opus", "sha256": "x", "id": "m3", "voice": True},
            MediaRef(kind="audio", mime="audio/ogg; codecs=opus", voice=True, source={"id": "m3"}),
        ),
        (
            "image",
            {"mime_type": "image/jpeg", "sha256": "x", "id": "m4"},
            MediaRef(kind="image", mime="image/jpeg", source={"id": "m4"}),
        ),
        (
            "document",
            {"mime_type": "application/pdf", "id": "m6", "filename": "cardapio.pdf"},
            MediaRef(kind="document", mime="application/pdf", file_name="cardapio.pdf", source={"id": "m6"}),
        ),
        # described in words, never downloaded
        (
            "sticker",
            {"mime_type": "image/webp", "id": "m5", "animated": False},
            MediaRef(kind="sticker", mime="image/webp"),
        ),
        ("video", {"mime_type": "video/mp4", "id": "m7"}, MediaRef(kind="video", mime="video/mp4")),
        (
            "location",
            {"latitude": -23.56, "longitude": -46.65, "name": "Loja Centro", "address": "Rua A, 10"},
            MediaRef(kind="location", detail="Loja Centro, Rua A, 10"),
        ),
    ],
)
def test_meta_media_messages_keep_what_the_worker_needs(kind: str, content: dict[str, Any], expected: MediaRef) -> None:
    (message,) = parse_meta(meta_body(meta_message(kind, content)))
    assert isinstance(message, IncomingMessage)
    assert (message.kind, message.text, message.media) == (expected.kind, "", expected)


def test_meta_shared_contacts_are_described() -> None:
    (message,) = parse_meta(
        meta_body({**meta_message("contacts", {}), "contacts": [{"name": {"formatted_name": "Zé"}}]})
    )
    assert isinstance(message, IncomingMessage) and message.media == MediaRef(kind="contact", detail="Zé")


@pytest.mark.parametrize(
    ("kind", "content", "reason"),
    [
        ("reaction", {"message_id": "wamid.ABC", "emoji": "👍"}, "reaction"),
        ("unsupported", {}, "unsupported"),
        ("text", {"body": "   "}, "empty"),
    ],
)
def test_meta_non_text_messages_are_ignored_with_a_reason(kind: str, content: dict[str, Any], reason: str) -> None:
    (event,) = parse_meta(meta_body(meta_message(kind, content)))
    assert isinstance(event, IgnoredEvent)
    assert event.reason == reason


def test_meta_customer_messages_are_not_from_me() -> None:
    (message,) = parse_meta(meta_body(meta_message("text", {"body": "Oi"})))
    assert isinstance(message, IncomingMessage) and not message.from_me


def test_meta_echo_of_a_text_is_the_business_side() -> None:
    (message,) = parse_meta(meta_echoes_body(meta_echo("text", {"body": "Oi Ana, aqui é a Júlia da loja."})))
    assert message == IncomingMessage(
        chat=ChatRef(gateway="meta", instance=PHONE_NUMBER_ID, chat_id=CUSTOMER),
        message_id="wamid.HBgNNTUxMTk4NzY1NDMyMRUCABIYEkVDSE8=",
        text="Oi Ana, aqui é a Júlia da loja.",
        kind="text",
        phone_jid=f"{CUSTOMER}@s.whatsapp.net",
        timestamp=1763900100,
        from_me=True,
    )


def test_meta_echo_of_an_image_keeps_its_caption_and_media_id() -> None:
    image = {"caption": "Segue a foto do modelo", "mime_type": "image/jpeg", "sha256": "x", "id": "m9"}
    (message,) = parse_meta(meta_echoes_body(meta_echo("image", image)))
    assert isinstance(message, IncomingMessage) and message.from_me
    assert (message.chat.chat_id, message.kind, message.text) == (CUSTOMER, "image", "Segue a foto do modelo")
    assert message.media == MediaRef(kind="image", mime="image/jpeg", source={"id": "m9"})


def test_meta_echoes_set_aside_with_a_reason() -> None:
    reaction = meta_echo("reaction", {"message_id": "wamid.ABC", "emoji": "👍"}, msg_id="wamid.R1")
    no_to = {**meta_echo("text", {"body": "Oi"}, msg_id="wamid.N1"), "to": ""}
    no_id = {**meta_echo("text", {"body": "Oi"}), "id": ""}
    results = parse_meta(meta_echoes_body(reaction, no_to, no_id))
    assert results == [
        IgnoredEvent(reason="reaction", message_id="wamid.R1", chat=META_CHAT),
        IgnoredEvent(reason="no_message_key", message_id="wamid.N1"),
        IgnoredEvent(reason="no_message_key"),
    ]
    without_number = parse_meta(
        meta_echoes_body(meta_echo("text", {"body": "Oi"}, msg_id="wamid.P1"), phone_number_id="")
    )
    assert without_number == [IgnoredEvent(reason="no_message_key", message_id="wamid.P1")]
    assert parse_meta(meta_echoes_body()) == [IgnoredEvent(reason="no_messages")]


def test_meta_other_fields_are_still_ignored() -> None:
    body = meta_echoes_body(meta_echo("text", {"body": "Oi"}))
    body["entry"][0]["changes"][0]["field"] = "smb_app_state_sync"
    assert parse_meta(body) == [IgnoredEvent(reason="field:smb_app_state_sync")]


def test_meta_statuses_are_ignored() -> None:
    statuses = [{"id": "wamid.OUT1", "status": "delivered", "timestamp": "1763900001", "recipient_id": CUSTOMER}]
    assert parse_meta(meta_body(statuses=statuses)) == [
        IgnoredEvent(reason="status:delivered", message_id="wamid.OUT1")
    ]


def utf8_safe(message: IncomingMessage) -> None:
    """What buffer.append hands to Redis must encode; a lone surrogate made it raise (and the webhook answer 500)."""
    for text in (message.message_id, message.text, message.push_name, message.chat.chat_id, message.chat.key):
        text.encode("utf-8")


def parse_body(gateway: MetaGateway | MegaGateway, body: dict[str, Any]) -> list[IncomingMessage | IgnoredEvent]:
    """The body as the gateway's webhook receives it: `json.dumps` writes each lone surrogate as an escape
    (`"\\ud800"`), as a truncating client's encoder does, and an emoji as its two escapes, as Meta does."""
    return gateway.parse(InboundRequest(body=json.dumps(body).encode()), accept_groups=False, max_text_chars=4000)


def test_meta_lone_surrogates_become_replacement_characters() -> None:
    body = meta_body(meta_message("text", {"body": "Tem bolo de pote? \ud83d"}, msg_id="wamid.AB\ud800CD"))
    body["entry"][0]["changes"][0]["value"]["contacts"][0]["profile"]["name"] = "Ana \udc00"
    (message,) = parse_body(meta_gateway_offline(), body)
    assert isinstance(message, IncomingMessage)
    assert (message.message_id, message.text, message.push_name) == (
        "wamid.AB\ufffdCD",
        "Tem bolo de pote? \ufffd",
        "Ana \ufffd",
    )
    utf8_safe(message)


def test_meta_escaped_emoji_stays_an_emoji() -> None:
    raw = json.dumps(meta_body(meta_message("text", {"body": "Quero \U0001f600"}))).encode()
    assert b"\\ud83d\\ude00" in raw  # Meta's own escaping of every character outside ASCII
    (message,) = meta_gateway_offline().parse(InboundRequest(body=raw), accept_groups=False, max_text_chars=4000)
    assert isinstance(message, IncomingMessage) and message.text == "Quero \U0001f600"


def meta_gateway_offline() -> MetaGateway:
    """A Meta adapter for parsing only: nothing is sent, so its Graph URL points nowhere."""
    return MetaGateway(
        app_secret=APP_SECRET,
        verify_token=VERIFY_TOKEN,
        access_token=ACCESS_TOKEN,
        phone_number_id=PHONE_NUMBER_ID,
        graph_url="http://127.0.0.1:9",
    )


# The catalog cart of the issue: quantity and price as strings in one item, as numbers in the other.
ORDER = {
    "catalog_id": "123456789",
    "text": "Quero para amanhã",
    "product_items": [
        {"product_retailer_id": "bolo-cenoura", "quantity": "2", "item_price": "48.00", "currency": "BRL"},
        {"product_retailer_id": "pao-queijo-kg", "quantity": 1, "item_price": 39.9, "currency": "BRL"},
    ],
}
ORDER_TEXT = (
    "[pedido pelo catálogo: 2 x bolo-cenoura (R$ 48,00 cada), 1 x pao-queijo-kg (R$ 39,90 cada); total R$ 135,90]"
    "\nQuero para amanhã"
)
NO_ITEMS = "[pedido pelo catálogo recebido, sem itens legíveis]"


def test_meta_catalog_order_is_a_message_in_words() -> None:
    (message,) = parse_meta(meta_body(meta_message("order", ORDER)))
    assert message == IncomingMessage(
        chat=META_CHAT,
        message_id="wamid.HBgNNTUxMTk4NzY1NDMyMRUCABIYFjNFQjA=",
        text=ORDER_TEXT,
        kind="order",
        phone_jid=f"{CUSTOMER}@s.whatsapp.net",
        push_name="Ana Souza",
        timestamp=1763900000,
    )


def item(product: Any = "bolo-cenoura", quantity: Any = 2, price: Any = 48, currency: Any = "BRL") -> dict[str, Any]:
    return {"product_retailer_id": product, "quantity": quantity, "item_price": price, "currency": currency}


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        (
            {"product_items": [item(quantity="3", price="1234.5")]},
            "[pedido pelo catálogo: 3 x bolo-cenoura (R$ 1.234,50 cada); total R$ 3.703,50]",
        ),
        (
            {"product_items": [item(quantity=3, price=1234.5)]},
            "[pedido pelo catálogo: 3 x bolo-cenoura (R$ 1.234,50 cada); total R$ 3.703,50]",
        ),
        (
            {"product_items": [item(price=None), item("pao", 1, "10")]},
            "[pedido pelo catálogo: 2 x bolo-cenoura, 1 x pao (R$ 10,00 cada)]",  # no total without every price
        ),
        (
            {"product_items": [{"product_retailer_id": "bolo-cenoura", "quantity": 2}]},
            "[pedido pelo catálogo: 2 x bolo-cenoura]",
        ),
        (
            {"product_items": [item("cafe-especial", 2, "3.5", "USD")]},
            "[pedido pelo catálogo: 2 x cafe-especial (USD 3.50 cada); total USD 7.00]",
        ),
        (
            {"product_items": [item("cafe", 1, 1500, "usd"), item("bolo", 1, 10, "BRL")]},
            "[pedido pelo catálogo: 1 x cafe (USD 1,500.00 cada), 1 x bolo (R$ 10,00 cada)]",  # no total in two
        ),
        (
            {"product_items": [item(currency=None)]},
            "[pedido pelo catálogo: 2 x bolo-cenoura (48,00 cada); total 96,00]",  # no currency, no symbol
        ),
        ({"product_items": [], "text": "Quero para amanhã"}, f"{NO_ITEMS}\nQuero para amanhã"),
        ({"text": "  "}, NO_ITEMS),
        (
            {"product_items": [item(product=1234, quantity="1.5")]},
            "[pedido pelo catálogo: 1,5 x 1234 (R$ 48,00 cada); total R$ 72,00]",
        ),
    ],
    ids=[
        "strings",
        "numbers",
        "missing_price",
        "price_and_currency_absent",
        "other_currency",
        "mixed_currencies",
        "no_currency",
        "empty_items",
        "no_items_blank_note",
        "numeric_id_fractional_quantity",
    ],
)
def test_meta_order_in_words(order: dict[str, Any], expected: str) -> None:
    assert order_text(order) == expected


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        (["bolo-cenoura", 2], NO_ITEMS),  # a list where the order should be
        (None, NO_ITEMS),
        ({"product_items": {"product_retailer_id": "bolo"}, "text": ["nota"]}, NO_ITEMS),
        ({"product_items": [["bolo", 2], "bolo", 7, None, True]}, NO_ITEMS),
        (
            {
                "product_items": [
                    item(product=None),
                    item(product=True),
                    item(product=["bolo"]),
                    item(product="   "),
                    {"quantity": 1},
                ]
            },
            NO_ITEMS,
        ),
        (
            {"product_items": [item(quantity=[2], price={"valor": 48}, currency=986)]},
            "[pedido pelo catálogo: bolo-cenoura]",
        ),
        (
            {
                "product_items": [
                    item("a", quantity="dois"),
                    item("b", quantity=True),
                    item("c", quantity="NaN"),
                    item("d", quantity="-1"),
                    item("e", quantity="1e999999"),
                    item("f", quantity=0),
                    item("g", quantity="1e-999999"),
                ]
            },
            "[pedido pelo catálogo: "
            + ", ".join(f"{p} (R$ 48,00 cada)" for p in "abcdefg")
            + "]",  # listed without a quantity, so with no total
        ),
        (
            {"product_items": [item(price="48,00"), item("pao", 1, "Infinity"), item("x", 1, "1" * 500)]},
            "[pedido pelo catálogo: 2 x bolo-cenoura, 1 x pao, 1 x x]",
        ),
        (
            {"product_items": [item(currency="R$"), item(currency="REAIS")]},
            "[pedido pelo catálogo: 2 x bolo-cenoura (48,00 cada), 2 x bolo-cenoura (48,00 cada); total 192,00]",
        ),
    ],
    ids=[
        "order_is_a_list",
        "order_is_null",
        "items_not_a_list",
        "items_not_objects",
        "no_readable_product_id",
        "fields_of_the_wrong_type",
        "garbled_quantities",
        "garbled_prices",
        "garbled_currencies",
    ],
)
def test_meta_order_never_raises_and_skips_what_it_cannot_read(order: Any, expected: str) -> None:
    assert order_text(order) == expected


def test_meta_long_order_lists_30_items_and_counts_the_rest() -> None:
    items = [item(f"doce-{n}", 1, 2) for n in range(32)]
    text = order_text({"product_items": items, "text": "Para a festa"})
    assert text.startswith("[pedido pelo catálogo: 1 x doce-0 (R$ 2,00 cada), ")
    assert "doce-29 (R$ 2,00 cada), e mais 2 itens; total R$ 64,00]\nPara a festa" in text
    assert "doce-30" not in text


def test_meta_order_with_garbage_is_still_answered() -> None:
    (message,) = parse_meta(meta_body(meta_message("order", {"product_items": "?"})))
    assert isinstance(message, IncomingMessage)
    assert (message.kind, message.text) == ("order", NO_ITEMS)
    (message,) = parse_meta(meta_body({**meta_message("order", {}), "order": [1, 2]}))
    assert isinstance(message, IncomingMessage) and message.text == NO_ITEMS


def sign_meta(body: bytes, secret: str = APP_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_meta_signature() -> None:
    body = json.dumps(meta_body(meta_message("text", {"body": "Oi"}))).encode()
    assert signature_is_valid(body, sign_meta(body), APP_SECRET)
    assert not signature_is_valid(body, "", APP_SECRET)
    assert not signature_is_valid(body, sign_meta(body, "outro-segredo"), APP_SECRET)
    assert not signature_is_valid(body.replace(b"Oi", b"Ol"), sign_meta(body), APP_SECRET)
    assert not signature_is_valid(body, sign_meta(body).replace("sha256=", "sha1="), APP_SECRET)
    assert not signature_is_valid(body, sign_meta(body), "")


def test_meta_handshake() -> None:
    good = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1158201444"}
    assert verify_handshake(good, VERIFY_TOKEN) == "1158201444"
    assert verify_handshake({**good, "hub.verify_token": "errado"}, VERIFY_TOKEN) is None
    assert verify_handshake({**good, "hub.mode": "unsubscribe"}, VERIFY_TOKEN) is None
    assert verify_handshake(good, "") is None


class FakeGraph(FakeServer):
    def default_answer(self, recorded: Recorded) -> Any:
        if "status" in recorded.json:  # read receipt / typing indicator
            return {"success": True}
        to = recorded.json.get("to", "")
        return {
            "messaging_product": "whatsapp",
            "contacts": [{"input": to, "wa_id": to}],
            "messages": [{"id": f"wamid.OUT{len(self.requests)}"}],
        }


@pytest.fixture
def graph() -> Iterator[FakeGraph]:
    fake = FakeGraph()
    yield fake
    fake.close()


def meta_gateway(graph: FakeGraph, **overrides: Any) -> MetaGateway:
    values: dict[str, Any] = {
        "app_secret": APP_SECRET,
        "verify_token": VERIFY_TOKEN,
        "access_token": ACCESS_TOKEN,
        "phone_number_id": PHONE_NUMBER_ID,
        "graph_url": graph.url,
        "api_version": "v23.0",
        "max_retries": 1,
    }
    values.update(overrides)
    return MetaGateway(**values)


META_CHAT = ChatRef(gateway="meta", instance=PHONE_NUMBER_ID, chat_id=CUSTOMER)


def test_meta_send_text(graph: FakeGraph) -> None:
    assert meta_gateway(graph).send_text(META_CHAT, "Olá, Ana!") == "wamid.OUT1"
    (request,) = graph.received()
    assert request.path == f"/v23.0/{PHONE_NUMBER_ID}/messages"
    assert request.headers["authorization"] == f"Bearer {ACCESS_TOKEN}"
    assert request.json == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": CUSTOMER,
        "type": "text",
        "text": {"preview_url": False, "body": "Olá, Ana!"},
    }


def graph_error(code: int) -> dict[str, Any]:
    return {"error": {"message": "erro", "type": "OAuthException", "code": code, "fbtrace_id": "Abc"}}


def test_meta_outside_window_is_permanent_and_not_retried(graph: FakeGraph) -> None:
    graph.queue(Canned(400, graph_error(131047)))
    with pytest.raises(SendError, match="24 h") as info:
        meta_gateway(graph).send_text(META_CHAT, "Oi")
    assert not info.value.transient
    assert len(graph.received()) == 1


def test_meta_rate_limit_and_token_errors_are_transient(graph: FakeGraph) -> None:
    graph.queue(Canned(400, graph_error(130429)), Canned(401, graph_error(190)))
    with pytest.raises(SendError, match="rate limit") as rate:
        meta_gateway(graph).send_text(META_CHAT, "Oi")
    with pytest.raises(SendError, match="META_ACCESS_TOKEN") as token:
        meta_gateway(graph).send_text(META_CHAT, "Oi")
    assert rate.value.transient and token.value.transient
    assert (rate.value.rate_limit, token.value.rate_limit) == ("number", "")  # the worker slows the number down


def test_meta_pair_rate_limit_slows_down_only_that_customer(graph: FakeGraph) -> None:
    graph.queue(Canned(400, graph_error(131056)))
    with pytest.raises(SendError, match="pair rate limit") as pair:
        meta_gateway(graph).send_text(META_CHAT, "Oi")
    assert (pair.value.transient, pair.value.rate_limit, pair.value.retry_after) == (True, "customer", None)


def test_meta_500_is_retried(graph: FakeGraph) -> None:
    graph.queue(Canned(500, graph_error(131000)))
    assert meta_gateway(graph).send_text(META_CHAT, "Oi") == "wamid.OUT2"
    assert len(graph.received()) == 2


TYPING_MS = 150
TYPING_INDICATOR = {
    "messaging_product": "whatsapp",
    "status": "read",
    "message_id": "wamid.IN1",
    "typing_indicator": {"type": "text"},
}


def test_meta_typing_indicator_then_the_message_after_typing_ms(graph: FakeGraph) -> None:
    assert meta_gateway(graph).send_text(META_CHAT, "Oi", typing_ms=TYPING_MS, reply_to="wamid.IN1") == "wamid.OUT2"
    indicator, message = graph.received()
    assert indicator.path == message.path == f"/v23.0/{PHONE_NUMBER_ID}/messages"
    assert indicator.headers["authorization"] == f"Bearer {ACCESS_TOKEN}"
    assert indicator.json == TYPING_INDICATOR
    assert message.json["text"] == {"preview_url": False, "body": "Oi"}
    assert message.at - indicator.at >= TYPING_MS / 1000


def test_meta_without_reply_to_only_waits(graph: FakeGraph) -> None:
    started = time.time()
    meta_gateway(graph).send_text(META_CHAT, "Oi", typing_ms=TYPING_MS)
    (message,) = graph.received()
    assert message.json["type"] == "text"
    assert message.at - started >= TYPING_MS / 1000


def test_meta_no_typing_sends_at_once(graph: FakeGraph) -> None:
    meta_gateway(graph).send_text(META_CHAT, "Oi", reply_to="wamid.IN1")
    (message,) = graph.received()
    assert message.json["type"] == "text"


@pytest.mark.parametrize(
    "refusals",
    [[Canned(400, graph_error(100))], [Canned(500, graph_error(131000))] * 2],  # 500 is retried once first
    ids=["400", "500"],
)
def test_meta_failed_typing_indicator_does_not_stop_the_send(
    graph: FakeGraph, refusals: list[Canned], caplog: pytest.LogCaptureFixture
) -> None:
    graph.queue(*refusals)
    with caplog.at_level(logging.INFO, logger="gateways.meta"):
        message_id = meta_gateway(graph).send_text(META_CHAT, "Oi", typing_ms=TYPING_MS, reply_to="wamid.IN1")
    *indicators, message = graph.received()
    assert [r.json for r in indicators] == [TYPING_INDICATOR] * len(refusals)
    assert message.json["text"]["body"] == "Oi" and message_id == f"wamid.OUT{len(refusals) + 1}"
    assert message.at - indicators[-1].at >= TYPING_MS / 1000
    (record,) = [r for r in caplog.records if "typing indicator failed" in r.getMessage()]
    assert record.levelno == logging.INFO
    assert "5511*****4321" in record.getMessage() and CUSTOMER not in record.getMessage()


def test_meta_mark_read_only_when_enabled(graph: FakeGraph) -> None:
    meta_gateway(graph).mark_read(META_CHAT, "wamid.IN1")
    assert graph.received() == []
    meta_gateway(graph, mark_as_read=True).mark_read(META_CHAT, "wamid.IN1")
    (request,) = graph.received()
    assert request.json == {"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.IN1"}


# ----- Twilio -----------------------------------------------------------------------------------------------


def twilio_signature(url: str, form: dict[str, str], token: str = TWILIO_TOKEN) -> str:
    payload = url + "".join(key + form[key] for key in sorted(form))
    return base64.b64encode(hmac.new(token.encode(), payload.encode(), hashlib.sha1).digest()).decode()


def twilio_gateway(api_url: str = "http://127.0.0.1:9", public_url: str = PUBLIC_URL + "/") -> TwilioGateway:
    return TwilioGateway(
        account_sid=TWILIO_SID,
        auth_token=TWILIO_TOKEN,
        whatsapp_from=TWILIO_FROM,
        public_url=public_url,
        api_url=api_url,
        max_retries=1,
    )


def twilio_request(form: dict[str, str], signature: str, query: str = "") -> InboundRequest:
    return InboundRequest(
        path="/webhook/twilio",
        query_string=query,
        headers={"x-twilio-signature": signature},
        body=urlencode(form).encode(),
        form=form,
    )


def test_twilio_signature() -> None:
    gateway, form = twilio_gateway(), twilio_form()
    url = f"{PUBLIC_URL}/webhook/twilio"
    gateway.verify(twilio_request(form, twilio_signature(url, form)))
    with pytest.raises(AuthError):
        gateway.verify(twilio_request(form, ""))
    with pytest.raises(AuthError):
        gateway.verify(twilio_request(form, twilio_signature(url, form, "outro-token")))
    with pytest.raises(AuthError):
        gateway.verify(twilio_request({**form, "Body": "alterado"}, twilio_signature(url, form)))
    query = "token=abc&loja=1"
    gateway.verify(twilio_request(form, twilio_signature(f"{url}?{query}", form), query))
    with pytest.raises(AuthError):
        gateway.verify(twilio_request(form, twilio_signature(url, form), query))


@pytest.mark.parametrize(
    ("public_url", "signed_for", "accepted"),
    [
        ("https://bot.example.com", "https://bot.example.com", True),
        ("https://bot.example.com", "https://bot.example.com:443", True),
        ("https://bot.example.com", "https://bot.example.com:8443", False),
        ("https://bot.example.com", "https://bot.example.com:80", False),
        ("https://bot.example.com", "http://bot.example.com", False),
        ("https://bot.example.com", "https://outro.example.com:443", False),
        ("https://bot.example.com:443", "https://bot.example.com:443", True),
        ("https://bot.example.com:443", "https://bot.example.com", True),
        ("https://bot.example.com:443", "https://bot.example.com:8443", False),
        ("https://bot.example.com:8443", "https://bot.example.com:8443", True),
        # Twilio's validator strips any port; a port that is not the default one names another server
        ("https://bot.example.com:8443", "https://bot.example.com", False),
        ("https://bot.example.com:8443", "https://bot.example.com:443", False),
        ("http://bot.example.com", "http://bot.example.com:80", True),
        ("http://bot.example.com:80", "http://bot.example.com", True),
        ("http://bot.example.com", "http://bot.example.com:443", False),
    ],
)
@pytest.mark.parametrize("query", ["", "token=abc&loja=1"], ids=["no_query", "query"])
def test_twilio_signature_over_either_default_port_form(
    public_url: str, signed_for: str, accepted: bool, query: str
) -> None:
    gateway, form = twilio_gateway(public_url=public_url), twilio_form()
    url = f"{signed_for}/webhook/twilio" + (f"?{query}" if query else "")
    request = twilio_request(form, twilio_signature(url, form), query)
    if accepted:
        gateway.verify(request)
    else:
        with pytest.raises(AuthError):
            gateway.verify(request)


def test_twilio_port_form_still_signs_path_query_and_fields() -> None:
    gateway, form = twilio_gateway(), twilio_form()
    with_port = "https://bot.example.com:443/webhook/twilio"
    query = "loja=centro"
    with pytest.raises(AuthError):  # the query string left out of what was signed
        gateway.verify(twilio_request(form, twilio_signature(with_port, form), query))
    with pytest.raises(AuthError):
        gateway.verify(twilio_request(form, twilio_signature("https://bot.example.com:443/webhook/outra", form)))
    with pytest.raises(AuthError):
        gateway.verify(twilio_request({**form, "Body": "alterado"}, twilio_signature(with_port, form)))
    with pytest.raises(AuthError):
        gateway.verify(twilio_request(form, twilio_signature(with_port, form, "outro-token")))


@pytest.mark.parametrize(
    ("url", "forms"),
    [
        ("https://h.example/w?a=1", ["https://h.example/w?a=1", "https://h.example:443/w?a=1"]),
        ("https://h.example:443/w", ["https://h.example:443/w", "https://h.example/w"]),
        ("http://h.example/w", ["http://h.example/w", "http://h.example:80/w"]),
        ("https://[2001:db8::1]:443/w", ["https://[2001:db8::1]:443/w", "https://[2001:db8::1]/w"]),
        ("https://h.example:8443/w", ["https://h.example:8443/w"]),
        ("https://h.example:porta/w", ["https://h.example:porta/w"]),
        ("ftp://h.example/w", ["ftp://h.example/w"]),
    ],
)
def test_twilio_url_forms(url: str, forms: list[str]) -> None:
    assert url_forms(url) == forms


def test_twilio_lone_surrogates_become_replacement_characters() -> None:
    form = twilio_form(MessageSid="SM11\ud800", Body="Oi \ud83d", ProfileName="Bruno \udc00")
    for parsed in (
        parse_twilio(form),
        twilio_gateway().parse(InboundRequest(form=form), accept_groups=False, max_text_chars=4000),
    ):
        (message,) = parsed
        assert isinstance(message, IncomingMessage)
        assert (message.message_id, message.text, message.push_name) == ("SM11\ufffd", "Oi \ufffd", "Bruno \ufffd")
        utf8_safe(message)
    assert form["Body"] == "Oi \ud83d"  # the request's own form is left as it came: the signature covers it
    (pair,) = parse_twilio(twilio_form(Body="Oi \ud83d\ude00"))  # both halves, as a lax decoder leaves them
    assert isinstance(pair, IncomingMessage) and pair.text == "Oi \U0001f600"
    (status,) = parse_twilio({"MessageSid": "SM2\udfff", "MessageStatus": "read\ud800"})
    assert status == IgnoredEvent(reason="status:read\ufffd", message_id="SM2\ufffd")


def test_twilio_lone_surrogates_in_a_forged_form_are_refused_not_a_crash() -> None:
    form = twilio_form(Body="Oi \ud800")
    request = InboundRequest(path="/webhook/twilio", headers={"x-twilio-signature": "AAAA"}, body=b"-", form=form)
    with pytest.raises(AuthError):
        twilio_gateway().verify(request)


def test_twilio_message_is_normalized() -> None:
    (message,) = parse_twilio(twilio_form())
    assert message == IncomingMessage(
        chat=ChatRef(gateway="twilio", instance=TWILIO_FROM, chat_id=f"whatsapp:+{CUSTOMER}"),
        message_id="SM11111111111111111111111111111111",
        text="Oi, vocês entregam em Campinas?",
        kind="text",
        phone_jid=f"{CUSTOMER}@s.whatsapp.net",
        push_name="Bruno Lima",
    )


def test_twilio_button_media_and_status_callbacks() -> None:
    (button,) = parse_twilio(twilio_form(ButtonText="Sim, quero", ButtonPayload="SIM", Body="Sim, quero"))
    assert isinstance(button, IncomingMessage) and button.kind == "button_reply"
    media = twilio_form(Body="", NumMedia="1", MediaContentType0="audio/ogg", MediaUrl0="https://api.twilio.com/x")
    (audio,) = parse_twilio(media)
    assert isinstance(audio, IncomingMessage) and (audio.kind, audio.text) == ("audio", "")
    assert audio.media == MediaRef(kind="audio", mime="audio/ogg", source={"url": "https://api.twilio.com/x"})
    with_caption = twilio_form(Body="Esse aqui", NumMedia="1", MediaContentType0="image/jpeg", MediaUrl0="https://m/1")
    (caption,) = parse_twilio(with_caption)
    assert isinstance(caption, IncomingMessage) and (caption.kind, caption.text) == ("image", "Esse aqui")
    place = twilio_form(Body="", Latitude="-23.5", Longitude="-46.6", Address="Av. Paulista, 1000")
    (location,) = parse_twilio(place)
    assert isinstance(location, IncomingMessage) and location.media == MediaRef(
        kind="location", detail="Av. Paulista, 1000"
    )
    status = {"MessageSid": "SM2", "MessageStatus": "delivered", "From": TWILIO_FROM, "To": f"whatsapp:+{CUSTOMER}"}
    assert parse_twilio(status) == [IgnoredEvent(reason="status:delivered", message_id="SM2")]
    sms = twilio_form(From=f"+{CUSTOMER}")
    assert [e.reason for e in parse_twilio(sms)] == ["not_whatsapp"]  # type: ignore[union-attr]


class FakeTwilio(FakeServer):
    def default_answer(self, recorded: Recorded) -> Any:
        return {"sid": f"SM{len(self.requests):032d}", "status": "queued"}


@pytest.fixture
def twilio_api() -> Iterator[FakeTwilio]:
    fake = FakeTwilio()
    yield fake
    fake.close()


TWILIO_CHAT = ChatRef(gateway="twilio", instance=TWILIO_FROM, chat_id=f"whatsapp:+{CUSTOMER}")


def test_twilio_send_text(twilio_api: FakeTwilio) -> None:
    assert twilio_gateway(twilio_api.url).send_text(TWILIO_CHAT, "Entregamos sim!").startswith("SM")
    (request,) = twilio_api.received()
    assert request.path == f"/2010-04-01/Accounts/{TWILIO_SID}/Messages.json"
    expected_auth = base64.b64encode(f"{TWILIO_SID}:{TWILIO_TOKEN}".encode()).decode()
    assert request.headers["authorization"] == f"Basic {expected_auth}"
    assert request.body.decode() == urlencode(
        {"From": TWILIO_FROM, "To": f"whatsapp:+{CUSTOMER}", "Body": "Entregamos sim!"}
    )


def test_twilio_waits_typing_ms_before_sending(twilio_api: FakeTwilio) -> None:
    started = time.time()
    twilio_gateway(twilio_api.url).send_text(TWILIO_CHAT, "Entregamos sim!", typing_ms=TYPING_MS, reply_to="SM1")
    (request,) = twilio_api.received()
    assert request.at - started >= TYPING_MS / 1000
    assert request.body.decode() == urlencode(
        {"From": TWILIO_FROM, "To": f"whatsapp:+{CUSTOMER}", "Body": "Entregamos sim!"}
    )


def test_twilio_errors(twilio_api: FakeTwilio) -> None:
    twilio_api.queue(Canned(400, {"code": 21211, "message": "Invalid 'To' Phone Number"}), Canned(429, {"code": 20429}))
    with pytest.raises(SendError) as invalid:
        twilio_gateway(twilio_api.url).send_text(TWILIO_CHAT, "Oi")
    with pytest.raises(SendError) as limited:
        twilio_gateway(twilio_api.url).send_text(TWILIO_CHAT, "Oi")
    assert not invalid.value.transient
    assert limited.value.transient
    assert (invalid.value.rate_limit, limited.value.rate_limit) == ("", "number")
    assert len(twilio_api.received()) == 2


# ----- Mega -------------------------------------------------------------------------------------------------


def test_mega_text_and_ignored_shapes() -> None:
    (message,) = parse_mega(mega_body())
    assert message == IncomingMessage(
        chat=ChatRef(gateway="mega", instance="megastart-TESTE01", chat_id=f"{CUSTOMER}@s.whatsapp.net"),
        message_id="3EB0AAAABBBBCCCCDDDD01",
        text="Bom dia, qual o horário de hoje?",
        kind="text",
        phone_jid=f"{CUSTOMER}@s.whatsapp.net",
        push_name="Carla",
        timestamp=1763900000,
    )
    from_me = mega_body(key={"remoteJid": f"{CUSTOMER}@s.whatsapp.net", "fromMe": True, "id": "X1"})
    group = mega_body(
        key={
            "remoteJid": "120363000000000001@g.us",
            "fromMe": False,
            "id": "X2",
            "participant": f"{CUSTOMER}@s.whatsapp.net",
        }
    )
    audio = mega_body(
        messageType="audioMessage", message={"audioMessage": {"mimetype": "audio/ogg; codecs=opus", "ptt": True}}
    )
    ack = {"instance_key": "megastart-TESTE01", "messageType": "message.ack", "id": "X3"}
    first, second, voice, fourth = parse_mega([from_me, group, audio, ack])
    assert isinstance(first, IncomingMessage) and first.from_me
    reasons = [e.reason for e in (second, fourth)]  # type: ignore[union-attr]
    assert reasons == ["group", "event:message.ack"]
    assert isinstance(voice, IncomingMessage) and voice.media is not None
    assert (voice.kind, voice.media.voice, voice.media.mime) == ("audio", True, "audio/ogg; codecs=opus")
    assert not voice.from_me
    (accepted,) = parse_mega(group, accept_groups=True)
    assert isinstance(accepted, IncomingMessage) and not accepted.from_me


def test_mega_business_side_messages() -> None:
    """What the business sent in a 1:1 chat is handed on marked `from_me`; in a group it stays set aside."""
    typed = mega_body(
        key={"remoteJid": f"{CUSTOMER}@s.whatsapp.net", "fromMe": True, "id": "3EB0AAAABBBBCCCCDDDD02"},
        pushName="Loja Mega",
        message={"conversation": "Bom dia! Hoje abrimos às 9h."},
    )
    group = mega_body(key={"remoteJid": "120363000000000001@g.us", "fromMe": True, "id": "X4"})
    (message,) = parse_mega(typed)
    assert message == IncomingMessage(
        chat=ChatRef(gateway="mega", instance="megastart-TESTE01", chat_id=f"{CUSTOMER}@s.whatsapp.net"),
        message_id="3EB0AAAABBBBCCCCDDDD02",
        text="Bom dia! Hoje abrimos às 9h.",
        kind="text",
        phone_jid=f"{CUSTOMER}@s.whatsapp.net",
        push_name="",  # the business's own name, not the customer's
        timestamp=1763900000,
        from_me=True,
    )
    assert parse_mega(group, accept_groups=True) == [
        IgnoredEvent(
            reason="from_me",
            message_id="X4",
            chat=ChatRef(gateway="mega", instance="megastart-TESTE01", chat_id="120363000000000001@g.us"),
        )
    ]


def test_mega_lone_surrogates_become_replacement_characters() -> None:
    body = mega_body(
        key={"remoteJid": f"{CUSTOMER}@s.whatsapp.net", "fromMe": False, "id": "3EB0\udbffAAAA"},
        pushName="Carla \ud83d",
        message={"conversation": "Bom dia \udc00 tem pão \U0001f600?"},
    )
    gateway = MegaGateway(
        base_url="http://127.0.0.1:9",
        instance_id="megastart-TESTE01",
        token="mega-token",
        shared_secret=SharedSecretVerifier(),
    )
    (message,) = parse_body(gateway, body)
    assert isinstance(message, IncomingMessage)
    assert (message.message_id, message.text, message.push_name) == (
        "3EB0\ufffdAAAA",
        "Bom dia \ufffd tem pão \U0001f600?",
        "Carla \ufffd",
    )
    utf8_safe(message)


class FakeMega(FakeServer):
    def default_answer(self, recorded: Recorded) -> Any:
        return {"error": False, "message": "Message sent", "key": {"id": f"3EB0OUT{len(self.requests)}"}}


def mega_gateway(fake: FakeMega) -> MegaGateway:
    """The Mega adapter pointed at the fake, one attempt per send."""
    return MegaGateway(
        base_url=fake.url,
        instance_id="megastart-TESTE01",
        token="mega-token",
        shared_secret=SharedSecretVerifier(),
        max_retries=1,
    )


def test_mega_send_text() -> None:
    fake = FakeMega()
    try:
        gateway = mega_gateway(fake)
        chat = ChatRef(gateway="mega", instance="megastart-TESTE01", chat_id=f"{CUSTOMER}@s.whatsapp.net")
        assert gateway.send_text(chat, "Abrimos às 9h.") == "3EB0OUT1"
        (request,) = fake.received()
        assert request.path == "/rest/sendMessage/megastart-TESTE01/text"
        assert request.headers["authorization"] == "Bearer mega-token"
        assert request.json == {"messageData": {"to": f"{CUSTOMER}@s.whatsapp.net", "text": "Abrimos às 9h."}}
    finally:
        fake.close()


def test_mega_waits_typing_ms_before_sending() -> None:
    fake = FakeMega()
    try:
        gateway = mega_gateway(fake)
        chat = ChatRef(gateway="mega", instance="megastart-TESTE01", chat_id=f"{CUSTOMER}@s.whatsapp.net")
        started = time.time()
        gateway.send_text(chat, "Abrimos às 9h.", typing_ms=TYPING_MS, reply_to="3EB0IN")
        (request,) = fake.received()
        assert request.at - started >= TYPING_MS / 1000
        assert request.json == {"messageData": {"to": f"{CUSTOMER}@s.whatsapp.net", "text": "Abrimos às 9h."}}
    finally:
        fake.close()


# ----- split_text -------------------------------------------------------------------------------------------


def test_split_text_prefers_paragraphs_then_sentences_then_words() -> None:
    paragraph = "Primeiro parágrafo. " * 10
    text = paragraph.strip() + "\n\n" + paragraph.strip()
    assert split_text(text, 250) == [paragraph.strip(), paragraph.strip()]
    sentences = "Frase número um. Frase número dois. Frase número três."
    assert split_text(sentences, 40) == ["Frase número um. Frase número dois.", "Frase número três."]
    assert split_text("palavra " * 5, 20) == ["palavra palavra", "palavra palavra", "palavra"]
    assert split_text("x" * 25, 10) == ["x" * 10, "x" * 10, "x" * 5]


@pytest.mark.parametrize("limit", [1600, 4096])
def test_split_text_keeps_everything_within_the_limit(limit: int) -> None:
    text = "\n".join(f"Item {i}: camiseta tamanho M, cor azul, R$ {i},90. Entrega em 3 dias." for i in range(300))
    parts = split_text(text, limit)
    assert all(len(part) <= limit for part in parts)
    assert "".join(parts).replace("\n", "").replace(" ", "") == text.replace("\n", "").replace(" ", "")
    assert split_text("curto", limit) == ["curto"]


# ----- the app's routes -------------------------------------------------------------------------------------


@pytest.fixture
def app_settings() -> dict[str, object]:
    """Every gateway on."""
    return dict(
        meta_app_secret=APP_SECRET,
        meta_verify_token=VERIFY_TOKEN,
        meta_access_token=ACCESS_TOKEN,
        meta_phone_number_id=PHONE_NUMBER_ID,
        twilio_account_sid=TWILIO_SID,
        twilio_auth_token=TWILIO_TOKEN,
        twilio_whatsapp_from=TWILIO_FROM,
        twilio_public_url=PUBLIC_URL,
        mega_api_base_url="http://127.0.0.1:9",
        mega_instance_id="megastart-TESTE01",
        mega_api_token="mega-token",
        webhook_token="segredo-webhook",
    )


def due_chats(redis_client: redis.Redis) -> list[str]:
    return redis_client.zrange("wa_assistant:due", 0, -1)


def test_meta_routes(client: Any, redis_client: redis.Redis) -> None:
    query = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "987654"}
    answer = client.get("/webhook/meta", query_string=query)
    assert (answer.status_code, answer.get_data(as_text=True)) == (200, "987654")
    assert client.get("/webhook/meta", query_string={**query, "hub.verify_token": "x"}).status_code == 403
    body = json.dumps(meta_body(meta_message("text", {"body": "Oi"}))).encode()
    headers = {"Content-Type": "application/json"}
    forged = client.post("/webhook/meta", data=body, headers={**headers, "X-Hub-Signature-256": sign_meta(body, "x")})
    assert forged.status_code == 401
    assert client.post("/webhook/meta", data=body, headers=headers).status_code == 401
    assert due_chats(redis_client) == []
    signed = client.post("/webhook/meta", data=body, headers={**headers, "X-Hub-Signature-256": sign_meta(body)})
    assert signed.status_code == 200 and signed.json["buffered"] == 1
    assert due_chats(redis_client) == [f"meta:{PHONE_NUMBER_ID}:{CUSTOMER}"]


def pending_records(redis_client: redis.Redis, chat_key: str) -> list[dict[str, Any]]:
    return [json.loads(record) for record in redis_client.lrange(f"wa_assistant:chat:{chat_key}:pending", 0, -1)]


def post_meta(client: Any, body: dict[str, Any]) -> Any:
    raw = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sign_meta(raw)}
    return client.post("/webhook/meta", data=raw, headers=headers)


def test_meta_route_buffers_lone_surrogates_instead_of_failing(client: Any, redis_client: redis.Redis) -> None:
    """Redis cannot store a lone surrogate: before the parsers replaced them this request answered 500."""
    body = meta_body(meta_message("text", {"body": "Oi \ud83d"}, msg_id="wamid.\ud800"))
    answer = post_meta(client, body)
    assert answer.status_code == 200 and answer.json["buffered"] == 1
    (record,) = pending_records(redis_client, f"meta:{PHONE_NUMBER_ID}:{CUSTOMER}")
    assert (record["id"], record["text"], record["name"]) == ("wamid.\ufffd", "Oi \ufffd", "Ana Souza")


def test_meta_route_buffers_a_catalog_order(client: Any, redis_client: redis.Redis) -> None:
    answer = post_meta(client, meta_body(meta_message("order", ORDER)))
    assert answer.status_code == 200 and answer.json["buffered"] == 1
    (record,) = pending_records(redis_client, f"meta:{PHONE_NUMBER_ID}:{CUSTOMER}")
    assert (record["kind"], record["text"]) == ("order", ORDER_TEXT)


def test_mega_and_evolution_routes_buffer_lone_surrogates(client: Any, redis_client: redis.Redis) -> None:
    mega = mega_body(pushName="Carla \udc00", message={"conversation": "Oi \ud83d"})
    answer = client.post("/webhook/mega?token=segredo-webhook", data=json.dumps(mega), content_type="application/json")
    assert answer.status_code == 200 and answer.json["buffered"] == 1
    (record,) = pending_records(redis_client, f"mega:megastart-TESTE01:{CUSTOMER}@s.whatsapp.net")
    assert (record["text"], record["name"]) == ("Oi \ufffd", "Carla \ufffd")
    evolution = {
        "event": "messages.upsert",
        "instance": "loja-centro",
        "data": {
            "key": {"remoteJid": f"{CUSTOMER}@s.whatsapp.net", "fromMe": False, "id": "3EB0\ud800"},
            "pushName": "Dora \ud83d",
            "message": {"conversation": "Tem \udfff entrega?"},
            "messageTimestamp": 1763900000,
        },
    }
    answer = client.post("/webhook?token=segredo-webhook", data=json.dumps(evolution), content_type="application/json")
    assert answer.status_code == 200 and answer.json["buffered"] == 1
    (record,) = pending_records(redis_client, f"evolution:loja-centro:{CUSTOMER}@s.whatsapp.net")
    assert (record["id"], record["text"], record["name"]) == ("3EB0\ufffd", "Tem \ufffd entrega?", "Dora \ufffd")


def test_twilio_route_accepts_a_signature_over_the_default_port(client: Any, redis_client: redis.Redis) -> None:
    form = twilio_form()
    signature = twilio_signature("https://bot.example.com:443/webhook/twilio", form)
    assert client.post("/webhook/twilio", data=form, headers={"X-Twilio-Signature": signature}).status_code == 200
    other_port = twilio_signature("https://bot.example.com:8443/webhook/twilio", form)
    assert client.post("/webhook/twilio", data=form, headers={"X-Twilio-Signature": other_port}).status_code == 401
    assert due_chats(redis_client) == [f"twilio:whatsapp%3A%2B14155550100:whatsapp:+{CUSTOMER}"]


def test_twilio_route_answers_empty_twiml(client: Any, redis_client: redis.Redis) -> None:
    form = twilio_form()
    signature = twilio_signature(f"{PUBLIC_URL}/webhook/twilio", form)
    forged = client.post("/webhook/twilio", data=form, headers={"X-Twilio-Signature": signature[:-2] + "AA"})
    assert forged.status_code == 401 and due_chats(redis_client) == []
    answer = client.post("/webhook/twilio", data=form, headers={"X-Twilio-Signature": signature})
    assert answer.status_code == 200
    assert answer.content_type.startswith("text/xml")
    assert answer.get_data(as_text=True).endswith("<Response/>")
    assert due_chats(redis_client) == [f"twilio:whatsapp%3A%2B14155550100:whatsapp:+{CUSTOMER}"]


def test_mega_route_needs_the_webhook_token(client: Any, redis_client: redis.Redis) -> None:
    assert client.post("/webhook/mega", json=mega_body()).status_code == 401
    assert due_chats(redis_client) == []
    assert client.post("/webhook/mega?token=segredo-webhook", json=mega_body()).status_code == 200
    assert due_chats(redis_client) == [f"mega:megastart-TESTE01:{CUSTOMER}@s.whatsapp.net"]


def test_every_adapter_is_a_whole_gateway_and_the_shared_secret_reaches_evolution_and_mega(client: Any) -> None:
    gateways = client.application.extensions["assistant"].gateways
    assert set(gateways) >= {"evolution", "meta", "mega", "twilio"}
    for name, gateway in gateways.items():
        assert isinstance(gateway, Gateway) and gateway.name == name and gateway.max_text_chars > 0
    bearer = InboundRequest(headers={"authorization": "Bearer segredo-webhook"})
    query = InboundRequest(query={"token": "segredo-webhook"})
    for name in ("evolution", "mega"):
        gateways[name].verify(bearer)
        gateways[name].verify(query)
        with pytest.raises(AuthError) as refused:
            gateways[name].verify(InboundRequest(headers={"authorization": "Bearer errado"}))
        assert not isinstance(refused.value, SignatureError)  # counted as auth_failures
    for name in ("meta", "twilio"):
        with pytest.raises(SignatureError):  # counted as signature_failures
            gateways[name].verify(bearer)
    handshake = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "42"}
    assert {name: gateway.handshake(handshake) for name, gateway in gateways.items() if name != "simulator"} == {
        "evolution": None,
        "meta": "42",
        "mega": None,
        "twilio": None,
    }
    chat = ChatRef(gateway="meta", instance=PHONE_NUMBER_ID, chat_id=CUSTOMER)
    assert gateways["meta"].find_sent(chat, "Oi", since=time.time()) is None  # the Cloud API cannot tell
    assert gateways["mega"].find_sent(chat, "Oi", since=time.time()) is None


def test_unconfigured_gateway_answers_404(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    from webhook import create_app

    client = create_app(make_settings(redis_uri=redis_server.url), start_worker=False).test_client()
    assert client.post("/webhook/meta", json={}).status_code == 404
    assert client.get("/webhook/meta").status_code == 404
    assert client.post("/webhook/twilio", data={"Body": "oi"}).status_code == 404


def test_twilio_find_sent_lists_our_messages_to_the_chat_since_a_date(twilio_api: FakeTwilio) -> None:
    gateway = twilio_gateway(twilio_api.url)
    listed = {"messages": [{"body": "Outra coisa", "status": "sent"}, {"body": " Custa R$ 48. ", "status": "sent"}]}
    twilio_api.queue(Canned(200, listed), Canned(200, {"messages": []}), Canned(500, {"message": "boom"}))
    since = datetime(2026, 12, 4, 23, 59, 30, tzinfo=UTC).timestamp()
    assert gateway.find_sent(TWILIO_CHAT, "Custa R$ 48.", since=since) is True
    assert gateway.find_sent(TWILIO_CHAT, "Custa R$ 48.", since=since) is False
    assert gateway.find_sent(TWILIO_CHAT, "Custa R$ 48.", since=since) is None  # cannot tell: send again
    request = twilio_api.received()[0]
    path, _, query = request.path.partition("?")
    assert (request.method, path) == ("GET", f"/2010-04-01/Accounts/{TWILIO_SID}/Messages.json")
    assert parse_qs(query) == {
        "To": [f"whatsapp:+{CUSTOMER}"],
        "From": [TWILIO_FROM],
        "DateSent>": ["2026-12-04"],  # a date: Twilio's filter takes no time of day
        "PageSize": ["50"],
    }


def test_meta_odd_types_found_by_fuzzing_do_not_raise() -> None:
    """Each of these answered 500 before (AttributeError / OverflowError in the parser)."""
    value = {"metadata": {"phone_number_id": "1065403"}, "contacts": [{"wa_id": "5511900", "profile": "texto"}]}
    text = {"from": "5511900", "id": "wamid.A", "type": "text", "text": {"body": "Oi"}, "timestamp": float("-inf")}
    card = {"from": "5511900", "id": "wamid.B", "type": "contacts", "contacts": [{"name": "0"}]}
    payload = {"entry": [{"changes": [{"field": "messages", "value": {**value, "messages": [text, card]}}]}]}
    first, second = parse_meta(json.loads(json.dumps(payload)))
    assert isinstance(first, IncomingMessage) and (first.text, first.timestamp, first.push_name) == ("Oi", 0, "")
    assert isinstance(second, IncomingMessage) and second.kind == "contact"


# --- the simulator adapter ---------------------------------------------------------------------------------------


@pytest.fixture
def simulator(redis_server: RedisServer, redis_client: redis.Redis) -> SimulatorGateway:
    return SimulatorGateway(Transcript(RedisLink(redis_server.url), RedisKeys("test")))


def simulated(body: object) -> InboundRequest:
    return InboundRequest(path="/simulator/api/messages", body=json.dumps(body).encode())


def test_simulator_customer_text_is_normalized(simulator: SimulatorGateway) -> None:
    (message,) = simulator.parse(
        simulated({"number": "5511988887777", "name": "Paula", "text": "  Oi, tudo bem?  ", "id": "m1"}),
        accept_groups=False,
        max_text_chars=4000,
    )
    assert isinstance(message, IncomingMessage)
    assert message.chat == ChatRef(gateway="simulator", instance="console", chat_id="5511988887777@sim")
    assert (message.message_id, message.text, message.kind, message.push_name) == (
        "m1",
        "Oi, tudo bem?",
        "text",
        "Paula",
    )
    assert message.from_me is False


def test_simulator_person_side_and_generated_ids(simulator: SimulatorGateway) -> None:
    first, second = (
        simulator.parse(
            simulated({"number": "5511988887777", "text": "Aqui é a Ana", "as": "person"}),
            accept_groups=False,
            max_text_chars=4000,
        )[0]
        for _ in range(2)
    )
    assert first.from_me and second.from_me
    assert first.message_id and first.message_id != second.message_id  # a page retry without an id is new


def test_simulator_media_is_inline_and_sized(simulator: SimulatorGateway) -> None:
    data = base64.b64encode(b"\x89PNG" + b"\0" * 296).decode()
    (message,) = parse_simulator(
        {"number": "5511988887777", "text": "olha", "media": {"kind": "image", "mime": "image/png", "data": data}},
        max_text_chars=4000,
    )
    assert message.kind == "image" and message.media is not None
    assert (message.media.mime, message.media.size, message.media.inline) == ("image/png", 300, data)
    (voice,) = parse_simulator(
        {
            "number": "5511988887777",
            "media": {"kind": "audio", "mime": "audio/webm", "data": data, "voice": True, "seconds": "4"},
        },
        max_text_chars=4000,
    )
    assert voice.media is not None and (voice.media.voice, voice.media.seconds, voice.text) == (True, 4, "")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ([], "JSON object"),
        ({"number": "abc", "text": "oi"}, "6 to 20 digits"),
        ({"number": "12345", "text": "oi"}, "6 to 20 digits"),
        ({"number": "5511988887777", "text": "   "}, "needs a text or a media"),
        ({"number": "5511988887777", "media": {"kind": "sticker", "data": "AAAA"}}, "needs a text or a media"),
    ],
)
def test_simulator_refuses_bodies_the_page_never_sends(simulator: SimulatorGateway, body: object, reason: str) -> None:
    with pytest.raises(PayloadError, match=reason):
        simulator.parse(simulated(body), accept_groups=False, max_text_chars=4000)
    with pytest.raises(PayloadError, match="not valid JSON"):
        simulator.parse(InboundRequest(body=b"{nope"), accept_groups=False, max_text_chars=4000)


def test_simulator_long_text_is_cut_to_the_limit(simulator: SimulatorGateway) -> None:
    (message,) = simulator.parse(
        simulated({"number": "5511988887777", "text": "a" * 50}), accept_groups=False, max_text_chars=10
    )
    assert message.text == "a" * 10


def test_simulator_send_text_lands_in_the_transcript_after_the_typing_pause(simulator: SimulatorGateway) -> None:
    chat = chat_of("5511988887777")
    started = time.monotonic()
    message_id = simulator.send_text(chat, "Olá, Paula!", typing_ms=200)
    assert time.monotonic() - started >= 0.2
    (entry,) = simulator.transcript.entries(chat)
    assert (entry["role"], entry["text"], entry["id"], entry["typing_ms"]) == ("bot", "Olá, Paula!", message_id, 200)
    assert simulator.transcript.entries(chat_of("5511900000000")) == []  # chats do not mix


def test_simulator_find_sent_knows_what_went_out_since_a_time(simulator: SimulatorGateway) -> None:
    chat = chat_of("5511988887777")
    before = time.time() - 1
    simulator.send_text(chat, "Primeira parte")
    assert simulator.find_sent(chat, "Primeira parte", since=before) is True
    assert simulator.find_sent(chat, "Outra parte", since=before) is False
    assert simulator.find_sent(chat, "Primeira parte", since=time.time() + 60) is False


def test_simulator_has_no_handshake_no_signature_and_no_media_to_fetch(simulator: SimulatorGateway) -> None:
    assert simulator.handshake({"hub.mode": "subscribe"}) is None
    simulator.verify(simulated({}))  # access is the simulator routes' job
    with pytest.raises(MediaError):
        simulator.fetch_media(chat_of("5511988887777"), MediaRef(kind="image", mime="image/png"), max_bytes=100)
