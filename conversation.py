"""A chat's conversation state, shared by every process and host through Redis: the human handoff pause, the
opt-out, the lifecycle (open, paused, closed) and the out-of-hours notice already given; and the record of what
the assistant is sending, so that its own echoes are never taken for a person's messages.

Every change is one Lua script (atomic across processes). While Redis is unreachable an in-process store with
the same rules takes over; opt-outs and opt-ins decided meanwhile are written to Redis once it answers again.
What to do with a due burst is decided elsewhere (reply_policy.py), from the `Status` read here.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from typing import Any

import redis

from buffer import PUSH_PENDING_LUA, AnsweredScript, Buffer, encode_message
from config import Settings
from keywords import normalize
from models import ChatRef, IncomingMessage
from redis_keys import RedisKeys
from redis_link import RedisLink

log = logging.getLogger(__name__)

# How long a reply part's text marks an echo with the same text as the assistant's own. Evolution posts
# `send.message` (and may post the fromMe `messages.upsert`) before sendText returns the id, within seconds;
# later echoes are known by the id the send returned.
ECHO_WINDOW_SECONDS = 15 * 60
TTL_MARGIN_SECONDS = 24 * 3600  # a closed conversation's record is kept a day longer, for the API to show

PAUSE, RESUME, CLOSE = "pause", "resume", "close"
INFINITE = "inf"

# ----- Lua -------------------------------------------------------------------------------------------------

# Functions shared by the scripts below. Times are passed as the strings the caller formatted and stored as is.
CONVERSATION_LUA = """
local function open_if_closed(conv, at_str, idle)
  -- A message or action at `at` after the conversation closed (by a command, the API or idleness) opens a new
  -- one: no pause, no notice given, opened at `at`.
  local at = tonumber(at_str)
  local c = redis.call('HMGET', conv, 'state', 'last_at', 'closed_at')
  local closed = (not c[1])
    or (c[1] == 'closed' and at > tonumber(c[3] or '0'))
    or (c[2] and at - tonumber(c[2]) > tonumber(idle))
  if closed then
    redis.call('DEL', conv)
    redis.call('HSET', conv, 'state', 'open', 'opened_at', at_str, 'last_at', at_str)
  end
end

local function reach_back(conv, at_str)
  -- A burst's first message came before the person's message that opened this conversation: it opened then.
  local c = redis.call('HMGET', conv, 'state', 'opened_at')
  if c[1] and c[1] ~= 'closed' and c[2] and tonumber(at_str) < tonumber(c[2]) then
    redis.call('HSET', conv, 'opened_at', at_str)
  end
end

local function touch(conv, at_str)
  local last = tonumber(redis.call('HGET', conv, 'last_at') or '0')
  if tonumber(at_str) > last then redis.call('HSET', conv, 'last_at', at_str) end
end

local function is_paused(conv, now)
  local c = redis.call('HMGET', conv, 'state', 'paused_until')
  return c[1] == 'paused' and c[2] ~= false and (c[2] == 'inf' or tonumber(c[2]) > now)
end

local function pause(conv, start_str, seconds)
  -- Pause from `start` for `seconds` ('inf' = until resumed); a pause in force is only ever lengthened.
  local start = tonumber(start_str)
  local untilv = seconds
  if seconds ~= 'inf' then untilv = start + tonumber(seconds) end
  if is_paused(conv, start) then
    local current = redis.call('HGET', conv, 'paused_until')
    if current == 'inf' then
      untilv = 'inf'
    elseif untilv ~= 'inf' and tonumber(current) > untilv then
      untilv = tonumber(current)
    end
  else
    redis.call('HSET', conv, 'paused_at', start_str)
  end
  if untilv ~= 'inf' then untilv = string.format('%.3f', untilv) end
  redis.call('HSET', conv, 'state', 'paused', 'paused_until', untilv)
end

local function business_action(conv, action, now_str, seconds, idle, ttl)
  -- A person on the business side acted in the chat at `now`: pause, resume or close it.
  open_if_closed(conv, now_str, idle)
  if action == 'pause' then
    pause(conv, now_str, seconds)
  elseif action == 'resume' then
    redis.call('HSET', conv, 'state', 'open')
    redis.call('HDEL', conv, 'paused_at', 'paused_until')
  elseif action == 'close' then
    redis.call('HSET', conv, 'state', 'closed', 'closed_at', now_str)
    redis.call('HDEL', conv, 'paused_at', 'paused_until', 'notice_for')
  end
  redis.call('HSET', conv, 'business_at', now_str)
  touch(conv, now_str)
  redis.call('EXPIRE', conv, ttl)
  return redis.call('HGET', conv, 'state')
