"""Seed requests for bench/fuzz_webhook.py: valid bodies of every gateway and endpoint, written with our own values.

Each `Seed` builds one `Draft` (path, JSON payload or form fields, query) from a `Ctx` that hands out message ids,
customer numbers and texts from the fuzzer's seeded RNG, so a request index always gives the same bytes. The
shapes follow the fixtures in tests/fixtures/evolution/ and the builders in tests/e2e/fakes_e2e_gateways.py.
Nothing here does I/O; the secrets are the fuzzer's own throwaway values.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

# ----- the configuration the fuzzed server gets (throwaway values) ------------------------------------------

WEBHOOK_TOKEN = "fuzz-webhook-token-4b1e"
WEBHOOK_JWT_SECRET = "fuzz-webhook-jwt-secret-90af-0123456789ab"  # >= 32 bytes for HS256
ADMIN_TOKEN = "fuzz-admin-token-77c2"
META_APP_SECRET = "fuzz-meta-app-secret-e5"
META_VERIFY_TOKEN = "fuzz-meta-verify-token-3d"
META_ACCESS_TOKEN = "EAAGfuzzMetaAccessToken"
META_PHONE_NUMBER_ID = "106540352242922"
TWILIO_ACCOUNT_SID = "AC" + "f0zz" * 8
TWILIO_AUTH_TOKEN = "fuzz-twilio-auth-token-8a"
TWILIO_WHATSAPP_FROM = "whatsapp:+14155238886"
TWILIO_PUBLIC_URL = "https://atendimento.fuzz.example.com.br"
MEGA_INSTANCE = "megastart-FUZZ01"
MEGA_API_TOKEN = "fuzz-mega-token-2c"
EVOLUTION_INSTANCE = "loja-fuzz"
EVOLUTION_PAYLOAD_APIKEY = "REDACTED"

CUSTOMERS = 200  # distinct customer numbers: enough for many chats, few enough for bursts and known admin chats
BASE_TIMESTAMP = 1767225600  # 2026-01-01; payload timestamps are this + the request index (reproducible)
TEXTS = (
    "Oi, tudo bem?",
    "Vocês abrem amanhã?",
    "Quanto custa o kit festa para 30 pessoas?",
    "Quero encomendar um bolo de chocolate 🎂",
    "Aceitam Pix?",
    "Qual o endereço da loja?",
    "quero falar com um atendente",  # handoff keyword
    "parar",  # opt-out keyword
    "voltar",  # opt-in keyword
    "obrigado!",
)


# ----- what a seed builds -----------------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class Draft:
    """One request before mutation: path (no query), query fields, and a JSON value or form fields."""

    path: str
    payload: Any = None  # JSON value ("json" seeds), list of (name, value) pairs ("form" seeds), None
    query: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Ctx:
    """Values for one request, all drawn from the request's own RNG."""

    rng: random.Random
    index: int

    def number(self) -> str:
        return f"55119{self.rng.randrange(CUSTOMERS):08d}"

    def jid(self) -> str:
        return f"{self.number()}@s.whatsapp.net"

    def msg_id(self, prefix: str = "3EB0") -> str:
        return prefix + "".join(self.rng.choice("0123456789ABCDEF") for _ in range(18))

    def wamid(self) -> str:
        return "wamid.HBgNNTUxMTk4NzY1NDMyMRUCABIYFjNFQjA" + self.msg_id("")

    def text(self) -> str:
        return self.rng.choice(TEXTS)

    def ts(self) -> int:
        return BASE_TIMESTAMP + self.index


@dataclass(frozen=True, slots=True, kw_only=True)
class Seed:
    name: str
    target: str  # evolution | meta | mega | twilio | admin | knowledge | handshake | health
    method: str
    body: str  # json | form | none
    build: Callable[[Ctx], Draft]
    ok: frozenset[int] = frozenset({200})  # statuses a pristine, well-authenticated request may get
    weight: float = 1.0


# ----- Evolution API (v2 envelope unless noted) ---------------------------------------------------------------


