"""The node's HTTP applications: Starlette routes on the client port and on the internal port.

The long-lived endpoints, ``/ws`` and ``/sse``, are not here: the edge
protocol (:mod:`node.edge`) serves them itself, with no framework layer on
the per-connection path.  Everything else is Starlette, reached through
:class:`~node.asgi_http.Exchange`.

When ``internal_port`` is set, metrics, drain and the other operator
endpoints are only on that port; with ``internal_port`` 0 they are served on
the client port too.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send

from .api import INTERNAL_PATHS, client_routes, internal_routes
from .runtime import Node


@dataclass(frozen=True, slots=True)
class Apps:
    #: The client port's application; it also runs the node's lifespan.
    client: ASGIApp
    internal: ASGIApp


def create_apps(node: Node) -> Apps:
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
    if node.settings.internal_port:
        return Apps(client, internal)

    async def both(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path") in INTERNAL_PATHS:
            await internal(scope, receive, send)
        else:
            await client(scope, receive, send)

    return Apps(both, internal)