end
"""

# KEYS: 1 own-message marker of this id, 2 outbox, 3 seen, 4 conversation, 5 pending, 6 meta, 7 due, 8 leases,
#       9 echoes
# ARGV: 1 now, 2 text hash ('' = not a text), 3 echo window s, 4 dedup ttl s, 5 action (pause|resume|close),
#       6 pause seconds or 'inf', 7 record JSON to keep in the burst ('' = none), 8 chat key, 9 debounce s,
#       10 max wait s, 11 idle s, 12 conversation ttl s
# Returns 'own' (an echo of the assistant's own message, noted in the echoes), 'dup' (this id was seen), else the
# state after it.
BUSINESS_MESSAGE_LUA = (
    PUSH_PENDING_LUA
    + CONVERSATION_LUA
    + """
local now = tonumber(ARGV[1])
local function own()
  if ARGV[2] ~= '' then
    redis.call('ZADD', KEYS[9], now, ARGV[2])
    redis.call('ZREMRANGEBYSCORE', KEYS[9], '-inf', now - tonumber(ARGV[3]))
    redis.call('EXPIRE', KEYS[9], ARGV[3])
  end
  return 'own'
end
if redis.call('EXISTS', KEYS[1]) == 1 then return own() end
if ARGV[2] ~= '' then
  local marked = redis.call('ZSCORE', KEYS[2], ARGV[2])
  if marked and tonumber(marked) >= now - tonumber(ARGV[3]) then
    redis.call('SET', KEYS[1], '1', 'EX', ARGV[4])
    return own()
  end
end
if not redis.call('SET', KEYS[3], '1', 'NX', 'EX', ARGV[4]) then return 'dup' end
local state = business_action(KEYS[4], ARGV[5], ARGV[1], ARGV[6], ARGV[11], ARGV[12])
if ARGV[7] ~= '' then
  push_pending(KEYS[5], KEYS[6], KEYS[7], KEYS[8], ARGV[8], ARGV[7], ARGV[1], ARGV[9], ARGV[10])
end
return state
"""
)

# KEYS: 1 conversation
# ARGV: 1 action (pause|resume|close), 2 now, 3 pause seconds or 'inf', 4 idle s, 5 conversation ttl s
# Returns the state after it.
BUSINESS_ACTION_LUA = (
    CONVERSATION_LUA
    + """
return business_action(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
"""
)

# KEYS: 1 conversation, 2 opt-out, 3 outbox, [4 the batch's meta (see buffer.py)]
# ARGV: 1 now, 2 first message time ('' = none), 3 last message time ('' = none), 4 pause start ('' = none),
#       5 pause seconds or 'inf', 6 closed period told ('' = none), 7 opt ('out'|'in'|''), 8 idle s,
#       9 conversation ttl s, 10 business_at the decision was made with ('' = do not check), 11 echo window s,
#       12 the claim's token ('' = no check), 13... hashes of the reply parts about to be sent
# With a token, does nothing and returns -1 unless that claim still holds the batch (a settle in the fence's round
# trip runs after the fence whether or not it held). Records what a due burst's decision changes; then, when parts
# are about to be sent, returns 0 without marking them if a person acted in the chat after the decision was made
# (the person answers), else marks them and returns 1.
SETTLE_LUA = (
    CONVERSATION_LUA
    + """
if ARGV[12] ~= '' and redis.call('HGET', KEYS[4], 'token') ~= ARGV[12] then return -1 end
local conv = KEYS[1]
if ARGV[2] ~= '' then
  open_if_closed(conv, ARGV[2], ARGV[8])
  reach_back(conv, ARGV[2])
end
if ARGV[3] ~= '' then touch(conv, ARGV[3]) end
if ARGV[4] ~= '' then pause(conv, ARGV[4], ARGV[5]) end
if ARGV[6] ~= '' then redis.call('HSET', conv, 'notice_for', ARGV[6]) end
if redis.call('EXISTS', conv) == 1 then redis.call('EXPIRE', conv, ARGV[9]) end
if ARGV[7] == 'out' then redis.call('SET', KEYS[2], ARGV[1]) end
if ARGV[7] == 'in' then redis.call('DEL', KEYS[2]) end
if ARGV[10] ~= '' and tonumber(redis.call('HGET', conv, 'business_at') or '0') > tonumber(ARGV[10]) then
  return 0
end
if #ARGV >= 13 then
  local now = tonumber(ARGV[1])
  for i = 13, #ARGV do redis.call('ZADD', KEYS[3], now, ARGV[i]) end
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[11]))
  redis.call('EXPIRE', KEYS[3], ARGV[11])
