"""The debounce buffer: append a message, find chats whose deadline passed, claim them under a lease, ack.

Every state change of a buffered chat goes through this module. With Redis the steps are Lua scripts
(atomic across processes and hosts); while Redis is unreachable an in-process `LocalStore` with the same
semantics takes over, and new messages go back to Redis as soon as it answers again.

Life of a chat: append -> pending (deadline in the `due` ZSET) -> claim -> batch (lease in the `leases`
ZSET) -> ack (deleted) | release (retried later) | dead-letter. A lease that expires (the worker died)
makes the batch claimable again, with its stored reply if one was already generated.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis

from models import ChatRef, IncomingMessage
from redis_keys import RedisKeys
from redis_link import RedisLink

log = logging.getLogger(__name__)
T = TypeVar("T")
# A hook that adds commands to a Redis pipeline, sent in the same round trip as a buffer call (the archive's events).
Also = Callable[[Any], None]


class Hooks:
    """Several hooks run in order as one."""

    def __init__(self, parts: list[Also]) -> None:
        self.parts = parts

    def __call__(self, pipe: Any) -> None:
        for hook in self.parts:
            hook(pipe)


def hooks(*given: Also | None) -> Also | None:
    """One hook that runs the given ones in order (None among them skipped); None when there are none."""
    present = [hook for hook in given if hook is not None]
    if len(present) < 2:
        return present[0] if present else None
    return Hooks(present)


class AnsweredScript:
    """A hook that queues one registered script in another call's round trip and keeps its answer, for a caller that
    needs it (the conversation's settle, in the fence's round trip, says whether the reply may go out). `answer` is
    set once the round trip ran (None before)."""

    def __init__(self, script: Any, keys: list[str], args: list[Any]) -> None:
        self.script, self.keys, self.args = script, keys, args
        self.at = -1
        self.answer: Any = None

    def __call__(self, pipe: Any) -> None:
        self.at = len(pipe)
        _queue_script(pipe, self.script, self.keys, self.args)

    def take(self, results: list[Any]) -> None:
        self.answer = _script_answer(results[self.at], self.script, self.keys, self.args)


def _answered(hook: Also | None) -> list[AnsweredScript]:
    if isinstance(hook, AnsweredScript):
        return [hook]
    if isinstance(hook, Hooks):
        return [found for part in hook.parts for found in _answered(part)]
    return []


DEAD_LETTERS_KEPT = 1000


class BufferUnavailable(Exception):
    """Redis is down and this process may not keep the message itself (it runs no worker)."""


def burst_deadline(first_at: float, last_at: float, *, debounce: float, max_wait: float) -> float:
    """When a burst falls due: `debounce` after its last message, at most `max_wait` after its first (what
    PUSH_PENDING_LUA computes in Redis)."""
    return min(last_at + debounce, first_at + max_wait)


NOT_SENDING = "{}"  # the `sending` note after a part the gateway refused: nothing to look for on a retry
REPLY_WINDOW_SECONDS = 3600

# A Lua function that pushes one record onto a chat's pending burst and slides its deadline; included by APPEND_LUA
# and by conversation.py's script for a human attendant's messages, so both keep one order and one deadline.
# now_str is the time as the caller wrote it. The burst's first message time is its first record's `at`: a pending
# chat keeps no other key than its LIST and its `due` member (see RedisKeys.meta). Returns the messages pending, the
# deadline and the id of the burst's first message ('' when this one is the first).
PUSH_PENDING_LUA = """
local function push_pending(pending, meta, due, leases, chat, record, now_str, debounce, max_wait)
  local now = tonumber(now_str)
  local n = redis.call('RPUSH', pending, record)
  local first, first_id = now, ''
  if n > 1 then
    local ok, head = pcall(cjson.decode, redis.call('LINDEX', pending, 0))
    if ok and type(head) == 'table' then
      first = tonumber(head['at']) or now
      if head['id'] then first_id = tostring(head['id']) end
    end
  end
  local deadline = math.min(now + tonumber(debounce), first + tonumber(max_wait))
  if redis.call('ZSCORE', leases, chat) then
    -- A batch of this chat is being answered: the new burst waits for its ack, which makes it due then (ACK_LUA).
    redis.call('HSET', meta, 'deadline', string.format('%.3f', deadline))
  else
    redis.call('ZADD', due, deadline, chat)
  end
  return n, deadline, first_id
end
"""

# KEYS: 1 seen, 2 pending, 3 meta, 4 due, 5 leases, 6 media blob
# ARGV: 1 now, 2 debounce_s, 3 max_wait_s, 4 dedup_ttl_s, 5 message JSON, 6 chat key, 7 media base64 ('' = none)
# Returns {0} for a duplicate id, else {1, messages pending, deadline, the id of the burst's first message ('' when
# this one is the first)}: the burst's correlation id in the logs is made from it (logs.burst_id).
APPEND_LUA = (
    PUSH_PENDING_LUA
    + """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[4]) then return {0} end
if ARGV[7] ~= '' then redis.call('SET', KEYS[6], ARGV[7], 'EX', ARGV[4]) end
local n, deadline, first_id = push_pending(KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[6], ARGV[5], ARGV[1], ARGV[2],
                                           ARGV[3])
