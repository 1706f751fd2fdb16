"""``GET /status`` on the internal port: what ``fanline cluster status`` shows per pod.

Connections by transport, subscriptions, drain and shed state, the broker's
state, the version and the age, as one JSON object.  Counts come from the
node's metrics, so this module reads no connection internals.
"""

from __future__ import annotations

import time
from importlib import metadata
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .protocol import PROTOCOL_VERSION
from .shed import Shedder

if TYPE_CHECKING:
    from .runtime import Node

TRANSPORTS = ("ws", "sse")


def package_version() -> str:
    try:
        return metadata.version("fanline")
    except metadata.PackageNotFoundError:
        return "unknown"


class Status:
    def __init__(self, node: Node, shedder: Shedder) -> None:
        self.node = node
        self.shedder = shedder
        # The internal app is built when the server starts: close enough to the node's start.
        self.started = time.time()
        self.version = package_version()

    async def snapshot(self) -> dict[str, Any]:
        node = self.node
        metrics = node.metrics
        by_transport = {t: int(metrics.connections.labels(t).value) for t in TRANSPORTS}
        ready, reason = await node.ready()
        now = time.time()
        return {
            "node": node.name,
            "version": self.version,
            "protocol": PROTOCOL_VERSION,
            "started": round(self.started, 3),
            "age_seconds": round(now - self.started, 3),
            "connections": {**by_transport, "total": len(node.connections)},
            "max_connections": node.settings.max_connections,
            "subscriptions": int(metrics.subscriptions.labels().value),
            "draining": node.draining,
            "shedding": len(self.shedder.pending),
            "ready": ready,
            "reason": reason,
            "broker": {"kind": node.broker.kind, "available": node.hub.broker_available},
        }

    async def endpoint(self, request: Request) -> Response:
        return JSONResponse(await self.snapshot())