end
return 1
"""
)


# ----- values ----------------------------------------------------------------------------------------------


def text_hash(text: str) -> str:
    """The short hash a reply part and its echo are matched by (surrounding whitespace ignored)."""
    return hashlib.sha1(text.strip().encode("utf-8")).hexdigest()[:16]


def stamp(at: float) -> str:
    """A time as the scripts store it."""
    return f"{at:.3f}"


def _float(value: Any) -> float:
    if value in (None, ""):
        return 0.0
    return math.inf if value == INFINITE else float(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class Status:
    """A chat's conversation as stored, read once per due burst. Times are unix seconds (0 = never)."""

    state: str = ""  # open | paused | closed as last written ('' = no conversation yet)
    paused_at: float = 0.0
    paused_until: float = 0.0  # math.inf = until resumed
    business_at: float = 0.0  # the last time a person on the business side acted in the chat
    last_at: float = 0.0  # the last message of the conversation
    opened_at: float = 0.0
    closed_at: float = 0.0
    notice_for: str = ""  # the closed period whose out-of-hours notice was sent
    opted_out: bool = False

    @classmethod
    def from_fields(cls, fields: dict[str, str], *, opted_out: bool) -> Status:
        return cls(
            state=fields.get("state", ""),
            paused_at=_float(fields.get("paused_at")),
            paused_until=_float(fields.get("paused_until")),
            business_at=_float(fields.get("business_at")),
            last_at=_float(fields.get("last_at")),
            opened_at=_float(fields.get("opened_at")),
            closed_at=_float(fields.get("closed_at")),
            notice_for=fields.get("notice_for", ""),
            opted_out=opted_out,
        )

    def starts_new_conversation(self, at: float, idle: float) -> bool:
        """True when a message at `at` comes after this conversation closed (by a command or idleness)."""
        if not self.state:
            return True
        if self.state == "closed" and at > self.closed_at:
            return True
        return bool(self.last_at) and at - self.last_at > idle

    def paused_at_time(self, at: float) -> bool:
        """True when `at` falls in the pause in force (the caller checks the conversation did not close first)."""
        return self.state == "paused" and self.paused_at <= at < self.paused_until

    def state_at(self, now: float, idle: float) -> str:
        """open | paused | closed at `now`: a pause ends by itself, a conversation closes when idle (or by a
        command, until the next message opens another)."""
        if self.state == "closed" or self.starts_new_conversation(now, idle):
            return "closed"
        return "paused" if self.paused_at_time(now) else "open"


