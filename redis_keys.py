"""The Redis key schema: every key name this service uses is built here and nowhere else.

`chat` below is `ChatRef.key` (gateway:instance:chat_id, behind `<tenant>/` for a chat of a TENANTS_FILE tenant), so
every per-chat key carries the chat's identity, its tenant included.

On a Redis Cluster (CACHE_REDIS_CLUSTER) every Lua script must touch keys of one hash slot. So there the chats are
split into `shards` (DUE_SHARDS) by a hash of their key, and every key of a chat, and its shard's due set, leases,
dead letters, stats, usage days and archive stream, carry the shard's hash tag: `<prefix>:{s7}:chat:<chat>:pending`
beside `<prefix>:{s7}:due`. A worker walks the shards. On one server (or Sentinel) there is one shard and no tag,
so the key names are the ones this service always used.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass

SHARD_TAG = re.compile(r"\{s\d+\}:")  # what _head adds after the prefix when sharded


@dataclass(frozen=True, slots=True)
class RedisKeys:
    """Key builders under one prefix (CACHE_REDIS_PREFIX_KEY), over `shards` hash-tagged shards (1 = untagged)."""

    prefix: str
    shards: int = 1

    def __post_init__(self) -> None:
        if self.shards < 1:
            raise ValueError("shards must be at least 1")

    @property
    def sharded(self) -> bool:
        return self.shards > 1

    def all_shards(self) -> range:
        return range(self.shards)

    def shard(self, chat: str) -> int:
        """The shard of a chat: CRC-32 of its key, the same in every process and host."""
        return zlib.crc32(chat.encode()) % self.shards if self.shards > 1 else 0

    def _head(self, shard: int) -> str:
        """`<prefix>:` plus the shard's hash tag when sharded."""
        return f"{self.prefix}:{{s{shard}}}:" if self.shards > 1 else f"{self.prefix}:"

    def _of(self, chat: str) -> str:
        return self._head(self.shard(chat))

    def due(self, shard: int = 0) -> str:
        """ZSET chat -> deadline (unix s) of its pending burst, one per shard. No TTL: members leave when claimed."""
        return f"{self._head(shard)}due"

    def leases(self, shard: int = 0) -> str:
        """ZSET chat -> lease expiry (unix s) of its claimed batch, one per shard. No TTL: members leave on ack."""
        return f"{self._head(shard)}leases"

    def pending(self, chat: str) -> str:
        """LIST of JSON messages of the burst being typed. No TTL: a TTL could lose unanswered messages."""
        return f"{self._of(chat)}chat:{chat}:pending"

    def batch(self, chat: str) -> str:
        """LIST of JSON messages claimed by a worker. No TTL: deleted on ack or dead-letter."""
        return f"{self._of(chat)}chat:{chat}:batch"

    def meta(self, chat: str) -> str:
        """HASH of a claimed batch: token, attempts, reply, turns, plan, sent, sending; and `deadline` of a burst typed
        while that batch is answered (made due on ack). Absent while a chat only has a burst being typed: its deadline
        is its `due` score and its first message time the first record's `at` (a buffered chat costs no HASH).
        Deleted on ack."""
        return f"{self._of(chat)}chat:{chat}:meta"

    def conversation(self, chat: str) -> str:
        """HASH state (open|paused|closed), paused_at, paused_until ('inf' = until resumed), business_at (the last
        human action), last_at (the last message), opened_at, notice_for (the closed period already told).
        TTL = CONVERSATION_IDLE_MINUTES (the chat's business's) + 1 day, refreshed on every write: past it the
        conversation is closed."""
        return f"{self._of(chat)}chat:{chat}:conv"

    def chats_with_history(self) -> tuple[str, Callable[[str], str]]:
        """(SCAN pattern, key -> chat) of the history keys, to list the chats the panel shows."""
        return self._scan_spec("history:", "")

    def chats_with_conversation(self) -> tuple[str, Callable[[str], str]]:
        """(SCAN pattern, key -> chat) of the conversation keys."""
        return self._scan_spec("chat:", ":conv")

    def chats_pending(self) -> tuple[str, Callable[[str], str]]:
        """(SCAN pattern, key -> chat) of the bursts being typed."""
        return self._scan_spec("chat:", ":pending")

    def _scan_spec(self, kind: str, tail: str) -> tuple[str, Callable[[str], str]]:
        head = f"{self.prefix}:"
        tag = "{s*}:" if self.shards > 1 else ""

        def chat_of(key: str) -> str:
            rest = key[len(head) :]
            if self.shards > 1:
                rest = SHARD_TAG.sub("", rest, count=1)
            rest = rest[len(kind) :]
            return rest[: len(rest) - len(tail)] if tail else rest

        return f"{head}{tag}{kind}*{tail}", chat_of

    def opt_out(self, chat: str) -> str:
        """STRING, the time the customer opted out. No TTL: it outlives conversations, restarts and history."""
        return f"{self._of(chat)}chat:{chat}:optout"

    def outbox(self, chat: str) -> str:
        """ZSET hash of a reply part's text -> when it was about to be sent, so that its echo (which Evolution may
        post before sendText returns the id) is known as ours. Trimmed to the echo window; TTL = the window."""
        return f"{self._of(chat)}chat:{chat}:outbox"

    def echoes(self, chat: str) -> str:
        """ZSET hash of an own echo's text -> when it came back (send.message / fromMe), so that a new owner after a
        crash can tell a part that went out from one that did not. Trimmed to the echo window; TTL = the window."""
        return f"{self._of(chat)}chat:{chat}:echoes"

    def own_message(self, chat: str, message_id: str) -> str:
        """STRING marker of a message id a send returned (or an echo matched by text); TTL = DEDUP_TTL_SECONDS."""
        return f"{self._of(chat)}own:{chat}:{message_id}"

    def seen(self, chat: str, message_id: str) -> str:
        """STRING marker of a message id already accepted; TTL = DEDUP_TTL_SECONDS."""
        return f"{self._of(chat)}seen:{chat}:{message_id}"

    def media(self, chat: str, message_id: str) -> str:
        """STRING base64 of a media item the webhook carried (Evolution webhook base64), until the burst's reply
        is stored; TTL = DEDUP_TTL_SECONDS as a safety net."""
        return f"{self._of(chat)}media:{chat}:{message_id}"

    def history(self, chat: str) -> str:
        """LIST of JSON turns, newest last; capped to HISTORY_MAX_TURNS; TTL = HISTORY_TTL_SECONDS."""
        return f"{self._of(chat)}history:{chat}"

    def replies_this_hour(self, chat: str) -> str:
        """STRING counter of replies to one chat in the current window; TTL = 1 hour from the first."""
        return f"{self._of(chat)}replies:{chat}"

    def dead_letters(self, shard: int = 0) -> str:
        """LIST of JSON bursts that could not be answered, one per shard; capped (LTRIM) to the newest 1000, no
        TTL."""
        return f"{self._head(shard)}dead"

    def knowledge_generation(self) -> str:
        """STRING counter bumped by POST /reload-context; every process reloads its knowledge when it moves.
        No TTL: a few bytes that must outlive any process."""
        return f"{self.prefix}:knowledge:generation"

    def webhook_token(self) -> str:
        """STRING, the webhook secret generated when none is configured (webhook_token.py). No TTL: every process
        and restart must keep accepting the token the owner gave the gateway."""
        return f"{self.prefix}:webhook:token"

    def secret_key(self) -> str:
        """STRING, the generated key that signs admin session cookies (SECRET_KEY unset). No TTL."""
        return f"{self.prefix}:secret_key"

    def simulator_log(self, chat: str) -> str:
        """LIST of a simulated chat's transcript (simulator.py); capped to 500 entries; TTL 1 day."""
        return f"{self._of(chat)}sim:{chat}:log"

    def usage(self, chat: str) -> str:
        """HASH input_tokens, output_tokens, cost_micro_usd: what the models cost for one chat (usage.py). TTL 90
        days, renewed by each reply."""
        return f"{self._of(chat)}chat:{chat}:usage"

    def conversation_usage(self, chat: str, opened_at: str) -> str:
        """HASH input_tokens, output_tokens, cost_micro_usd of one conversation of a chat (`opened_at` as the
        conversation HASH stores it). TTL 90 days, renewed by each reply."""
        return f"{self.usage(chat)}:{opened_at}"

    def usage_day(self, day: str, shard: int = 0) -> str:
        """HASH of a UTC day (YYYY-MM-DD), one per shard (summed when read): input_tokens, output_tokens,
        cost_micro_usd, and per provider:model their tokens and calls. TTL 400 days."""
        return f"{self._head(shard)}usage:{day}"

    def archive_stream(self, shard: int = 0) -> str:
        """STREAM of archive events (archive/journal.py), one per shard, read by the consumer group ARCHIVE_GROUP of
        the archive writers; an entry is deleted (XACK + XDEL) once PostgreSQL has it, so the lengths are the
        backlog. No TTL."""
        return f"{self._head(shard)}archive"

    def archive_purge(self) -> str:
        """STRING lock: the process that set it runs today's ARCHIVE_RETENTION_DAYS purge. TTL = 1 day."""
        return f"{self.prefix}:archive:purge"

    def chat_keys(self, chat: str) -> list[str]:
        """Every key that belongs to one chat alone (its erasure deletes them; `chat_key_patterns` finds the
        rest)."""
        return [
            self.pending(chat),
            self.batch(chat),
            self.meta(chat),
            self.conversation(chat),
            self.opt_out(chat),
            self.outbox(chat),
            self.echoes(chat),
            self.history(chat),
            self.replies_this_hour(chat),
            self.simulator_log(chat),
            self.usage(chat),
            self.pace_customer(chat),
        ]

    def chat_key_patterns(self, chat: str) -> list[str]:
        """SCAN patterns of one chat's per-message keys (dedupe markers, own ids, media blobs) and per-conversation
        costs."""
        # Built by the builders with a marker where the wildcard goes: the chat's shard is that of its real key.
        keys = [
            self.seen(chat, _ANY),
            self.own_message(chat, _ANY),
            self.media(chat, _ANY),
            self.conversation_usage(chat, _ANY),
        ]
        return [_glob_escaped(key).replace(_ANY, "*") for key in keys]

    def pace_number(self, number: str) -> str:
        """ZSET the moments (unix s, Redis's clock) reserved for a sending number's (`gateway:instance`) next sends
        (pacing.py); past ones are trimmed on each reservation. TTL: the last one plus a second. The number is the
        hash tag, shared with the two keys below, so one Lua call touches one Redis Cluster slot."""
        return f"{self.prefix}:pace:{{{number}}}"

    def pace_hold(self, number: str) -> str:
        """STRING the moment a gateway's "too many messages" for this number ends (pacing.py). TTL: that moment
        plus a second."""
        return f"{self.prefix}:pace:{{{number}}}:hold"

    def pace_customer(self, chat: str) -> str:
        """STRING the next moment a message may go to this chat's customer (pacing.py). TTL: that moment plus a
        second."""
        gateway, _, rest = chat.partition(":")
        instance, _, chat_id = rest.partition(":")
        return f"{self.pace_number(f'{gateway}:{instance}')}:to:{chat_id}"

    def stats(self, shard: int = 0) -> str:
        """HASH dead_lettered: dead letters ever made (ACK_LUA), one per shard. No TTL."""
        return f"{self._head(shard)}stats"

    def workers(self) -> str:
        """ZSET worker id (host:pid:random) -> its last heartbeat (liveness.py); members older than ten missed
        heartbeats are removed by the next heartbeat. No TTL."""
        return f"{self.prefix}:workers"


_ANY = "\x00"  # stands for SCAN's `*` in a key built by a builder (no chat or id contains it)


def _glob_escaped(text: str) -> str:
    """`text` as a literal inside a SCAN MATCH pattern."""
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)
