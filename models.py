"""Domain values shared by every module: a chat's identity and one normalized incoming message."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, unquote

from logs import mask_phone


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatRef:
    """A chat's identity: the same number on two gateways or two instances is two chats."""

    gateway: str
    instance: str
    chat_id: str  # the gateway's chat address exactly as received (e.g. Evolution's remoteJid)

    @property
    def key(self) -> str:
        """Stable string form used in Redis keys: gateway:instance:chat_id (instance percent-encoded)."""
        return f"{self.gateway}:{quote(self.instance, safe='')}:{self.chat_id}"

    @classmethod
    def from_key(cls, key: str) -> ChatRef:
        gateway, instance, chat_id = key.split(":", 2)
        return cls(gateway=gateway, instance=unquote(instance), chat_id=chat_id)

    @property
    def label(self) -> str:
        """Log-safe form: the chat id masked."""
        return f"{self.gateway}:{self.instance}:{mask_phone(self.chat_id)}"


@dataclass(frozen=True, slots=True, kw_only=True)
class IncomingMessage:
    """One customer message, normalized from any gateway's payload."""

    chat: ChatRef
    message_id: str
    text: str
    kind: str = "text"  # text | image | video | document | button_reply | list_reply
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