@dataclass(frozen=True, slots=True, kw_only=True)
class Changes:
    """What a due burst's decision changes in the conversation (see SETTLE_LUA)."""

    first_at: float | None = None  # the burst's first customer message: opens a new conversation if it closed
    last_at: float | None = None  # the burst's last message
    pause_from: float | None = None  # the customer asked for a person: pause from then...
    pause_seconds: float = 0.0  # ...for this long (math.inf = until resumed)
    notice_for: str = ""  # the closed period whose notice is being sent
    opt: str = ""  # "out" | "in" | ""

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclass_fields(self)}
        if data["pause_seconds"] == math.inf:
            data["pause_seconds"] = INFINITE
        return {name: value for name, value in data.items() if value not in (None, "", 0.0)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Changes:
        names = {f.name for f in dataclass_fields(cls)}
        values = {name: value for name, value in data.items() if name in names}
        if values.get("pause_seconds") == INFINITE:
            values["pause_seconds"] = math.inf
        return cls(**values)


def pause_argument(seconds: float) -> str:
    return INFINITE if seconds == math.inf else f"{seconds:.3f}"


# ----- stores ----------------------------------------------------------------------------------------------


class FencedSettle(AnsweredScript):
    """A settle queued in the fence's round trip (RedisConversations.fenced_settle), read once it ran."""

    @property
    def held(self) -> bool:
        """False when the claim no longer held the batch as the settle ran: nothing was recorded."""
        return self.answer is not None and int(self.answer) != -1

    @property
    def go_ahead(self) -> bool:
        """The settle's answer: True when the parts may go out (and are marked as the assistant's)."""
        return self.answer is not None and int(self.answer) == 1


class RedisConversations:
    """The shared store: each method is one script call or one pipeline."""

    def __init__(self, client: redis.Redis, keys: RedisKeys) -> None:
        self.client = client
        self.keys = keys
        self._business_message = client.register_script(BUSINESS_MESSAGE_LUA)
        self._business_action = client.register_script(BUSINESS_ACTION_LUA)
        self._settle = client.register_script(SETTLE_LUA)

    def status(self, chat: ChatRef) -> Status:
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.conversation(chat.key))
            pipe.exists(self.keys.opt_out(chat.key))
            fields, opted_out = pipe.execute()
        return Status.from_fields(fields, opted_out=bool(opted_out))

    def business_message(
        self,
        message: IncomingMessage,
        *,
        action: str,
        seconds: float,
        keep: bool,
        now: float,
        p: Params,
        echo_check: bool = True,
    ) -> str:
        chat = message.chat.key
        k = self.keys
        shard = k.shard(chat)
        record = encode_message(message, now) if keep else ""
        return str(
            self._business_message(
                keys=[
                    k.own_message(chat, message.message_id),
                    k.outbox(chat),
                    k.seen(chat, message.message_id),
                    k.conversation(chat),
                    k.pending(chat),
                    k.meta(chat),
                    k.due(shard),
                    k.leases(shard),
                    k.echoes(chat),
                ],
                args=[
                    stamp(now),
                    text_hash(message.text) if echo_check and message.kind == "text" and message.text else "",
                    ECHO_WINDOW_SECONDS,
                    p.dedup_ttl,
                    action,
                    pause_argument(seconds),
                    record,
                    chat,
                    p.debounce,
                    p.max_wait,
                    p.idle,
                    p.ttl,
                ],
            )
        )

    def business_action(self, chat: ChatRef, *, action: str, seconds: float, now: float, p: Params) -> str:
        return str(
            self._business_action(
                keys=[self.keys.conversation(chat.key)],
                args=[action, stamp(now), pause_argument(seconds), p.idle, p.ttl],
            )
        )

    def settle(
        self, chat: ChatRef, changes: Changes, *, now: float, sending: list[str], decided_with: float | None, p: Params
    ) -> bool:
        keys, args = self._settle_call(chat, changes, now=now, sending=sending, decided_with=decided_with, p=p)
        return bool(self._settle(keys=keys, args=args))

    def fenced_settle(
        self,
        chat: ChatRef,
        changes: Changes,
        *,
        token: str,
        now: float,
        sending: list[str],
        decided_with: float | None,
        p: Params,
    ) -> FencedSettle:
        """`settle`, as a hook for the fence's round trip: it records nothing unless the claim `token` still holds
        the chat's batch when it runs."""
        keys, args = self._settle_call(
            chat, changes, now=now, sending=sending, decided_with=decided_with, p=p, token=token
        )
        return FencedSettle(self._settle, keys, args)

    def _settle_call(
        self,
        chat: ChatRef,
        changes: Changes,
        *,
        now: float,
        sending: list[str],
        decided_with: float | None,
        p: Params,
        token: str = "",
    ) -> tuple[list[str], list[Any]]:
        k = self.keys
        args: list[Any] = [
            stamp(now),
            "" if changes.first_at is None else stamp(changes.first_at),
            "" if changes.last_at is None else stamp(changes.last_at),
            "" if changes.pause_from is None else stamp(changes.pause_from),
            pause_argument(changes.pause_seconds),
            changes.notice_for,
            changes.opt,
            p.idle,
            p.ttl,
            "" if decided_with is None else stamp(decided_with),
            ECHO_WINDOW_SECONDS,
            token,
            *sending,
        ]
        keys = [k.conversation(chat.key), k.opt_out(chat.key), k.outbox(chat.key)]
        if token:
            keys.append(k.meta(chat.key))
        return keys, args

    def mark_sent(self, chat: ChatRef, message_id: str, *, dedup_ttl: int) -> None:
        self.client.set(self.keys.own_message(chat.key, message_id), "1", ex=dedup_ttl)

    def echo_seen(self, chat: ChatRef, hashed: str, since: float) -> bool:
        at = self.client.zscore(self.keys.echoes(chat.key), hashed)
        return at is not None and at >= since

    def set_opt_out(self, chat: ChatRef, opted_out: bool, at: float) -> None:
        key = self.keys.opt_out(chat.key)
        if opted_out:
            self.client.set(key, stamp(at))
        else:
            self.client.delete(key)


