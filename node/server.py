"""Run a node under uvicorn: one server, a client socket and an internal socket."""

from __future__ import annotations

import resource
import socket
from types import FrameType

import uvicorn
import uvloop

from .app import create_apps
from .edge import Edge
from .logs import configure
from .runtime import Node
from .settings import Settings


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def uvicorn_config(settings: Settings, node: Node) -> uvicorn.Config:
    apps = create_apps(node)
    edge = Edge(node, apps.client, apps.internal)
    return uvicorn.Config(
        # uvicorn runs the process, the sockets and the lifespan; every
        # connection's protocol is Fanline's own (node/edge.py), so uvicorn's
        # HTTP and WebSocket implementations are not used.
        apps.client,
        http=edge.protocol_factory(),  # type: ignore[arg-type]
        ws="none",
        loop="uvloop",
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
        backlog=2048,
    )


def raise_file_limit() -> int:
    """Raise the soft limit on open files to the hard one; every connection is a descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


class DrainingServer(uvicorn.Server):
    """uvicorn, except that the first SIGTERM drains before shutting down.

    Plain uvicorn closes every WebSocket with 1012 at once on SIGTERM, which
    sends the whole node's clients at the other nodes in one wave.  Here the
    first SIGTERM (or SIGINT) starts the node's paced drain and shutdown
    follows when it ends; a second signal exits at once.
    """

    def __init__(self, config: uvicorn.Config, node: Node) -> None:
        super().__init__(config)
        self.node = node
        self._drain_requested = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        loop = self.node.loop
        if self._drain_requested or loop is None or self.should_exit:
            super().handle_exit(sig, frame)
            return
        self._drain_requested = True
        loop.call_soon_threadsafe(self._drain_then_exit)

    def _drain_then_exit(self) -> None:
        task = self.node.begin_drain()
        task.add_done_callback(lambda _: setattr(self, "should_exit", True))


def serve(settings: Settings) -> None:
    # Every secret the settings hold is masked in every log line from here on (node.redaction).
    configure(settings.log_level, settings.node_name, settings.secret_values())
    raise_file_limit()
    node = Node(settings)
    server = DrainingServer(uvicorn_config(settings, node), node)
    sockets = [_listen(settings.host, settings.port)]
    if settings.internal_port:
        # Its own address: loopback unless the operator opens it (docs/operations.md).
        sockets.append(_listen(settings.internal_host, settings.internal_port))
    uvloop.run(server.serve(sockets=sockets))
