"""parser.py over one fixture per Evolution payload shape (tests/fixtures/evolution/), plus its edge cases.

Each table row maps a fixture file to the exact list `parse_evolution` must return for it, compared as
whole dataclasses, so every field (chat id, instance, id, kind, text, phone_jid, push name, timestamp) counts.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from errors import PayloadError
from models import ChatRef, IgnoredEvent, IncomingMessage, MediaRef
from parser import (
    decode_json,
    extract_content,
    load_body,
    may_hold_surrogates,
    normalize_event_name,
    parse_evolution,
    replace_lone_surrogates,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "evolution"

LOJA = "loja-centro"  # the v1 fixtures' instance
SP = "atendimento-sp"  # the v2 fixtures' instance
MARIANA = "5511987654321@s.whatsapp.net"
FERNANDA = "5511976543210@s.whatsapp.net"


def chat(chat_id: str, instance: str) -> ChatRef:
    return ChatRef(gateway="evolution", instance=instance, chat_id=chat_id)


def incoming(
    chat_id: str,
    instance: str,
    message_id: str,
    text: str,
    *,
    kind: str = "text",
    phone_jid: str | None,
    push_name: str,
    timestamp: int,
    from_me: bool = False,
) -> IncomingMessage:
    return IncomingMessage(
        chat=chat(chat_id, instance),
        message_id=message_id,
        text=text,
        kind=kind,
        phone_jid=phone_jid,
        push_name=push_name,
        timestamp=timestamp,
        from_me=from_me,
    )


def ignored(reason: str, chat_id: str, instance: str, message_id: str) -> IgnoredEvent:
    return IgnoredEvent(reason=reason, message_id=message_id, chat=chat(chat_id, instance))


def load(name: str) -> Any:
    return load_body((FIXTURES / name).read_bytes())


def parse_file(name: str, **options: Any) -> list[IncomingMessage | IgnoredEvent]:
    return parse_evolution(load(name), **options)


# file -> what parse_evolution returns with default options (groups off, 4000 chars).
CASES: dict[str, list[IncomingMessage | IgnoredEvent]] = {
    # --- accepted text ---------------------------------------------------------------------------
    "messages_upsert_v1_text.json": [
        incoming(
            MARIANA,
            LOJA,
            "3EB0C1A2B3D4E5F60718A9",
            "Oi! Vocês abrem no sábado?",
            phone_jid=MARIANA,
            push_name="Mariana Souza",
            timestamp=1746190991,
        )
    ],
    "messages_upsert_v2_text.json": [
        incoming(
            FERNANDA,
            SP,
            "3A5F1E2D3C4B5A697887",
            "Bom dia! Queria agendar um horário para amanhã.",
            phone_jid=FERNANDA,
            push_name="Fernanda Costa",
            timestamp=1763646302,
        )
    ],
    "messages_upsert_v1_extended_text.json": [
        incoming(
            "5521998765432@s.whatsapp.net",
            LOJA,
            "3EB0A9B8C7D6E5F4A3B2C1",
            "Esse aqui ainda está disponível?",
            phone_jid="5521998765432@s.whatsapp.net",
            push_name="Pedro Henrique",
            timestamp=1746200000,
        )
    ],
    "messages_upsert_v1_ephemeral_text.json": [
        incoming(
            "5531988887777@s.whatsapp.net",
            LOJA,
            "3A22C33D44E55F66A770",
            "Vocês entregam em Pinheiros?",
            phone_jid="5531988887777@s.whatsapp.net",
            push_name="Ana Paula",
            timestamp=1746210000,
        )
    ],
    "messages_upsert_v2_timestamp_string.json": [
        incoming(
            FERNANDA,
            SP,
            "3A59A6D9C8B7A6F5E4D3",
            "Obrigada pelo atendimento!",
            phone_jid=FERNANDA,
            push_name="Fernanda Costa",
            timestamp=1763648000,
        )
    ],
    "messages_upsert_v1_timestamp_long.json": [
        incoming(
            "5519991234567@s.whatsapp.net",
            "filial-campinas",
            "3EB0E1E2E3E4E5E6E7E8E9",
            "Qual o valor do frete para Campinas?",
            phone_jid="5519991234567@s.whatsapp.net",
            push_name="Roberto Nunes",
            timestamp=1746250000,
        )
    ],
    # --- @lid chats: the chat id stays the LID, the phone comes from the alternates ---------------
    "messages_upsert_v2_lid_remote_jid_alt.json": [
        incoming(
            "187654321098765@lid",
            SP,
            "3A2673A6F5E4D3C2B1A0",
            "Olá, vi o anúncio no Instagram",
            phone_jid="5531987650000@s.whatsapp.net",
            push_name="Beatriz Rocha",
            timestamp=1763647700,
        )
    ],
    "messages_upsert_v2_lid_sender_pn.json": [
        incoming(
            "176543210987654@lid",
            SP,
            "3A3784B7A6F5E4D3C2B1",
            "Vocês aceitam Pix?",
            phone_jid="5541991112222@s.whatsapp.net",
            push_name="Gustavo Pereira",
            timestamp=1763647800,
        )
    ],
    # --- media with a caption: the caption is the text --------------------------------------------
    "messages_upsert_v1_image_base64.json": [
        incoming(
            MARIANA,
            LOJA,
            "3EB0D2E3F4A5B6C7D8E9F0",
            "Tem esse tênis no tamanho 38?",
            kind="image",
            phone_jid=MARIANA,
            push_name="Mariana Souza",
            timestamp=1746191200,
        )
    ],
    "messages_upsert_v1_video_base64.json": [
        incoming(
            MARIANA,
            LOJA,
            "3EB0E3F4A5B6C7D8E9F0A1",
            "Olha o defeito que apareceu na peça",
            kind="video",
            phone_jid=MARIANA,
            push_name="Mariana Souza",
            timestamp=1746191300,
        )
    ],
    "messages_upsert_v2_view_once_image.json": [
        incoming(
            FERNANDA,
            SP,
            "3A7B6C5D4E3F2A1B0C9D",
            "Esse é o modelo que eu quero",
            kind="image",
            phone_jid=FERNANDA,
            push_name="Fernanda Costa",
            timestamp=1763646600,
        )
    ],
    "messages_upsert_v2_document_with_caption.json": [
        incoming(
            FERNANDA,
            SP,
            "3A8C7D6E5F4A3B2C1D0E",
            "Segue o orçamento assinado",
            kind="document",
            phone_jid=FERNANDA,
            push_name="Fernanda Costa",
            timestamp=1763646700,
        )
    ],
    # --- media without a caption: answered, the media itself goes to the worker ------------------------
    "messages_upsert_v2_image_no_caption.json": [
        incoming(
            FERNANDA,
            SP,
            "3A6A5B4C3D2E1F0A9B8C",
            "",
            kind="image",
            phone_jid=FERNANDA,
            push_name="Fernanda Costa",
            timestamp=1763646500,
        )
    ],
    "messages_upsert_v2_audio_ptt.json": [
        incoming(
            FERNANDA,
            SP,
            "3A9D8E7F6A5B4C3D2E1F",
            "",
            kind="audio",
            phone_jid=FERNANDA,
            push_name="Fernanda Costa",
            timestamp=1763646800,
        )
    ],
    "messages_upsert_v2_sticker.json": [
        incoming(
            FERNANDA,
            SP,
            "3AAE9F8A7B6C5D4E3F2A",
            "",
            kind="sticker",
            phone_jid=FERNANDA,
            push_name="Fernanda Costa",
            timestamp=1763646900,
        )
    ],
    # --- button and list replies ------------------------------------------------------------------
    "messages_upsert_v1_buttons_response.json": [
        incoming(
            MARIANA,
            LOJA,
            "3EB0B1B2B3B4B5B6B7B8B9",
            "Ver horários",
            kind="button_reply",
            phone_jid=MARIANA,
            push_name="Mariana Souza",
            timestamp=1746220000,
        )
    ],
    "messages_upsert_v1_list_response.json": [
        incoming(
            MARIANA,
            LOJA,
            "3EB0C1C2C3C4C5C6C7C8C9",
            "Pizza grande de calabresa",
            kind="list_reply",
            phone_jid=MARIANA,
            push_name="Mariana Souza",
            timestamp=1746230000,
        )
    ],
    "messages_upsert_v1_template_button_reply.json": [
        incoming(
            MARIANA,
            LOJA,
            "3EB0D1D2D3D4D5D6D7D8D9",
            "Falar com atendente",
            kind="button_reply",
            phone_jid=MARIANA,
            push_name="Mariana Souza",
            timestamp=1746240000,
        )
    ],
    # --- several events in one body -----------------------------------------------------------------
    "messages_upsert_v2_batch_two_events.json": [
        incoming(
            FERNANDA,
            SP,
            "3A6AB7EAD9C8B7A6F5E4",
            "Primeira mensagem do lote",
            phone_jid=FERNANDA,
            push_name="Fernanda Costa",
            timestamp=1763648200,
        ),
        incoming(
            "5521976540000@s.whatsapp.net",
            "atendimento-rj",
            "3A7BC8FBEAD9C8B7A6F5",
            "Segunda mensagem do lote",
            phone_jid="5521976540000@s.whatsapp.net",
            push_name="Thiago Ribeiro",
            timestamp=1763648201,
        ),
    ],
    "messages_upsert_v2_json_string_body.json": [
        incoming(
            FERNANDA,
            SP,
            "3A8CD90CFBEAD9C8B7A6",
            "Mensagem que chegou como string JSON",
            phone_jid=FERNANDA,
            push_name="Fernanda Costa",
            timestamp=1763648300,
        )
    ],
    # --- lone UTF-16 surrogates (truncating clients, fuzzers) become U+FFFD; an escaped pair stays an emoji -
    "messages_upsert_v2_lone_surrogates.json": [
        incoming(
            FERNANDA,
            SP,
            "3A61B2C3\ufffdD4E5F6A7",
            "Quero o bolo \U0001f600 de hoje, cortado ao meio \ufffd",
            phone_jid=FERNANDA,
            push_name="Fernanda \ufffd",
            timestamp=1763646900,
        )
    ],
    # --- the business side writing in a 1:1 chat: handed on, marked; pushName is the business's own ------
    "messages_upsert_v1_from_me_text.json": [
        incoming(
            MARIANA,
            LOJA,
            "3EB0F00DBABE0000000001",
            "Abrimos sim, das 9h às 13h.",
            phone_jid=MARIANA,
            push_name="",
            timestamp=1746191050,
            from_me=True,
        )
    ],
    "messages_upsert_v2_from_me_text.json": [
        incoming(
            FERNANDA,
            SP,
            "3A0E9D8C7B6A59483726",
            "Claro! Temos horário às 10h ou às 15h.",
            phone_jid=FERNANDA,
            push_name="",
            timestamp=1763646400,
            from_me=True,
        )
    ],
    "send_message_v2_text.json": [
        incoming(
            FERNANDA,
            SP,
            "3EB06A7B8C9D0E1F2A3B4C",
            "Seu horário está confirmado para amanhã às 10h.",
            phone_jid=FERNANDA,
            push_name="",
            timestamp=1763648100,
            from_me=True,
        )
    ],
    # --- set aside, with the reason -----------------------------------------------------------------
    "messages_upsert_v1_group_lid_participant.json": [
        ignored("group", "120363025550001111@g.us", LOJA, "0AB1C2D3E4F5A6B7C8D9E0F1A2B3C4D5")
    ],
    "messages_upsert_v1_group_extended_text_disappearing.json": [
        ignored("group", "120363099990002222@g.us", LOJA, "3A11B22C33D44E55F660")
    ],
    "messages_upsert_v2_group_participant_alt.json": [
        ignored("group", "120363044443333555@g.us", SP, "3A4895C8B7A6F5E4D3C2")
    ],
    "messages_upsert_v2_status_broadcast.json": [
        ignored("status_broadcast", "status@broadcast", SP, "3A0451E4D3C2B1A0F9E8")
    ],
    "messages_upsert_v2_newsletter.json": [
        ignored("newsletter", "120363287654321098@newsletter", SP, "3A1562F5E4D3C2B1A0F9")
    ],
    "messages_upsert_v2_reaction.json": [ignored("reaction", FERNANDA, SP, "3ABF0A9B8C7D6E5F4A3B")],
    "messages_upsert_v2_revoke.json": [ignored("protocol", FERNANDA, SP, "3AC01B0A9C8D7E6F5A4B")],
    "messages_upsert_v2_edited_message.json": [ignored("protocol", FERNANDA, SP, "3AD12C1B0A9D8E7F6A5B")],
    "messages_upsert_v2_protocol_message_edit.json": [ignored("protocol", FERNANDA, SP, "3AE23D2C1B0A9E8F7A6B")],
    "messages_upsert_v2_poll_update.json": [ignored("poll_update", FERNANDA, SP, "3AF34E3D2C1B0A9F8A7B")],
    "messages_upsert_v1_empty_conversation.json": [ignored("empty", MARIANA, LOJA, "3EB0F1F2F3F4F5F6F7F8F9")],
    "messages_update_v2_status_read.json": [IgnoredEvent(reason="event:messages.update")],
}

GROUP_FILES = {
    "messages_upsert_v1_group_lid_participant.json": incoming(
        "120363025550001111@g.us",
        LOJA,
        "0AB1C2D3E4F5A6B7C8D9E0F1A2B3C4D5",
        "Bom dia, pessoal do grupo!",
        phone_jid=None,  # the participant is only a LID
        push_name="Carlos Lima",
        timestamp=1746450000,
    ),
    "messages_upsert_v1_group_extended_text_disappearing.json": incoming(
        "120363099990002222@g.us",
        LOJA,
        "3A11B22C33D44E55F660",
        "Promoção de bolos até sexta: 2 por R$ 50",
        phone_jid=None,
        push_name="Juliana Alves",
        timestamp=1746700000,
    ),
    "messages_upsert_v2_group_participant_alt.json": incoming(
        "120363044443333555@g.us",
        SP,
        "3A4895C8B7A6F5E4D3C2",
        "Alguém sabe o horário da loja hoje?",
        phone_jid="5511944443333@s.whatsapp.net",  # key.participantAlt, not the @lid participant
        push_name="Rafael Gomes",
        timestamp=1763647900,
    ),
}


def fixture_files() -> list[str]:
    return sorted(path.name for path in FIXTURES.glob("*.json"))


def test_every_fixture_has_a_row_and_every_row_a_fixture() -> None:
    assert fixture_files() == sorted(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_fixture_parses_to_expected(name: str) -> None:
    # Media references are checked field by field in MEDIA_CASES below.
    assert [strip_media(item) for item in parse_file(name)] == CASES[name]


def strip_media(item: IncomingMessage | IgnoredEvent) -> IncomingMessage | IgnoredEvent:
    return dataclasses.replace(item, media=None) if isinstance(item, IncomingMessage) else item


# file -> (kind, caption text, mime, size, seconds, voice, file_name, inline base64 kept, message field of the source)
MEDIA_CASES: dict[str, tuple[str, str, str, int, int, bool, str, bool, str | None]] = {
    "messages_upsert_v1_image_base64.json": (
        "image",
        "Tem esse tênis no tamanho 38?",
        "image/jpeg",
        48213,
        0,
        False,
        "",
        True,
        "imageMessage",
    ),
    "messages_upsert_v1_video_base64.json": (
        "video",
        "Olha o defeito que apareceu na peça",
        "video/mp4",
        48213,
        12,
        False,
        "",
        False,
        None,
    ),
    "messages_upsert_v2_view_once_image.json": (
        "image",
        "Esse é o modelo que eu quero",
        "image/jpeg",
        48213,
        0,
        False,
        "",
        False,
        "imageMessage",
    ),
    "messages_upsert_v2_document_with_caption.json": (
        "document",
        "Segue o orçamento assinado",
        "application/pdf",
        48213,
        0,
        False,
        "orcamento-assinado.pdf",
        False,
        "documentMessage",
    ),
    "messages_upsert_v2_image_no_caption.json": ("image", "", "image/jpeg", 48213, 0, False, "", False, "imageMessage"),
    "messages_upsert_v2_audio_ptt.json": (
        "audio",
        "",
        "audio/ogg; codecs=opus",
        48213,
        7,
        True,
        "",
        False,
        "audioMessage",
    ),
    "messages_upsert_v2_sticker.json": ("sticker", "", "image/webp", 48213, 0, False, "", False, None),
}


@pytest.mark.parametrize("name", sorted(MEDIA_CASES))
def test_media_fixture_keeps_a_small_reference(name: str) -> None:
    kind, text, mime, size, seconds, voice, file_name, has_inline, source_field = MEDIA_CASES[name]
    result = only(parse_file(name))
    assert isinstance(result, IncomingMessage) and result.media is not None
    media = result.media
    assert (result.kind, result.text, media.kind) == (kind, text, kind)
    assert (media.mime, media.size, media.seconds, media.voice, media.file_name) == (
        mime,
        size,
        seconds,
        voice,
        file_name,
    )
    raw = load(name)["data"]
    assert media.inline == (raw["message"]["base64"] if has_inline else "")
    if source_field is None:  # described in words, never fetched
        assert media.source == {}
        return
    assert media.source["key"] == raw["key"]
    (field_name,) = media.source["message"]
    fields = media.source["message"][field_name]
    assert field_name == source_field
    # what Evolution needs to download it again stays; thumbnails and base64 do not go into the buffer
    assert {"url", "mediaKey", "directPath", "mimetype"} <= set(fields)
    assert "jpegThumbnail" not in fields and "base64" not in json.dumps(media.source)
    assert MediaRef.from_json(json.loads(json.dumps(media.to_json()))) == dataclasses.replace(media, inline="")


@pytest.mark.parametrize("name", sorted(GROUP_FILES))
def test_groups_accepted_when_enabled(name: str) -> None:
    assert parse_file(name, accept_groups=True) == [GROUP_FILES[name]]


def test_accept_groups_does_not_let_status_or_newsletter_through() -> None:
    assert [r.reason for r in parse_file("messages_upsert_v2_status_broadcast.json", accept_groups=True)] == [
        "status_broadcast"
    ]
    assert [r.reason for r in parse_file("messages_upsert_v2_newsletter.json", accept_groups=True)] == ["newsletter"]


# --- helpers to build variants of one fixture ---------------------------------------------------------


def v2_text_event() -> dict[str, Any]:
    return copy.deepcopy(load("messages_upsert_v2_text.json"))


def only(results: list[IncomingMessage | IgnoredEvent]) -> IncomingMessage | IgnoredEvent:
    assert len(results) == 1, results
    return results[0]


# --- the business side's messages: fromMe and send.message ------------------------------------------------


def business_side(name: str, *, event: str | None = None, **key: Any) -> dict[str, Any]:
    """A fixture as the business side would have written it: `key.fromMe` true (or as given in `key`), and
    the event renamed when `event` is given."""
    body = copy.deepcopy(load(name))
    body["data"]["key"].update({"fromMe": True, **key})
    if event is not None:
        body["event"] = event
    return body


def without_event(body: dict[str, Any]) -> dict[str, Any]:
    del body["event"]
    return body


def send_message_with_data(data: Any) -> dict[str, Any]:
    body = copy.deepcopy(load("send_message_v2_text.json"))
    body["data"] = data
    return body


SENT_BY_API = load("send_message_v2_text.json")["data"]
SENT_TO_ANOTHER_CHAT = {
    **copy.deepcopy(SENT_BY_API),
    "key": {"remoteJid": MARIANA, "fromMe": True, "id": "3EB06A7B8C9D0E1F2A3B5D"},
    "message": {"conversation": "Pedido saiu para entrega."},
}
SENT_BY_API_MESSAGE = incoming(
    FERNANDA,
    SP,
    "3EB06A7B8C9D0E1F2A3B4C",
    "Seu horário está confirmado para amanhã às 10h.",
    phone_jid=FERNANDA,
    push_name="",
    timestamp=1763648100,
    from_me=True,
)
LID_FROM_ME = incoming(
    "187654321098765@lid",
    SP,
    "3A2673A6F5E4D3C2B1A0",
    "Olá, vi o anúncio no Instagram",
    phone_jid="5531987650000@s.whatsapp.net",  # key.remoteJidAlt names the chat, so it is the customer's
    push_name="",
    timestamp=1763647700,
    from_me=True,
)

# case id -> (payload, parse_evolution options, expected)
FROM_ME_CASES: dict[str, tuple[Any, dict[str, Any], list[IncomingMessage | IgnoredEvent]]] = {
    "lid_chat": (business_side("messages_upsert_v2_lid_remote_jid_alt.json"), {}, [LID_FROM_ME]),
    # key.senderPn names the sender, which is the business here: it is not taken for the customer's phone
    "lid_chat_sender_pn": (
        business_side("messages_upsert_v2_lid_sender_pn.json"),
        {},
        [
            incoming(
                "176543210987654@lid",
                SP,
                "3A3784B7A6F5E4D3C2B1",
                "Vocês aceitam Pix?",
                phone_jid=None,
                push_name="",
                timestamp=1763647800,
                from_me=True,
            )
        ],
    ),
    "group": (
        business_side("messages_upsert_v2_group_participant_alt.json"),
        {},
        [ignored("from_me", "120363044443333555@g.us", SP, "3A4895C8B7A6F5E4D3C2")],
    ),
    "group_with_groups_enabled": (
        business_side("messages_upsert_v2_group_participant_alt.json"),
        {"accept_groups": True},
        [ignored("from_me", "120363044443333555@g.us", SP, "3A4895C8B7A6F5E4D3C2")],
    ),
    "status_broadcast": (
        business_side("messages_upsert_v2_status_broadcast.json"),
        {"accept_groups": True},
        [ignored("from_me", "status@broadcast", SP, "3A0451E4D3C2B1A0F9E8")],
    ),
    "newsletter": (
        business_side("messages_upsert_v2_newsletter.json"),
        {},
        [ignored("from_me", "120363287654321098@newsletter", SP, "3A1562F5E4D3C2B1A0F9")],
    ),
    "reaction": (
        business_side("messages_upsert_v2_reaction.json"),
        {},
        [ignored("reaction", FERNANDA, SP, "3ABF0A9B8C7D6E5F4A3B")],
    ),
    "revoke": (
        business_side("messages_upsert_v2_revoke.json"),
        {},
        [ignored("protocol", FERNANDA, SP, "3AC01B0A9C8D7E6F5A4B")],
    ),
    "poll_update": (
        business_side("messages_upsert_v2_poll_update.json"),
        {},
        [ignored("poll_update", FERNANDA, SP, "3AF34E3D2C1B0A9F8A7B")],
    ),
    "empty": (
        business_side("messages_upsert_v1_empty_conversation.json"),
        {},
        [ignored("empty", MARIANA, LOJA, "3EB0F1F2F3F4F5F6F7F8F9")],
    ),
    "unsupported": (
        send_message_with_data({**SENT_BY_API, "message": {"lottieStickerMessage": {}}}),
        {},
        [ignored("unsupported", FERNANDA, SP, "3EB06A7B8C9D0E1F2A3B4C")],
    ),
    "button_reply": (
        business_side("messages_upsert_v1_buttons_response.json"),
        {},
        [
            incoming(
                MARIANA,
                LOJA,
                "3EB0B1B2B3B4B5B6B7B8B9",
                "Ver horários",
                kind="button_reply",
                phone_jid=MARIANA,
                push_name="",
                timestamp=1746220000,
                from_me=True,
            )
        ],
    ),
    "send_message_list": (
        send_message_with_data([SENT_BY_API, SENT_TO_ANOTHER_CHAT]),
        {},
        [
            SENT_BY_API_MESSAGE,
            incoming(
                MARIANA,
                SP,
                "3EB06A7B8C9D0E1F2A3B5D",
                "Pedido saiu para entrega.",
                phone_jid=MARIANA,
                push_name="",
                timestamp=1763648100,
                from_me=True,
            ),
        ],
    ),
    "send_message_by_events_hint": (
        without_event(copy.deepcopy(load("send_message_v2_text.json"))),
        {"event_hint": "send-message"},
        [SENT_BY_API_MESSAGE],
    ),
    "send_message_upper_snake_case": (
        business_side("send_message_v2_text.json", event="SEND_MESSAGE"),
        {},
        [SENT_BY_API_MESSAGE],
    ),
    # every send.message went out from the instance, whatever key.fromMe says
    "send_message_from_me_false": (
        business_side("send_message_v2_text.json", fromMe=False),
        {},
        [SENT_BY_API_MESSAGE],
    ),
    "send_message_without_from_me": (
        send_message_with_data({**SENT_BY_API, "key": {"remoteJid": FERNANDA, "id": "3EB06A7B8C9D0E1F2A3B4C"}}),
        {},
        [SENT_BY_API_MESSAGE],
    ),
    "send_message_to_a_group": (
        business_side("messages_upsert_v2_group_participant_alt.json", event="send.message", fromMe=False),
        {"accept_groups": True},
        [ignored("from_me", "120363044443333555@g.us", SP, "3A4895C8B7A6F5E4D3C2")],
    ),
    "send_message_lid_chat": (
        business_side("messages_upsert_v2_lid_remote_jid_alt.json", event="send.message"),
        {},
        [LID_FROM_ME],
    ),
}


@pytest.mark.parametrize("case", sorted(FROM_ME_CASES))
def test_business_side_messages(case: str) -> None:
    payload, options, expected = FROM_ME_CASES[case]
    assert [strip_media(item) for item in parse_evolution(copy.deepcopy(payload), **options)] == expected


def test_business_side_image_keeps_its_caption_and_media_reference() -> None:
    body = business_side("messages_upsert_v1_image_base64.json")
    result = only(parse_evolution(body))
    assert isinstance(result, IncomingMessage) and result.media is not None
    assert (result.from_me, result.kind, result.text) == (True, "image", "Tem esse tênis no tamanho 38?")
    assert result.media.source["key"] == body["data"]["key"]  # Evolution can download it again
    assert set(result.media.source["message"]) == {"imageMessage"}
    assert result.media.inline == body["data"]["message"]["base64"]


CUSTOMER_FILES = sorted(name for name in CASES if "from_me" not in name and not name.startswith("send_message"))


@pytest.mark.parametrize("name", CUSTOMER_FILES)
def test_customer_messages_are_not_from_me(name: str) -> None:
    for accept_groups in (False, True):
        results = parse_file(name, accept_groups=accept_groups)
        assert not any(isinstance(item, IncomingMessage) and item.from_me for item in results)


# --- text length ----------------------------------------------------------------------------------------


def test_text_cut_at_max_text_chars() -> None:
    event = v2_text_event()
    event["data"]["message"]["conversation"] = "a" * 30 + "b" * 30
    result = only(parse_evolution(event, max_text_chars=30))
    assert isinstance(result, IncomingMessage)
    assert result.text == "a" * 30


def test_text_at_exactly_max_text_chars_is_kept_whole() -> None:
    event = v2_text_event()
    event["data"]["message"]["conversation"] = "x" * 25
    result = only(parse_evolution(event, max_text_chars=25))
    assert isinstance(result, IncomingMessage)
    assert result.text == "x" * 25


def test_text_is_stripped_before_it_is_cut() -> None:
    event = v2_text_event()
    event["data"]["message"]["conversation"] = "   Olá, tudo bem?   "
    result = only(parse_evolution(event, max_text_chars=3))
    assert isinstance(result, IncomingMessage)
    assert result.text == "Olá"


def test_caption_cut_at_max_text_chars() -> None:
    result = only(parse_file("messages_upsert_v1_image_base64.json", max_text_chars=8))
    assert isinstance(result, IncomingMessage)
    assert (result.kind, result.text) == ("image", "Tem esse")


# --- event names ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hint", ["messages-upsert", "MESSAGES_UPSERT", "messages.upsert"])
def test_event_hint_used_when_body_has_no_event(hint: str) -> None:
    event = v2_text_event()
    del event["event"]
    result = only(parse_evolution(event, event_hint=hint))
    assert isinstance(result, IncomingMessage)
    assert result.message_id == "3A5F1E2D3C4B5A697887"


def test_no_event_and_no_hint_is_ignored_as_missing() -> None:
    event = v2_text_event()
    del event["event"]
    assert parse_evolution(event) == [IgnoredEvent(reason="event:missing")]


def test_event_in_body_wins_over_hint() -> None:
    assert parse_file("messages_update_v2_status_read.json", event_hint="messages-upsert") == [
        IgnoredEvent(reason="event:messages.update")
    ]


def test_hint_of_another_event_ignores_a_body_without_event() -> None:
    event = v2_text_event()
    del event["event"]
    assert parse_evolution(event, event_hint="MESSAGES_UPDATE") == [IgnoredEvent(reason="event:messages.update")]


def test_event_name_in_upper_snake_case_inside_body() -> None:
    event = v2_text_event()
    event["event"] = "MESSAGES_UPSERT"
    assert isinstance(only(parse_evolution(event)), IncomingMessage)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("MESSAGES_UPSERT", "messages.upsert"),
        ("messages-upsert", "messages.upsert"),
        (" messages.upsert ", "messages.upsert"),
        ("SEND_MESSAGE", "send.message"),
    ],
)
def test_normalize_event_name(raw: str, expected: str) -> None:
    assert normalize_event_name(raw) == expected


# --- load_body --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"isto nao e json",
        b"",
        b'{"event": ',
        b"42",
        b"3.5",
        b"null",
        b"true",
        b'"texto solto"',  # a JSON string whose content is not JSON
        b'"42"',  # a JSON string holding a number
        b'{"event": "messages.upsert", "x": "\xff\xfe"}',  # bad UTF-8
        b"[" * 100_000 + b"]" * 100_000,  # nested deeper than the decoder can follow
    ],
    ids=[
        "text",
        "empty",
        "truncated",
        "int",
        "float",
        "null",
        "bool",
        "string",
        "string_number",
        "bad_utf8",
        "too_deep",
    ],
)
def test_load_body_rejects_unreadable_bodies(body: bytes) -> None:
    with pytest.raises(PayloadError):
        load_body(body)


def test_load_body_accepts_str_and_bytes_alike() -> None:
    raw = (FIXTURES / "messages_upsert_v2_text.json").read_text(encoding="utf-8")
    assert load_body(raw) == load_body(raw.encode("utf-8")) == json.loads(raw)


def test_load_body_decodes_a_json_string_once_more() -> None:
    raw = (FIXTURES / "messages_upsert_v2_json_string_body.json").read_bytes()
    assert isinstance(json.loads(raw), str)
    decoded = load_body(raw)
    assert isinstance(decoded, dict)
    assert decoded["event"] == "messages.upsert"


def test_load_body_keeps_a_list() -> None:
    decoded = load_body((FIXTURES / "messages_upsert_v2_batch_two_events.json").read_bytes())
    assert isinstance(decoded, list)
    assert [item["instance"] for item in decoded] == ["atendimento-sp", "atendimento-rj"]


# --- lone surrogates ---------------------------------------------------------------------------------------

SURROGATES_FIXTURE = "messages_upsert_v2_lone_surrogates.json"


def utf8_safe(message: IncomingMessage) -> None:
    """What buffer.append hands to Redis must encode; a lone surrogate made it raise (and the webhook answer 500)."""
    for text in (message.message_id, message.text, message.push_name, message.chat.chat_id, message.chat.key):
        text.encode("utf-8")


def surrogate_event(message_id: str, text: str, push_name: str) -> dict[str, Any]:
    event = v2_text_event()
    event["data"]["key"]["id"] = message_id
    event["data"]["message"]["conversation"] = text
    event["data"]["pushName"] = push_name
    return event


def as_json_text(event: dict[str, Any]) -> str:
    """`json.dumps` writes a lone surrogate as an escape, as a truncating client's JSON encoder does."""
    return json.dumps(event)


