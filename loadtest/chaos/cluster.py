"""The system under test: one real broker server and its nodes, as child processes.

Reuses the test suite's process helpers (tests/processes.py, tests/servers):
the chaos run starts exactly what the tests start. Every method blocks; the
runner calls them in a worker thread.
"""

from __future__ import annotations

import signal
import subprocess
import time
from typing import Any

from tests.processes import NodeProcess
from tests.servers import server_class

NODE_FLAGS = (
    "--heartbeat-interval", "5",
    "--heartbeat-timeout", "5",
    "--drain-window", "3",
    "--log-level", "warning",
)

# What a SIGKILLed broker keeps, as the servers in tests/servers run it.
PERSISTENCE = {
    "memory": "none: the embedded broker lives in its only node; a node restart is a new epoch",
    "redis": "append-only file, appendfsync always: every acknowledged publication survives a SIGKILL",
    "nats": "JetStream file store: streams survive a SIGKILL",
    "kafka": "none: Tansu runs on its memory storage engine (the only one installable here), so a restart "
    "loses every topic and must give new epochs",
}


class Cluster:
    def __init__(self, kind: str, nodes: int = 3) -> None:
        cls = server_class(kind)
        if cls is None:
            raise RuntimeError(f"no test server for {kind}")
        self.kind = kind
        self.server: Any = cls()
        self.count = 1 if kind == "memory" else nodes
        self.nodes: list[NodeProcess] = []
        self.down: set[int] = set()
        self.broker_up = True

    @property
    def networked(self) -> bool:
        return self.kind != "memory"

    def broker_url(self) -> str:
        return str(self.server.url())

    def start(self) -> None:
        self.server.start()
        url = self.broker_url()
        for _ in range(self.count):
            self.nodes.append(NodeProcess(url, *NODE_FLAGS).start())

    def stop(self) -> None:
        for node in self.nodes:
            try:
                node.stop()
            except Exception:  # noqa: BLE001 - tear everything down whatever one part says
                pass
        self.server.stop()

    def addresses(self) -> list[tuple[str, int]]:
        """The nodes a load balancer would offer: the ones up, or all while none is."""
        up = [i for i in range(len(self.nodes)) if i not in self.down]
        return [("127.0.0.1", self.nodes[i].port) for i in (up or range(len(self.nodes)))]

    def kill_node(self, index: int, down: float) -> None:
        node = self.nodes[index]
        self.down.add(index)
        try:
            node.kill()
            time.sleep(down)
            # Not waiting for readiness: clients reach the node the moment it listens.
            self._start_node(node)
        finally:
            self.down.discard(index)

    def drain_node(self, index: int, down: float) -> None:
        node = self.nodes[index]
        self.down.add(index)
        try:
            assert node.proc is not None
            node.proc.send_signal(signal.SIGTERM)
            try:
                node.proc.wait(40)
            except subprocess.TimeoutExpired:
                node.kill()
            time.sleep(down)
            self._start_node(node)
        finally:
            self.down.discard(index)

    def _start_node(self, node: NodeProcess) -> None:
        for attempt in range(5):
            try:
                node.start(wait_ready=False)
                return
            except (RuntimeError, TimeoutError):
                node.kill()
                if attempt == 4:
                    raise
                time.sleep(0.5)

    def restart_broker(self, down: float) -> None:
        self.broker_up = False
        try:
            self.server.kill()
            time.sleep(down)
            try:
                self.server.restart()
            except RuntimeError:
                # Tansu: a node's producer may recreate the topic before the
                # server's own "topic create" does; the broker is up all the same.
                if self.kind != "kafka" or self.server.proc is None or self.server.proc.poll() is not None:
                    raise
        finally:
            self.broker_up = True