@dataclass(frozen=True, slots=True)
class Params:
    """The settings every state change needs, in the units the scripts take."""

    debounce: float
    max_wait: float
    dedup_ttl: int
    idle: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Params:
        return cls(
            debounce=settings.debounce_seconds,
            max_wait=settings.debounce_max_wait_seconds,
            dedup_ttl=settings.dedup_ttl_seconds,
            idle=settings.conversation_idle_seconds,
        )

    @property
    def ttl(self) -> int:
        return int(self.idle) + TTL_MARGIN_SECONDS


@dataclass(slots=True)
class _LocalChat:
    fields: dict[str, str] = field(default_factory=dict)
    outbox: dict[str, float] = field(default_factory=dict)  # text hash -> marked at
    echoes: dict[str, float] = field(default_factory=dict)  # text hash -> an own echo came back at


class LocalConversations:
    """In-process stand-in while Redis is unreachable: the same rules as the scripts, for this process only."""

    MAX_IDS = 100_000

    def __init__(self) -> None:
        self._chats: dict[str, _LocalChat] = {}
        self._own_ids: dict[str, float] = {}  # chat:id -> expiry
        self._seen: dict[str, float] = {}  # chat:id -> expiry, for commands (messages dedupe in the buffer)
        self.opted_out: dict[str, bool] = {}  # chat -> opted out, as last known (read from Redis or decided here)
        self.unsynced: dict[str, tuple[bool, float]] = {}  # chat -> (opted out, at), decided during an outage
        self._lock = threading.Lock()

    def _chat(self, chat: ChatRef) -> _LocalChat:
        return self._chats.setdefault(chat.key, _LocalChat())

    def forget_chat(self, chat_key: str) -> int:
        """Drop everything this process holds of one chat (an erasure); returns how many items."""
        prefix = f"{chat_key}:"
        with self._lock:
            self.opted_out.pop(chat_key, None)  # a cache of what Redis said, not data of its own
            dropped = sum(int(store.pop(chat_key, None) is not None) for store in (self._chats, self.unsynced))
            for ids in (self._own_ids, self._seen):
                for key in [key for key in ids if key.startswith(prefix)]:
                    del ids[key]
                    dropped += 1
        return dropped

    def status(self, chat: ChatRef) -> Status:
        with self._lock:
            fields = dict(self._chats[chat.key].fields) if chat.key in self._chats else {}
            return Status.from_fields(fields, opted_out=self.opted_out.get(chat.key, False))

    def is_own(self, message: IncomingMessage, now: float) -> bool:
        with self._lock:
            self._forget(now)
            id_key = f"{message.chat.key}:{message.message_id}"
            hashed = text_hash(message.text) if message.kind == "text" and message.text else ""
            local = self._chat(message.chat)
            marked = local.outbox.get(hashed) if hashed else None
            own = self._own_ids.get(id_key, 0.0) > now or (marked is not None and marked >= now - ECHO_WINDOW_SECONDS)
            if own:
                if self._own_ids.get(id_key, 0.0) <= now:
                    self._own_ids[id_key] = now + ECHO_WINDOW_SECONDS
                if hashed:
                    local.echoes[hashed] = now
            return own

    def echo_seen(self, chat: ChatRef, hashed: str, since: float) -> bool:
        with self._lock:
            at = self._chat(chat).echoes.get(hashed)
            return at is not None and at >= since

    def first_sight(self, message: IncomingMessage, now: float, dedup_ttl: int) -> bool:
        """False when this command's id was seen before (messages kept in the burst dedupe in the buffer)."""
        with self._lock:
            key = f"{message.chat.key}:{message.message_id}"
            if self._seen.get(key, 0.0) > now:
                return False
            self._seen[key] = now + dedup_ttl
            return True

    def business_action(self, chat: ChatRef, *, action: str, seconds: float, now: float, p: Params) -> str:
        with self._lock:
            fields = self._chat(chat).fields
            _open_if_closed(fields, now, p.idle)
            if action == PAUSE:
                _pause(fields, now, seconds)
            elif action == RESUME:
                fields["state"] = "open"
                _drop(fields, "paused_at", "paused_until")
            elif action == CLOSE:
                fields.update(state="closed", closed_at=stamp(now))
                _drop(fields, "paused_at", "paused_until", "notice_for")
            fields["business_at"] = stamp(now)
            _touch(fields, now)
            return fields["state"]

    def settle(
        self, chat: ChatRef, changes: Changes, *, now: float, sending: list[str], decided_with: float | None, p: Params
    ) -> bool:
        with self._lock:
            local = self._chat(chat)
            fields = local.fields
            if changes.first_at is not None:
                _open_if_closed(fields, changes.first_at, p.idle)
                if fields.get("state") != "closed" and changes.first_at < _float(fields.get("opened_at")):
                    fields["opened_at"] = stamp(changes.first_at)
            if changes.last_at is not None:
                _touch(fields, changes.last_at)
            if changes.pause_from is not None:
                _pause(fields, changes.pause_from, changes.pause_seconds)
            if changes.notice_for:
                fields["notice_for"] = changes.notice_for
            if changes.opt:
                self.opted_out[chat.key] = changes.opt == "out"
                self.unsynced[chat.key] = (changes.opt == "out", now)
            if decided_with is not None and _float(fields.get("business_at")) > decided_with:
                return False
            for hashed in sending:
                local.outbox[hashed] = now
            for hashed in [h for h, at in local.outbox.items() if at < now - ECHO_WINDOW_SECONDS]:
                del local.outbox[hashed]
            return True

    def mark_sent(self, chat: ChatRef, message_id: str, *, now: float, dedup_ttl: int) -> None:
        with self._lock:
            self._own_ids[f"{chat.key}:{message_id}"] = now + dedup_ttl

    def _forget(self, now: float) -> None:
        """Caller holds the lock: drop expired ids (and the oldest, past MAX_IDS)."""
        for table in (self._own_ids, self._seen):
            if len(table) > self.MAX_IDS // 2:
                for key in [key for key, expiry in table.items() if expiry <= now][: self.MAX_IDS]:
                    del table[key]
                while len(table) > self.MAX_IDS:
                    del table[next(iter(table))]


