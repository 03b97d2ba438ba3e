"""End-to-end on a 3-master Redis Cluster with a replica each (tests/redis_cluster.py), with web processes and
worker processes apart: bursts on many chats are answered once through a manual failover of a master, and a worker
process SIGKILLed while waiting on the model is replaced by the other one after the lease."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Harness, assert_a_worker_killed_mid_reply_is_replaced, post_until_acknowledged, upsert
from tests.redis_cluster import RedisClusterGroup


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisClusterGroup]:
    group = RedisClusterGroup(tmp_path / "cluster").start()
    yield group
    group.stop()


def cluster_env(group: RedisClusterGroup) -> dict[str, str]:
    return {"CACHE_REDIS_CLUSTER": "true", "CACHE_REDIS_URI": group.url, "DUE_SHARDS": "16"}


def test_bursts_on_many_chats_are_answered_once_through_a_failover(e2e: Harness, cluster: RedisClusterGroup) -> None:
    env = cluster_env(cluster)
    web = e2e.gunicorn_server(workers=2, WORKER_ENABLED="false", DEBOUNCE_SECONDS=2, **env)
    for _ in range(2):
        e2e.spawn_worker_process(DEBOUNCE_SECONDS=2, **env)
    chats = {f"55119{n:08d}@s.whatsapp.net": [f"Oi {n}", f"Quero o item {n}", f"Entrega hoje? {n}"] for n in range(36)}
    jids = list(chats)

    def post_round(part: int, subset: list[str]) -> None:
        for jid in subset:
            post_until_acknowledged(web, upsert(chats[jid][part], jid=jid))

    post_round(0, jids)
    post_round(1, jids[:18])
    new_master = cluster.failover(cluster.masters()[0])  # a coordinated failover: no acknowledged write is lost
    assert new_master in cluster.masters()
    post_round(1, jids[18:])
    post_round(2, jids)

    sends = e2e.wait_sends(len(chats), timeout=60)
    replies: dict[str, str] = {}
    for send in sends:
        assert send.json["number"] not in replies, f"answered twice: {send.json}"
        replies[send.json["number"]] = send.json["text"]
    assert set(replies) == set(chats)
    # Each chat's whole burst went into its one reply (the fake Gemini echoes the prompt).
    assert all(all(text in replies[jid] for text in texts) for jid, texts in chats.items())
    e2e.assert_no_more(sends=len(chats), seconds=4)
    health = web.health()
    assert (health["redis"], health["workers_alive"]) == ("up", 2), health
    assert (health["chats_pending"], health["chats_in_progress"], health["dead_letters"]) == (0, 0, 0), health


def test_a_worker_killed_mid_reply_is_replaced_after_the_lease(e2e: Harness, cluster: RedisClusterGroup) -> None:
    assert_a_worker_killed_mid_reply_is_replaced(e2e, cluster_env(cluster))