@pytest.mark.parametrize(
    "body",
    [
        as_json_text(surrogate_event("3A00\ud800", "Oi \ud83d", "Fernanda \udc00")).encode(),
        # the three bytes UTF-8 would use for U+D800: json.loads decodes bytes with "surrogatepass"
        as_json_text(surrogate_event("3A00@@", "Oi @@", "Fernanda @@")).encode().replace(b"@@", b"\xed\xa0\x80"),
        # a str body with the characters themselves
        json.dumps(surrogate_event("3A00\ud800", "Oi \ud83d", "Fernanda \udc00"), ensure_ascii=False),
        # Evolution's JSON-string body: the escapes sit in the inner text
        json.dumps(as_json_text(surrogate_event("3A00\ud800", "Oi \ud83d", "Fernanda \udc00"))).encode(),
        # ... or only appear once the outer string is decoded: "\u005c" is a backslash
        json.dumps(as_json_text(surrogate_event("3A00@@", "Oi @@", "Fernanda @@")))
        .replace("@@", "\\u005cud800")
        .encode(),
        # json.loads also reads UTF-16 and UTF-32 bodies
        as_json_text(surrogate_event("3A00\ud800", "Oi \ud83d", "Fernanda \udc00")).encode("utf-16"),
    ],
    ids=["escapes", "utf8_bytes", "str_body", "json_string_body", "escape_built_by_the_outer_decode", "utf16_body"],
)
def test_lone_surrogates_become_replacement_characters(body: bytes | str) -> None:
    result = only(parse_evolution(load_body(body)))
    assert isinstance(result, IncomingMessage)
    assert (result.message_id, result.text, result.push_name) == ("3A00\ufffd", "Oi \ufffd", "Fernanda \ufffd")
    utf8_safe(result)