def _open_if_closed(fields: dict[str, str], at: float, idle: float) -> None:
    status = Status.from_fields(fields, opted_out=False)
    if status.starts_new_conversation(at, idle):
        fields.clear()
        fields.update(state="open", opened_at=stamp(at), last_at=stamp(at))


def _touch(fields: dict[str, str], at: float) -> None:
    if at > _float(fields.get("last_at")):
        fields["last_at"] = stamp(at)


def _pause(fields: dict[str, str], start: float, seconds: float) -> None:
    status = Status.from_fields(fields, opted_out=False)
    until = start + seconds
    if status.state == "paused" and status.paused_until > start:
        until = max(until, status.paused_until)
    else:
        fields["paused_at"] = stamp(start)
    fields.update(state="paused", paused_until=INFINITE if until == math.inf else stamp(until))


def _drop(fields: dict[str, str], *names: str) -> None:
    for name in names:
        fields.pop(name, None)


# ----- the facade ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Commands:
    """What a person on the business side may type in a chat (never answered, never kept as text), and how long
    their other messages pause the bot (0 = handoff off: such messages are ignored)."""

    pause: str = "#humano"  # pause until resumed
    resume: str = "#bot"
    close: str = "#encerrar"
    handoff_seconds: float = 7200.0

    @classmethod
    def from_settings(cls, settings: Settings) -> Commands:
        return cls(
            pause=settings.bot_pause_keyword,
            resume=settings.bot_resume_keyword,
            close=settings.bot_close_keyword,
            handoff_seconds=settings.handoff_pause_seconds,
        )

    def action_for(self, message: IncomingMessage) -> tuple[str, float, bool] | None:
        """(action, pause seconds, keep the message in the history) for a business-side message, or None when it
        is to be ignored."""
        typed = normalize(message.text) if message.kind == "text" else ""
        if typed == normalize(self.pause):
            return PAUSE, math.inf, False
        if typed == normalize(self.resume):
            return RESUME, 0.0, False
        if typed == normalize(self.close):
            return CLOSE, 0.0, False
        if self.handoff_seconds <= 0:
            return None
        return PAUSE, self.handoff_seconds, True


