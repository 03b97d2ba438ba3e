"""RedisLink.run, the one "try Redis, else the in-process fallback" helper: which side runs, when Redis is
marked down and back, and that a bug in a command is not mistaken for an outage."""

from __future__ import annotations

import time

import pytest
import redis

from redis_link import RedisLink
from tests.conftest import RedisServer, free_port


def test_redis_answers_so_the_fallback_is_not_called(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    link = RedisLink(redis_server.url)
    calls: list[str] = []
    assert link.run(lambda client: client.incr("n"), lambda: calls.append("fallback")) == 1
    assert calls == [] and not link.is_down()
    link.client.close()  # type: ignore[union-attr]


def test_unreachable_redis_uses_the_fallback_cools_down_and_comes_back(redis_server: RedisServer) -> None:
    link = RedisLink(f"redis://127.0.0.1:{free_port()}/0", retry_seconds=0.2, timeout_seconds=0.2)
    tried: list[int] = []

    def on_redis(client: redis.Redis) -> str:
        tried.append(1)
        return str(client.ping())

    assert link.run(on_redis, lambda: "local") == "local"
    assert link.is_down() and len(tried) == 1
    assert link.run(on_redis, lambda: "local") == "local"
    assert len(tried) == 1, "during the cool-down Redis is not tried again"
    link.client = redis.Redis.from_url(redis_server.url)  # Redis is reachable again
    time.sleep(0.25)
    assert link.run(on_redis, lambda: "local") == "True"
    assert not link.is_down()
    link.client.close()


def test_without_redis_the_fallback_always_runs() -> None:
    link = RedisLink(None)
    assert link.run(lambda client: "redis", lambda: "local") == "local"


def test_a_bug_in_a_command_propagates_instead_of_marking_redis_down(redis_server: RedisServer) -> None:
    link = RedisLink(redis_server.url)
    with pytest.raises(redis.ResponseError):
        link.run(lambda client: client.execute_command("NO-SUCH-COMMAND"), lambda: "local")
    assert not link.is_down()
    link.client.close()  # type: ignore[union-attr]


def test_the_log_names_the_redis_uri_without_its_password(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    link = RedisLink(f"redis://:s3cret-pw@127.0.0.1:{port}/0", timeout_seconds=0.2)
    with caplog.at_level("WARNING", logger="redis_link"):
        assert link.run(lambda client: client.ping(), lambda: "local") == "local"
    assert f"redis unavailable at redis://:***@127.0.0.1:{port}/0 (CACHE_REDIS_URI)" in caplog.text
    assert "s3cret-pw" not in caplog.text