def test_surrogate_fixture_messages_encode_to_utf8() -> None:
    result = only(parse_file(SURROGATES_FIXTURE))
    assert isinstance(result, IncomingMessage)
    utf8_safe(result)
    data = load(SURROGATES_FIXTURE)["data"]
    assert data["\ufffd-campo"] == "\ufffd"  # keys are cleaned as well as values
    assert json.dumps(data, ensure_ascii=False).encode("utf-8")


@pytest.mark.parametrize(
    "body",
    [
        b'{"t": "\\ud83d\\ude00"}',  # the pair written as two escapes (Meta escapes every non-ASCII character)
        b'{"t": "\\uD83D\\uDE00"}',
        b'{"t": "\xf0\x9f\x98\x80"}',  # plain UTF-8
        b'{"t": "\xed\xa0\xbd\xed\xb8\x80"}',  # each half as its own 3 bytes (CESU-8): joined again
        '{"t": "\ud83d\ude00"}',  # a str body holding both halves
    ],
    ids=["escapes", "upper_case_escapes", "utf8", "cesu8", "str_halves"],
)
def test_a_surrogate_pair_stays_one_emoji(body: bytes | str) -> None:
    assert decode_json(body) == {"t": "\U0001f600"}


def test_replace_lone_surrogates_reaches_keys_and_every_depth() -> None:
    value = {"a\ud800": [1, None, {"b": ["\udfff", {"\ud83d": "ok \U0001f600"}]}], "n": 2.5, "t": True}
    assert replace_lone_surrogates(value) == {
        "a\ufffd": [1, None, {"b": ["\ufffd", {"\ufffd": "ok \U0001f600"}]}],
        "n": 2.5,
        "t": True,
    }
    assert replace_lone_surrogates("x\udbff\udbff") == "x\ufffd\ufffd"  # two highs are two lone halves