class Conversations:
    """Conversation state for the webhook, the worker and the admin API: Redis when reachable, this process's
    memory otherwise (see RedisLink.run). `params` and `commands` are the deployment's; with several businesses,
    `tuned(chat)` gives those of the chat's business (None: the deployment's)."""

    def __init__(
        self,
        link: RedisLink,
        keys: RedisKeys,
        buffer: Buffer,
        *,
        params: Params,
        commands: Commands | None = None,
        tuned: Callable[[ChatRef], tuple[Params, Commands] | None] | None = None,
    ) -> None:
        self.link = link
        self.redis = RedisConversations(link.client, keys) if link.client is not None else None
        self.local = LocalConversations()
        self.buffer = buffer
        self.params = params
        self.commands = commands or Commands()
        self.tuned = tuned

    def params_for(self, chat: ChatRef) -> Params:
        """The debounce, dedupe and idle time of this chat's business."""
        found = self.tuned(chat) if self.tuned is not None else None
        return found[0] if found is not None else self.params

    def commands_for(self, chat: ChatRef) -> Commands:
        """What a person on this chat's business side may type, and how long their messages pause the bot."""
        found = self.tuned(chat) if self.tuned is not None else None
        return found[1] if found is not None else self.commands

    def _shared(self, on_redis: Callable[[RedisConversations], Any], fallback: Callable[[], Any]) -> Any:
        store = self.redis
        if store is None:
            return fallback()

        def call(_: redis.Redis) -> Any:
            self._sync_opt_outs(store)
            return on_redis(store)

        return self.link.run(call, fallback)

    def _sync_opt_outs(self, store: RedisConversations) -> None:
        """Write the opt-outs and opt-ins decided during an outage to Redis (stop must mean stop everywhere)."""
        while self.local.unsynced:
            with self.local._lock:
                if not self.local.unsynced:
                    return
                chat_key, (opted_out, at) = next(iter(self.local.unsynced.items()))
            store.set_opt_out(ChatRef.from_key(chat_key), opted_out, at)
            with self.local._lock:
                if self.local.unsynced.get(chat_key) == (opted_out, at):
                    del self.local.unsynced[chat_key]

    def status(self, chat: ChatRef, *, read: tuple[dict[str, str], bool] | None = None) -> Status:
        """The chat's conversation as stored (remembering its opt-out here, in case Redis goes away). `read` is
        what the buffer's claim already read from Redis (its fields and opt-out), saving a round trip."""

        def remembered(status: Status) -> Status:
            with self.local._lock:
                if chat.key not in self.local.unsynced:
                    self.local.opted_out[chat.key] = status.opted_out
            return status

        if read is not None:
            return remembered(Status.from_fields(read[0], opted_out=read[1]))
        return self._shared(lambda store: remembered(store.status(chat)), lambda: self.local.status(chat))

    def from_business_side(self, message: IncomingMessage, *, now: float) -> str:
        """A message typed on the business side of a chat (`from_me`): "own_echo" (the assistant's own message
        coming back), "duplicate", "ignored" (handoff off), or the action it took: "pause", "resume", "close"."""
        command = self.commands_for(message.chat).action_for(message)
        if command is None:
            return "ignored"
        now = round(now, 3)  # as stored, so that a status read at `now` sees what was written at `now`
        action, seconds, keep = command
        result = self.business_message(message, action=action, seconds=seconds, keep=keep, now=now)
        return {"own": "own_echo", "dup": "duplicate"}.get(result, action)

    def business_message(
        self, message: IncomingMessage, *, action: str, seconds: float, keep: bool, now: float, echo_check: bool = True
    ) -> str:
        """A message from the business side of a chat (`from_me`): 'own' when it is an echo of the assistant's
        own message, 'dup' when seen before, else it applies `action` (pause for `seconds`, resume, close), keeps
        the message in the chat's burst when `keep` (so the history has it after the customer's messages it
        answers), and returns the conversation's state after it."""
        p = self.params_for(message.chat)

        def on_redis(store: RedisConversations) -> str:
            return store.business_message(
                message, action=action, seconds=seconds, keep=keep, now=now, p=p, echo_check=echo_check
            )

        def locally() -> str:
            if echo_check and self.local.is_own(message, now):
                return "own"
            if keep:
                appended = self.buffer.local.append(
                    message,
                    now=now,
                    debounce=p.debounce,
                    max_wait=p.max_wait,
                    dedup_ttl=p.dedup_ttl,
                )
                if not appended.accepted:
                    return "dup"
            elif not self.local.first_sight(message, now, p.dedup_ttl):
                return "dup"
            return self.local.business_action(message.chat, action=action, seconds=seconds, now=now, p=p)

        return self._shared(on_redis, locally)

    def business_action(self, chat: ChatRef, *, action: str, seconds: float = 0.0, now: float) -> str:
        """Pause (for `seconds`, math.inf = until resumed or the conversation closes), resume or close a chat from
        the admin API. `now` is used as stored (to the millisecond): read the status at `round(now, 3)`."""
        now, p = round(now, 3), self.params_for(chat)
        return self._shared(
            lambda store: store.business_action(chat, action=action, seconds=seconds, now=now, p=p),
            lambda: self.local.business_action(chat, action=action, seconds=seconds, now=now, p=p),
        )

    def settle(
        self,
        chat: ChatRef,
        changes: Changes,
        *,
        now: float,
        sending: list[str] | None = None,
        decided_with: float | None = None,
    ) -> bool:
        """Record a due burst's `changes`. With `sending` (the texts about to go out), first check that no person
        acted in the chat after the decision (`decided_with`, the status's business_at): False means the person
        answers and nothing must be sent; True marks the texts, so their echoes are known as ours."""
        hashes = [text_hash(text) for text in sending or []]
        p = self.params_for(chat)
        return bool(
            self._shared(
                lambda store: store.settle(chat, changes, now=now, sending=hashes, decided_with=decided_with, p=p),
                lambda: self.local.settle(chat, changes, now=now, sending=hashes, decided_with=decided_with, p=p),
            )
        )

    def settle_in_fence(
        self,
        chat: ChatRef,
        changes: Changes,
        *,
        token: str,
        now: float,
        sending: list[str] | None = None,
        decided_with: float | None = None,
    ) -> FencedSettle | None:
        """`settle` as a hook for the fence's round trip of a batch held on Redis (`Buffer.renew(also=…)`): one
        round trip fewer per reply. It records nothing unless the claim (`token`) still holds the batch; its `held`
        and `go_ahead` are read once the fence ran. None without Redis (then call `settle`)."""
        if self.redis is None:
            return None
        if self.local.unsynced:  # what `settle` does first on Redis: opt-outs decided during an outage go there
            self._shared(lambda store: None, lambda: None)
        hashes = [text_hash(text) for text in sending or []]
        p = self.params_for(chat)
        return self.redis.fenced_settle(
            chat, changes, token=token, now=now, sending=hashes, decided_with=decided_with, p=p
        )

    def echo_seen(self, chat: ChatRef, text: str, *, since: float) -> bool:
        """True when an echo of the assistant's own message with this text came back at or after `since` (Evolution
        posts one for every message that goes out): proof that a part went out."""
        hashed = text_hash(text)
        return bool(
            self._shared(
                lambda store: store.echo_seen(chat, hashed, since), lambda: self.local.echo_seen(chat, hashed, since)
            )
        )

    def mark_sent(self, chat: ChatRef, message_id: str, *, now: float | None = None) -> None:
        """Remember an id a send returned, so a late echo of it is known as ours (best effort)."""
        if not message_id:
            return
        dedup_ttl = self.params_for(chat).dedup_ttl
        self._shared(
            lambda store: store.mark_sent(chat, message_id, dedup_ttl=dedup_ttl),
            lambda: self.local.mark_sent(
                chat, message_id, now=time.time() if now is None else now, dedup_ttl=dedup_ttl
            ),
        )
