"""Who answers a due burst, and with what: the AI, a fixed text (the handoff, opt-out, opt-in and out-of-hours
replies) or nobody (a person is handling the chat, the customer opted out, the bot is off at this hour).

Pure: the worker reads the chat's `Status` (conversation.py), calls `decide`, and carries the `Decision` out.
Every time is the server's clock when a message was received (each buffered record's `at`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from buffer import is_human_record, profile_name
from config import Settings
from conversation import Changes, Status
from hours import WEEKDAYS_PT, BusinessHours, describe_when
from keywords import is_whole_message, keyword_set, mentions
from media import parts_of_records, user_record
from memory import Turn

AI, TEXT, NONE = "ai", "text", "none"
NEXT_OPEN_UNKNOWN = "em breve"  # {next_open} when no opening is configured ahead


@dataclass(frozen=True, slots=True, kw_only=True)
class Rules:
    """The settings the decision depends on, with keywords normalised once."""

    idle_seconds: float
    handoff_pause_seconds: float
    handoff_phrases: frozenset[str]
    opt_out_words: frozenset[str]
    opt_in_words: frozenset[str]
    hours: BusinessHours
    bot_hours: str
    handoff_reply: str
    handoff_closed_reply: str
    opt_out_reply: str
    opt_in_reply: str
    out_of_hours_reply: str

    @classmethod
    def from_settings(cls, settings: Settings) -> Rules:
        return cls(
            idle_seconds=settings.conversation_idle_seconds,
            handoff_pause_seconds=settings.handoff_pause_seconds,
            handoff_phrases=keyword_set(settings.handoff_keywords),
            opt_out_words=keyword_set(settings.opt_out_keywords),
            opt_in_words=keyword_set(settings.opt_in_keywords),
            hours=settings.hours,
            bot_hours=settings.bot_hours,
            handoff_reply=settings.handoff_reply,
            handoff_closed_reply=settings.handoff_closed_reply,
            opt_out_reply=settings.opt_out_reply,
            opt_in_reply=settings.opt_in_reply,
            out_of_hours_reply=settings.out_of_hours_reply,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """What to do with a due burst.

    `earlier` are the history turns that come before the messages answered now, in arrival order: customer
    messages a person was handling (sent during a pause, or before the person acted) and the person's own
    messages. `answered` are the customer messages the reply (AI or fixed text) is for; they are kept in the
    history even when nobody answers them (opted out, the hours)."""

    action: str  # ai | text | none
    reason: str  # answer | handoff_request | opt_out | opt_in | out_of_hours | paused | human | opted_out | ...
    text: str = ""  # the fixed reply, for action "text"
    earlier: tuple[Turn, ...] = ()
    answered: tuple[dict[str, Any], ...] = ()
    changes: Changes = field(default_factory=Changes)
    skipped: int = 0  # customer messages not answered because a person handles the chat
    notify: bool = False  # a customer asked for a person: tell HANDOFF_NOTIFY_URL
    conversation_since: float = 0.0  # when the conversation of the answered messages began

    def user_turn(self, at: float) -> list[Turn]:
        """The answered messages as one customer turn (media in words), or nothing."""
        text = user_record(parts_of_records(self.answered))
        return [Turn(role="user", text=text, at=at, name=profile_name(self.answered))] if text else []


def _at(record: dict[str, Any], default: float) -> float:
    try:
        return float(record.get("at") or default)
    except (TypeError, ValueError):
        return default


def _text(record: dict[str, Any]) -> str:
    return str(record.get("text") or "")


def decide(messages: Sequence[dict[str, Any]], status: Status, rules: Rules, *, now: float) -> Decision:
    """Decide for a due burst (its buffered records, customer and human, in arrival order)."""
    walk = _Walk(status, rules.idle_seconds)
    for record in messages:
        walk.add(record, _at(record, now))
    earlier = walk.finish()
    answered = tuple(walk.candidates)
    ats = [_at(record, now) for record in messages]
    customer_ats = [_at(record, now) for record in messages if not is_human_record(record)]
    base = Decision(
        action=NONE,
        reason="paused" if walk.skipped else "human",
        earlier=tuple(earlier),
        answered=answered,
        changes=Changes(first_at=min(customer_ats) if customer_ats else None, last_at=max(ats) if ats else None),
        skipped=walk.skipped,
        conversation_since=walk.since,
    )
    if not answered:
        return base
    if not parts_of_records(answered):  # nothing to answer (no text, no media): kept as is, not answered
        return replace(base, reason="empty")
    return _for_customer(base, status, rules, fresh=walk.reset)


def _for_customer(base: Decision, status: Status, rules: Rules, *, fresh: bool) -> Decision:
    """The decision for the customer messages nobody on the business side is handling."""
    texts = [_text(record) for record in base.answered]
    at = _at(base.answered[-1], base.changes.last_at or 0.0)
    last_keyword = next(
        (kind for text in reversed(texts) for kind in _keyword_kinds(text, rules) if kind in ("out", "in")), ""
    )
    if status.opted_out:
        if last_keyword == "in":
            return _reply(base, "opt_in", rules.opt_in_reply, opt="in")
        return replace(base, reason="opted_out")
    if last_keyword == "out":
        return _reply(base, "opt_out", rules.opt_out_reply, opt="out")
    asking = next((record for record in base.answered if mentions(_text(record), rules.handoff_phrases)), None)
    if asking is not None:
        return _handoff_request(base, rules, _at(asking, at))
    if rules.hours.always_open:
        return replace(base, action=AI, reason="answer")
    is_open = rules.hours.is_open(at)
    if rules.bot_hours == "business" and not is_open:
        period = rules.hours.closed_period(at)
        if status.notice_for == period and not fresh:
            return replace(base, reason="out_of_hours_told")
        decision = _reply(base, "out_of_hours", _fill(rules.out_of_hours_reply, rules.hours, at))
        return replace(decision, changes=replace(decision.changes, notice_for=period))
    if rules.bot_hours == "outside" and is_open:
        return replace(base, reason="business_hours")
    return replace(base, action=AI, reason="answer")


def _keyword_kinds(text: str, rules: Rules) -> list[str]:
    kinds = []
    if is_whole_message(text, rules.opt_out_words):
        kinds.append("out")
    if is_whole_message(text, rules.opt_in_words):
        kinds.append("in")
    return kinds


def _reply(base: Decision, reason: str, text: str, *, opt: str = "") -> Decision:
    """A fixed reply (none when the owner set that text empty), with the opt-out change it carries."""
    changes = replace(base.changes, opt=opt) if opt else base.changes
    return replace(base, action=TEXT if text.strip() else NONE, reason=reason, text=text.strip(), changes=changes)


def _handoff_request(base: Decision, rules: Rules, asked_at: float) -> Decision:
    """One HANDOFF_REPLY (HANDOFF_CLOSED_REPLY while nobody is there), and the chat paused from the request on:
    for HANDOFF_PAUSE_MINUTES, or, when closed, until the next opening plus that."""
    closed = not rules.hours.always_open and not rules.hours.is_open(asked_at)
    text = _fill(rules.handoff_closed_reply, rules.hours, asked_at) if closed else rules.handoff_reply
    decision = replace(_reply(base, "handoff_request", text), notify=True)
    seconds = rules.handoff_pause_seconds
    if not seconds:  # handoff off: the request is answered, the bot goes on answering
        return decision
    next_open = rules.hours.next_open(asked_at) if closed else None
    if next_open is not None:
        seconds += max(next_open.timestamp() - asked_at, 0.0)
    return replace(decision, changes=replace(decision.changes, pause_from=asked_at, pause_seconds=seconds))


def _fill(template: str, hours: BusinessHours, at: float) -> str:
    """`{next_open}` in the customer's words ("segunda-feira às 08:00"); other braces are left alone."""
    if "{next_open}" not in template:
        return template
    next_open = hours.next_open(at)
    words = NEXT_OPEN_UNKNOWN
    if next_open is not None:
        words = describe_when(next_open, datetime.fromtimestamp(at, next_open.tzinfo))
    return template.replace("{next_open}", words)