def evolution_event(ctx: Ctx, message: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """A `messages.upsert` body; `overrides` may set event, key fields (jid, from_me, participant) or data fields."""
    key: dict[str, Any] = {
        "remoteJid": overrides.pop("jid", None) or ctx.jid(),
        "fromMe": overrides.pop("from_me", False),
        "id": ctx.msg_id(),
    }
    for name in ("participant", "senderPn", "remoteJidAlt"):
        if name in overrides:
            key[name] = overrides.pop(name)
    return {
        "event": overrides.pop("event", "messages.upsert"),
        "instance": EVOLUTION_INSTANCE,
        "data": {
            "key": key,
            "pushName": "Cliente Fuzz",
            "status": "DELIVERY_ACK",
            "message": message,
            "messageType": next(iter(message), "conversation"),
            "messageTimestamp": ctx.ts(),
            "instanceId": "0b7d6c1e-f022-4a55-9d3b-5f0c2a7e1d11",
            "source": "android",
            **overrides,
        },
        "destination": "http://127.0.0.1/webhook",
        "date_time": "2026-01-15T10:20:30.000Z",
        "sender": "5511900001111@s.whatsapp.net",
        "server_url": "http://evolution.fuzz.local:8080",
        "apikey": EVOLUTION_PAYLOAD_APIKEY,
    }


def _media_fields(mime: str, **extra: Any) -> dict[str, Any]:
    return {
        "url": "https://mmg.whatsapp.net/v/t62.7118-24/0000_n.enc?ccb=11-4&mms3=true",
        "mimetype": mime,
        "fileSha256": "ZmFrZS1maWxlLXNoYTI1Ni12YWx1ZS0wMDAwMDAwMDA=",
        "fileLength": "48213",
        "mediaKey": "ZmFrZS1tZWRpYS1rZXktdmFsdWUtMDAwMDAwMDAwMDA=",
        "directPath": "/v/t62.7118-24/0000_n.enc?ccb=11-4",
        "mediaKeyTimestamp": "1746190000",
        "jpegThumbnail": "/9j/4AAQ-fake-thumbnail",
        **extra,
    }


def evo_text(ctx: Ctx) -> Draft:
    return Draft(path="/webhook", payload=evolution_event(ctx, {"conversation": ctx.text()}))


def evo_extended(ctx: Ctx) -> Draft:
    message = {
        "extendedTextMessage": {
            "text": ctx.text(),
            "contextInfo": {"stanzaId": ctx.msg_id(), "participant": ctx.jid(), "expiration": 604800},
        }
    }
    return Draft(path="/webhook", payload=evolution_event(ctx, message))


def evo_image(ctx: Ctx) -> Draft:
    message: dict[str, Any] = {"imageMessage": _media_fields("image/jpeg", caption="olha essa foto", height=1600)}
    if ctx.rng.random() < 0.5:
        message["base64"] = "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAgGBgcGBQgHBwcJCQgKDBQNDAsLDBkSEw8UHRofHh0a"
    return Draft(path="/webhook", payload=evolution_event(ctx, message))


def evo_audio(ctx: Ctx) -> Draft:
    message = {"audioMessage": _media_fields("audio/ogg; codecs=opus", seconds=7, ptt=True)}
    return Draft(path="/webhook", payload=evolution_event(ctx, message))


def evo_document(ctx: Ctx) -> Draft:
    document = _media_fields("application/pdf", fileName="orcamento.pdf", caption="segue o orçamento")
    message = {"documentWithCaptionMessage": {"message": {"documentMessage": document}}}
    return Draft(path="/webhook", payload=evolution_event(ctx, message))


def evo_location(ctx: Ctx) -> Draft:
    place = {"degreesLatitude": -23.5613, "degreesLongitude": -46.6565, "name": "Loja", "address": "Av. Paulista"}
    return Draft(path="/webhook", payload=evolution_event(ctx, {"locationMessage": place}))


def evo_contacts(ctx: Ctx) -> Draft:
    vcard = "BEGIN:VCARD\nVERSION:3.0\nFN:Ana Lima\nTEL;type=CELL:+55 11 91234-5678\nEND:VCARD"
    message = {
        "contactsArrayMessage": {
            "displayName": "2 contatos",
            "contacts": [{"displayName": "Ana Lima", "vcard": vcard}, {"displayName": "Bruno", "vcard": vcard}],
        }
    }
    return Draft(path="/webhook", payload=evolution_event(ctx, message))


def evo_buttons(ctx: Ctx) -> Draft:
    choice = ctx.rng.choice(
        [
            {"buttonsResponseMessage": {"selectedButtonId": "btn_1", "selectedDisplayText": "Ver cardápio"}},
            {"templateButtonReplyMessage": {"selectedId": "tpl_2", "selectedDisplayText": "Confirmar"}},
            {
                "listResponseMessage": {
                    "title": "Pizza grande",
                    "listType": "SINGLE_SELECT",
                    "singleSelectReply": {"selectedRowId": "row_pizza_g"},
                }
            },
            {"interactiveResponseMessage": {"body": {"text": "Quero o plano 2"}, "nativeFlowResponseMessage": {}}},
        ]
    )
    return Draft(path="/webhook", payload=evolution_event(ctx, choice))


def evo_wrapped(ctx: Ctx) -> Draft:
    wrapper = ctx.rng.choice(["ephemeralMessage", "viewOnceMessageV2"])
    inner = {"extendedTextMessage": {"text": ctx.text()}} if wrapper == "ephemeralMessage" else None
    inner = inner or {"imageMessage": _media_fields("image/jpeg", viewOnce=True)}
    return Draft(path="/webhook", payload=evolution_event(ctx, {wrapper: {"message": inner}}))


def evo_from_me(ctx: Ctx) -> Draft:
    text = ctx.rng.choice(["Já te respondo!", "#humano", "#bot", "#encerrar"])
    return Draft(path="/webhook", payload=evolution_event(ctx, {"conversation": text}, from_me=True))


def evo_send_message(ctx: Ctx) -> Draft:
    body = evolution_event(ctx, {"conversation": "Seu pedido saiu para entrega."}, event="send.message", from_me=True)
    return Draft(path="/webhook", payload=body)


def evo_group(ctx: Ctx) -> Draft:
    body = evolution_event(ctx, {"conversation": ctx.text()}, jid="120363041234567890@g.us", participant=ctx.jid())
    return Draft(path="/webhook", payload=body)


def evo_lid(ctx: Ctx) -> Draft:
    lid = f"1765432{ctx.rng.randrange(10**8):08d}@lid"
    body = evolution_event(ctx, {"conversation": ctx.text()}, jid=lid, senderPn=ctx.jid(), remoteJidAlt=ctx.jid())
    return Draft(path="/webhook", payload=body)


def evo_reaction(ctx: Ctx) -> Draft:
    reaction = {"key": {"remoteJid": ctx.jid(), "fromMe": True, "id": ctx.msg_id()}, "text": "👍"}
    return Draft(path="/webhook", payload=evolution_event(ctx, {"reactionMessage": reaction}))


def evo_protocol(ctx: Ctx) -> Draft:
    edit = {"protocolMessage": {"key": {"id": ctx.msg_id()}, "type": "MESSAGE_EDIT", "editedMessage": {}}}
    return Draft(path="/webhook", payload=evolution_event(ctx, edit))


def evo_batch(ctx: Ctx) -> Draft:
    events = [evolution_event(ctx, {"conversation": ctx.text()}) for _ in range(ctx.rng.randint(2, 4))]
    return Draft(path="/webhook", payload=events)


def evo_data_messages(ctx: Ctx) -> Draft:
    """`data.messages` as a list (the v1 batch form)."""
    body = evolution_event(ctx, {"conversation": ctx.text()})
    record = body.pop("data")
    body["data"] = {"messages": [record, evolution_event(ctx, {"conversation": ctx.text()})["data"]]}
    return Draft(path="/webhook", payload=body)


def evo_json_string(ctx: Ctx) -> Draft:
    """The whole body is a JSON string holding the event (some Evolution set-ups post that)."""
    return Draft(path="/webhook", payload=json.dumps(evolution_event(ctx, {"conversation": ctx.text()})))


def evo_by_event_path(ctx: Ctx) -> Draft:
    """'Webhook by events': the event is the last path segment and the body may lack it."""
    body = evolution_event(ctx, {"conversation": ctx.text()})
    del body["event"]
    segment = ctx.rng.choice(["messages-upsert", "MESSAGES_UPSERT", "messages.upsert", "send-message"])
    return Draft(path=f"/webhook/{segment}", payload=body)


def evo_other_event(ctx: Ctx) -> Draft:
    event = ctx.rng.choice(
        [
            {"event": "connection.update", "instance": EVOLUTION_INSTANCE, "data": {"state": "open"}},
            {"event": "qrcode.updated", "instance": EVOLUTION_INSTANCE, "data": {"qrcode": {"base64": "iVBORw0K"}}},
            {
                "event": "messages.update",
                "instance": EVOLUTION_INSTANCE,
                "data": {"keyId": ctx.msg_id(), "remoteJid": ctx.jid(), "fromMe": True, "status": "READ"},
            },
            {"event": "presence.update", "instance": {"instanceName": EVOLUTION_INSTANCE}, "data": {"id": ctx.jid()}},
        ]
    )
    return Draft(path="/webhook", payload=event)


def evo_v1(ctx: Ctx) -> Draft:
    """Evolution 1.8: `instance` as an object in some versions, timestamp as a protobuf Long."""
    body = evolution_event(ctx, {"conversation": ctx.text()})
    body["instance"] = {"instanceName": EVOLUTION_INSTANCE, "instanceId": "a1b2"}
    body["data"]["messageTimestamp"] = {"low": 1767225600, "high": 0, "unsigned": False}
    body["data"].pop("instanceId")
    return Draft(path="/webhook", payload=body)


# ----- Meta WhatsApp Cloud API ------------------------------------------------------------------------------------


def meta_value(ctx: Ctx, *, field_name: str = "messages", **parts: Any) -> dict[str, Any]:
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "551130000000", "phone_number_id": META_PHONE_NUMBER_ID},
        **parts,
    }
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"value": value, "field": field_name}]}],
    }


