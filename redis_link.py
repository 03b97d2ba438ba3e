"""The Redis connection and its up/down state, shared by buffer and memory.

A failed call marks Redis down for REDIS_RETRY_SECONDS; during that time callers use their in-process
fallback without waiting on timeouts, and the next call after it tries Redis again (self-healing).

With CACHE_REDIS_SENTINELS the client is redis-py's Sentinel `master_for` client: each new connection asks the
sentinels for the current master, so after a failover the first calls fail (the old master is gone or read-only),
Redis is marked down for REDIS_RETRY_SECONDS, and the next call reaches the new master.

With CACHE_REDIS_CLUSTER the client is redis-py's RedisCluster, CACHE_REDIS_URI naming any one node: it learns the
others and follows slots that move (MOVED, a failover) by itself; a call that still fails (the cluster cannot serve
the slot yet) marks Redis down like any outage.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.cluster import RedisCluster
from redis.connection import parse_url
from redis.retry import Retry
from redis.sentinel import Sentinel

if TYPE_CHECKING:
    from config import Settings

log = logging.getLogger(__name__)

# Errors that mean "Redis is not reachable", as opposed to a bug in a command. On a cluster: a slot without a master
# for now (CLUSTERDOWN, MASTERDOWN, TRYAGAIN, not covered, or redis-py's retries on it used up).
UNAVAILABLE = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.BusyLoadingError,
    redis.ReadOnlyError,
    redis.exceptions.ClusterError,
    redis.exceptions.TryAgainError,
    redis.exceptions.SlotNotCoveredError,
)

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


def parse_sentinels(raw: str) -> tuple[tuple[str, int], ...]:
    """CACHE_REDIS_SENTINELS: `host:port,host:port,...` -> ((host, port), ...). Raises ValueError."""
    found: list[tuple[str, int]] = []
    for item in filter(None, (piece.strip() for piece in raw.split(","))):
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected host:port, got {item!r}")
        found.append((host.strip("[]"), int(port)))
    return tuple(found)


def make_client(
    url: str,
    *,
    timeout_seconds: float,
    sentinels: tuple[tuple[str, int], ...] = (),
    sentinel_master: str = "",
    cluster: bool = False,
) -> redis.Redis:
    """The client for CACHE_REDIS_URI; with sentinels, the Sentinel client of `sentinel_master`, the URI then giving
    only the database number and the credentials; with `cluster`, a RedisCluster that starts from the URI's node."""
    common = {
        "socket_connect_timeout": timeout_seconds,
        "socket_timeout": timeout_seconds,
        "health_check_interval": 30,
        "decode_responses": True,
    }
    if cluster:
        # A few quick retries (MOVED after a failover, a node just gone) inside one call, then the circuit breaker.
        client: Any = RedisCluster.from_url(url, **common, retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 3))
        return client
    if not sentinels:
        return redis.Redis.from_url(url, **common)
    given = parse_url(url)
    credentials = {name: given[name] for name in ("db", "username", "password") if given.get(name) is not None}
    # No backoff-and-retry of redis-py's own on each sentinel asked (seconds each, while the webhook waits): one
    # try per sentinel, and one more per command for the master (the first after a failover finds the old one
    # gone). The circuit breaker below retries after REDIS_RETRY_SECONDS.
    watchers = Sentinel(
        list(sentinels),
        sentinel_kwargs={
            "socket_connect_timeout": timeout_seconds,
            "socket_timeout": timeout_seconds,
            "retry": Retry(NoBackoff(), 0),
        },
    )
    return watchers.master_for(sentinel_master, **common, **credentials, retry=Retry(NoBackoff(), 1))


def describe(
    url: str, sentinels: tuple[tuple[str, int], ...] = (), sentinel_master: str = "", *, cluster: bool = False
) -> str:
    """Where Redis is, for a log line (no password)."""
    if cluster:
        return f"cluster via {redacted(url)}"
    if not sentinels:
        return redacted(url)
    return f"sentinel master {sentinel_master!r} via " + ",".join(f"{host}:{port}" for host, port in sentinels)


class RedisLink:
    """A redis client plus a small circuit breaker."""

    def __init__(
        self,
        url: str | None,
        *,
        retry_seconds: float = 2.0,
        timeout_seconds: float = 1.0,
        sentinels: tuple[tuple[str, int], ...] = (),
        sentinel_master: str = "",
        cluster: bool = False,
    ) -> None:
        self.enabled = bool(url)
        self.where = describe(url or "", sentinels, sentinel_master, cluster=cluster)  # for log lines: no password
        self.setting = "CACHE_REDIS_SENTINELS" if sentinels else "CACHE_REDIS_URI"
        self.client: redis.Redis | None = None
        if url:
            self.client = make_client(
                url,
                timeout_seconds=timeout_seconds,
                sentinels=sentinels,
                sentinel_master=sentinel_master,
                cluster=cluster,
            )
        self._retry_seconds = retry_seconds
        self._down_until = 0.0
        self._was_down = False
        self._lock = threading.Lock()

    @classmethod
    def for_settings(cls, settings: Settings, *, timeout_seconds: float = 1.0) -> RedisLink:
        """The link CACHE_REDIS_* describe (None of a client when CACHE_REDIS_ENABLED is false)."""
        return cls(
            settings.redis_uri if settings.redis_enabled else None,
            retry_seconds=settings.redis_retry_seconds,
            timeout_seconds=timeout_seconds,
            sentinels=parse_sentinels(settings.redis_sentinels),
            sentinel_master=settings.redis_sentinel_master,
            cluster=settings.redis_cluster,
        )

    def available(self) -> bool:
        """True when Redis is enabled and not in its cool-down after a failure."""
        return self.client is not None and time.monotonic() >= self._down_until

    def mark_down(self, exc: BaseException) -> None:
        with self._lock:
            self._down_until = time.monotonic() + self._retry_seconds
            if not self._was_down:
                log.warning(
                    "redis unavailable at %s (%s), using in-process fallback: %s",
                    self.where,
                    self.setting,
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
