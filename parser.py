"""WhatsApp (Baileys-shaped) payloads -> normalized messages: Evolution API v1 1.8.x and v2 2.x webhooks, and
the message records Mega API shares with them. Pure: no I/O, no settings.

`parse_evolution(body)` accepts one event, a list of events, or a JSON string holding either, and returns
one `IncomingMessage` or `IgnoredEvent` per message found. Raw dicts never leave this module. Messages the
business side sent in a 1:1 chat (`key.fromMe`, and every `send.message` event) come out with `from_me=True`;
telling the assistant's own echoes from a human's messages is left to the pipeline.

Every gateway decodes its body through this module (`decode_json`, or `replace_lone_surrogates` on Twilio's form),
so no string that leaves a parser holds a lone UTF-16 surrogate: UTF-8 (hence Redis) cannot encode one.
"""

from __future__ import annotations

import json
import re
from typing import Any

from errors import PayloadError
from models import READABLE_MEDIA_KINDS, ChatRef, IgnoredEvent, IncomingMessage, MediaRef, location_detail, words_detail

GATEWAY = "evolution"
MESSAGE_EVENT = "messages.upsert"
SEND_EVENT = "send.message"  # every message that goes out from the instance, whoever sent it

# Containers whose `.message` holds the real content.
_WRAPPERS = (
    "ephemeralMessage",
    "viewOnceMessage",
    "viewOnceMessageV2",
    "viewOnceMessageV2Extension",
    "documentWithCaptionMessage",
)
# WhatsApp media message field -> our media kind. Captions of image/video/document become the message text.
_MEDIA_FIELDS = {
    "audioMessage": "audio",
    "imageMessage": "image",
    "documentMessage": "document",
    "videoMessage": "video",
    "ptvMessage": "video",  # round video note
    "stickerMessage": "sticker",
    "locationMessage": "location",
    "liveLocationMessage": "location",
    "contactMessage": "contact",
    "contactsArrayMessage": "contact",
}
MEDIA_KINDS = frozenset(_MEDIA_FIELDS.values())
# Fields of a media message the gateway needs to download it again (Baileys' downloadMediaMessage); thumbnails
# and quoted context are left out so the reference kept in the buffer stays small.
_MEDIA_FIELDS_DROPPED = frozenset({"jpegThumbnail", "contextInfo", "thumbnailDirectPath", "thumbnailSha256"})
_MAX_REFERENCE_FIELD_CHARS = 1024
_IGNORED_TYPES = {
    "reactionMessage": "reaction",
    "protocolMessage": "protocol",  # deletes ("revoke") and edits
    "editedMessage": "protocol",
    "pollUpdateMessage": "poll_update",
    "pollCreationMessage": "poll",
    "pollCreationMessageV3": "poll",
    "encReactionMessage": "reaction",
    "keepInChatMessage": "protocol",
    "pinInChatMessage": "protocol",
}

Parsed = IncomingMessage | IgnoredEvent


def normalize_event_name(name: str) -> str:
    """ "MESSAGES_UPSERT", "messages-upsert" and "messages.upsert" all become "messages.upsert"."""
    return name.strip().lower().replace("_", ".").replace("-", ".")


def load_body(body: bytes | str) -> Any:
    """Decode an Evolution webhook body; a JSON string that itself holds JSON is decoded once more."""
    data = decode_json(body)
    if isinstance(data, str):
        data = decode_json(data)
    if not isinstance(data, dict | list):
        raise PayloadError("body must be a JSON object or a list of objects")
    return data


def decode_json(body: bytes | str) -> Any:
    """A webhook body decoded as JSON, every lone surrogate in it replaced (see `replace_lone_surrogates`).

    Raises:
        PayloadError: the body is not JSON (or is nested deeper than the decoder can follow).
    """
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: nested too deep
        raise PayloadError("body is not valid JSON") from exc
    return replace_lone_surrogates(data) if may_hold_surrogates(body) else data