def meta_message(ctx: Ctx, number: str, kind: str, content: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"from": number, "id": ctx.wamid(), "timestamp": str(ctx.ts()), "type": kind}
    if content is not None:
        message[kind] = content
    return message


META_CONTENTS: dict[str, Callable[[Ctx], Any]] = {
    "text": lambda ctx: {"body": ctx.text()},
    "image": lambda ctx: {"id": "1479537139650973", "mime_type": "image/jpeg", "sha256": "abc=", "caption": "foto"},
    "audio": lambda ctx: {"id": "1002934875203", "mime_type": "audio/ogg; codecs=opus", "voice": True},
    "document": lambda ctx: {"id": "8812", "mime_type": "application/pdf", "filename": "cardapio.pdf"},
    "video": lambda ctx: {"id": "7734", "mime_type": "video/mp4"},
    "sticker": lambda ctx: {"id": "4455", "mime_type": "image/webp", "animated": False},
    "location": lambda ctx: {"latitude": -23.56, "longitude": -46.65, "name": "Loja", "address": "Av. Paulista"},
    "interactive": lambda ctx: ctx.rng.choice(
        [
            {"type": "button_reply", "button_reply": {"id": "b1", "title": "Ver horários"}},
            {"type": "list_reply", "list_reply": {"id": "r1", "title": "Bolo", "description": "1 kg"}},
        ]
    ),
    "button": lambda ctx: {"payload": "CONFIRMAR", "text": "Confirmar"},
    "order": lambda ctx: {
        "catalog_id": "1234",
        "text": "pedido",
        "product_items": [{"product_retailer_id": "sku-1", "quantity": 2, "item_price": 19.9, "currency": "BRL"}],
    },
    "reaction": lambda ctx: {"message_id": ctx.wamid(), "emoji": "❤️"},
    "system": lambda ctx: {"body": "Number changed", "type": "user_changed_number", "wa_id": ctx.number()},
    "unsupported": lambda ctx: None,
}


