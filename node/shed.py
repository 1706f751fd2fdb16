"""Shedding: close some of a node's connections, paced, so their clients move elsewhere.

After a scale-out the new nodes are empty while the old ones keep every
long-lived connection.  ``fanline cluster rebalance`` asks the most loaded
nodes to shed a number of connections: ``POST /shed?count=N&window=S`` on the
internal port picks N connections at random and closes them over S seconds
exactly as a drain does (``drain`` message and close 1012 on WebSocket, a
``retry:`` hint and the end of the stream on SSE; see node.pacing).  Their
clients reconnect through the load balancer and resume from their last event
id, so nothing is lost.  Unlike a drain, the node stays ready and keeps
accepting connections.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Collection, Container, Hashable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .errors import ClientError, ErrorCode
from .pacing import drain_paced

if TYPE_CHECKING:
    from .runtime import Node

log = logging.getLogger("fanline.shed")

# Bounds on one request: a window longer than an hour is a typo, not a plan.
MAX_WINDOW = 3600.0

H = TypeVar("H", bound=Hashable)


@dataclass(frozen=True)
class ShedRequest:
    count: int
    window: float


def _bad(message: str) -> ClientError:
    return ClientError(ErrorCode.INVALID_MESSAGE, message)


def parse_request(query: Mapping[str, str], default_window: float) -> ShedRequest:
    """``count`` (required, >= 0) and ``window`` (seconds, default the drain window) from a query string."""
    raw_count = query.get("count")
    # Bounded before int(): a 5000-digit count would raise past Python's int-string limit.
    if raw_count is None or not raw_count.isdigit() or len(raw_count) > 9:
        raise _bad("count must be an integer from 0 to 999999999")
    raw_window = query.get("window")
    try:
        window = default_window if raw_window is None else float(raw_window)
    except ValueError:
        raise _bad("window must be a number of seconds") from None
    if not (math.isfinite(window) and 0 <= window <= MAX_WINDOW):
        raise _bad(f"window must be between 0 and {MAX_WINDOW:g} seconds")
    return ShedRequest(int(raw_count), window)


def choose_victims(connections: Collection[H], pending: Container[object], count: int) -> list[H]:
    """Up to ``count`` connections picked at random, none already being shed.

    Random rather than oldest or newest: any rule on age would keep moving
    the same clients (or never the long-lived ones) round after round.
    """
    candidates = [c for c in connections if c not in pending]
    return random.sample(candidates, min(count, len(candidates)))


class Shedder:
    """The node's ``/shed`` endpoint and the connections it is closing right now."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.pending: set[object] = set()

    def shed(self, request: ShedRequest) -> int:
        node = self.node
        victims = choose_victims(node.connections, self.pending, request.count)
        self.pending.update(victims)
        log.info(
            "shed started",
            extra={"count": len(victims), "window": request.window, "connections": len(node.connections)},
        )

        async def run() -> None:
            try:
                await drain_paced(victims, request.window, lambda c: c in node.connections)
            finally:
                self.pending.difference_update(victims)

        node.spawn(run(), "shed")
        return len(victims)

    async def endpoint(self, request: Request) -> Response:
        node = self.node
        try:
            if node.draining:
                # Draining closes everything anyway; shedding on top would only skew the pacing.
                raise ClientError(ErrorCode.DRAINING, "node is draining")
            parsed = parse_request(request.query_params, node.settings.drain_window)
        except ClientError as exc:
            return Response(exc.body(), exc.status, media_type="application/json")
        chosen = self.shed(parsed)
        return JSONResponse(
            {
                "requested": parsed.count,
                "shedding": chosen,
                "window": parsed.window,
                "connections": len(node.connections),
            }
        )