return {1, n, string.format('%.3f', deadline), first_id}
"""
)

# KEYS: 1 due, 2 leases, 3 pending, 4 batch, 5 meta, 6 conversation, 7 opt-out, 8 history, 9 replies this hour (the
# last four read only: see conversation.py and memory.py; the reply count is added with the fence)
# ARGV: 1 chat key, 2 now, 3 lease expiry, 4 new token, 5 history turns to read
# Returns false when not claimable, else {attempts, stored reply or '', stored turns or '', stored plan or '',
# parts already sent, the part being sent when the last owner stopped (JSON or ''), the chat's conversation fields
# (flat list), opted out (0/1), its last history turns (list), replies this hour, message JSON...}. The
# conversation, the history and the reply count come with the claim, so that deciding who answers, the loop guard and
# writing the prompt cost no other round trip.
CLAIM_LUA = """
local function history()
  local n = tonumber(ARGV[5])
  if n <= 0 then return {} end
  return redis.call('LRANGE', KEYS[8], -n, -1)
end
local now = tonumber(ARGV[2])
local lease = redis.call('ZSCORE', KEYS[2], ARGV[1])
if lease then
  if tonumber(lease) > now then return false end
  local attempts = redis.call('HINCRBY', KEYS[5], 'attempts', 1)
  redis.call('HSET', KEYS[5], 'token', ARGV[4])
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
  local stored = redis.call('HMGET', KEYS[5], 'reply', 'turns', 'plan', 'sent', 'sending')
  return {attempts, stored[1] or '', stored[2] or '', stored[3] or '', tonumber(stored[4] or '0'), stored[5] or '',
          redis.call('HGETALL', KEYS[6]), redis.call('EXISTS', KEYS[7]), history(),
          tonumber(redis.call('GET', KEYS[9]) or '0'), unpack(redis.call('LRANGE', KEYS[4], 0, -1))}
end
local due = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not due or tonumber(due) > now then return false end
redis.call('ZREM', KEYS[1], ARGV[1])
if redis.call('EXISTS', KEYS[3]) == 0 then return false end
redis.call('RENAME', KEYS[3], KEYS[4])
-- 'first_at' and a pending 'deadline' only from before pending chats kept no meta (an upgrade).
redis.call('HDEL', KEYS[5], 'first_at', 'deadline', 'reply', 'turns', 'plan', 'sent', 'sending')
redis.call('HSET', KEYS[5], 'token', ARGV[4], 'attempts', 1)
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return {1, '', '', '', 0, '', redis.call('HGETALL', KEYS[6]), redis.call('EXISTS', KEYS[7]), history(),
        tonumber(redis.call('GET', KEYS[9]) or '0'), unpack(redis.call('LRANGE', KEYS[4], 0, -1))}
"""

# KEYS: 1 leases, 2 meta, [3 own-message marker of a part just sent (see conversation.py)]
# ARGV: 1 chat key, 2 token, 3 new lease expiry, 4 reply to store ('' = keep), 5 history turns JSON ('' = keep),
#       6 plan JSON ('' = keep), 7 parts sent ('' = keep), 8 dedup ttl s (with KEYS[3]),
#       9 the part about to be sent, JSON {"n", "hash", "at"} ('' = keep)
# Extends the lease only while the caller still owns the batch. Returns 1 if owned, else 0. The id of a part just
# sent is recorded either way (its echo is ours).
RENEW_LUA = """
if KEYS[3] then redis.call('SET', KEYS[3], '1', 'EX', ARGV[8]) end
if redis.call('HGET', KEYS[2], 'token') ~= ARGV[2] then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[2], 'reply', ARGV[4]) end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[2], 'turns', ARGV[5]) end
if ARGV[6] ~= '' then redis.call('HSET', KEYS[2], 'plan', ARGV[6]) end
if ARGV[7] ~= '' then redis.call('HSET', KEYS[2], 'sent', ARGV[7]) end
if ARGV[9] ~= '' then redis.call('HSET', KEYS[2], 'sending', ARGV[9]) end
return 1
"""

# KEYS: 1 due, 2 leases, 3 pending
# ARGV: 1 chat key, 2 now
# Makes the burst being typed due now (the simulator's "responder agora"); a batch being answered is left alone.
# Returns 1 when there was a burst to hurry, else 0.
ANSWER_NOW_LUA = """
if redis.call('LLEN', KEYS[3]) == 0 or redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return 1
"""

# KEYS: 1 leases, 2 batch, 3 meta, 4 due, 5 pending, 6 dead letters, 7 stats, [8 own-message marker of the
#       last part sent (see conversation.py)]
# ARGV: 1 chat key, 2 token, 3 dead-letter record JSON ('' = normal ack), 4 dead letters kept, 5 dedup ttl s
# Deletes the batch if the caller still owns it; a burst that arrived meanwhile becomes due. The id of the last
# part sent is recorded either way.
ACK_LUA = """
if KEYS[8] then redis.call('SET', KEYS[8], '1', 'EX', ARGV[5]) end
if redis.call('HGET', KEYS[3], 'token') ~= ARGV[2] then return 0 end
if ARGV[3] ~= '' then
  redis.call('LPUSH', KEYS[6], ARGV[3])
  redis.call('LTRIM', KEYS[6], 0, tonumber(ARGV[4]) - 1)
  redis.call('HINCRBY', KEYS[7], 'dead_lettered', 1)
end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
if redis.call('LLEN', KEYS[5]) > 0 then
  local deadline = redis.call('HGET', KEYS[3], 'deadline') or '0'
  redis.call('ZADD', KEYS[4], deadline, ARGV[1])