def test_a_body_as_deep_as_the_decoder_follows_is_cleaned() -> None:
    """The walk keeps its own stack: where json.loads follows deeper than Python's recursion limit (3.12+), a
    recursive walk would raise RecursionError after the decode succeeded."""
    for depth in (20_000, 5_000, 2_000, 500):
        body = b'{"x": ' + b"[" * depth + b'"\\ud800"' + b"]" * depth + b"}"
        try:
            decoded = decode_json(body)
        except PayloadError:  # deeper than this Python's decoder follows: a 400, as before
            continue
        node = decoded["x"]
        for _ in range(depth):
            (node,) = node
        assert node == "\ufffd"
        return
    pytest.fail("not even 500 levels were decoded")


def test_only_bodies_that_could_hold_a_surrogate_are_walked() -> None:
    """The fast path: no fixture without surrogates is walked; escapes and raw halves are always seen."""
    assert [name for name in fixture_files() if may_hold_surrogates((FIXTURES / name).read_bytes())] == [
        SURROGATES_FIXTURE
    ]
    assert not may_hold_surrogates('{"t": "ol\u00e1 \U0001f600"}'.encode())
    assert not may_hold_surrogates('{"t": "\\u00e9 \\u2603"}')
    assert may_hold_surrogates(b'{"t": "\\udc00"}')
    assert may_hold_surrogates(b'{"t": "\xed\xbf\xbf"}')
    assert may_hold_surrogates('{"t": "\udc00"}')
    assert may_hold_surrogates('{"t": 1}'.encode("utf-16"))  # not UTF-8: always walked