# json.loads turns a \uD800-\uDFFF escape that is not half of a pair into a lone surrogate, and decodes bytes with
# "surrogatepass", so the three UTF-8 bytes of one (ED A0-BF xx) become one too. Two patterns, not one with "|":
# each then starts with a literal the regex engine skips ahead to, ten times faster on a usual body.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE_UTF8 = re.compile(rb"\xed[\xa0-\xbf]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def may_hold_surrogates(body: bytes | str) -> bool:
    """False when decoding this JSON text cannot give a lone surrogate: two C-speed scans of the raw body (about
    1 µs per KB), so the usual payload is never walked. Escaped pairs (an emoji as two escapes) also say True."""
    if isinstance(body, str):
        body = body.encode("utf-8", "surrogatepass")  # a surrogate character becomes the bytes looked for below
    elif not json.detect_encoding(body).startswith("utf-8"):
        return True  # a UTF-16/32 body: the byte scan does not apply, walk it
    return _SURROGATE_ESCAPE.search(body) is not None or _SURROGATE_UTF8.search(body) is not None


def replace_lone_surrogates(value: Any) -> Any:
    """`value` with every lone surrogate in its strings (dict keys and values, list items, at any depth) replaced
    by U+FFFD; a high and a low surrogate side by side become the character they encode. Dicts and lists are
    changed in place (decoded payloads are ours) and returned; other values pass through.

    The walk uses a stack, not recursion: a body the decoder could follow must never be too deep for us.
    """
    if isinstance(value, str):
        return _clean_text(value)
    pending = [value]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            for key, item in node.items():
                if isinstance(item, str):
                    node[key] = _clean_text(item)  # same key: the dict's size does not change
                elif isinstance(item, dict | list):
                    pending.append(item)
            if any(isinstance(key, str) and _SURROGATE.search(key) for key in node):
                cleaned = {_clean_text(k) if isinstance(k, str) else k: v for k, v in node.items()}
                node.clear()
                node.update(cleaned)
        elif isinstance(node, list):
            for index, item in enumerate(node):
                if isinstance(item, str):
                    node[index] = _clean_text(item)
                elif isinstance(item, dict | list):
                    pending.append(item)
    return value


def _clean_text(text: str) -> str:
    if _SURROGATE.search(text) is None:
        return text
    # UTF-16 can carry surrogates as they are; decoding it back joins valid pairs and replaces lone halves.
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def parse_evolution(
    payload: Any,
    *,
    event_hint: str = "",
    accept_groups: bool = False,
    max_text_chars: int = 4000,
) -> list[Parsed]:
    """Every message in an Evolution payload, normalized or set aside with a reason.

    Args:
        payload: the decoded body (see `load_body`).
        event_hint: the event from the URL (`/webhook/messages-upsert`, `/webhook/send-message`) when the
            body has none.
        accept_groups: when False, group chats (@g.us) are ignored with reason "group".
        max_text_chars: texts are cut to this length.
    """
    events = payload if isinstance(payload, list) else [payload]
    results: list[Parsed] = []
    for event in events:
        if not isinstance(event, dict):
            results.append(IgnoredEvent(reason="not_an_object"))
            continue
        results.extend(_parse_event(event, event_hint, accept_groups, max_text_chars))
    return results


def _parse_event(event: dict[str, Any], event_hint: str, accept_groups: bool, max_chars: int) -> list[Parsed]:
    name = normalize_event_name(str(event.get("event") or event_hint or ""))
    if name not in (MESSAGE_EVENT, SEND_EVENT):
        return [IgnoredEvent(reason=f"event:{name or 'missing'}")]
    instance = _instance_name(event)
    data = event.get("data")
    items: list[Any]
    if isinstance(data, list):
        items = data
    elif isinstance(data, dict) and isinstance(data.get("messages"), list):
        items = data["messages"]
    else:
        items = [data]
    return [
        message_from_baileys(
            item,
            gateway=GATEWAY,
            instance=instance,
            accept_groups=accept_groups,
            max_chars=max_chars,
            sent=name == SEND_EVENT,
        )
        for item in items
    ]


MAX_INSTANCE_CHARS = 100  # Evolution's instance names are short; anything else is not an instance name


def _instance_name(event: dict[str, Any]) -> str:
    """The event's instance: a name (v2) or an object holding one (v1); anything else (a number, a list, a huge
    string) counts as none, since it would end up in Redis keys, send URLs and logs."""
    instance = event.get("instance")
    if isinstance(instance, dict):
        instance = instance.get("instanceName") or instance.get("name")
    if not isinstance(instance, str) or not instance.strip() or len(instance) > MAX_INSTANCE_CHARS:
        return "default"
    return instance