end
redis.call('DEL', KEYS[3])
return 1
"""


@dataclass(frozen=True, slots=True)
class AppendResult:
    accepted: bool  # False: the message id was seen before
    pending: int = 0  # messages now waiting in this chat's burst
    deadline: float = 0.0
    store: str = "redis"
    first_id: str = ""  # the id of the first message of the burst it joined (its correlation id comes from it)


@dataclass(frozen=True, slots=True, kw_only=True)
class Claim:
    """A batch of one chat's messages that this worker owns until it acks or its lease expires."""

    chat: ChatRef
    token: str
    attempts: int
    messages: list[dict[str, Any]]
    reply: str = ""  # a reply generated by an earlier attempt, to be sent as is (the whole reply)
    turns: str = ""  # the history turns (JSON) stored with that reply, written to the history on ack
    plan: str = ""  # what else was decided with that reply (JSON, see worker.py), carried out again if needed
    sent: int = 0  # parts of that reply already accepted by the gateway
    sending: str = ""  # the part being sent when the last owner stopped: JSON {"n", "hash", "at"} ('' = none)
    conversation: dict[str, str] | None = None  # the chat's conversation fields read with the claim (Redis only)
    opted_out: bool = False  # ... whether it opted out
    history: list[str] | None = None  # ... and its last history turns as stored (JSON), oldest first
    replies_this_hour: int | None = None  # ... and the replies it got in its loop-guard window
    store: str = "redis"

    @property
    def records_sent_ids(self) -> bool:
        """True when this claim's store remembers sent ids with its progress and ack (Redis); otherwise the
        caller tells conversation.py itself."""
        return self.store == "redis"

    @property
    def text(self) -> str:
        """The customers' texts of the burst joined in arrival order."""
        return "\n".join(m["text"] for m in self.messages if m.get("text") and not is_human_record(m))


def is_human_record(record: dict[str, Any]) -> bool:
    """True for a buffered message typed by a person on the business side (see conversation.py)."""
    return record.get("by") == "human"


def profile_name(records: Sequence[dict[str, Any]]) -> str:
    """The newest profile name among a burst's customer messages ("" when the gateway sent none)."""
    return next((str(r["name"]) for r in reversed(records) if r.get("name") and not is_human_record(r)), "")


def encode_message(message: IncomingMessage, received_at: float, *, has_blob: bool = False) -> str:
    """Compact JSON kept per buffered message (short keys: it is stored once per message). A media message
    carries its reference; `blob` says its base64 is kept under the message's media key; a message from the
    business side (a human attendant) carries `"by": "human"`."""
    record: dict[str, Any] = {
        "id": message.message_id,
        "text": message.text,
        "kind": message.kind,
        "name": message.push_name,
        "ts": message.timestamp,
        "at": round(received_at, 3),
    }
    if message.media is not None:
        record["media"] = message.media.to_json()
        if has_blob:
            record["blob"] = 1
    if message.from_me:
        record["by"] = "human"
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def inline_blob(message: IncomingMessage, max_bytes: int) -> str:
    """The base64 the webhook carried for this message, if it is worth keeping: media Gemini reads, within
    MEDIA_MAX_BYTES (a larger item is answered as "too large" without storing it)."""
    media = message.media
    if media is None or not media.inline or not media.readable:
        return ""
    return media.inline if len(media.inline) * 3 // 4 <= max_bytes else ""


def claim_from(chat: str, token: str, result: list[Any], *, store: str) -> Claim:
    """The Claim for CLAIM_LUA's answer (see its comment for the layout)."""
    return Claim(
        chat=ChatRef.from_key(chat),
        token=token,
        attempts=int(result[0]),
        reply=result[1] or "",
        turns=result[2] or "",
        plan=result[3] or "",
        sent=int(result[4] or 0),
        sending=result[5] or "",
        conversation=dict(zip(result[6][::2], result[6][1::2], strict=True)),
        opted_out=bool(result[7]),
        history=list(result[8]),
        replies_this_hour=int(result[9]),
        messages=[json.loads(item) for item in result[10:]],
        store=store,
    )


def _queue_script(pipe: Any, script: Any, keys: list[str], args: list[Any]) -> None:
    """Add a registered script's call to a pipeline. EVALSHA by hand: a Script given a pipeline checks SCRIPT EXISTS
    first, one round trip more. Through execute_command: redis-py's cluster pipeline refuses `evalsha()` because a
    node may not have the script, which `_script_answer` handles."""
    pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)


def _script_answer(answer: Any, script: Any, keys: list[str], args: list[Any]) -> Any:
    """A script's answer from a pipeline run with raise_on_error=False. NOSCRIPT (Redis restarted and forgot it) means
    the call did not run: it is run again through the Script, which loads it."""
    if isinstance(answer, redis.exceptions.NoScriptError):
        return script(keys=keys, args=args)
    if isinstance(answer, Exception):
        raise answer
    return answer