class _Walk:
    """Goes through a burst in arrival order, sorting customer messages into those a person handles (before a
    person's message or action, or sent during a pause) and those left for the bot (`candidates`)."""

    def __init__(self, status: Status, idle: float) -> None:
        self.status = status
        self.idle = idle
        self.reset = False  # the conversation closed before some message of this burst: a new one began
        self.since = status.opened_at
        self.last = status.last_at
        self.turns: list[Turn] = []
        self.handled: list[dict[str, Any]] = []  # customer messages a person is handling, not yet in a turn
        self.candidates: list[dict[str, Any]] = []
        self.skipped = 0

    def add(self, record: dict[str, Any], at: float) -> None:
        self._open_if_closed(at)
        if not self.reset and self.status.state != "closed" and at < self.since:
            self.since = at  # it came in before the person's message that opened the conversation
        self.last = max(self.last, at)
        if is_human_record(record):
            # The person answered whatever came before: those messages and the person's go into the history.
            self.handled += self.candidates
            self.candidates = []
            self._flush(at)
            text = user_record(parts_of_records([record]))
            if text:
                self.turns.append(Turn(role="model", text=text, at=at, author="human"))
            return
        if self._person_handles(at):
            self.handled += self.candidates + [record]
            self.candidates = []
        else:
            self.candidates.append(record)

    def _open_if_closed(self, at: float) -> None:
        closed = self.status.starts_new_conversation(at, self.idle) if not self.reset else at - self.last > self.idle
        if closed:
            self.reset = True
            self.since = at

    def _person_handles(self, at: float) -> bool:
        """A person acted in the chat after this message, or it came during a pause of this conversation."""
        status = self.status
        if at <= status.business_at and status.business_at >= self.since:
            return True
        return status.paused_at_time(at) and (not self.reset or status.paused_at >= self.since)

    def _flush(self, at: float) -> None:
        if self.handled:
            self.skipped += len(self.handled)
            text = user_record(parts_of_records(self.handled))
            if text:
                self.turns.append(Turn(role="user", text=text, at=_at(self.handled[-1], at)))
            self.handled = []

    def finish(self) -> list[Turn]:
        self._flush(self.last)
        return self.turns


def dated(turns: Sequence[Turn], since: float, hours: BusinessHours) -> tuple[list[Turn], bool]:
    """The history for the prompt: turns of earlier conversations (before `since`) carry their date, so the bot
    can say "como falamos ontem". Returns the turns and whether any was marked."""
    marked = False
    out = []
    for turn in turns:
        if since and 0 < turn.at < since:
            when = datetime.fromtimestamp(turn.at, hours.timezone).strftime("%d/%m/%Y %H:%M")
            turn = replace(turn, text=f"[conversa anterior, {when}] {turn.text}")
            marked = True
        out.append(turn)
    return out, marked


def now_note(now: float, hours: BusinessHours) -> str:
    """The current date and time for the system instruction, when earlier conversations are in the prompt."""
    moment = datetime.fromtimestamp(now, hours.timezone)
    return (
        f"Agora é {WEEKDAYS_PT[moment.weekday()]}, {moment:%d/%m/%Y %H:%M}. Mensagens marcadas com "
        "[conversa anterior, data] são de conversas anteriores com este cliente."
    )
