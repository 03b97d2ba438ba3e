"""The WhatsApp simulator's transcript: per simulated chat, what the made-up customer and the person playing the
business typed, and every part the assistant sent (with its typing pause), in order, so the page can show bubbles.
A Redis list (capped, expiring), or this process's memory while Redis is unreachable. The messages themselves go
through the real pipeline as the `simulator` gateway (gateways/simulator.py)."""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from typing import Any

from models import ChatRef
from redis_keys import RedisKeys
from redis_link import RedisLink

INSTANCE = "console"
KEPT_ENTRIES = 500
KEPT_SECONDS = 24 * 3600
RELABEL_SCAN = 50  # a relabelled entry was just added: look at the newest few only

# Sets the role of the newest entry with this id (a part the panel sent as a person), in place.
RELABEL_LUA = """
local items = redis.call('LRANGE', KEYS[1], -tonumber(ARGV[3]), -1)
for i = #items, 1, -1 do
  local ok, entry = pcall(cjson.decode, items[i])
  if ok and type(entry) == 'table' and entry['id'] == ARGV[1] then
    entry['role'] = ARGV[2]
    redis.call('LSET', KEYS[1], i - #items - 1, cjson.encode(entry))
    return 1
  end
end
return 0
"""


def chat_of(number: str) -> ChatRef:
    """The simulated chat of a made-up customer's number."""
    return ChatRef(gateway="simulator", instance=INSTANCE, chat_id=f"{number}@sim")


class Transcript:
    """Append-only log of a simulated chat: {"role": customer|person|bot, "text", "at", ...}."""

    def __init__(self, link: RedisLink, keys: RedisKeys) -> None:
        self.link = link
        self.keys = keys
        self._local: dict[str, list[str]] = defaultdict(list)
        self._lock = threading.Lock()

    def add(self, chat: ChatRef, role: str, text: str, **extra: Any) -> None:
        entry = json.dumps({"role": role, "text": text, "at": round(time.time(), 3), **extra}, ensure_ascii=False)
        key = self.keys.simulator_log(chat.key)

        def on_redis(client: Any) -> None:
            with client.pipeline(transaction=True) as pipe:
                pipe.rpush(key, entry)
                pipe.ltrim(key, -KEPT_ENTRIES, -1)
                pipe.expire(key, KEPT_SECONDS)
                pipe.execute()

        def locally() -> None:
            with self._lock:
                self._local[chat.key] = [*self._local[chat.key], entry][-KEPT_ENTRIES:]

        self.link.run(on_redis, locally)

    def relabel(self, chat: ChatRef, entry_id: str, role: str) -> None:
        """Say who wrote an entry after the fact: a reply the owner sent from the panel went out through this
        gateway like the assistant's, but the simulator shows it as the attendant's."""
        key = self.keys.simulator_log(chat.key)

        def on_redis(client: Any) -> None:
            client.eval(RELABEL_LUA, 1, key, entry_id, role, RELABEL_SCAN)

        def locally() -> None:
            with self._lock:
                entries = self._local.get(chat.key, [])
                for index in range(len(entries) - 1, max(-1, len(entries) - 1 - RELABEL_SCAN), -1):
                    entry = json.loads(entries[index])
                    if entry.get("id") == entry_id:
                        entries[index] = json.dumps({**entry, "role": role}, ensure_ascii=False)
                        return

        self.link.run(on_redis, locally)

    def forget_local(self, chat_key: str) -> int:
        """Drop the transcript this process holds of one chat (an erasure)."""
        with self._lock:
            return int(self._local.pop(chat_key, None) is not None)

    def entries(self, chat: ChatRef, since: int = 0) -> list[dict[str, Any]]:
        """Entries from position `since` on (the page asks only for what it has not shown yet)."""
        key = self.keys.simulator_log(chat.key)
        raw = self.link.run(lambda client: client.lrange(key, since, -1), lambda: self._local.get(chat.key, [])[since:])
        return [json.loads(item) for item in raw]