class RedisStore:
    """The shared buffer on Redis. Each public method is one atomic script call (plus read-only lookups)."""

    name = "redis"

    def __init__(self, client: redis.Redis, keys: RedisKeys, *, history_turns: int = 0, dedup_ttl: int = 86400) -> None:
        self.client = client
        self.keys = keys
        self.dedup_ttl = dedup_ttl  # how long the id of a part sent is remembered
        self.history_turns = history_turns  # HISTORY_MAX_TURNS: read with each claim
        self._append = client.register_script(APPEND_LUA)
        self._claim = client.register_script(CLAIM_LUA)
        self._renew = client.register_script(RENEW_LUA)
        self._ack = client.register_script(ACK_LUA)
        self._answer_now = client.register_script(ANSWER_NOW_LUA)

    def append(
        self, message: IncomingMessage, *, now: float, debounce: float, max_wait: float, dedup_ttl: int, blob: str = ""
    ) -> AppendResult:
        """Atomically: drop a seen id, else push the message (and its media base64) and move the deadline."""
        chat = message.chat.key
        k = self.keys
        shard = k.shard(chat)
        result = self._append(
            keys=[
                k.seen(chat, message.message_id),
                k.pending(chat),
                k.meta(chat),
                k.due(shard),
                k.leases(shard),
                k.media(chat, message.message_id),
            ],
            args=[now, debounce, max_wait, dedup_ttl, encode_message(message, now, has_blob=bool(blob)), chat, blob],
        )
        if int(result[0]) == 0:
            return AppendResult(accepted=False, store=self.name)
        first_id = (result[3] if len(result) > 3 else "") or message.message_id
        return AppendResult(
            accepted=True, pending=int(result[1]), deadline=float(result[2]), store=self.name, first_id=first_id
        )

    def claim_due(self, *, now: float, limit: int, lease_seconds: float) -> list[Claim]:
        """Claim up to `limit` chats that are due, or whose lease expired. Each claim is atomic per chat,
        so two workers never own the same batch; candidates are shuffled to spread concurrent workers."""
        if limit <= 0:
            return []
        k = self.keys
        window = limit * 4
        with self.client.pipeline(transaction=False) as pipe:
            for shard in k.all_shards():
                pipe.zrangebyscore(k.leases(shard), "-inf", now, start=0, num=window)
                pipe.zrangebyscore(k.due(shard), "-inf", now, start=0, num=window)
            found = pipe.execute()
        # Expired leases first (their messages waited longest), then due chats; shard by shard on a cluster.
        candidates = list(dict.fromkeys([chat for chats in found[0::2] + found[1::2] for chat in chats]))
        random.shuffle(candidates)
        claims: list[Claim] = []
        # As many claim calls as free slots go in one round trip; where some lose a race (another worker took the
        # chat, or it is not due any more), the next candidates are tried.
        while candidates and len(claims) < limit:
            batch, candidates = candidates[: limit - len(claims)], candidates[limit - len(claims) :]
            for chat, token, result in self._claim_batch(batch, now=now, lease_seconds=lease_seconds):
                if result:
                    claims.append(claim_from(chat, token, result, store=self.name))
        return claims

    def _claim_batch(self, chats: list[str], *, now: float, lease_seconds: float) -> list[tuple[str, str, Any]]:
        """One CLAIM_LUA per chat, all in one pipeline (each claim is atomic on its own); (chat, token, answer)."""
        calls = []
        for chat in chats:
            token = uuid.uuid4().hex
            calls.append(
                (chat, token, self._claim_keys(chat), [chat, now, now + lease_seconds, token, self.history_turns])
            )
        pipe = self.client.pipeline(transaction=False)
        for _, _, keys, args in calls:
            _queue_script(pipe, self._claim, keys, args)
        answers = pipe.execute(raise_on_error=False)
        return [
            (chat, token, _script_answer(answer, self._claim, keys, args))
            for (chat, token, keys, args), answer in zip(calls, answers, strict=True)
        ]

    def _claim_keys(self, chat: str) -> list[str]:
        k = self.keys
        shard = k.shard(chat)
        return [
            k.due(shard),
            k.leases(shard),
            k.pending(chat),
            k.batch(chat),
            k.meta(chat),
            k.conversation(chat),
            k.opt_out(chat),
            k.history(chat),
            k.replies_this_hour(chat),
        ]

    def renew(
        self,
        claim: Claim,
        *,
        lease_until: float,
        reply: str = "",
        turns: str = "",
        plan: str = "",
        sent: int | None = None,
        sent_id: str = "",
        sending: str = "",
        also: Also | None = None,
    ) -> bool:
        """Extend the lease (and store the reply, its history turns, its plan, the parts sent and the part about to
        be sent) only if this claim still owns the batch; record `sent_id` as one of ours in any case. `also` adds
        commands to the same round trip."""
        chat = claim.chat.key
        keys = [self.keys.leases(self.keys.shard(chat)), self.keys.meta(chat)]
        if sent_id:
            keys.append(self.keys.own_message(chat, sent_id))
        progress = "" if sent is None else sent
        args = [chat, claim.token, lease_until, reply, turns, plan, progress, self.dedup_ttl, sending]
        return bool(self._run(self._renew, keys, args, also))

    def media_blob(self, claim: Claim, message_id: str) -> str | None:
        return self.client.get(self.keys.media(claim.chat.key, message_id))

    def drop_media(self, claim: Claim, message_ids: list[str]) -> None:
        if message_ids:
            self.client.delete(*(self.keys.media(claim.chat.key, message_id) for message_id in message_ids))

    def ack(
        self,
        claim: Claim,
        *,
        dead_letter: str = "",
        sent_id: str = "",
        before: Also | None = None,
        also: Also | None = None,
    ) -> bool:
        """Finish the batch (optionally recording it as a dead letter) if this claim still owns it; record
        `sent_id` (the last part's) as one of ours in any case. `before` and `also` add commands to the same round
        trip, run before and after the script."""
        chat = claim.chat.key
        k = self.keys
        shard = k.shard(chat)
        keys = [
            k.leases(shard),
            k.batch(chat),
            k.meta(chat),
            k.due(shard),
            k.pending(chat),
            k.dead_letters(shard),
            k.stats(shard),
        ]
        if sent_id:
            keys.append(k.own_message(chat, sent_id))
        args = [chat, claim.token, dead_letter, DEAD_LETTERS_KEPT, self.dedup_ttl]
        return bool(self._run(self._ack, keys, args, also, before=before))

    def _run(
        self, script: Any, keys: list[str], args: list[Any], also: Also | None, *, before: Also | None = None
    ) -> Any:
        """The script's answer; with `before` / `also`, the commands they add (the reply's history turns, the
        archive's events) go in the same round trip, before / after the script (not atomic with it), and an
        AnsweredScript among them gets its answer."""
        if also is None and before is None:
            return script(keys=keys, args=args)
        pipe = self.client.pipeline(transaction=False)
        if before is not None:
            before(pipe)
        at = len(pipe)
        _queue_script(pipe, script, keys, args)
        if also is not None:
            also(pipe)
        results = pipe.execute(raise_on_error=False)
        answered = _answered(before) + _answered(also)
        own = {at} | {hook.at for hook in answered}
        for index, failed in enumerate(results):
            if index not in own and isinstance(failed, Exception):
                raise failed
        # The other commands did run: on NOSCRIPT only the script is run again (running them twice would journal
        # each event twice), then each answered hook's script, in their order.
        answer = _script_answer(results[at], script, keys, args)
        for hook in answered:
            hook.take(results)
        return answer

    def answer_now(self, chat: ChatRef, now: float) -> bool:
        k = self.keys
        shard = k.shard(chat.key)
        keys = [k.due(shard), k.leases(shard), k.pending(chat.key)]
        return bool(self._answer_now(keys=keys, args=[chat.key, f"{now:.3f}"]))

    def dead_letter_records(self) -> list[str]:
        """Every shard's dead letters, newest first."""
        return [raw for _, raw in self._dead_letters_by_shard()]

    def _dead_letters_by_shard(self) -> list[tuple[int, str]]:
        k = self.keys
        with self.client.pipeline(transaction=False) as pipe:
            for shard in k.all_shards():
                pipe.lrange(k.dead_letters(shard), 0, -1)
            lists = pipe.execute()
        found = [(shard, raw) for shard, raws in zip(k.all_shards(), lists, strict=True) for raw in raws]
        if k.sharded:
            found.sort(key=lambda item: -float((_json_object(item[1]) or {}).get("at") or 0))
        return found

    def take_dead_letter(self, letter_id: str) -> str | None:
        """LREM of the record with this id (a racing owner may take it first: then None)."""
        for shard, raw in self._dead_letters_by_shard():
            record = _json_object(raw)
            if record is not None and record.get("id") == letter_id:
                return raw if self.client.lrem(self.keys.dead_letters(shard), 1, raw) else None
        return None

    def put_dead_letter(self, raw: str) -> None:
        """Back on the list of its chat's shard."""
        key = self.keys.dead_letters(self.keys.shard(str((_json_object(raw) or {}).get("chat") or "")))
        with self.client.pipeline(transaction=True) as pipe:
            pipe.lpush(key, raw)
            pipe.ltrim(key, 0, DEAD_LETTERS_KEPT - 1)
            pipe.execute()

    def count_reply(self, chat: ChatRef) -> int:
        """Count one more reply to `chat` in its one-hour window (INCR + EXPIRE NX in one MULTI)."""
        with self.client.pipeline(transaction=True) as pipe:
            self.reply_counter(chat)(pipe)
            count, _ = pipe.execute()
        return int(count)

    def reply_counter(self, chat: ChatRef) -> Also:
        """`count_reply` as a hook for another call's pipeline."""
        key = self.keys.replies_this_hour(chat.key)

        def count(pipe: Any) -> None:
            pipe.incr(key)
            pipe.expire(key, REPLY_WINDOW_SECONDS, nx=True)

        return count

    def counts(self) -> dict[str, int]:
        k = self.keys
        with self.client.pipeline(transaction=False) as pipe:
            for shard in k.all_shards():
                pipe.zcard(k.due(shard))
                pipe.zcard(k.leases(shard))
                pipe.llen(k.dead_letters(shard))
            found = [int(n) for n in pipe.execute()]
        return {
            "chats_pending": sum(found[0::3]),
            "chats_in_progress": sum(found[1::3]),
            "dead_letters": sum(found[2::3]),
        }

    def pending_info(self, chat: ChatRef) -> dict[str, Any] | None:
        """Messages of this chat waiting for an answer (being typed, or being answered) and the deadline of the
        burst being typed; None when there are none."""
        k = self.keys
        with self.client.pipeline(transaction=False) as pipe:
            pipe.llen(k.pending(chat.key))
            pipe.llen(k.batch(chat.key))
            pipe.zscore(k.due(k.shard(chat.key)), chat.key)
            pipe.hget(k.meta(chat.key), "deadline")  # kept there while a batch of the chat is being answered
            typing, answering, due, held = pipe.execute()
        return _pending_info(int(typing), int(answering), due if due is not None else held)

    def next_deadline(self) -> float | None:
        """Earliest deadline or lease expiry, so an idle worker can sleep until then."""
        k = self.keys
        with self.client.pipeline(transaction=False) as pipe:
            for shard in k.all_shards():
                pipe.zrange(k.due(shard), 0, 0, withscores=True)
                pipe.zrange(k.leases(shard), 0, 0, withscores=True)
            found = pipe.execute()
        scores = [score for firsts in found for _, score in firsts]
        return min(scores) if scores else None