def message_from_baileys(
    data: Any, *, gateway: str, instance: str, accept_groups: bool, max_chars: int, sent: bool = False
) -> Parsed:
    """One Baileys-shaped message record (`key`, `message`, `pushName`, `messageTimestamp`), as Evolution's
    `data` and Mega's webhook body carry it, normalized or set aside with a reason.

    A record with `key.fromMe`, or any record when `sent` (Evolution's send.message), is the business side
    writing: in a 1:1 chat it comes out with `from_me=True`, anywhere else it is ignored as "from_me".
    """
    if not isinstance(data, dict) or not isinstance(data.get("key"), dict):
        return IgnoredEvent(reason="no_message_key")
    key = data["key"]
    jid = str(key.get("remoteJid") or "")
    message_id = str(key.get("id") or "")
    if not jid or not message_id:
        return IgnoredEvent(reason="no_message_key", message_id=message_id)
    chat = ChatRef(gateway=gateway, instance=instance, chat_id=jid)
    from_me = sent or is_from_me(key)
    reason = _ignore_reason_for_sender(jid, from_me, accept_groups)
    if reason:
        return IgnoredEvent(reason=reason, message_id=message_id, chat=chat)
    kind, text = extract_content(data.get("message"))
    if kind in _IGNORED_KINDS:
        return IgnoredEvent(reason=kind, message_id=message_id, chat=chat)
    text = (text or "").strip()
    media = baileys_media(data) if kind in MEDIA_KINDS else None
    if not text and media is None:
        return IgnoredEvent(reason="empty", message_id=message_id, chat=chat)
    return IncomingMessage(
        chat=chat,
        message_id=message_id,
        text=text[:max_chars],
        kind=kind,
        media=media,
        phone_jid=phone_jid(key, data, from_me=from_me),
        # On the business side's messages pushName is the business's own name, not the customer's.
        push_name="" if from_me else str(data.get("pushName") or ""),
        timestamp=_int(data.get("messageTimestamp")),
        from_me=from_me,
    )


def _ignore_reason_for_sender(jid: str, from_me: bool, accept_groups: bool) -> str:
    # The business side writing in a group, a status or a channel says nothing about a customer's chat.
    if from_me and not is_direct(jid):
        return "from_me"
    if jid == "status@broadcast" or jid.endswith("@broadcast"):
        return "status_broadcast"
    if jid.endswith("@newsletter"):
        return "newsletter"
    if is_group(jid) and not accept_groups:
        return "group"
    return ""


def is_from_me(key: dict[str, Any]) -> bool:
    value = key.get("fromMe")
    return value is True or str(value).lower() == "true"


def is_group(jid: str) -> bool:
    return jid.endswith("@g.us")


def is_direct(jid: str) -> bool:
    """A 1:1 chat with a person, addressed by phone or by LID."""
    return jid.endswith(("@s.whatsapp.net", "@lid"))


def phone_jid(key: dict[str, Any], data: dict[str, Any], *, from_me: bool = False) -> str | None:
    """The customer's phone JID when known: the chat itself, or the alternates Evolution adds for @lid. On a
    customer's message that is the sender; on the business side's (`from_me`) it is the recipient."""
    jid = str(key.get("remoteJid") or "")
    if is_group(jid):
        candidates = [key.get("participantAlt"), key.get("participant"), data.get("participant")]
    elif from_me:  # senderPn names the sender, which is the business itself here
        candidates = [jid, key.get("remoteJidAlt")]
    else:
        candidates = [jid, key.get("remoteJidAlt"), key.get("senderPn"), data.get("senderPn")]
    for candidate in candidates:
        if isinstance(candidate, str) and candidate.endswith("@s.whatsapp.net"):
            return candidate
    return None


_IGNORED_KINDS = frozenset(set(_IGNORED_TYPES.values()) | {"unsupported"})


def unwrap(message: dict[str, Any]) -> dict[str, Any]:
    """Peel ephemeral/view-once/document-with-caption containers until the real content shows."""
    for _ in range(5):  # wrappers nest at most a few levels; the bound guards against cycles of junk
        for wrapper in _WRAPPERS:
            inner = message.get(wrapper)
            if isinstance(inner, dict) and isinstance(inner.get("message"), dict):
                message = inner["message"]
                break
        else:
            return message
    return message