def meta_inbound(ctx: Ctx) -> Draft:
    number = ctx.number()
    kind = ctx.rng.choice(list(META_CONTENTS))
    message = meta_message(ctx, number, kind, META_CONTENTS[kind](ctx))
    if kind == "unsupported":
        message["errors"] = [{"code": 131051, "title": "Message type unknown"}]
    if ctx.rng.random() < 0.2:
        message["context"] = {"from": "551130000000", "id": ctx.wamid()}
    if ctx.rng.random() < 0.1:
        message["referral"] = {"source_url": "https://fb.me/x", "source_type": "ad", "headline": "Promo"}
    contacts = [{"profile": {"name": "Cliente Meta"}, "wa_id": number}]
    return Draft(path="/webhook/meta", payload=meta_value(ctx, contacts=contacts, messages=[message]))


def meta_contacts(ctx: Ctx) -> Draft:
    number = ctx.number()
    shared = [{"name": {"formatted_name": "Ana Lima", "first_name": "Ana"}, "phones": [{"phone": "+55 11 91234-5678"}]}]
    message = {"from": number, "id": ctx.wamid(), "timestamp": str(ctx.ts()), "type": "contacts", "contacts": shared}
    contacts = [{"profile": {"name": "Cliente Meta"}, "wa_id": number}]
    return Draft(path="/webhook/meta", payload=meta_value(ctx, contacts=contacts, messages=[message]))