@dataclass(slots=True)
class _LocalChat:
    pending: list[str] = field(default_factory=list)
    first_at: float | None = None
    deadline: float = 0.0
    batch: list[str] = field(default_factory=list)
    token: str = ""
    lease_until: float | None = None
    attempts: int = 0
    reply: str = ""
    turns: str = ""
    plan: str = ""
    sent: int = 0
    sending: str = ""


class LocalStore:
    """In-process stand-in for RedisStore while Redis is unreachable: same semantics, one process only."""

    name = "local"
    MAX_SEEN_IDS = 100_000

    def __init__(self) -> None:
        self._chats: dict[str, _LocalChat] = {}
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._dead: list[str] = []
        self._replies: dict[str, tuple[float, int]] = {}  # chat -> (window start, replies)
        self._blobs: dict[str, str] = {}  # chat:message id -> media base64, until the reply is stored
        self._lock = threading.Lock()

    def append(
        self, message: IncomingMessage, *, now: float, debounce: float, max_wait: float, dedup_ttl: int, blob: str = ""
    ) -> AppendResult:
        seen_key = f"{message.chat.key}:{message.message_id}"
        with self._lock:
            self._forget_expired_ids(now)
            if seen_key in self._seen:
                return AppendResult(accepted=False, store=self.name)
            self._seen[seen_key] = now + dedup_ttl
            if blob:
                self._blobs[seen_key] = blob
            chat = self._chats.setdefault(message.chat.key, _LocalChat())
            chat.pending.append(encode_message(message, now, has_blob=bool(blob)))
            if chat.first_at is None:
                chat.first_at = now
            chat.deadline = burst_deadline(chat.first_at, now, debounce=debounce, max_wait=max_wait)
            first_id = str((_json_object(chat.pending[0]) or {}).get("id") or message.message_id)
            return AppendResult(
                accepted=True, pending=len(chat.pending), deadline=chat.deadline, store=self.name, first_id=first_id
            )

    def _forget_expired_ids(self, now: float) -> None:
        while self._seen and (next(iter(self._seen.values())) <= now or len(self._seen) > self.MAX_SEEN_IDS):
            self._seen.popitem(last=False)

    def claim_due(self, *, now: float, limit: int, lease_seconds: float) -> list[Claim]:
        claims: list[Claim] = []
        with self._lock:
            for key, chat in self._chats.items():
                if len(claims) >= limit:
                    break
                if chat.lease_until is not None:
                    if chat.lease_until > now:
                        continue
                    chat.attempts += 1
                elif chat.pending and chat.deadline <= now:
                    chat.batch, chat.pending = chat.pending, []
                    chat.first_at, chat.attempts, chat.reply, chat.turns, chat.plan, chat.sent = None, 1, "", "", "", 0
                    chat.sending = ""
                else:
                    continue
                chat.token = uuid.uuid4().hex
                chat.lease_until = now + lease_seconds
                claims.append(
                    Claim(
                        chat=ChatRef.from_key(key),
                        token=chat.token,
                        attempts=chat.attempts,
                        reply=chat.reply,
                        turns=chat.turns,
                        plan=chat.plan,
                        sent=chat.sent,
                        sending=chat.sending,
                        messages=[json.loads(item) for item in chat.batch],
                        store=self.name,
                    )
                )
        return claims

    def renew(
        self,
        claim: Claim,
        *,
        lease_until: float,
        reply: str = "",
        turns: str = "",
        plan: str = "",
        sent: int | None = None,
        sent_id: str = "",  # remembered by conversation.py's in-process store instead (see the worker)
        sending: str = "",
    ) -> bool:
        with self._lock:
            chat = self._chats.get(claim.chat.key)
            if chat is None or chat.token != claim.token:
                return False
            chat.sending = sending or chat.sending
            chat.lease_until = lease_until
            chat.reply = reply or chat.reply
            chat.turns = turns or chat.turns
            chat.plan = plan or chat.plan
            chat.sent = chat.sent if sent is None else sent
            return True

    def media_blob(self, claim: Claim, message_id: str) -> str | None:
        with self._lock:
            return self._blobs.get(f"{claim.chat.key}:{message_id}")

    def drop_media(self, claim: Claim, message_ids: list[str]) -> None:
        with self._lock:
            self._drop_blobs(claim.chat.key, message_ids)

    def ack(self, claim: Claim, *, dead_letter: str = "", sent_id: str = "") -> bool:
        with self._lock:
            chat = self._chats.get(claim.chat.key)
            if chat is None or chat.token != claim.token:
                return False
            if dead_letter:
                self._dead = [dead_letter, *self._dead[: DEAD_LETTERS_KEPT - 1]]
            self._drop_blobs(claim.chat.key, [str(json.loads(item).get("id")) for item in chat.batch])
            chat.batch, chat.token, chat.lease_until, chat.attempts = [], "", None, 0
            chat.reply, chat.turns, chat.plan, chat.sent, chat.sending = "", "", "", 0, ""
            if not chat.pending:
                del self._chats[claim.chat.key]
            return True

    def _drop_blobs(self, chat_key: str, message_ids: list[str]) -> None:
        """Caller holds the lock. Blobs have no TTL here, so every finished batch drops its own."""
        for message_id in message_ids:
            self._blobs.pop(f"{chat_key}:{message_id}", None)

    def forget_chat(self, chat_key: str) -> int:
        """Drop everything this process holds of one chat (an erasure); returns how many items."""
        prefix = f"{chat_key}:"
        with self._lock:
            dropped = sum(int(store.pop(chat_key, None) is not None) for store in (self._chats, self._replies))
            for store in (self._seen, self._blobs):
                for key in [key for key in store if key.startswith(prefix)]:
                    del store[key]
                    dropped += 1
            kept = [raw for raw in self._dead if (_json_object(raw) or {}).get("chat") != chat_key]
            dropped += len(self._dead) - len(kept)
            self._dead = kept
        return dropped

    def answer_now(self, chat: ChatRef, now: float) -> bool:
        with self._lock:
            local = self._chats.get(chat.key)
            if local is None or not local.pending or local.lease_until is not None:
                return False
            local.deadline = now
            return True

    def dead_letter_records(self) -> list[str]:
        with self._lock:
            return list(self._dead)

    def take_dead_letter(self, letter_id: str) -> str | None:
        with self._lock:
            for raw in self._dead:
                record = _json_object(raw)
                if record is not None and record.get("id") == letter_id:
                    self._dead.remove(raw)
                    return raw
            return None

    def put_dead_letter(self, raw: str) -> None:
        with self._lock:
            self._dead = [raw, *self._dead[: DEAD_LETTERS_KEPT - 1]]

    def count_reply(self, chat: ChatRef, now: float) -> int:
        with self._lock:
            started, count = self._replies.get(chat.key, (now, 0))
            if now - started >= REPLY_WINDOW_SECONDS:
                started, count = now, 0
            self._replies[chat.key] = (started, count + 1)
            return count + 1

    def counts(self) -> dict[str, int]:
        with self._lock:
            pending = sum(1 for c in self._chats.values() if c.pending and c.lease_until is None)
            leased = sum(1 for c in self._chats.values() if c.lease_until is not None)
            return {"chats_pending": pending, "chats_in_progress": leased, "dead_letters": len(self._dead)}

    def pending_info(self, chat: ChatRef) -> dict[str, Any] | None:
        with self._lock:
            local = self._chats.get(chat.key)
            if local is None:
                return None
            return _pending_info(len(local.pending), len(local.batch), local.deadline if local.pending else None)

    def next_deadline(self) -> float | None:
        with self._lock:
            times = [c.lease_until if c.lease_until is not None else c.deadline for c in self._chats.values()]
        return min(times) if times else None


