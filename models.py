"""Domain values shared by every module: a chat's identity and one normalized incoming message."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

from logs import mask_phone

DEFAULT_TENANT = "default"  # the one business of a deployment without TENANTS_FILE


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatRef:
    """A chat's identity: the same number on two gateways, two instances or two tenants is two chats."""

    gateway: str
    instance: str
    chat_id: str  # the gateway's chat address exactly as received (e.g. Evolution's remoteJid)
    tenant: str = DEFAULT_TENANT  # the business that claimed it when its first message came in (tenants.py)
    # Computed once: a reply reads its chat's key about twenty times (every Redis key, metric and log line).
    address: str = field(init=False, repr=False, compare=False)
    key: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # address: gateway:instance:chat_id (instance percent-encoded), the chat as admin URLs and answers name it.
        # key: the stable form in Redis keys, queues and archive rows: the address, behind `<tenant>/` for a chat of
        # a named tenant (so the default tenant's keys are the ones this service always wrote).
        address = f"{self.gateway}:{quote(self.instance, safe='')}:{self.chat_id}"
        object.__setattr__(self, "address", address)
        object.__setattr__(self, "key", address if self.tenant == DEFAULT_TENANT else f"{self.tenant}/{address}")

    @classmethod
    def from_key(cls, key: str) -> ChatRef:
        """The chat of a `key` (or of an `address`, as the default tenant's). Raises ValueError on anything else."""
        head, instance, chat_id = key.split(":", 2)
        tenant, _, gateway = head.rpartition("/")  # gateway names have no "/": only a tenant prefix puts one there
        return cls(gateway=gateway, instance=unquote(instance), chat_id=chat_id, tenant=tenant or DEFAULT_TENANT)

    @classmethod
    def parse(cls, key: object) -> ChatRef | None:
        """`from_key` for a key read from storage or a URL, which may name no chat: None then."""
        try:
            return cls.from_key(str(key))
        except ValueError:
            return None

    @property
    def label(self) -> str:
        """Log-safe form: the chat id masked (the tenant is a field of its own in log lines)."""
        return f"{self.gateway}:{self.instance}:{mask_phone(self.chat_id)}"


# Media Gemini reads from inline bytes; other kinds are described in words ("[vídeo recebido]").
READABLE_MEDIA_KINDS = frozenset({"audio", "image", "document"})
DETAIL_MAX_CHARS = 300


def words_detail(words: Iterable[Any]) -> str:
    """A `MediaRef.detail` from the non-empty words given (a shared contact's names, say)."""
    return ", ".join(str(word) for word in words if word)[:DETAIL_MAX_CHARS]


def location_detail(name: Any, address: Any, latitude: Any, longitude: Any) -> str:
    """A shared location in words: its name and address, else its coordinates."""
    if not (name or address) and latitude is not None:
        return words_detail([f"{latitude}, {longitude}"])
    return words_detail([name, address])


@dataclass(frozen=True, slots=True, kw_only=True)
class MediaRef:
    """A media item of a message: what it is, and how the worker can fetch its bytes later.

    `source` is the gateway's own fetch reference (Evolution: the message record without thumbnails; Meta: the
    media id; Twilio: the media URL); it is small and goes into the buffer. `inline` is base64 the gateway
    already put in the webhook (Evolution with webhook base64 on); the buffer keeps it apart from the message.
    """

    kind: str  # audio | image | document | video | sticker | location | contact
    mime: str = ""
    size: int = 0  # bytes as declared by the gateway, 0 when unknown
    seconds: int = 0  # audio/video duration when declared
    voice: bool = False  # a voice note (WhatsApp "ptt") rather than an audio file
    file_name: str = ""
    detail: str = ""  # words for kinds Gemini gets as text (a location's name and address, a contact's name)
    source: dict[str, Any] = field(default_factory=dict)
    inline: str = field(default="", repr=False)

    @property
    def readable(self) -> bool:
        """True for kinds whose bytes go to Gemini."""
        return self.kind in READABLE_MEDIA_KINDS

    def to_json(self) -> dict[str, Any]:
        """The compact form stored with the buffered message (without `inline`)."""
        data: dict[str, Any] = {"kind": self.kind}
        for name in ("mime", "size", "seconds", "voice", "file_name", "detail", "source"):
            value = getattr(self, name)
            if value:
                data[name] = value
        return data

    @classmethod
    def from_json(cls, data: Any) -> MediaRef | None:
        if not isinstance(data, dict) or not isinstance(data.get("kind"), str):
            return None
        names = ("mime", "size", "seconds", "voice", "file_name", "detail", "source")
        return cls(kind=data["kind"], **{name: data[name] for name in names if name in data})


@dataclass(frozen=True, slots=True, kw_only=True)
class IncomingMessage:
    """One customer message, normalized from any gateway's payload. A media message has `media`, and its
    caption (possibly empty) as `text`."""

    chat: ChatRef
    message_id: str
    text: str
    kind: str = "text"  # text | button_reply | list_reply | audio | image | document | video | sticker | ...
    media: MediaRef | None = None
    phone_jid: str | None = None  # the sender's phone JID when the gateway tells it (LID chats)
    push_name: str = ""
    timestamp: int = 0  # the gateway's timestamp, seconds since the epoch (0 when unknown)
    from_me: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class IgnoredEvent:
    """An event that is not a customer message, with the reason it was set aside."""

    reason: str
    message_id: str = ""
    chat: ChatRef | None = None