def meta_statuses(ctx: Ctx) -> Draft:
    statuses = [
        {
            "id": ctx.wamid(),
            "status": status,
            "timestamp": str(ctx.ts()),
            "recipient_id": ctx.number(),
            "conversation": {"id": "c0ffee", "origin": {"type": "service"}},
            "pricing": {"billable": True, "pricing_model": "PMP", "category": "service"},
        }
        for status in ctx.rng.sample(["sent", "delivered", "read", "failed"], 2)
    ]
    return Draft(path="/webhook/meta", payload=meta_value(ctx, statuses=statuses))


def meta_echo(ctx: Ctx) -> Draft:
    echo = {
        "from": "551130000000",
        "to": ctx.number(),
        "id": ctx.wamid(),
        "timestamp": str(ctx.ts()),
        "type": "text",
        "text": {"body": ctx.rng.choice(["Oi! Aqui é a Ana da loja.", "#bot", "#humano"])},
    }
    return Draft(path="/webhook/meta", payload=meta_value(ctx, message_echoes=[echo], field_name="smb_message_echoes"))


def meta_multi(ctx: Ctx) -> Draft:
    """Two entries, the second with two messages from another customer."""
    first = meta_inbound(ctx).payload
    second = meta_inbound(ctx).payload
    value = second["entry"][0]["changes"][0]["value"]
    value["messages"].append(meta_message(ctx, value["messages"][0]["from"], "text", {"body": ctx.text()}))
    first["entry"].append(second["entry"][0])
    return Draft(path="/webhook/meta", payload=first)


def meta_other_field(ctx: Ctx) -> Draft:
    value = {"event": "APPROVED", "message_template_id": 123, "message_template_name": "boas_vindas"}
    body = {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"value": value}]}]}
    body["entry"][0]["changes"][0]["field"] = "message_template_status_update"
    return Draft(path="/webhook/meta", payload=body)


def meta_handshake(ctx: Ctx) -> Draft:
    query = {
        "hub.mode": "subscribe",
        "hub.verify_token": META_VERIFY_TOKEN,
        "hub.challenge": str(ctx.rng.getrandbits(40)),
    }
    return Draft(path="/webhook/meta", query=query)


# ----- Mega API -----------------------------------------------------------------------------------------------


def mega_event(ctx: Ctx, message: dict[str, Any], *, jid: str | None = None, from_me: bool = False) -> dict[str, Any]:
    return {
        "instance_key": MEGA_INSTANCE,
        "jid": "5511930000000@s.whatsapp.net",
        "messageType": next(iter(message), "conversation"),
        "key": {"remoteJid": jid or ctx.jid(), "fromMe": from_me, "id": ctx.msg_id()},
        "messageTimestamp": ctx.ts(),
        "pushName": "Cliente Mega",
        "broadcast": False,
        "message": message,
    }


def mega_text(ctx: Ctx) -> Draft:
    return Draft(path="/webhook/mega", payload=mega_event(ctx, {"conversation": ctx.text()}))


def mega_media(ctx: Ctx) -> Draft:
    message = ctx.rng.choice(
        [
            {"imageMessage": _media_fields("image/jpeg", caption="foto do produto")},
            {"audioMessage": _media_fields("audio/ogg; codecs=opus", ptt=True, seconds=3)},
            {"extendedTextMessage": {"text": ctx.text()}},
        ]
    )
    return Draft(path="/webhook/mega", payload=mega_event(ctx, message))


def mega_from_me_or_group(ctx: Ctx) -> Draft:
    if ctx.rng.random() < 0.5:
        return Draft(path="/webhook/mega", payload=mega_event(ctx, {"conversation": "#humano"}, from_me=True))
    body = mega_event(ctx, {"conversation": ctx.text()}, jid="120363041234567890@g.us")
    body["key"]["participant"] = ctx.jid()
    return Draft(path="/webhook/mega", payload=body)


