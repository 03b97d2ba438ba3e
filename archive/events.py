"""Archive events: what is kept of a chat, one event per thing that happened, each with a unique `event_id` built
from what identifies it (the chat and the gateway's message id, the answered message and the part's number...), so
that an event emitted again after a crash is the same event and is written once.

Pure: builds events from the worker's records; knows nothing of Redis or PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from models import ChatRef
from usage import Usage

CUSTOMER, BOT, HUMAN = "customer", "bot", "human"
MESSAGE = "message"
DEAD_LETTER = "dead_letter"
# Decisions archived as events (reply_policy reasons), and the lifecycle actions of a person or the panel.
DECISION_KINDS = frozenset({"handoff_request", "opt_out", "opt_in", "out_of_hours"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """One archived event of a chat. `author` is set on every message (customer, bot or human)."""

    event_id: str
    chat: str  # ChatRef.key
    kind: str
    at: float  # unix seconds
    author: str = ""
    text: str = ""
    media_kind: str = ""
    transcript: str = ""
    gateway_message_id: str = ""
    delivery: str = ""  # bot parts: sent
    data: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> str:
        # Field by field, not dataclasses.asdict (which deep-copies): this runs for every event on the reply path.
        return json.dumps({name: getattr(self, name) for name in _FIELDS}, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def decode(cls, raw: str) -> Event | None:
        """The event in a stream entry, or None when it is not one (a corrupt entry is dropped by the writer)."""
        try:
            data = json.loads(raw)
            event = cls(**data) if isinstance(data, dict) else None
            if event is not None:
                event.chat_ref  # noqa: B018 (raises ValueError for a chat that is not gateway:instance:chat_id)
            return event
        except (ValueError, TypeError):
            return None

    @property
    def chat_ref(self) -> ChatRef:
        return ChatRef.from_key(self.chat)


_FIELDS = tuple(f.name for f in fields(Event))


def media_kind(record: Mapping[str, Any]) -> str:
    """`voice` for a voice note, else the media kind of a buffered record ('' for text)."""
    media = record.get("media")
    if not isinstance(media, dict):
        return ""
    return "voice" if media.get("voice") else str(media.get("kind") or "")


def _at(record: Mapping[str, Any], default: float) -> float:
    try:
        return float(record.get("at") or default)
    except (TypeError, ValueError):
        return default


def message_events(
    chat: ChatRef, records: Sequence[Mapping[str, Any]], *, transcripts: Mapping[str, str] | None = None, now: float
) -> list[Event]:
    """The buffered messages of a burst (the customer's, and a person's on the business side) as events, with the
    transcript or description the model gave of a media item (by message id) when there was one."""
    transcripts = transcripts or {}
    events = []
    for record in records:
        message_id = str(record.get("id") or "")
        if not message_id:
            continue
        author = HUMAN if record.get("by") == "human" else CUSTOMER
        data = {name: record[name] for name in ("name", "ts") if record.get(name)}
        events.append(
            Event(
                event_id=f"msg|{chat.key}|{message_id}",
                chat=chat.key,
                kind=MESSAGE,
                at=_at(record, now),
                author=author,
                text=str(record.get("text") or ""),
                media_kind=media_kind(record),
                transcript=transcripts.get(message_id, ""),
                gateway_message_id=message_id,
                data=data,
            )
        )
    return events


def reply_part_event(
    chat: ChatRef,
    *,
    reply_to: str,
    index: int,
    text: str,
    message_id: str,
    at: float,
    usage: Mapping[str, Any] | None = None,
) -> Event:
    """A part of the assistant's reply that the gateway took (with the id it gave); the first part carries what the
    model calls that wrote the reply cost (`usage_data`)."""
    data: dict[str, Any] = {"reply_to": reply_to, "part": index + 1}
    if usage:
        data["usage"] = dict(usage)
    return Event(
        event_id=f"bot|{chat.key}|{reply_to}|{index}",
        chat=chat.key,
        kind=MESSAGE,
        at=at,
        author=BOT,
        text=text,
        gateway_message_id=message_id,
        delivery="sent",
        data=data,
    )


def person_message_event(chat: ChatRef, *, text: str, message_id: str, at: float, via: str) -> Event:
    """A message a person on the business side sent (`via` panel) and the gateway took."""
    return Event(
        event_id=f"msg|{chat.key}|{message_id}",
        chat=chat.key,
        kind=MESSAGE,
        at=at,
        author=HUMAN,
        text=text,
        gateway_message_id=message_id,
        delivery="sent",
        data={"via": via},
    )


def decision_event(chat: ChatRef, *, kind: str, about: str, at: float, data: Mapping[str, Any] | None = None) -> Event:
    """A decision on a burst (a handoff request, an opt-out...), keyed by the message it was about."""
    return Event(event_id=f"{kind}|{chat.key}|{about}", chat=chat.key, kind=kind, at=at, data=dict(data or {}))


def lifecycle_event(chat: ChatRef, *, action: str, about: str, at: float, by: str) -> Event:
    """A person paused, resumed or closed the chat (`by`: phone, with the command's message id as `about`; or
    panel, with the time)."""
    return Event(
        event_id=f"{action}|{chat.key}|{about}",
        chat=chat.key,
        kind=action,
        at=at,
        author=HUMAN,
        data={"by": by},
    )


def dead_letter_event(
    chat: ChatRef, *, about: str, reply: str, unsent: Sequence[str], error: str, attempts: int, at: float
) -> Event:
    """A reply given up on (kept in the dead letters for the owner to retry or discard)."""
    return Event(
        event_id=f"{DEAD_LETTER}|{chat.key}|{about}",
        chat=chat.key,
        kind=DEAD_LETTER,
        at=at,
        author=BOT,
        text=reply,
        delivery="failed",
        data={"error": error, "unsent_parts": len(unsent), "attempts": attempts},
    )


def usage_data(calls: Sequence[Usage], cost_usd: float) -> dict[str, Any]:
    """A reply's model calls as its first part's row keeps them (`data.usage`): provider, model and tokens of each,
    their sum and their cost (MODEL_PRICES)."""
    return {
        "calls": [call.to_json() for call in calls],
        "input_tokens": sum(call.input_tokens for call in calls),
        "output_tokens": sum(call.output_tokens for call in calls),
        "cost_usd": round(cost_usd, 6),
    }
