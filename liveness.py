"""Which worker processes are alive: each running worker (the reply loop of a `python worker.py` process, or the
thread of a web process with WORKER_ENABLED) writes a heartbeat into one Redis sorted set; a worker whose last
heartbeat is older than STALE_SECONDS counts as gone. `/health` (`workers_alive`), the panel and `/metrics`
(`wa_workers_alive`) read it: a deployment with no live worker answers nobody.
"""

from __future__ import annotations

import os
import socket
import time
import uuid

import redis

from redis_keys import RedisKeys
from redis_link import RedisLink

HEARTBEAT_SECONDS = 5.0
STALE_SECONDS = 3 * HEARTBEAT_SECONDS  # two heartbeats missed: the process is gone (or hung)


def worker_id() -> str:
    """host:pid:random, unique per worker start."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Liveness:
    def __init__(self, link: RedisLink, keys: RedisKeys) -> None:
        self.link = link
        self.key = keys.workers()
        self._last_beat = 0.0

    def beat(self, worker: str, *, now: float | None = None, force: bool = False) -> None:
        """Record that `worker` is alive (at most every HEARTBEAT_SECONDS unless `force`)."""
        now = time.time() if now is None else now
        if not force and now - self._last_beat < HEARTBEAT_SECONDS:
            return
        self._last_beat = now

        def write(client: redis.Redis) -> None:
            pipe = client.pipeline(transaction=False)
            pipe.zadd(self.key, {worker: now})
            pipe.zremrangebyscore(self.key, "-inf", now - 10 * STALE_SECONDS)  # the long gone leave the set
            pipe.execute()

        self.link.run(write, lambda: None)

    def leave(self, worker: str) -> None:
        """A worker that stops cleanly stops counting at once."""
        self.link.run(lambda client: client.zrem(self.key, worker), lambda: 0)

    def alive(self, *, now: float | None = None, own: str = "") -> int | None:
        """Workers with a recent heartbeat; None when Redis cannot tell. `own` is this process's running worker:
        it counts even when its heartbeat is not in Redis yet (a Redis that restarted empty, until the next beat)."""
        now = time.time() if now is None else now
        if self.link.client is None:
            return None
        since = now - STALE_SECONDS

        def count(client: redis.Redis) -> int:
            pipe = client.pipeline(transaction=False)
            pipe.zcount(self.key, since, "+inf")
            pipe.zscore(self.key, own or "-")
            recent, own_beat = pipe.execute()
            missing_own = bool(own) and (own_beat is None or float(own_beat) < since)
            return int(recent) + int(missing_own)

        return self.link.run(count, lambda: None)
