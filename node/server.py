"""Run a node under uvicorn: one server, a client socket and an internal socket."""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import logging
import resource
import socket
from types import FrameType

import uvicorn

from broker_adapters.errors import ConfigError

from . import __version__
from .app import create_apps
from .edge import Edge
from .logs import configure
from .runtime import Node
from .settings import Settings
from .startup import StartupError, bind_error, check_files, configuration_error

log = logging.getLogger("fanline.node")


def event_loop() -> str:
    """uvloop where it is installed (it is optional), else asyncio's own loop; uvicorn's names for both."""
    return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"


def tune_listener(sock: socket.socket, user_timeout: float, send_buffer: int) -> None:
    """Bound what the kernel holds for each peer, and how long it waits for an unresponsive one.

    ``SO_SNDBUF`` caps a connection's kernel send buffer (Linux autotunes it
    up to megabytes otherwise, and a slow reader's backlog would hide there,
    unseen by our bounds).  ``TCP_USER_TIMEOUT`` drops a peer that stops
    acknowledging data for ``user_timeout`` seconds: a closed laptop lid, a
    dead NAT entry.  Set on the listening socket, both are inherited by
    every socket it accepts: no system calls per connection (issue 11).
    """
    try:
        if send_buffer:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
        option = getattr(socket, "TCP_USER_TIMEOUT", None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, int(user_timeout * 1000))
    except OSError as exc:
        # A kernel without one of them still serves; say what is unbounded.
        log.warning("cannot bound sockets' send buffer or user timeout", extra={"error": str(exc)})


def _listen(host: str, port: int, setting: str, settings: Settings) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tune_listener(sock, settings.heartbeat_timeout, settings.send_buffer)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise bind_error(exc, host, port, setting) from None
    sock.setblocking(False)
    return sock


def http_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def listening_message(settings: Settings) -> str:
    """``listening on http://HOST:PORT (internal http://HOST:PORT)``: where to point a browser and a scraper."""
    internal = (
        f"internal {http_url(settings.host, settings.internal_port)}"
        if settings.internal_port
        else "internal endpoints on the same port"
    )
    return f"listening on {http_url(settings.host, settings.port)} ({internal})"


def uvicorn_config(settings: Settings, node: Node, loop: str = "uvloop") -> uvicorn.Config:
    apps = create_apps(node)
    edge = Edge(node, apps.client, apps.internal)
    return uvicorn.Config(
        # uvicorn runs the process, the sockets and the lifespan; every
        # connection's protocol is Fanline's own (node/edge.py), so uvicorn's
        # HTTP and WebSocket implementations are not used.
        apps.client,
        http=edge.protocol_factory(),  # type: ignore[arg-type]
        ws="none",
        loop=loop,
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

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:  # not when the node's own start-up failed
            # What exists now (modules, classes, the app, the broker client)
            # lives as long as the process: keep it out of every later
            # collection.  A full collection over it took about 35 ms on a
            # 2-core machine, a stall for every client; reconnect waves,
            # which make many long-lived objects at once, trigger them.
            gc.freeze()
            settings = self.node.settings
            log.info(
                listening_message(settings),
                extra={"version": __version__, "loop": self.config.loop, "broker": _scheme(settings.broker)},
            )

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


def _scheme(url: str) -> str:
    # Only the scheme: a broker URL may carry a password.
    return url.partition(":")[0]


def serve(settings: Settings) -> None:
    """Run a node until it is stopped; raise :class:`StartupError` if it cannot start."""
    # Every secret the settings hold is masked in every log line from here on (node.redaction).
    configure(settings.log_level, settings.node_name, settings.secret_values())
    raise_file_limit()
    check_files(settings)
    try:
        node = Node(settings)
    except ConfigError as exc:
        error = configuration_error(exc)
        assert error is not None
        raise error from None
    loop = event_loop()
    server = DrainingServer(uvicorn_config(settings, node, loop), node)
    sockets = [_listen(settings.host, settings.port, "port", settings)]
    try:
        if settings.internal_port:
            # Its own address: loopback unless the operator opens it (docs/operations.md).
            sockets.append(_listen(settings.internal_host, settings.internal_port, "internal_port", settings))
    except StartupError:
        for sock in sockets:
            sock.close()
        raise
    if loop == "uvloop":
        import uvloop

        uvloop.run(server.serve(sockets=sockets))
    else:
        asyncio.run(server.serve(sockets=sockets))