# --- malformed events and keys ----------------------------------------------------------------------


def test_non_dict_items_in_a_list_are_ignored_with_a_reason() -> None:
    results = parse_evolution([42, v2_text_event(), "texto", None, ["aninhado"]])
    assert [r.reason if isinstance(r, IgnoredEvent) else "message" for r in results] == [
        "not_an_object",
        "message",
        "not_an_object",
        "not_an_object",
        "not_an_object",
    ]


def test_empty_list_gives_nothing() -> None:
    assert parse_evolution([]) == []


@pytest.mark.parametrize(
    ("change", "message_id"),
    [
        (lambda data: data.pop("key"), ""),
        (lambda data: data.__setitem__("key", "5511976543210@s.whatsapp.net"), ""),
        (lambda data: data["key"].pop("remoteJid"), "3A5F1E2D3C4B5A697887"),
        (lambda data: data["key"].__setitem__("remoteJid", ""), "3A5F1E2D3C4B5A697887"),
        (lambda data: data["key"].pop("id"), ""),
        (lambda data: data["key"].__setitem__("id", None), ""),
    ],
    ids=["no_key", "key_not_object", "no_remote_jid", "empty_remote_jid", "no_id", "null_id"],
)
def test_missing_key_parts_are_ignored_as_no_message_key(change: Any, message_id: str) -> None:
    event = v2_text_event()
    change(event["data"])
    assert parse_evolution(event) == [IgnoredEvent(reason="no_message_key", message_id=message_id)]


