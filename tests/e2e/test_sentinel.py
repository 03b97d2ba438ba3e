"""End-to-end on a Redis Sentinel group (1 master, 1 replica, 3 sentinels) started here: the service finds the master
through the sentinels, survives the master being SIGKILLed, and answers every acknowledged message once; a web
process that runs no worker answers 503 while no master is reachable instead of keeping messages nobody answers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Harness, assert_a_worker_killed_mid_reply_is_replaced, post_until_acknowledged, upsert
from tests.redis_sentinel import SentinelGroup


@pytest.fixture
def sentinel_group(tmp_path: Path) -> Iterator[SentinelGroup]:
    group = SentinelGroup(tmp_path / "sentinel").start()
    yield group
    group.stop()


def sentinel_env(group: SentinelGroup) -> dict[str, str]:
    # CACHE_REDIS_URI gives only the database number (and a password, were there one): its host is never used.
    return {"CACHE_REDIS_SENTINELS": group.addresses, "CACHE_REDIS_URI": "redis://unused.invalid:6379/0"}


def test_a_master_killed_mid_run_loses_no_acknowledged_message(e2e: Harness, sentinel_group: SentinelGroup) -> None:
    server = e2e.gunicorn_server(workers=2, DEBOUNCE_SECONDS=2, **sentinel_env(sentinel_group))
    before = {f"55118{n:08d}@s.whatsapp.net": f"Antes da falha {n}" for n in range(8)}
    during = {f"55117{n:08d}@s.whatsapp.net": f"Durante a falha {n}" for n in range(8)}
    after = {f"55116{n:08d}@s.whatsapp.net": f"Depois da falha {n}" for n in range(8)}

    for jid, text in before.items():
        post_until_acknowledged(server, upsert(text, jid=jid))
    # Acknowledged and replicated: what Redis replication keeps through a failover (see the README's window).
    sentinel_group.wait(sentinel_group.replica_in_sync, "the replica to have the buffered messages", timeout=10)
    sentinel_group.master.kill()
    for jid, text in during.items():
        post_until_acknowledged(server, upsert(text, jid=jid))
    sentinel_group.wait(lambda: sentinel_group.master_port() == sentinel_group.replica.port, "the failover")
    for jid, text in after.items():
        post_until_acknowledged(server, upsert(text, jid=jid))

    expected = {**before, **during, **after}
    sends = e2e.wait_sends(len(expected), timeout=40)
    replies = {}
    for send in sends:
        assert send.json["number"] not in replies, f"answered twice: {send.json}"
        replies[send.json["number"]] = send.json["text"]
    assert set(replies) == set(expected)
    assert all(text in replies[jid] for jid, text in expected.items())
    e2e.assert_no_more(sends=len(expected), seconds=4)


def test_a_web_process_without_a_worker_answers_503_while_no_master_is_reachable(
    e2e: Harness, sentinel_group: SentinelGroup
) -> None:
    web = e2e.gunicorn_server(workers=1, WORKER_ENABLED="false", **sentinel_env(sentinel_group))
    worker = e2e.spawn_worker_process(**sentinel_env(sentinel_group))
    assert web.post(upsert("Oi, tudo bem?")).json()["status"] == "buffered"
    e2e.wait_sends(1, timeout=20)

    sentinel_group.stop()  # no master, no sentinel: nothing to buffer into
    refused = web.post(upsert("Ainda estão abertos?"))

    assert refused.status_code == 503, refused.text
    assert refused.json() == {"error": "buffer unavailable", "reason": "redis"}
    assert refused.headers["Retry-After"] == "5"
    assert worker.running
    e2e.assert_no_more(sends=1, seconds=2)


def test_a_worker_killed_mid_reply_is_replaced_after_the_lease(e2e: Harness, sentinel_group: SentinelGroup) -> None:
    assert_a_worker_killed_mid_reply_is_replaced(e2e, sentinel_env(sentinel_group))