def mega_notification(ctx: Ctx) -> Draft:
    body = ctx.rng.choice(
        [
            {"instance_key": MEGA_INSTANCE, "messageType": "message-ack", "status": "READ", "id": ctx.msg_id()},
            {"instance_key": MEGA_INSTANCE, "type": "connection", "status": "open"},
            [mega_event(ctx, {"conversation": ctx.text()}), {"type": "qrcode"}],
        ]
    )
    return Draft(path="/webhook/mega", payload=body)


# ----- Twilio (form fields; signed by the fuzzer) ----------------------------------------------------------------


def twilio_fields(ctx: Ctx, **fields: str) -> list[tuple[str, str]]:
    number = ctx.number()
    sid = "SM" + ctx.msg_id("").lower() + "0" * 14
    base = {
        "SmsMessageSid": sid,
        "NumMedia": "0",
        "ProfileName": "Cliente Twilio",
        "MessageType": "text",
        "SmsSid": sid,
        "WaId": number,
        "SmsStatus": "received",
        "Body": ctx.text(),
        "To": TWILIO_WHATSAPP_FROM,
        "NumSegments": "1",
        "MessageSid": sid,
        "AccountSid": TWILIO_ACCOUNT_SID,
        "From": f"whatsapp:+{number}",
        "ApiVersion": "2010-04-01",
    }
    base.update(fields)
    return [(name, value) for name, value in base.items() if value is not None]


def twilio_text(ctx: Ctx) -> Draft:
    return Draft(path="/webhook/twilio", payload=twilio_fields(ctx))


def twilio_media(ctx: Ctx) -> Draft:
    fields = ctx.rng.choice(
        [
            {
                "NumMedia": "1",
                "MediaUrl0": "http://127.0.0.1:9/media/ME1",
                "MediaContentType0": "image/jpeg",
                "Body": "",
            },
            {"NumMedia": "1", "MediaUrl0": "http://127.0.0.1:9/media/ME2", "MediaContentType0": "audio/ogg"},
            {"Latitude": "-23.56", "Longitude": "-46.65", "Label": "Loja", "Address": "Av. Paulista", "Body": ""},
            {"ButtonText": "Confirmar", "ButtonPayload": "ok", "MessageType": "button"},
        ]
    )
    return Draft(path="/webhook/twilio", payload=twilio_fields(ctx, **fields))


def twilio_status(ctx: Ctx) -> Draft:
    fields = [
        ("MessageSid", "SM" + ctx.msg_id("").lower()),
        ("MessageStatus", ctx.rng.choice(["sent", "delivered", "read", "failed"])),
        ("To", f"whatsapp:+{ctx.number()}"),
        ("From", TWILIO_WHATSAPP_FROM),
        ("AccountSid", TWILIO_ACCOUNT_SID),
        ("ApiVersion", "2010-04-01"),
    ]
    return Draft(path="/webhook/twilio", payload=fields)


def twilio_sms(ctx: Ctx) -> Draft:
    """A plain SMS to the same number (not WhatsApp): ignored."""
    return Draft(path="/webhook/twilio", payload=twilio_fields(ctx, From=f"+{ctx.number()}", To="+14155238886"))


# ----- admin and knowledge endpoints ------------------------------------------------------------------------------


def known_chat_key(ctx: Ctx) -> str:
    """A chat the fuzzer's traffic may have created, as `gateway:instance:chat_id` (instance %-encoded)."""
    number = ctx.number()
    gateway, instance, chat_id = ctx.rng.choice(
        [
            ("evolution", EVOLUTION_INSTANCE, f"{number}@s.whatsapp.net"),
            ("meta", META_PHONE_NUMBER_ID, number),
            ("mega", MEGA_INSTANCE, f"{number}@s.whatsapp.net"),
            ("twilio", TWILIO_WHATSAPP_FROM, f"whatsapp:+{number}"),
        ]
    )
    return f"{gateway}:{quote(instance, safe='')}:{chat_id}"


def chat_path(key: str, action: str = "") -> str:
    return "/admin/api/chats/" + quote(key, safe=":@+") + (f"/{action}" if action else "")


def admin_show(ctx: Ctx) -> Draft:
    return Draft(path=chat_path(known_chat_key(ctx)))


def admin_pause(ctx: Ctx) -> Draft:
    payload = ctx.rng.choice([{"minutes": ctx.rng.choice([1, 30, 90.5])}, {}, {"minutes": None}])
    return Draft(path=chat_path(known_chat_key(ctx), "pause"), payload=payload)