@pytest.mark.parametrize("data", [None, "texto", 7, []], ids=["null", "string", "int", "empty_list"])
def test_data_that_is_not_a_message_is_ignored(data: Any) -> None:
    event = v2_text_event()
    event["data"] = data
    expected = [] if data == [] else [IgnoredEvent(reason="no_message_key")]
    assert parse_evolution(event) == expected


def test_data_as_list_and_data_messages_list_each_give_every_message() -> None:
    first = v2_text_event()["data"]
    second = copy.deepcopy(first)
    second["key"]["id"] = "3A0000000000000000B2"
    for data in ([first, second], {"messages": [first, second]}):
        event = v2_text_event()
        event["data"] = data
        results = parse_evolution(event)
        assert [r.message_id for r in results] == ["3A5F1E2D3C4B5A697887", "3A0000000000000000B2"]
        assert all(isinstance(r, IncomingMessage) for r in results)


def test_missing_message_is_ignored_as_empty() -> None:
    event = v2_text_event()
    del event["data"]["message"]
    assert [r.reason for r in parse_evolution(event) if isinstance(r, IgnoredEvent)] == ["empty"]


@pytest.mark.parametrize("value", ["true", "True", "TRUE"])
def test_from_me_as_string_true_is_from_me(value: str) -> None:
    event = v2_text_event()
    event["data"]["key"]["fromMe"] = value
    result = only(parse_evolution(event))
    assert isinstance(result, IncomingMessage)
    assert (result.from_me, result.push_name) == (True, "")


