"""What the owner does from the panel or the admin API, outside the worker: write to a customer as a person (through
the chat's own gateway, the bot paused as when typing on the phone), and retry or discard a dead letter. These calls
reach the gateway from the owner's request, with its timeouts: never from a webhook.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from archive.events import lifecycle_event, person_message_event, reply_part_event
from buffer import is_human_record, profile_name
from components import Components
from conversation import CLOSE, PAUSE, RESUME, Changes
from errors import SendError
from gateways.simulator import NAME as SIMULATOR
from media import parts_of_records, user_record
from memory import Turn
from models import ChatRef, IncomingMessage

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Outcome:
    ok: bool
    detail: str = ""
    message_id: str = ""


def send_as_person(parts: Components, chat: ChatRef, text: str, *, now: float) -> Outcome:
    """Send `text` to the chat as a person on the business side: the bot pauses for HANDOFF_PAUSE_MINUTES (or, with
    handoff off, until resumed), the text joins the chat's burst so the history keeps it after the customer's
    messages it answers, and its echo is known as the assistant's (it is not a second person's message)."""
    gateway = parts.worker.gateways_for(chat).get(chat.gateway)
    if gateway is None:
        return Outcome(False, f"the {chat.gateway} gateway is not configured")
    parts.conversations.settle(chat, Changes(), now=now, sending=[text])  # its echo is ours
    try:
        message_id = gateway.send_text(chat, text)
    except SendError as exc:
        log.warning("owner's message not sent chat=%s: %s", chat.label, exc)
        return Outcome(False, str(exc))
    seconds = parts.conversations.commands_for(chat).handoff_seconds or float("inf")
    record = IncomingMessage(chat=chat, message_id=message_id or f"panel-{uuid.uuid4().hex}", text=text, from_me=True)
    parts.conversations.business_message(record, action=PAUSE, seconds=seconds, keep=True, now=now, echo_check=False)
    # Archived now, as sent from the panel (the burst it joined archives the same event id again, as a no-op).
    archived = person_message_event(chat, text=text, message_id=record.message_id, at=now, via="panel")
    parts.archive.emit([archived])
    parts.counters.add("handoffs")
    if chat.gateway == SIMULATOR:
        parts.transcript.relabel(chat, message_id, "person")  # the simulator shows who wrote it
    log.info("owner wrote as a person chat=%s: bot paused", chat.label)
    return Outcome(True, message_id=message_id)


STEER_COUNTERS = {PAUSE: "handoffs", RESUME: "bot_resumes", CLOSE: "conversations_closed"}


def steer(parts: Components, chat: ChatRef, action: str, *, seconds: float = 0.0, now: float) -> None:
    """Pause (for `seconds`, math.inf = until resumed), resume or close a chat from the panel or the API: the state
    changes, the counter moves and the archive keeps the event."""
    parts.conversations.business_action(chat, action=action, seconds=seconds, now=now)
    parts.archive.emit([lifecycle_event(chat, action=action, about=f"panel-{now:.3f}", at=now, by="panel")])
    parts.counters.add(STEER_COUNTERS[action])
    log.info("admin %s chat=%s", action, chat.label)


def dead_letter_view(record: dict[str, Any]) -> dict[str, Any]:
    """A dead letter as the API shows it: its chat as `gateway:instance:chat_id` and its tenant beside it."""
    view = {name: record.get(name) for name in ("id", "chat", "reply", "error", "attempts", "at")}
    chat = ChatRef.parse(record.get("chat"))
    if chat is not None:
        view.update(chat=chat.address, tenant=chat.tenant)
    return view


def retry_dead_letter(parts: Components, letter_id: str) -> Outcome | None:
    """Send a dead letter's parts not sent yet, now; on success the burst and the reply go into the history and the
    dead letter is gone, on failure it is kept with the new error. None when there is no such dead letter."""
    record = parts.buffer.take_dead_letter(letter_id)
    if record is None:
        return None
    chat = ChatRef.parse(record.get("chat"))
    if chat is None:
        return Outcome(False, "the dead letter names no chat")
    gateway = parts.worker.gateways_for(chat).get(chat.gateway)
    unsent = [str(part) for part in record.get("unsent") or []]
    sent = 0
    try:
        if gateway is None:
            raise SendError(f"the {chat.gateway} gateway is not configured", transient=False)
        while unsent:
            message_id = gateway.send_text(chat, unsent[0])
            part = reply_part_event(
                chat,
                reply_to=f"dead-letter-{letter_id}",
                index=sent,
                text=unsent[0],
                message_id=message_id,
                at=time.time(),
            )
            parts.archive.emit([part])
            unsent.pop(0)
            sent += 1
    except SendError as exc:
        parts.buffer.put_dead_letter(
            {**record, "unsent": unsent, "error": str(exc), "attempts": int(record.get("attempts") or 0) + 1}
        )
        log.warning("dead letter retried and failed again chat=%s: %s", chat.label, exc)
        return Outcome(False, str(exc))
    messages = [m for m in record.get("messages") or [] if isinstance(m, dict) and not is_human_record(m)]
    customer = user_record(parts_of_records(messages))
    turns = [Turn(role="user", text=customer, at=float(record.get("at") or 0), name=profile_name(messages))]
    turns.append(Turn(role="model", text=str(record.get("reply") or ""), at=time.time()))
    parts.history.append(chat, [turn for turn in turns if turn.text])
    parts.counters.add("dead_letters_retried")
    log.info("dead letter delivered on retry chat=%s", chat.label)
    return Outcome(True)


def discard_dead_letter(parts: Components, letter_id: str) -> bool:
    """Forget a dead letter; False when there is none with that id."""
    found = parts.buffer.take_dead_letter(letter_id) is not None
    if found:
        parts.counters.add("dead_letters_discarded")
    return found
