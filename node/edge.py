"""Every socket's first protocol: from accept to a WebSocket, an SSE stream or an HTTP response.

uvicorn keeps the process, the listening sockets, signals and the lifespan;
for each accepted socket it runs :class:`EdgeProtocol`, which Fanline owns
(``uvicorn.Config(http=...)``).  It reads requests with the limits of
:mod:`node.http_requests` and a deadline, then:

- ``GET /ws`` with an upgrade: checks the handshake and the credential,
  answers ``101``, and hands the socket to a
  :class:`~node.websocket.WebSocketConnection`;
- ``GET /sse``: checks the request and the credential and hands the socket
  to an :class:`~node.sse.SSEConnection`;
- anything else: runs the request through the Starlette application
  (:class:`~node.asgi_http.Exchange`), keeping the connection alive.  An
  ``/api/*`` request is first checked from its head
  (:meth:`~node.access.AccessPolicy.precheck_api`): one without a good
  credential is refused before its body is read.

Until a connection is *established* (a WebSocket or stream with a proven
identity), it is *pending*: pending connections are counted apart from
established ones, per port, with their own small limit (``max_pending``)
and a deadline (``handshake_timeout``), so neither hung handshakes nor
unauthenticated sockets can take the slots of clients that are served, nor
lock the internal port's health checks out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from starlette.types import ASGIApp

from . import websocket_frames
from .asgi_http import Exchange
from .errors import ClientError, ErrorCode
from .hooks import Hook, server_positions
from .http_requests import Limits, Request, RequestReader
from .http_responses import CONTINUE, error_response, response_head
from .sse import SSEConnection, parse_request
from .websocket import WebSocketConnection

if TYPE_CHECKING:
    from .access import Identity
    from .runtime import Node

log = logging.getLogger("fanline.edge")

# Requests a client may pipeline before the node stops reading its socket.
_PIPELINE_LIMIT = 8


class Edge:
    """What every connection's first protocol shares: the node, its HTTP applications, its limits."""

    def __init__(self, node: Node, client_app: ASGIApp, internal_app: ASGIApp) -> None:
        self.node = node
        self.client_app = client_app
        self.internal_app = internal_app
        settings = node.settings
        self.limits = Limits(
            max_head=settings.max_request_head,
            max_line=min(8192, settings.max_request_head),
            max_headers=100,
            max_body=settings.max_message_bytes * 16 + 4096,
        )
        # uvicorn's set of open connections, for its shutdown (see Node.register).
        self.server_connections: set[Any] | None = None

    def protocol_factory(self) -> Callable[..., asyncio.Protocol]:
        """What ``uvicorn.Config(http=...)`` takes: called with uvicorn's keyword arguments."""

        def create(**kwargs: Any) -> asyncio.Protocol:
            server_state = kwargs.get("server_state")
            if server_state is not None and self.server_connections is None:
                self.server_connections = server_state.connections
                self.node.server_connections = server_state.connections
            return EdgeProtocol(self)

        return create


def _scope(request: Request) -> dict[str, Any]:
    """The parts of a request the access policy reads, in the shape of an ASGI scope."""
    return {"headers": request.headers, "query_string": request.query}


def _header_map(request: Request) -> dict[str, str]:
    """A request's headers by name, the first of each (as Starlette's ``Headers.get`` answers)."""
    headers: dict[str, str] = {}
    for name, value in request.headers:
        headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))
    return headers


