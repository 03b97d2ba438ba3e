"""A throwaway Redis Cluster on loopback for the tests: by default 3 masters and 3 replicas, each a `RedisServer` with
cluster mode on and persistence off, in its own folder under a temp dir, joined by `redis-cli --cluster create`.

It owns those server processes and their folders, nothing else: `stop()` stops only the processes it started, by
their own handles. `failover()` (coordinated, no acknowledged write lost) and `kill_master()` (SIGKILL, the replica
takes over after the node timeout) let tests watch a client ride out a change of master.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from redis.cluster import ClusterNode, RedisCluster

from tests.redis_server import RedisServer, free_port

SLOTS = 16384
# Short, so an un-coordinated failover is over in a few seconds: a node is suspected after this long without a
# pong, and its replica is elected shortly after a majority of masters agree it failed.
NODE_TIMEOUT_MS = 2000


@dataclass(frozen=True)
class NodeView:
    """One line of CLUSTER NODES, as one node sees another."""

    port: int
    flags: frozenset[str]
    master_port: int | None  # for a replica, the port of its master
    has_slots: bool

    @property
    def failed(self) -> bool:
        return bool(self.flags & {"fail", "fail?", "noaddr", "handshake"})

    @property
    def is_master(self) -> bool:
        return "master" in self.flags and not self.failed and self.has_slots

    @property
    def is_replica(self) -> bool:
        return "slave" in self.flags and not self.failed


class RedisClusterGroup:
    def __init__(self, workdir: Path, masters: int = 3, replicas_per_master: int = 1) -> None:
        if masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters")
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not installed: `make test` installs it with redis-server")
        self.cli = cli
        self.workdir = workdir
        self.master_count = masters
        self.replicas_per_master = replicas_per_master
        self.servers: list[RedisServer] = []
        used: set[int] = set()
        for n in range(masters * (1 + replicas_per_master)):
            folder = workdir / f"node-{n}"
            # A node that finds the cluster file of an earlier run would rejoin that cluster: start from nothing.
            (folder / "nodes.conf").unlink(missing_ok=True)
            # The bus port is chosen too (cluster-port): the default, port + 10000, may be above 65535 or taken,
            # since free_port() hands out ports from the ephemeral range.
            bus_port = self._distinct_port(used)
            server = RedisServer(
                folder,
                extra=(
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(folder / "nodes.conf"),
                    "--cluster-node-timeout",
                    str(NODE_TIMEOUT_MS),
                    "--cluster-port",
                    str(bus_port),
                    # A replica's first full sync is streamed at once, not after the default 5 s wait for more
                    # replicas to join it: the start would otherwise take that long.
                    "--repl-diskless-sync-delay",
                    "0",
                    # On SIGTERM a master would wait up to 10 s for its replicas to acknowledge its last writes
                    # (they do so once a second): nothing is kept on disk here, so stop at once.
                    "--shutdown-timeout",
                    "0",
                ),
            )
            if server.port in used:
                server.port = self._distinct_port(used)
            used.add(server.port)
            self.servers.append(server)
        self.node_ids: dict[str, int] = {}  # node id -> port, known once started

    @staticmethod
    def _distinct_port(used: set[int]) -> int:
        # free_port() releases its port at once, so two calls may in principle hand out the same one.
        while (port := free_port()) in used:
            pass
        used.add(port)
        return port

    # -- addresses -----------------------------------------------------------------------------------------------

    @property
    def ports(self) -> list[int]:
        return [server.port for server in self.servers]

    @property
    def startup_nodes(self) -> str:
        """Every node, dead or alive, as host:port,host:port,..."""
        return ",".join(f"127.0.0.1:{port}" for port in self.ports)

    @property
    def url(self) -> str:
        """A startup node for RedisCluster.from_url: the first node (in start order) that is a master now."""
        return f"redis://127.0.0.1:{self.masters()[0]}/0"

    def client(self, **kwargs: Any) -> RedisCluster:
        """Every live node as a startup node, so the client still finds the cluster after a node was killed."""
        nodes = [ClusterNode("127.0.0.1", port) for port in self.live_ports()]
        return RedisCluster(startup_nodes=nodes, **{"decode_responses": True, **kwargs})

    # -- lifecycle -----------------------------------------------------------------------------------------------

    def start(self) -> RedisClusterGroup:
        try:
            for server in self.servers:
                server.start()
            for port in self.ports:
                with self._node(port) as node:
                    self.node_ids[node.execute_command("CLUSTER", "MYID")] = port
            created = subprocess.run(
                [
                    self.cli,
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{port}" for port in self.ports),
                    "--cluster-replicas",
                    str(self.replicas_per_master),
                    "--cluster-yes",
                ],
                capture_output=True,
                text=True,
                timeout=60,
                stdin=subprocess.DEVNULL,
            )
            if created.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed:\n{created.stdout}\n{created.stderr}")
            self.wait(self.ready, "the cluster to be ok with every replica in sync")
        except BaseException:
            # A half-started cluster must not outlive the test that could not use it.
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    # -- failovers -----------------------------------------------------------------------------------------------

    def failover(self, master_port: int, timeout: float = 30.0) -> int:
        """Manual failover on the master's replica: the master stops taking writes until the replica has caught up,
        then they swap roles, so no acknowledged write is lost. Returns the new master's port."""
        replica = self.replica_of(master_port)
        with self._node(replica) as node:
            node.execute_command("CLUSTER", "FAILOVER")
        self.wait(
            lambda: (
                self._role(replica) == "master"
                and self._role(master_port) == "slave"  # the former master follows the new one
                and self._settled(promoted=replica, gone=master_port)
                and self._replicas_in_sync()  # it has caught up, so a failover back is coordinated too
            ),
            f"{replica} to take over from {master_port}",
            timeout,
        )
        return replica

    def kill_master(self, master_port: int, timeout: float = 30.0) -> int:
        """SIGKILL of the master: one of its replicas is elected once the other masters flag it failed (a few
        seconds with the short node timeout). Writes not yet replicated are lost, as in production. Returns the new
        master's port."""
        replicas = self.replicas_of(master_port)
        if not replicas:
            raise AssertionError(f"{master_port} has no healthy replica to take over")
        self._server(master_port).kill()

        def promoted() -> int | None:
            # With several replicas the best placed one wins the election, not necessarily the first listed.
            return next((port for port in replicas if self._role(port) == "master"), None)

        self.wait(
            lambda: (
                (new := promoted()) is not None
                and self._settled(promoted=new, gone=master_port)
                # Any other replica of the dead master must have moved to the new one, and be in sync.
                and self._replicas_in_sync()
            ),
            f"a replica of {master_port} ({', '.join(map(str, replicas))}) to be promoted after it was killed",
            timeout,
        )
        new = promoted()
        assert new is not None
        return new

    # -- topology ------------------------------------------------------------------------------------------------

    def live_ports(self) -> list[int]:
        return [s.port for s in self.servers if s.process is not None and s.process.poll() is None]

    def masters(self) -> list[int]:
        """Ports of the masters that serve slots now, as the first live node that answers sees them."""
        view = self._any_view()
        return [port for port in self.ports if port in view and view[port].is_master]

    def replicas_of(self, master_port: int) -> list[int]:
        """The healthy replicas of that master, as the first live node that answers sees them."""
        view = self._any_view()
        return [p for p in self.ports if p in view and view[p].is_replica and view[p].master_port == master_port]

    def replica_of(self, master_port: int) -> int:
        """A healthy replica of that master (the first in start order)."""
        replicas = self.replicas_of(master_port)
        if not replicas:
            raise AssertionError(f"{master_port} has no healthy replica")
        return replicas[0]

    def ready(self) -> bool:
        """Every live node says cluster_state:ok with all slots served, they agree on who the masters are, and
        every replica is linked to its master and has all it wrote so far."""
        return self._settled() and self._replicas_in_sync()

    @staticmethod
    def wait(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if condition():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")

    # -- internals -----------------------------------------------------------------------------------------------

    @staticmethod
    def _node(port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=1, decode_responses=True)

    def _server(self, port: int) -> RedisServer:
        for server in self.servers:
            if server.port == port:
                return server
        raise KeyError(f"no node of this cluster listens on {port}")

    def _view(self, port: int) -> dict[int, NodeView] | None:
        """CLUSTER NODES as that node sees it, keyed by port; None if it does not answer."""
        try:
            with self._node(port) as node:
                text = node.execute_command("CLUSTER", "NODES")
        except redis.RedisError:
            return None
        view: dict[int, NodeView] = {}
        for line in text.splitlines():
            fields = line.split()
            if len(fields) < 8 or fields[0] not in self.node_ids:
                continue  # a node id learned before MYID was asked cannot be ours
            flags = frozenset(fields[2].split(",")) - {"myself"}
            master = self.node_ids.get(fields[3]) if fields[3] != "-" else None
            view[self.node_ids[fields[0]]] = NodeView(self.node_ids[fields[0]], flags, master, len(fields) > 8)
        return view

    def _any_view(self) -> dict[int, NodeView]:
        for port in self.live_ports():
            view = self._view(port)
            if view is not None:
                return view
        raise AssertionError("no node of the cluster answers")

    def _info(self, port: int) -> dict[str, str] | None:
        try:
            with self._node(port) as node:
                text = node.execute_command("CLUSTER", "INFO")
        except redis.RedisError:
            return None
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    def _role(self, port: int) -> str | None:
        try:
            with self._node(port) as node:
                return str(node.info("replication")["role"])
        except redis.RedisError:
            return None

    def _settled(self, *, promoted: int | None = None, gone: int | None = None) -> bool:
        """cluster_state:ok and full coverage on every live node, each live node a master or a replica, and all of
        them name the same masters (including `promoted`, excluding `gone`): until they agree, a client may be sent
        back and forth between nodes."""
        masters: set[int] | None = None
        live = self.live_ports()
        for port in live:
            info = self._info(port)
            view = self._view(port)
            if info is None or view is None:
                return False
            if (
                info.get("cluster_state") != "ok"
                or info.get("cluster_slots_assigned") != str(SLOTS)
                or info.get("cluster_slots_ok") != str(SLOTS)
                or info.get("cluster_known_nodes") != str(len(self.servers))
            ):
                return False
            if not all(p in view and (view[p].is_master or view[p].is_replica) for p in live):
                return False  # e.g. just created, a node not yet told whom to replicate
            seen = {p for p, node in view.items() if node.is_master}
            if len(seen) != self.master_count:
                return False
            if masters is None:
                masters = seen
            elif seen != masters:
                return False
        if masters is None:
            return False
        return (promoted is None or promoted in masters) and (gone is None or gone not in masters)

    def _replicas_in_sync(self) -> bool:
        for port in self.live_ports():
            try:
                with self._node(port) as node:
                    info = node.info("replication")
                if info["role"] != "slave":
                    continue
                if info.get("master_link_status") != "up" or int(info.get("master_sync_in_progress", 1)):
                    return False
                with self._node(int(info["master_port"])) as master:
                    offset = int(master.info("replication")["master_repl_offset"])
                # Read again after the master: every write it had made by then has reached the replica.
                with self._node(port) as node:
                    if int(node.info("replication").get("slave_repl_offset", -1)) < offset:
                        return False
            except redis.RedisError:
                return False
        return True
