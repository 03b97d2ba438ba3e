"""Chat history on a real Redis, and its in-process fallback while Redis is unreachable."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import pytest
import redis

import memory
from memory import History, Turn
from models import ChatRef
from redis_keys import RedisKeys
from redis_link import RedisLink
from tests.conftest import RedisServer, free_port

KEYS = RedisKeys("test")
CHAT = ChatRef(gateway="evolution", instance="loja", chat_id="5511987654321@s.whatsapp.net")
TTL = 3600

HistoryFactory = Callable[..., History]


def turns(*texts: str) -> list[Turn]:
    """Alternating user/model turns, stamped now (the local store drops turns older than the TTL)."""
    now = time.time()
    return [Turn(role="user" if i % 2 == 0 else "model", text=text, at=now) for i, text in enumerate(texts)]


def texts(history: list[Turn]) -> list[str]:
    return [turn.text for turn in history]


@pytest.fixture(params=["redis", "local"])
def histories(request: pytest.FixtureRequest) -> Iterator[HistoryFactory]:
    """History on the test Redis, or on a Redis URL where nothing listens (the in-process fallback)."""
    links: list[RedisLink] = []
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        request.getfixturevalue("redis_client")  # flushes the database
        url = server.url
    else:
        url = f"redis://127.0.0.1:{free_port()}/0"

    def make(max_turns: int = 20, ttl_seconds: int = TTL) -> History:
        link = RedisLink(url, retry_seconds=60, timeout_seconds=0.5)
        links.append(link)
        return History(link, KEYS, max_turns=max_turns, ttl_seconds=ttl_seconds)

    make.store = request.param  # type: ignore[attr-defined]
    yield make
    for link in links:
        assert link.client is not None
        link.client.close()


def test_turns_come_back_oldest_first(histories: HistoryFactory) -> None:
    history = histories()
    assert history.recent(CHAT) == []
    history.append(CHAT, turns("Oi", "Olá! Como posso ajudar?"))
    history.append(CHAT, turns("Quanto custa?", "R$ 10."))
    recent = history.recent(CHAT)
    assert texts(recent) == ["Oi", "Olá! Como posso ajudar?", "Quanto custa?", "R$ 10."]
    assert [t.role for t in recent] == ["user", "model", "user", "model"]
    assert recent[0].at == pytest.approx(time.time(), abs=60)
    assert history.link.is_down() == (histories.store == "local")  # type: ignore[attr-defined]


def test_history_is_capped_to_max_turns(histories: HistoryFactory) -> None:
    history = histories(max_turns=4)
    history.append(CHAT, turns("u1", "m1", "u2", "m2"))
    history.append(CHAT, turns("u3", "m3"))
    assert texts(history.recent(CHAT)) == ["u2", "m2", "u3", "m3"]
    history.append(CHAT, turns("a", "b", "c", "d", "e", "f"))  # more than the cap in one call
    assert texts(history.recent(CHAT)) == ["c", "d", "e", "f"]


def test_max_turns_zero_disables_history(histories: HistoryFactory) -> None:
    history = histories(max_turns=0)
    history.append(CHAT, turns("Oi", "Olá"))
    assert history.recent(CHAT) == []


def test_chats_are_isolated(histories: HistoryFactory) -> None:
    history = histories()
    other_number = ChatRef(gateway="evolution", instance="loja", chat_id="5521999990000@s.whatsapp.net")
    other_instance = ChatRef(gateway="evolution", instance="filial", chat_id=CHAT.chat_id)
    history.append(CHAT, turns("Oi", "Olá"))
    history.append(other_number, turns("Bom dia"))
    assert texts(history.recent(CHAT)) == ["Oi", "Olá"]
    assert texts(history.recent(other_number)) == ["Bom dia"]
    assert history.recent(other_instance) == []


def test_an_empty_append_writes_nothing(histories: HistoryFactory) -> None:
    history = histories()
    history.append(CHAT, [])
    assert history.recent(CHAT) == []


@pytest.fixture
def redis_link(redis_server: RedisServer, redis_client: redis.Redis) -> Iterator[RedisLink]:
    link = RedisLink(redis_server.url, retry_seconds=0.2, timeout_seconds=0.5)
    yield link
    assert link.client is not None
    link.client.close()


def test_redis_keeps_the_list_trimmed_and_expiring(redis_link: RedisLink, redis_client: redis.Redis) -> None:
    history = History(redis_link, KEYS, max_turns=3, ttl_seconds=TTL)
    history.append(CHAT, turns("u1", "m1", "u2", "m2"))
    key = KEYS.history(CHAT.key)
    assert redis_client.llen(key) == 3
    assert [json.loads(item)["text"] for item in redis_client.lrange(key, 0, -1)] == ["m1", "u2", "m2"]
    assert TTL * 1000 - 1000 < redis_client.pttl(key) <= TTL * 1000
    # Activity pushes the expiry forward again.
    redis_client.expire(key, 5)
    history.append(CHAT, turns("u3"))
    assert TTL * 1000 - 1000 < redis_client.pttl(key) <= TTL * 1000


def test_a_lowered_max_turns_applies_to_stored_histories(redis_link: RedisLink) -> None:
    History(redis_link, KEYS, max_turns=10, ttl_seconds=TTL).append(CHAT, turns("u1", "m1", "u2", "m2"))
    assert texts(History(redis_link, KEYS, max_turns=3, ttl_seconds=TTL).recent(CHAT)) == ["m1", "u2", "m2"]
    assert History(redis_link, KEYS, max_turns=0, ttl_seconds=TTL).recent(CHAT) == []


def test_max_turns_zero_leaves_no_key(redis_link: RedisLink, redis_client: redis.Redis) -> None:
    History(redis_link, KEYS, max_turns=0, ttl_seconds=TTL).append(CHAT, turns("Oi"))
    assert redis_client.keys("*") == []


def test_the_local_fallback_expires_a_chat_after_ttl_without_turns(monkeypatch: pytest.MonkeyPatch) -> None:
    link = RedisLink(f"redis://127.0.0.1:{free_port()}/0", retry_seconds=60, timeout_seconds=0.5)
    history = History(link, KEYS, max_turns=20, ttl_seconds=60)
    clock = [1000.0]
    monkeypatch.setattr(memory.time, "monotonic", lambda: clock[0])
    history.append(CHAT, turns("antiga", "velha"))
    clock[0] += 59
    assert texts(history.recent(CHAT)) == ["antiga", "velha"]
    history.append(CHAT, turns("de novo"))  # activity pushes the expiry forward, as EXPIRE does on Redis
    clock[0] += 59
    assert texts(history.recent(CHAT)) == ["antiga", "velha", "de novo"]
    clock[0] += 2
    assert history.recent(CHAT) == []
    history.append(CHAT, turns("nova"))
    assert texts(history.recent(CHAT)) == ["nova"]


def test_history_written_during_an_outage_stays_local(redis_server: RedisServer, redis_link: RedisLink) -> None:
    link = redis_link
    history = History(link, KEYS, max_turns=10, ttl_seconds=TTL)
    redis_server.stop()
    try:
        history.append(CHAT, turns("Oi", "Olá"))
        assert link.is_down()
        assert texts(history.recent(CHAT)) == ["Oi", "Olá"]
    finally:
        redis_server.start()
    assert link.ping()
    history.append(CHAT, turns("De volta"))
    assert texts(history.recent(CHAT)) == ["De volta"]  # Redis again; the local copy is not merged back