class EdgeProtocol(asyncio.Protocol):
    __slots__ = (
        "edge", "node", "transport", "reader", "internal", "counted", "task", "exchange", "timer", "server",
        "client", "handed_over", "_continued", "_checked", "_kept_alive",
    )

    def __init__(self, edge: Edge) -> None:
        self.edge = edge
        self.node = edge.node
        self.transport: asyncio.Transport | None = None
        self.reader = RequestReader(edge.limits)
        self.internal = False
        self.counted = False
        self.task: asyncio.Task[None] | None = None
        self.exchange: Exchange | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.server: tuple[str, int] | None = None
        self.client: tuple[str, int] | None = None
        self.handed_over = False
        self._continued = False
        # The request whose head passed the /api/* pre-check.
        self._checked: Request | None = None
        # Waiting, between requests, under keep_alive_timeout.
        self._kept_alive = False

    # -- asyncio.Protocol --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        node = self.node
        sockname = transport.get_extra_info("sockname")
        peername = transport.get_extra_info("peername")
        self.server = (str(sockname[0]), int(sockname[1])) if isinstance(sockname, tuple) else None
        self.client = (str(peername[0]), int(peername[1])) if isinstance(peername, tuple) else None
        internal_port = node.settings.internal_port
        self.internal = bool(internal_port) and self.server is not None and self.server[1] == internal_port
        if self.edge.server_connections is not None:
            self.edge.server_connections.add(self)
        if not node.take_pending(self.internal):
            # Refused at once, before reading anything: nothing to hold.
            transport.write(error_response(ClientError(ErrorCode.TOO_MANY_PENDING, "too many connections in handshake"), close=True))
            transport.close()
            return
        self.counted = True
        self._arm(self.node.settings.handshake_timeout)

    def data_received(self, data: bytes) -> None:
        if self.handed_over or self.transport is None or self.transport.is_closing():
            return
        reader = self.reader
        idle = self._kept_alive and not reader.requests and not reader.in_head
        try:
            reader.feed(data)
        except ClientError as exc:
            self._fail(exc)
            return
        if idle and (reader.in_head or reader.requests) and self.task is None:
            # The client started a request on an idle keep-alive connection:
            # from now on its head has the handshake deadline.  (A new
            # connection has had it since connection_made: no second timer.)
            self._kept_alive = False
            self._arm(self.node.settings.handshake_timeout)
        if len(reader.requests) > _PIPELINE_LIMIT:
            self.transport.pause_reading()
        self._next()

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self.exchange is not None:
            self.exchange.disconnected()
        if self.task is not None and not self.handed_over:
            self.task.cancel()
        self._release_pending()
        if self.edge.server_connections is not None:
            self.edge.server_connections.discard(self)

    def shutdown(self) -> None:
        """uvicorn's shutdown hook: finish the request in flight, then close."""
        if self.exchange is not None:
            self.exchange.keep_alive = False
        elif self.transport is not None and self.task is None:
            self.transport.close()

    # -- deadlines and accounting -------------------------------------------------------------------

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self.timer = asyncio.get_running_loop().call_later(seconds, self._timed_out)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _timed_out(self) -> None:
        self.timer = None
        if self.transport is None or self.transport.is_closing() or self.handed_over:
            return
        reader = self.reader
        if reader.in_head or reader.requests or self.task is not None:
            self.node.limit_rejected("handshake_timeout", handshake_timeout=self.node.settings.handshake_timeout)
            if self.task is not None:
                self.task.cancel()
            if self.exchange is None:
                self.transport.write(
                    error_response(ClientError(ErrorCode.REQUEST_TIMEOUT, "request not complete in time"), close=True)
                )
        self.transport.close()

    def _release_pending(self) -> None:
        if self.counted:
            self.counted = False
            self.node.release_pending(self.internal)

    def _fail(self, error: ClientError, extra: list[tuple[bytes, bytes]] | None = None) -> None:
        """Refuse the request in hand with an HTTP error, and close."""
        assert self.transport is not None
        self.node.metrics.client_errors.labels(error.code.value).inc()
        if error.code in (ErrorCode.HEADERS_TOO_LARGE, ErrorCode.BAD_REQUEST, ErrorCode.MESSAGE_TOO_LARGE):
            self.node.limit_rejected(error.code.value, reason=error.message)
        self._disarm()
        self.transport.write(error_response(error, extra or (), close=True))
        self.transport.close()

    # -- dispatch -----------------------------------------------------------------------------------

    def _next(self) -> None:
        """Start on the oldest waiting request, if nothing is in progress."""
        if self.task is not None or not self.reader.requests or self.handed_over:
            return
        request = self.reader.requests[0]
        if self._checked is not request and not self.internal and request.path.startswith("/api/"):
            self._checked = request
            try:
                self.node.access.precheck_api(request.path, _header_map(request))
            except ClientError as exc:
                self._fail(exc)
                return
        if not self.internal and request.path == "/ws" and request.method == "GET" and request.upgrade:
            self._upgrade(request)
        elif not self.internal and request.path == "/sse" and request.method == "GET":
            self.task = asyncio.get_running_loop().create_task(self._stream(request))
        elif request.complete:
            self._disarm()
            self.task = asyncio.get_running_loop().create_task(self._http(request))
        elif request.expects_continue and not self._continued:
            assert self.transport is not None
            self._continued = True
            self.transport.write(CONTINUE)

    async def _http(self, request: Request) -> None:
        assert self.transport is not None
        app = self.edge.internal_app if self.internal else self.edge.client_app
        exchange = self.exchange = Exchange(self.transport, request, self.server, self.client)
        try:
            keep = await exchange.run(app)
        finally:
            self.exchange = None
            self.task = None
        self.reader.requests.popleft()
        self._continued = False
        if not keep or self.transport.is_closing():
            self.transport.close()
            return
        if len(self.reader.requests) <= _PIPELINE_LIMIT:
            self.transport.resume_reading()
        if self.reader.requests:
            self._next()
        else:
            self._kept_alive = True
            self._arm(self.node.settings.keep_alive_timeout)

    def _upgrade(self, request: Request) -> None:
        """The WebSocket handshake (RFC 6455 §4.2), then the credential, then the socket changes hands."""
        transport = self.transport
        assert transport is not None
        node = self.node
        key = request.header_str(b"sec-websocket-key")
        upgrade = (request.header(b"upgrade") or b"").lower()
        connection = [token.strip().lower() for token in (request.header(b"connection") or b"").split(b",")]
        if upgrade != b"websocket" or b"upgrade" not in connection or key is None or not websocket_frames.valid_key(key):
            self._fail(ClientError(ErrorCode.BAD_REQUEST, "not a valid WebSocket handshake"))
            return
        if request.header(b"sec-websocket-version") != b"13":
            self._fail(ClientError(ErrorCode.BAD_REQUEST, "only WebSocket version 13 is supported"),
                       [(b"sec-websocket-version", b"13")])
            return
        scope = _scope(request)
        try:
            node.admit(scope)
        except ClientError as exc:
            self._fail(exc)
            return
        if not node.access.has_credential(scope) and not node.gate.has(Hook.CONNECT):
            # Anonymous, or a WebSocket that will send its auth frame: nothing
            # to verify now, so no task either.
            self._accepted(transport, key, node.access.identity_without_credential())
            return
        self.task = asyncio.get_running_loop().create_task(self._verify_then_accept(transport, key, scope))

    async def _verify_then_accept(self, transport: asyncio.Transport, key: str, scope: dict[str, Any]) -> None:
        node = self.node
        channels: tuple[str, ...] = ()
        try:
            identity = await node.access.identify(scope, node.broker, deferred=True)
            if identity is not None:
                # The connect hook runs here, in this task, under handshake_timeout.
                identity, channels = await node.gate.connect(identity, scope, "websocket")
        except ClientError as exc:
            # A credential that fails is told after accepting, so that a
            # browser can read why (it never sees a refused handshake's status).
            self._accept(transport, key, None, refused=exc)
            return
        self._accepted(transport, key, identity, channels, scope)

    def _accepted(
        self,
        transport: asyncio.Transport,
        key: str,
        identity: Identity | None,
        channels: tuple[str, ...] = (),
        scope: dict[str, Any] | None = None,
    ) -> None:
        if identity is not None and not self.node.has_room():
            self._fail(self.node.full())
            return
        self._accept(transport, key, identity, channels=channels, scope=scope)

    def _accept(
        self,
        transport: asyncio.Transport,
        key: str,
        identity: Identity | None,
        refused: ClientError | None = None,
        channels: tuple[str, ...] = (),
        scope: dict[str, Any] | None = None,
    ) -> None:
        node = self.node
        self._disarm()
        self.handed_over = True
        self.task = None
        head = response_head(
            101,
            (
                (b"upgrade", b"websocket"),
                (b"connection", b"Upgrade"),
                (b"sec-websocket-accept", websocket_frames.accept_key(key).encode()),
            ),
        )
        connection = WebSocketConnection(node, transport, node.next_number(), identity)
        if channels:
            connection.server_channels = (channels, server_positions(self.reader.requests[0].query))
        if identity is None and scope is not None and node.gate.has(Hook.CONNECT):
            connection.handshake = scope  # the connect hook runs after the auth frame
        transport.set_protocol(connection)
        if self.edge.server_connections is not None:
            self.edge.server_connections.discard(self)
        if identity is not None:
            self._release_pending()
            node.adopt(connection, established=True)
        else:
            # Still pending: its slot moves with it, until its auth frame
            # proves who it is (Node.promote) or it ends (Node.unregister).
            self.counted = False
            node.adopt(connection, established=False)
        if refused is not None:
            transport.write(head)
            connection.refuse(refused)
            return
        connection.start(head, self.reader.upgrade_data or b"")

    async def _stream(self, request: Request) -> None:
        transport = self.transport
        assert transport is not None
        node = self.node
        scope = _scope(request)
        cors: list[tuple[bytes, bytes]] = []
        try:
            channels, positions = parse_request(node, request)
            node.admit(scope)
            # From here the Origin is allowed, so a cross-origin page may read our errors too.
            cors = list(node.access.cors_headers(scope))
            identity = await node.access.identify(scope, node.broker)
            assert identity is not None
            # Server-side channels are WebSocket-only: an SSE stream's channels are its URL's.
            identity, _ = await node.gate.connect(identity, scope, "sse")
            for channel in channels:
                node.access.check_subscribe(identity, channel)
                await node.gate.subscribe(identity, channel, None)
            if not node.has_room():
                raise node.full()
        except ClientError as exc:
            self._fail(exc, cors)
            return
        self._disarm()
        self.handed_over = True
        self.task = None
        chunked = request.http_version != "1.0"
        connection = SSEConnection(node, transport, node.next_number(), identity, channels, chunked)
        transport.set_protocol(connection)
        if self.edge.server_connections is not None:
            self.edge.server_connections.discard(self)
        self._release_pending()
        node.adopt(connection, established=True)
        connection.start(positions, cors)
