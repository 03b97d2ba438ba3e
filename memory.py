"""Chat history: the customer's turns and our replies, capped in turns and expiring after inactivity.

Written only after a reply was sent. On Redis (one LIST per chat, updated in MULTI); while Redis is
unreachable, an in-process copy keeps the conversation going and is not merged back.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from models import ChatRef
from redis_keys import RedisKeys
from redis_link import RedisLink


@dataclass(frozen=True, slots=True, kw_only=True)
class Turn:
    role: str  # "user" or "model", as Gemini names them
    text: str
    at: float = 0.0
    author: str = ""  # "human" for a person on the business side (a model turn); else implied by the role
    name: str = ""  # the customer's profile name when they wrote (a user turn), for the panel

    @property
    def by(self) -> str:
        """Who wrote it: "customer", "bot" or "human"."""
        if self.role == "user":
            return "customer"
        return self.author or "bot"

    def to_json(self) -> dict[str, object]:
        data: dict[str, object] = {"role": self.role, "text": self.text, "at": self.at}
        if self.author:
            data["author"] = self.author
        if self.name:
            data["name"] = self.name
        return data


class History:
    """Per-chat history with a Redis store and an in-process fallback."""

    MAX_LOCAL_CHATS = 10_000

    def __init__(self, link: RedisLink, keys: RedisKeys, *, max_turns: int, ttl_seconds: int) -> None:
        self.link = link
        self.keys = keys
        self.max_turns = max_turns
        self.ttl_seconds = ttl_seconds
        # chat -> (monotonic time of the last append, turns); expires as a whole, like the Redis key
        self._local: OrderedDict[str, tuple[float, list[Turn]]] = OrderedDict()
        self._lock = threading.Lock()

    def recent(self, chat: ChatRef) -> list[Turn]:
        """The last `max_turns` turns, oldest first."""
        if self.max_turns == 0:
            return []
        key = self.keys.history(chat.key)
        return self.link.run(
            lambda client: self.parse(client.lrange(key, -self.max_turns, -1)), lambda: self._recent_local(chat)
        )

    def parse(self, stored: list[str]) -> list[Turn]:
        """Turns as the Redis list keeps them (JSON), e.g. read together with a buffer claim."""
        return [Turn(**json.loads(item)) for item in stored[-self.max_turns :]] if self.max_turns else []

    def _recent_local(self, chat: ChatRef) -> list[Turn]:
        with self._lock:
            written_at, turns = self._local.get(chat.key, (0.0, []))
            if time.monotonic() - written_at > self.ttl_seconds:
                return []
            return list(turns)[-self.max_turns :]

    def append(self, chat: ChatRef, turns: list[Turn]) -> None:
        """Add turns, trim to `max_turns`, and push the expiry forward, as one MULTI."""
        add = self.adder(chat, turns)
        if add is None:
            return

        def on_redis(client: redis.Redis) -> None:
            with client.pipeline(transaction=True) as pipe:
                add(pipe)
                pipe.execute()

        self.link.run(on_redis, lambda: self._append_local(chat, turns))

    def adder(self, chat: ChatRef, turns: list[Turn]) -> Callable[[Any], None] | None:
        """What `append` does on Redis, as a hook that queues it in another call's pipeline (the ack's, so that a
        reply costs one round trip less); None when there is nothing to write."""
        if self.max_turns == 0 or not turns:
            return None
        key = self.keys.history(chat.key)
        encoded = [json.dumps(t.to_json(), ensure_ascii=False) for t in turns]

        def add(pipe: Any) -> None:
            pipe.rpush(key, *encoded)
            pipe.ltrim(key, -self.max_turns, -1)
            pipe.expire(key, self.ttl_seconds)

        return add

    def forget_local(self, chat_key: str) -> int:
        """Drop the history this process holds of one chat (an erasure); returns 1 if there was one."""
        with self._lock:
            return int(self._local.pop(chat_key, None) is not None)

    def _append_local(self, chat: ChatRef, turns: list[Turn]) -> None:
        with self._lock:
            written_at, kept = self._local.pop(chat.key, (0.0, []))
            if time.monotonic() - written_at > self.ttl_seconds:
                kept = []
            self._local[chat.key] = (time.monotonic(), (kept + turns)[-self.max_turns :])
            while len(self._local) > self.MAX_LOCAL_CHATS:
                self._local.popitem(last=False)
