"""The Redis Cluster test harness itself, on real redis-server processes: it starts a 3+3 cluster that serves keys
spread over every master, and its failovers hand a master's slots to its replica without losing a written key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster

from tests.redis_cluster import RedisClusterGroup


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisClusterGroup]:
    group = RedisClusterGroup(tmp_path / "cluster").start()
    yield group
    group.stop()


def write_keys(client: RedisCluster) -> dict[str, str]:
    """200 keys: most under a dozen hash tags (one slot each), the rest untagged, so every master gets some."""
    keys = {}
    for n in range(200):
        key = f"{{chat-{n % 12}}}:message:{n}" if n % 4 else f"plain:{n}"
        keys[key] = f"value-{n}"
        client.set(key, keys[key])
    return keys


def assert_all_readable(client: RedisCluster, keys: dict[str, str]) -> None:
    missing = {key: value for key, value in keys.items() if client.get(key) != value}
    assert not missing, f"{len(missing)} keys lost or changed, e.g. {next(iter(missing))}"


def test_a_started_cluster_serves_every_key_and_a_manual_failover_loses_none(cluster: RedisClusterGroup) -> None:
    masters = cluster.masters()
    assert len(masters) == 3
    assert len(cluster.startup_nodes.split(",")) == 6
    client = cluster.client()
    try:
        keys = write_keys(client)
        assert_all_readable(client, keys)
        # The keys really are spread: every master holds some.
        for port in masters:
            with redis.Redis(port=port) as node:
                assert node.dbsize() > 0
        # The same data through a client that knows only the URL.
        with RedisCluster.from_url(cluster.url, decode_responses=True) as by_url:
            assert_all_readable(by_url, keys)

        old_master = masters[0]
        replica = cluster.replica_of(old_master)
        assert cluster.failover(old_master) == replica
        assert replica in cluster.masters() and old_master not in cluster.masters()
        assert len(cluster.masters()) == 3
        assert cluster.replica_of(replica) == old_master  # the former master now follows it
        assert_all_readable(client, keys)  # the old client follows the MOVED redirections
        client.set("{chat-0}:after-failover", "yes")
        assert client.get("{chat-0}:after-failover") == "yes"
    finally:
        client.close()


def test_a_killed_master_is_replaced_by_its_replica(cluster: RedisClusterGroup) -> None:
    client = cluster.client()
    try:
        keys = write_keys(client)
        # Every replica has all of them, so none can be lost with the master.
        cluster.wait(cluster.ready, "the replicas to catch up")
        old_master = cluster.masters()[1]
        replica = cluster.replica_of(old_master)
        assert cluster.kill_master(old_master) == replica
        assert old_master not in cluster.live_ports()
        assert replica in cluster.masters() and len(cluster.masters()) == 3
        assert_all_readable(client, keys)
    finally:
        client.close()