@pytest.mark.parametrize("value", ["false", False, None, 0])
def test_from_me_false_values_are_customer_messages(value: Any) -> None:
    event = v2_text_event()
    event["data"]["key"]["fromMe"] = value
    result = only(parse_evolution(event))
    assert isinstance(result, IncomingMessage)
    assert (result.from_me, result.push_name) == (False, "Fernanda Costa")


def test_instance_as_object_and_missing_instance() -> None:
    event = v2_text_event()
    event["instance"] = {"instanceName": "loja-norte", "instanceId": "0000-fake"}
    assert only(parse_evolution(event)).chat == chat(FERNANDA, "loja-norte")  # type: ignore[union-attr]
    del event["instance"]
    assert only(parse_evolution(event)).chat == chat(FERNANDA, "default")  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1763646302, 1763646302),
        ("1763646302", 1763646302),
        ({"low": 1763646302, "high": 0, "unsigned": False}, 1763646302),
        (None, 0),
        ("amanhã", 0),
        ({"high": 0}, 0),
        ({"low": -2147483548, "high": 0, "unsigned": False}, 2147483748),  # after 2038: low wraps negative
        ({"low": 5, "high": 1}, 4294967301),
    ],
    ids=["int", "string", "long", "null", "garbage", "long_without_low", "long_after_2038", "long_high_word"],
)
def test_timestamp_shapes(value: Any, expected: int) -> None:
    event = v2_text_event()
    event["data"]["messageTimestamp"] = value
    result = only(parse_evolution(event))
    assert isinstance(result, IncomingMessage)
    assert result.timestamp == expected


def test_missing_push_name_is_empty_string() -> None:
    event = v2_text_event()
    del event["data"]["pushName"]
    result = only(parse_evolution(event))
    assert isinstance(result, IncomingMessage)
    assert result.push_name == ""