def admin_resume_or_close(ctx: Ctx) -> Draft:
    return Draft(path=chat_path(known_chat_key(ctx), ctx.rng.choice(["resume", "close"])))


def context_preview(ctx: Ctx) -> Draft:
    query = {"n": str(ctx.rng.choice([0, 200, 1000, 5000]))}
    if ctx.rng.random() < 0.7:
        query["q"] = ctx.rng.choice(["horário de funcionamento", "preço do kit festa", "entrega", "pix"])
    return Draft(path="/context/preview", query=query)


def plain(path: str) -> Callable[[Ctx], Draft]:
    return lambda ctx: Draft(path=path)


# ----- the table -------------------------------------------------------------------------------------------------


def _seed(name: str, target: str, build: Callable[[Ctx], Draft], weight: float, **kw: Any) -> Seed:
    method = kw.pop("method", "POST")
    body = kw.pop("body", "json" if target in ("evolution", "meta", "mega") else "none")
    return Seed(name=name, target=target, method=method, body=body, build=build, weight=weight, **kw)


ANY_CHAT = frozenset({200, 404})  # an admin view of a chat the traffic has not created yet is a 404

SEEDS: tuple[Seed, ...] = (
    _seed("evo_text", "evolution", evo_text, 6),
    _seed("evo_extended", "evolution", evo_extended, 2),
    _seed("evo_image", "evolution", evo_image, 2),
    _seed("evo_audio", "evolution", evo_audio, 1.5),
    _seed("evo_document", "evolution", evo_document, 1),
    _seed("evo_location", "evolution", evo_location, 1),
    _seed("evo_contacts", "evolution", evo_contacts, 1),
    _seed("evo_buttons", "evolution", evo_buttons, 1.5),
    _seed("evo_wrapped", "evolution", evo_wrapped, 1),
    _seed("evo_from_me", "evolution", evo_from_me, 1.5),
    _seed("evo_send_message", "evolution", evo_send_message, 1),
    _seed("evo_group", "evolution", evo_group, 1),
    _seed("evo_lid", "evolution", evo_lid, 1),
    _seed("evo_reaction", "evolution", evo_reaction, 1),
    _seed("evo_protocol", "evolution", evo_protocol, 0.5),
    _seed("evo_batch", "evolution", evo_batch, 1.5),
    _seed("evo_data_messages", "evolution", evo_data_messages, 0.7),
    _seed("evo_json_string", "evolution", evo_json_string, 1),
    _seed("evo_by_event_path", "evolution", evo_by_event_path, 1),
    _seed("evo_other_event", "evolution", evo_other_event, 1),
    _seed("evo_v1", "evolution", evo_v1, 1),
    _seed("meta_inbound", "meta", meta_inbound, 9),
    _seed("meta_contacts", "meta", meta_contacts, 1),
    _seed("meta_statuses", "meta", meta_statuses, 2),
    _seed("meta_echo", "meta", meta_echo, 1.5),
    _seed("meta_multi", "meta", meta_multi, 1.5),
    _seed("meta_other_field", "meta", meta_other_field, 0.5),
    _seed("meta_handshake", "handshake", meta_handshake, 1.5, method="GET"),
    _seed("mega_text", "mega", mega_text, 4),
    _seed("mega_media", "mega", mega_media, 2),
    _seed("mega_from_me_or_group", "mega", mega_from_me_or_group, 1.5),
    _seed("mega_notification", "mega", mega_notification, 1.5),
    _seed("twilio_text", "twilio", twilio_text, 5, body="form"),
    _seed("twilio_media", "twilio", twilio_media, 2.5, body="form"),
    _seed("twilio_status", "twilio", twilio_status, 1.5, body="form"),
    _seed("twilio_sms", "twilio", twilio_sms, 1, body="form"),
    _seed("admin_show", "admin", admin_show, 3, method="GET", ok=ANY_CHAT),
    _seed("admin_pause", "admin", admin_pause, 2, body="json"),
    _seed("admin_resume_or_close", "admin", admin_resume_or_close, 2),
    _seed("context_preview", "knowledge", context_preview, 2, method="GET"),
    _seed("reload_context", "knowledge", plain("/reload-context"), 0.3),
    _seed("health", "health", plain("/health"), 1, method="GET"),
)