def extract_content(message: Any) -> tuple[str, str | None]:
    """(kind, text) of a WhatsApp message object; kind names an ignore reason when there is no text."""
    if not isinstance(message, dict):
        return "empty", None
    message = unwrap(message)
    if isinstance(message.get("conversation"), str):
        return "text", message["conversation"]
    extended = message.get("extendedTextMessage")
    if isinstance(extended, dict) and isinstance(extended.get("text"), str):
        return "text", extended["text"]
    for field_name, kind in _MEDIA_FIELDS.items():
        media = message.get(field_name)
        if isinstance(media, dict):
            caption = media.get("caption")
            return kind, caption if isinstance(caption, str) else ""
    reply = _reply_text(message)
    if reply is not None:
        return reply
    for field_name, reason in _IGNORED_TYPES.items():
        if field_name in message:
            return reason, None
    content = [k for k in message if k not in {"messageContextInfo", "base64", "senderKeyDistributionMessage"}]
    return ("unsupported", None) if content else ("empty", None)


def baileys_media(data: dict[str, Any]) -> MediaRef | None:
    """The media of a Baileys message record, with the reference a gateway needs to download it again
    (`{"key": ..., "message": {"audioMessage": {...}}}`) and any base64 the webhook already carried."""
    outer = data.get("message")
    if not isinstance(outer, dict):
        return None
    message = unwrap(outer)
    field_name = next((name for name in _MEDIA_FIELDS if isinstance(message.get(name), dict)), None)
    if field_name is None:
        return None
    kind, media = _MEDIA_FIELDS[field_name], message[field_name]
    inline = outer.get("base64") if isinstance(outer.get("base64"), str) else ""
    trimmed = {
        name: value
        for name, value in media.items()
        if name not in _MEDIA_FIELDS_DROPPED and len(str(value)) <= _MAX_REFERENCE_FIELD_CHARS
    }
    readable = kind in READABLE_MEDIA_KINDS
    return MediaRef(
        kind=kind,
        mime=str(media.get("mimetype") or ""),
        size=_int(media.get("fileLength")) or (len(inline) * 3 // 4 if inline else 0),
        seconds=_int(media.get("seconds")),
        voice=media.get("ptt") is True,
        file_name=str(media.get("fileName") or media.get("title") or "")[:200] if kind == "document" else "",
        detail=_media_detail(kind, media),
        source={"key": data.get("key"), "message": {field_name: trimmed}} if readable else {},
        inline=inline if readable else "",
    )


def _media_detail(kind: str, media: dict[str, Any]) -> str:
    """Words for media Gemini gets as text: a location's name and address, a shared contact's name."""
    if kind == "location":
        return location_detail(
            media.get("name"), media.get("address"), media.get("degreesLatitude"), media.get("degreesLongitude")
        )
    if kind == "contact":
        names = [media.get("displayName")]
        contacts = media.get("contacts")
        names += [c.get("displayName") for c in contacts if isinstance(c, dict)] if isinstance(contacts, list) else []
        return words_detail(names)
    return ""


def _reply_text(message: dict[str, Any]) -> tuple[str, str] | None:
    """Text of a button or list reply, if the message is one."""
    buttons = message.get("buttonsResponseMessage")
    if isinstance(buttons, dict):
        text = buttons.get("selectedDisplayText") or buttons.get("selectedButtonId")
        if text:
            return "button_reply", str(text)
    template = message.get("templateButtonReplyMessage")
    if isinstance(template, dict):
        text = template.get("selectedDisplayText") or template.get("selectedId")
        if text:
            return "button_reply", str(text)
    listed = message.get("listResponseMessage")
    if isinstance(listed, dict):
        row = listed.get("singleSelectReply") or {}
        text = listed.get("title") or (row.get("selectedRowId") if isinstance(row, dict) else None)
        if text:
            return "list_reply", str(text)
    interactive = message.get("interactiveResponseMessage")
    if isinstance(interactive, dict):
        body = interactive.get("body") or {}
        text = body.get("text") if isinstance(body, dict) else None
        if text:
            return "button_reply", str(text)
    return None


def _int(value: Any) -> int:
    """An int from a number, a numeric string or a protobuf Long; 0 when it is none of these. Evolution sends
    timestamps and media sizes in all three shapes."""
    if isinstance(value, dict):  # Long.js: two signed 32-bit halves
        try:
            return (int(value.get("high") or 0) << 32) + (int(value.get("low") or 0) & 0xFFFFFFFF)
        except (TypeError, ValueError, OverflowError):
            return 0
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: Infinity
        return 0