def test_lid_chat_without_any_phone_alternate_has_no_phone_jid() -> None:
    event = load("messages_upsert_v2_lid_remote_jid_alt.json")
    del event["data"]["key"]["remoteJidAlt"]
    result = only(parse_evolution(event))
    assert isinstance(result, IncomingMessage)
    assert (result.chat.chat_id, result.phone_jid) == ("187654321098765@lid", None)


def test_lid_sender_pn_at_data_level_is_used() -> None:
    event = load("messages_upsert_v2_lid_sender_pn.json")
    event["data"]["senderPn"] = event["data"]["key"].pop("senderPn")
    result = only(parse_evolution(event))
    assert isinstance(result, IncomingMessage)
    assert result.phone_jid == "5541991112222@s.whatsapp.net"


# --- extract_content on message objects -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"listResponseMessage": {"singleSelectReply": {"selectedRowId": "row_2"}}}, ("list_reply", "row_2")),
        ({"buttonsResponseMessage": {"selectedButtonId": "btn_sim"}}, ("button_reply", "btn_sim")),
        ({"templateButtonReplyMessage": {"selectedId": "tpl_1"}}, ("button_reply", "tpl_1")),
        ({"interactiveResponseMessage": {"body": {"text": "Confirmar pedido"}}}, ("button_reply", "Confirmar pedido")),
        ({"ephemeralMessage": {"message": {"viewOnceMessage": {"message": {"conversation": "oi"}}}}}, ("text", "oi")),
        ({"videoMessage": {"caption": "   "}}, ("video", "   ")),
        ({"documentMessage": {"fileName": "nota.pdf"}}, ("document", "")),
        ({"ptvMessage": {"seconds": 5}}, ("video", "")),
        ({"locationMessage": {"degreesLatitude": -23.55}}, ("location", "")),
        ({"lottieStickerMessage": {}}, ("unsupported", None)),
        ({"pollCreationMessageV3": {"name": "Qual sabor?"}}, ("poll", None)),
        ({"messageContextInfo": {}, "senderKeyDistributionMessage": {}}, ("empty", None)),
        ({}, ("empty", None)),
        (None, ("empty", None)),
        ("oi", ("empty", None)),
    ],
    ids=[
        "list_row_id",
        "button_id",
        "template_id",
        "interactive",
        "nested_wrappers",
        "blank_caption",
        "document_no_caption",
        "ptv",
        "location",
        "unknown_type",
        "poll_creation",
        "only_metadata",
        "empty_dict",
        "none",
        "not_a_dict",
    ],
)
def test_extract_content(message: Any, expected: tuple[str, str | None]) -> None:
    assert extract_content(message) == expected


# --- media described in words -----------------------------------------------------------------------------


def media_event(message: dict[str, Any]) -> dict[str, Any]:
    event = v2_text_event()
    event["data"]["message"] = message
    return event


@pytest.mark.parametrize(
    ("message", "kind", "detail"),
    [
        (
            {"locationMessage": {"degreesLatitude": -23.5613, "degreesLongitude": -46.6565, "name": "Loja Paulista"}},
            "location",
            "Loja Paulista",
        ),
        (
            {"locationMessage": {"degreesLatitude": -23.5613, "degreesLongitude": -46.6565}},
            "location",
            "-23.5613, -46.6565",
        ),
        ({"contactMessage": {"displayName": "Carlos Entregas", "vcard": "BEGIN:VCARD"}}, "contact", "Carlos Entregas"),
        (
            {"contactsArrayMessage": {"contacts": [{"displayName": "Ana"}, {"displayName": "Beto"}]}},
            "contact",
            "Ana, Beto",
        ),
        ({"ptvMessage": {"seconds": 9, "mimetype": "video/mp4"}}, "video", ""),
    ],
    ids=["location_named", "location_coordinates", "contact", "contacts_array", "round_video"],
)
def test_media_without_bytes_for_gemini_is_described(message: dict[str, Any], kind: str, detail: str) -> None:
    result = only(parse_evolution(media_event(message)))
    assert isinstance(result, IncomingMessage) and result.media is not None
    assert (result.kind, result.text, result.media.kind, result.media.detail) == (kind, "", kind, detail)
    assert not result.media.readable and result.media.source == {}


def test_base64_of_a_described_kind_is_not_kept() -> None:
    """A video's base64 (webhook base64 on) is never given to Gemini, so it is not carried into the buffer."""
    event = media_event({"videoMessage": {"mimetype": "video/mp4", "seconds": 3}, "base64": "AAAAGGZ0eXA="})
    result = only(parse_evolution(event))
    assert isinstance(result, IncomingMessage) and result.media is not None
    assert (result.media.kind, result.media.inline) == ("video", "")


def test_size_falls_back_to_the_inline_base64_length() -> None:
    event = media_event({"audioMessage": {"mimetype": "audio/ogg; codecs=opus", "ptt": True}, "base64": "QUJDRA=="})
    result = only(parse_evolution(event))
    assert isinstance(result, IncomingMessage) and result.media is not None
    assert (result.media.size, result.media.inline, result.media.voice) == (6, "QUJDRA==", True)


def test_odd_types_found_by_fuzzing_do_not_raise() -> None:
    """A shared contact whose `contacts` is not a list, and an instance that is not a name (both were 500s)."""
    data = {
        "key": {"remoteJid": "5511900@s.whatsapp.net", "id": "3EB09"},
        "message": {"contactsArrayMessage": {"contacts": True}},
    }
    (parsed,) = parse_evolution({"event": "messages.upsert", "instance": list(range(9)), "data": data})
    assert isinstance(parsed, IncomingMessage) and parsed.kind == "contact"
    assert parsed.chat.instance == "default"  # not "[0, 1, 2, ...]" in Redis keys and send URLs
    (long_name,) = parse_evolution({"event": "messages.upsert", "instance": "x" * 500, "data": data})
    assert long_name.chat.instance == "default"  # type: ignore[union-attr]
