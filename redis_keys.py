"""The Redis key schema: every key name this service uses is built here and nowhere else.

`chat` below is `ChatRef.key` (gateway:instance:chat_id), so every per-chat key carries the chat's identity.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RedisKeys:
    """Key builders under one prefix (CACHE_REDIS_PREFIX_KEY)."""

    prefix: str

    def due(self) -> str:
        """ZSET chat -> deadline (unix s) of its pending burst. No TTL: members leave when claimed."""
        return f"{self.prefix}:due"

    def leases(self) -> str:
        """ZSET chat -> lease expiry (unix s) of its claimed batch. No TTL: members leave on ack."""
        return f"{self.prefix}:leases"

    def pending(self, chat: str) -> str:
        """LIST of JSON messages of the burst being typed. No TTL: a TTL could lose unanswered messages."""
        return f"{self.prefix}:chat:{chat}:pending"

    def batch(self, chat: str) -> str:
        """LIST of JSON messages claimed by a worker. No TTL: deleted on ack or dead-letter."""
        return f"{self.prefix}:chat:{chat}:batch"

    def meta(self, chat: str) -> str:
        """HASH of a claimed batch: token, attempts, reply, turns, plan, sent, sending; and `deadline` of a burst typed
        while that batch is answered (made due on ack). Absent while a chat only has a burst being typed: its deadline
        is its `due` score and its first message time the first record's `at` (a buffered chat costs no HASH).
        Deleted on ack."""
        return f"{self.prefix}:chat:{chat}:meta"

    def conversation(self, chat: str) -> str:
        """HASH state (open|paused|closed), paused_at, paused_until ('inf' = until resumed), business_at (the last
        human action), last_at (the last message), opened_at, notice_for (the closed period already told).
        TTL = CONVERSATION_IDLE_MINUTES + 1 day, refreshed on every write: past it the conversation is closed."""
        return f"{self.prefix}:chat:{chat}:conv"

    def chats_with_history(self) -> tuple[str, str, str]:
        """(SCAN pattern, prefix, suffix) of the history keys, to list the chats the panel shows."""
        head = f"{self.prefix}:history:"
        return f"{head}*", head, ""

    def chats_with_conversation(self) -> tuple[str, str, str]:
        """(SCAN pattern, prefix, suffix) of the conversation keys."""
        head, tail = f"{self.prefix}:chat:", ":conv"
        return f"{head}*{tail}", head, tail

    def chats_pending(self) -> tuple[str, str, str]:
        """(SCAN pattern, prefix, suffix) of the bursts being typed."""
        head, tail = f"{self.prefix}:chat:", ":pending"
        return f"{head}*{tail}", head, tail

    def opt_out(self, chat: str) -> str:
        """STRING, the time the customer opted out. No TTL: it outlives conversations, restarts and history."""
        return f"{self.prefix}:chat:{chat}:optout"

    def outbox(self, chat: str) -> str:
        """ZSET hash of a reply part's text -> when it was about to be sent, so that its echo (which Evolution may
        post before sendText returns the id) is known as ours. Trimmed to the echo window; TTL = the window."""
        return f"{self.prefix}:chat:{chat}:outbox"

    def echoes(self, chat: str) -> str:
        """ZSET hash of an own echo's text -> when it came back (send.message / fromMe), so that a new owner after a
        crash can tell a part that went out from one that did not. Trimmed to the echo window; TTL = the window."""
        return f"{self.prefix}:chat:{chat}:echoes"

    def own_message(self, chat: str, message_id: str) -> str:
        """STRING marker of a message id a send returned (or an echo matched by text); TTL = DEDUP_TTL_SECONDS."""
        return f"{self.prefix}:own:{chat}:{message_id}"

    def seen(self, chat: str, message_id: str) -> str:
        """STRING marker of a message id already accepted; TTL = DEDUP_TTL_SECONDS."""
        return f"{self.prefix}:seen:{chat}:{message_id}"

    def media(self, chat: str, message_id: str) -> str:
        """STRING base64 of a media item the webhook carried (Evolution webhook base64), until the burst's reply
        is stored; TTL = DEDUP_TTL_SECONDS as a safety net."""
        return f"{self.prefix}:media:{chat}:{message_id}"

    def history(self, chat: str) -> str:
        """LIST of JSON turns, newest last; capped to HISTORY_MAX_TURNS; TTL = HISTORY_TTL_SECONDS."""
        return f"{self.prefix}:history:{chat}"

    def replies_this_hour(self, chat: str) -> str:
        """STRING counter of replies to one chat in the current window; TTL = 1 hour from the first."""
        return f"{self.prefix}:replies:{chat}"

    def dead_letters(self) -> str:
        """LIST of JSON bursts that could not be answered; capped (LTRIM) to the newest 1000, no TTL."""
        return f"{self.prefix}:dead"

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
        return f"{self.prefix}:sim:{chat}:log"

    def usage(self, chat: str) -> str:
        """HASH input_tokens, output_tokens, cost_micro_usd: what the models cost for one chat (usage.py). TTL 90
        days, renewed by each reply."""
        return f"{self.prefix}:chat:{chat}:usage"

    def conversation_usage(self, chat: str, opened_at: str) -> str:
        """HASH input_tokens, output_tokens, cost_micro_usd of one conversation of a chat (`opened_at` as the
        conversation HASH stores it). TTL 90 days, renewed by each reply."""
        return f"{self.usage(chat)}:{opened_at}"

    def usage_day(self, day: str) -> str:
        """HASH of a UTC day (YYYY-MM-DD): input_tokens, output_tokens, cost_micro_usd, and per provider:model
        their tokens and calls. TTL 400 days."""
        return f"{self.prefix}:usage:{day}"

    def archive_stream(self) -> str:
        """STREAM of archive events (archive/journal.py), read by the consumer group ARCHIVE_GROUP of the archive
        writers; an entry is deleted (XACK + XDEL) once PostgreSQL has it, so its length is the backlog. No TTL."""
        return f"{self.prefix}:archive"

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
        literal = _glob_escaped(chat)
        return [
            self.seen(literal, "*"),
            self.own_message(literal, "*"),
            self.media(literal, "*"),
            self.conversation_usage(literal, "*"),
        ]

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

    def stats(self) -> str:
        """HASH dead_lettered: dead letters ever made (ACK_LUA). No TTL."""
        return f"{self.prefix}:stats"

    def workers(self) -> str:
        """ZSET worker id (host:pid:random) -> its last heartbeat (liveness.py); members older than ten missed
        heartbeats are removed by the next heartbeat. No TTL."""
        return f"{self.prefix}:workers"


def _glob_escaped(text: str) -> str:
    """`text` as a literal inside a SCAN MATCH pattern."""
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)
