"""A throwaway Redis Sentinel group on loopback: one master, one replica and three sentinels (the same redis-server
binary, `--sentinel`), in a temp dir, for the failover tests. Only what it started is ever stopped."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import redis

from tests.redis_server import RedisServer, free_port

MASTER_NAME = "mymaster"


class SentinelGroup:
    def __init__(self, workdir: Path, *, sentinels: int = 3) -> None:
        self.workdir = workdir
        self.master = RedisServer(workdir / "master")
        self.replica = RedisServer(workdir / "replica", extra=("--replicaof", "127.0.0.1", str(self.master.port)))
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def addresses(self) -> str:
        """CACHE_REDIS_SENTINELS."""
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)

    def start(self) -> SentinelGroup:
        self.master.start()
        self.replica.start()
        for n, port in enumerate(self.sentinel_ports):
            folder = self.workdir / f"sentinel-{n}"
            folder.mkdir(parents=True, exist_ok=True)
            config = folder / "sentinel.conf"  # sentinels rewrite their file: each its own, writable
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {folder}\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
                f"sentinel failover-timeout {MASTER_NAME} 5000\n"
                f"sentinel parallel-syncs {MASTER_NAME} 1\n"
            )
            self.sentinels.append(
                subprocess.Popen(
                    [self.master.binary, str(config), "--sentinel"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    stdin=subprocess.DEVNULL,
                )
            )
        self.wait(lambda: self.replica_in_sync(), "the replica to sync")
        self.wait(lambda: all(self.sentinel_knows_replica(port) for port in self.sentinel_ports), "the sentinels")
        return self

    def master_port(self) -> int | None:
        """The master's port as the sentinels tell it now."""
        for port in self.sentinel_ports:
            try:
                with redis.Redis(port=port, socket_timeout=1) as sentinel:
                    address = sentinel.sentinel_get_master_addr_by_name(MASTER_NAME)
            except redis.RedisError:
                continue
            if address:
                return int(address[1])
        return None

    def replica_in_sync(self) -> bool:
        """The replica is linked and has every write the master made so far."""
        try:
            with redis.Redis(port=self.master.port, socket_timeout=1) as master:
                offset = int(master.info("replication")["master_repl_offset"])
            with redis.Redis(port=self.replica.port, socket_timeout=1) as replica:
                info = replica.info("replication")
        except redis.RedisError:
            return False
        return info.get("master_link_status") == "up" and int(info.get("slave_repl_offset", -1)) >= offset

    def sentinel_knows_replica(self, port: int) -> bool:
        try:
            with redis.Redis(port=port, socket_timeout=1, decode_responses=True) as sentinel:
                replicas = sentinel.sentinel_slaves(MASTER_NAME)
                others = sentinel.sentinel_sentinels(MASTER_NAME)
        except redis.RedisError:
            return False
        return bool(replicas) and len(others) >= len(self.sentinel_ports) - 1

    @staticmethod
    def wait(condition: object, what: str, timeout: float = 30.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if condition():  # type: ignore[operator]
                return
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}")

    def stop(self) -> None:
        for process in self.sentinels:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    process.kill()
        self.sentinels.clear()
        self.replica.stop()
        self.master.stop()