def _json_object(raw: Any) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _pending_info(typing: int, answering: int, deadline: Any) -> dict[str, Any] | None:
    if not typing and not answering:
        return None
    return {
        "messages": typing + answering,
        "deadline": round(float(deadline), 3) if typing and deadline else None,
        "answering": answering > 0,
    }


class Buffer:
    """The buffer the app and worker use: Redis when reachable, the in-process store otherwise."""

    def __init__(
        self,
        link: RedisLink,
        keys: RedisKeys,
        *,
        debounce_seconds: float,
        max_wait_seconds: float,
        dedup_ttl_seconds: int,
        lease_seconds: float,
        media_max_bytes: int = 0,
        history_turns: int = 0,
    ) -> None:
        self.link = link
        self.redis = (
            RedisStore(link.client, keys, history_turns=history_turns, dedup_ttl=dedup_ttl_seconds)
            if link.client is not None
            else None
        )
        self.local = LocalStore()
        # False in a process that runs no worker: a message kept in its memory would never be answered, so while
        # Redis is down `append` raises BufferUnavailable instead (the webhook answers 503 and the gateway retries).
        self.local_fallback = True
        self.debounce_seconds = debounce_seconds
        self.max_wait_seconds = max_wait_seconds
        self.dedup_ttl_seconds = dedup_ttl_seconds
        self.lease_seconds = lease_seconds
        self.media_max_bytes = media_max_bytes

    def _shared(self, on_redis: Callable[[RedisStore], T], fallback: Callable[[], T]) -> T:
        """`on_redis(the Redis store)` while Redis answers, else `fallback()` (see RedisLink.run)."""
        store = self.redis
        if store is None:
            return fallback()
        return self.link.run(lambda _: on_redis(store), fallback)

    def _store(self, claim: Claim) -> RedisStore | LocalStore:
        return self.redis if claim.store == "redis" and self.redis is not None else self.local

    def append(
        self, message: IncomingMessage, *, now: float, debounce: float | None = None, max_wait: float | None = None
    ) -> AppendResult:
        """Buffer a message, on Redis if it answers, else in this process (raises BufferUnavailable instead when
        this process answers nothing: `local_fallback`). `debounce` and `max_wait` are its tenant's, when it has
        its own."""
        params = {
            "now": now,
            "debounce": self.debounce_seconds if debounce is None else debounce,
            "max_wait": self.max_wait_seconds if max_wait is None else max_wait,
            "dedup_ttl": self.dedup_ttl_seconds,
            "blob": inline_blob(message, self.media_max_bytes),
        }
        return self._shared(lambda store: store.append(message, **params), lambda: self._append_here(message, params))

    def _append_here(self, message: IncomingMessage, params: dict[str, Any]) -> AppendResult:
        if not self.local_fallback:
            raise BufferUnavailable(f"redis unavailable at {self.link.where} and this process runs no worker")
        return self.local.append(message, **params)

    def claim_due(self, *, now: float, limit: int) -> list[Claim]:
        """Due batches from the local store first (they exist only here), then from Redis."""
        claims = self.local.claim_due(now=now, limit=limit, lease_seconds=self.lease_seconds)
        if len(claims) < limit:
            left = limit - len(claims)
            lease = self.lease_seconds
            claims += self._shared(lambda store: store.claim_due(now=now, limit=left, lease_seconds=lease), list)
        return claims

    def renew(
        self,
        claim: Claim,
        *,
        now: float,
        reply: str = "",
        turns: str = "",
        plan: str = "",
        sent: int | None = None,
        sent_id: str = "",
        sending: str = "",
        also: Also | None = None,
    ) -> bool:
        """True while `claim` still owns its batch; extends the lease and stores `reply`, the history `turns` and
        the `plan` that go with it, how many of its parts were `sent` and the part about to be sent (`sending`,
        which a new owner after a crash reconciles instead of sending blindly), when given. On Redis, `sent_id`
        (the part just sent) is remembered as the assistant's own in the same call, and `also` adds its commands
        to the same round trip (it is not called for a claim held in this process: see `shares_round_trips`).
        Raises on Redis errors."""
        store = self._store(claim)
        extra = {"also": also} if isinstance(store, RedisStore) else {}
        return store.renew(
            claim,
            lease_until=now + self.lease_seconds,
            reply=reply,
            turns=turns,
            plan=plan,
            sent=sent,
            sent_id=sent_id,
            sending=sending,
            **extra,
        )

    def shares_round_trips(self, claim: Claim) -> bool:
        """True when `also` hooks given for this claim run (its batch is on Redis)."""
        return isinstance(self._store(claim), RedisStore)

    def release(self, claim: Claim, *, retry_at: float, sending: str = "") -> bool:
        """Give the batch back, to be claimed again at `retry_at` (keeps a generated reply and its progress;
        `sending` replaces the note of the part being sent, e.g. NOT_SENDING when the gateway refused it)."""
        return self._store(claim).renew(claim, lease_until=retry_at, sending=sending)

    def media_blob(self, claim: Claim, message_id: str) -> str | None:
        """The base64 the webhook carried for a message of this batch, if it was kept and has not expired, and
        None while Redis is unreachable (the worker then asks the gateway for the media instead)."""
        if claim.store != "redis":
            return self.local.media_blob(claim, message_id)
        return self._shared(lambda store: store.media_blob(claim, message_id), lambda: None)

    def drop_media(self, claim: Claim) -> None:
        """Forget the batch's media base64 once the reply is stored with the batch (it is not needed again)."""
        ids = [str(m.get("id")) for m in claim.messages if m.get("blob")]
        self._store(claim).drop_media(claim, ids)

    def ack(self, claim: Claim, *, sent_id: str = "", before: Also | None = None, also: Also | None = None) -> bool:
        """Finish the batch; on Redis, `sent_id` (the last part sent) is remembered as the assistant's own in the
        same call, and `before` and `also` add their commands to the same round trip, before and after the ack
        (only where `shares_round_trips(claim)`)."""
        store = self._store(claim)
        if isinstance(store, RedisStore):
            return store.ack(claim, sent_id=sent_id, before=before, also=also)
        return store.ack(claim, sent_id=sent_id)

    def count_reply(self, claim: Claim, *, now: float) -> tuple[int, Also | None]:
        """Replies to this claim's chat in the last hour, this one included (loop guard); and, when the claim read the
        count with its batch, the hook that adds this reply in the fence's round trip (else None: added now). A
        chat's bursts are answered one at a time, so nothing counts between the claim's read and the fence."""
        if claim.replies_this_hour is not None and self.redis is not None and self.shares_round_trips(claim):
            return claim.replies_this_hour + 1, self.redis.reply_counter(claim.chat)
        if claim.store == "redis" and self.redis is not None:
            return self.redis.count_reply(claim.chat), None
        return self.local.count_reply(claim.chat, now), None

    def dead_letter(
        self, claim: Claim, *, reason: str, now: float, reply: str = "", unsent: list[str] | None = None
    ) -> bool:
        """Finish the batch as a dead letter: {"id", "chat", "reply", "unsent" (the parts not sent), "error",
        "attempts", "at", "messages"}, kept for the owner to retry or discard."""
        record = {
            "id": uuid.uuid4().hex[:16],
            "chat": claim.chat.key,
            "reply": reply,
            "unsent": unsent if unsent is not None else ([reply] if reply else []),
            "error": reason,
            "attempts": claim.attempts,
            "at": now,
            "messages": claim.messages,
        }
        return self._store(claim).ack(claim, dead_letter=json.dumps(record, ensure_ascii=False))

    def answer_now(self, chat: ChatRef, *, now: float) -> bool:
        """Make the chat's burst due now instead of at its debounce deadline (True when there was one)."""
        return self.local.answer_now(chat, now) or bool(self._shared(lambda store: store.answer_now(chat, now), bool))

    def dead_letters(self) -> list[dict[str, Any]]:
        """Every dead letter kept (Redis and this process's), newest first."""
        raw = self._shared(lambda store: store.dead_letter_records(), list) + self.local.dead_letter_records()
        return [record for record in (_json_object(item) for item in raw) if record is not None]

    def take_dead_letter(self, letter_id: str) -> dict[str, Any] | None:
        """Remove a dead letter by id and return it (None when there is none with that id)."""
        taken = self._shared(lambda store: store.take_dead_letter(letter_id), lambda: None)
        return _json_object(taken or self.local.take_dead_letter(letter_id))

    def put_dead_letter(self, record: dict[str, Any]) -> None:
        """Keep a dead letter again (a retry that failed once more)."""
        raw = json.dumps(record, ensure_ascii=False)
        self._shared(lambda store: store.put_dead_letter(raw), lambda: self.local.put_dead_letter(raw))

    def counts(self) -> dict[str, int]:
        totals = self.local.counts()
        for name, value in self._shared(lambda store: store.counts(), dict).items():
            totals[name] += value
        return totals

    def pending_info(self, chat: ChatRef) -> dict[str, Any] | None:
        """{"messages": waiting, "deadline": when the burst being typed is due, "answering": a batch is being
        answered} for one chat, or None when nothing of it is waiting (this process's fallback counted too)."""
        shared = self._shared(lambda store: store.pending_info(chat), lambda: None)
        return shared or self.local.pending_info(chat)

    def next_deadline(self) -> float | None:
        times = [self.local.next_deadline()]
        times.append(self._shared(lambda store: store.next_deadline(), lambda: None))
        known = [t for t in times if t is not None]
        return min(known) if known else None
