"""Run a node under uvicorn: one server, a client socket and an internal socket."""

from __future__ import annotations

import socket
from types import FrameType

import uvicorn
import uvloop

from .app import create_app
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
    return uvicorn.Config(
        create_app(node),
        # Named explicitly: the sans-I/O implementation has write flow
        # control from uvicorn 0.53 on; see docs/operations.md.
        ws="websockets-sansio",
        http="httptools",
        loop="uvloop",
        lifespan="on",
        ws_max_size=settings.max_message_bytes,
        ws_ping_interval=settings.heartbeat_interval,
        ws_ping_timeout=settings.heartbeat_timeout,
        # Compression costs tens of KiB per connection and CPU per frame.
        ws_per_message_deflate=False,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
        backlog=2048,
    )


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
    configure(settings.log_level, settings.node_name)
    node = Node(settings)
    server = DrainingServer(uvicorn_config(settings, node), node)
    sockets = [_listen(settings.host, settings.port)]
    if settings.internal_port:
        sockets.append(_listen(settings.host, settings.internal_port))
    uvloop.run(server.serve(sockets=sockets))
