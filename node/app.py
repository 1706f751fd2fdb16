"""The node's ASGI application.

The two long-lived endpoints, ``/ws`` and ``/sse``, are plain ASGI handlers
dispatched here before Starlette, so the per-connection hot path carries no
framework layers and keeps a handle on the server's transport (see
:func:`node.connection.transport_of`).  Everything else is Starlette.

When ``internal_port`` is set, requests are told apart by the local port they
arrived on: metrics and drain are not reachable through the client port.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send

from .api import client_routes, internal_routes
from .runtime import Node
from .sse import sse_endpoint
from .websocket import websocket_endpoint


def create_app(node: Node) -> ASGIApp:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await node.start()
        try:
            yield
        finally:
            await node.stop()

    client = Starlette(routes=client_routes(node), lifespan=lifespan)
    client.state.node = node
    internal = Starlette(routes=internal_routes(node))
    internal.state.node = node
    internal_port = node.settings.internal_port

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await client(scope, receive, send)
            return
        server = scope.get("server")
        if internal_port and server is not None and server[1] == internal_port:
            await internal(scope, receive, send)
            return
        path = scope.get("path")
        if kind == "websocket" and path == "/ws":
            await websocket_endpoint(node, scope, receive, send)
        elif kind == "http" and path == "/sse" and scope.get("method") == "GET":
            await sse_endpoint(node, scope, receive, send)
        elif not internal_port and kind == "http" and path in ("/metrics", "/drain", "/shed", "/status"):
            await internal(scope, receive, send)
        else:
            await client(scope, receive, send)

    return app
