"""The Redis connection and its up/down state, shared by buffer and memory.

A failed call marks Redis down for REDIS_RETRY_SECONDS; during that time callers use their in-process
fallback without waiting on timeouts, and the next call after it tries Redis again (self-healing).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis

log = logging.getLogger(__name__)

# Errors that mean "Redis is not reachable", as opposed to a bug in a command.
UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, redis.ReadOnlyError)

T = TypeVar("T")


def redacted(url: str) -> str:
    """A Redis URI fit for a log line: "redis://:***@cache:6379/0" instead of its password."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


class RedisLink:
    """A redis client plus a small circuit breaker."""

    def __init__(self, url: str | None, *, retry_seconds: float = 2.0, timeout_seconds: float = 1.0) -> None:
        self.enabled = bool(url)
        self.where = redacted(url or "")  # for log lines: the URI without its password
        self.client: redis.Redis | None = None
        if url:
            self.client = redis.Redis.from_url(
                url,
                socket_connect_timeout=timeout_seconds,
                socket_timeout=timeout_seconds,
                health_check_interval=30,
                decode_responses=True,
            )
        self._retry_seconds = retry_seconds
        self._down_until = 0.0
        self._was_down = False
        self._lock = threading.Lock()

    def available(self) -> bool:
        """True when Redis is enabled and not in its cool-down after a failure."""
        return self.client is not None and time.monotonic() >= self._down_until

    def mark_down(self, exc: BaseException) -> None:
        with self._lock:
            self._down_until = time.monotonic() + self._retry_seconds
            if not self._was_down:
                log.warning(
                    "redis unavailable at %s (CACHE_REDIS_URI), using in-process fallback: %s",
                    self.where,
                    exc.__class__.__name__,
                )
            self._was_down = True

    def mark_up(self) -> None:
        if self._was_down:
            with self._lock:
                if self._was_down:
                    log.warning("redis reachable again, back on the shared buffer")
                self._was_down = False

    def run(self, on_redis: Callable[[redis.Redis], T], fallback: Callable[[], T]) -> T:
        """`on_redis(client)` when Redis is enabled and not cooling down, else (or when the call finds Redis
        unreachable) `fallback()`. The one place that turns a failed call into "Redis is down" and a good one
        into "Redis is back"; errors other than unavailability (a bug in a command) propagate."""
        if self.client is not None and self.available():
            try:
                result = on_redis(self.client)
            except UNAVAILABLE as exc:
                self.mark_down(exc)
            else:
                self.mark_up()
                return result
        return fallback()

    def is_down(self) -> bool:
        return self._was_down

    def ping(self) -> bool:
        """Check Redis now (ignores the cool-down); updates the state."""
        if self.client is None:
            return False
        try:
            self.client.ping()
        except UNAVAILABLE as exc:
            self.mark_down(exc)
            return False
        self._down_until = 0.0
        self.mark_up()
        return True
