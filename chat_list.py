"""The admin panel's list of chats: every chat with a history, a conversation or a burst being typed, found by
scanning those keys (an owner's read, bounded, never on the webhook's path), with what the list shows of each."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from components import Components
from memory import Turn
from models import ChatRef

MAX_CHATS = 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatSummary:
    chat: ChatRef
    state: str  # open | paused | closed
    paused_until: float | None  # None with state paused = until resumed
    opted_out: bool
    last_at: float
    pending_messages: int
    deadline: float | None
    last_text: str
    last_role: str
    name: str  # the customer's profile name, newest known ("" when the gateway gives none)

    @property
    def badge(self) -> str:
        return "opted_out" if self.opted_out else self.state


def chat_keys(parts: Components) -> list[ChatRef]:
    """The chats Redis knows (at most MAX_CHATS)."""
    client = parts.link.client
    if client is None or not parts.link.available():
        return []
    found: dict[str, None] = {}
    for pattern, chat_of in (
        parts.keys.chats_with_history(),
        parts.keys.chats_with_conversation(),
        parts.keys.chats_pending(),
    ):
        for key in client.scan_iter(match=pattern, count=500):
            found[chat_of(key)] = None
            if len(found) >= MAX_CHATS:
                break
    return [chat for chat in map(ChatRef.parse, found) if chat is not None]


def customer_name(history: list[Turn]) -> str:
    """The newest profile name the history kept (a chat gets one once its first burst is answered)."""
    return next((turn.name for turn in reversed(history) if turn.name), "")


def summaries(
    parts: Components,
    *,
    state: str = "",
    gateway: str = "",
    search: str = "",
    visible: Callable[[ChatRef], bool] = lambda chat: True,
) -> list[ChatSummary]:
    """Every chat's line in the list, newest activity first, filtered by state, gateway and a number or text, of the
    chats `visible` lets through (a tenant's admin sees its own) before anything of them is read."""
    now = time.time()
    rows = []
    for chat in chat_keys(parts):
        if (gateway and chat.gateway != gateway) or not visible(chat):
            continue
        status = parts.conversations.status(chat)
        history = parts.history.recent(chat)
        pending = parts.buffer.pending_info(chat) or {}
        summary = ChatSummary(
            chat=chat,
            state=status.state_at(now, parts.conversations.params_for(chat).idle),
            paused_until=None if status.paused_until in (0.0, math.inf) else status.paused_until,
            opted_out=status.opted_out,
            last_at=max([status.last_at, *(t.at for t in history[-1:])] or [0.0]),
            pending_messages=int(pending.get("messages") or 0),
            deadline=pending.get("deadline"),
            last_text=history[-1].text[:120] if history else "",
            last_role=history[-1].by if history else "",
            name=customer_name(history),
        )
        if state and summary.badge != state:
            continue
        needle = search.strip().lower()
        if needle and all(needle not in t.lower() for t in (chat.chat_id, summary.name, summary.last_text)):
            continue
        rows.append(summary)
    return sorted(rows, key=lambda row: (row.pending_messages > 0, row.last_at), reverse=True)
