"""A running node: its broker, hub, connections and background tasks.

:class:`Node` is the one owner of everything long-lived in a node process.
Each background task is started in :meth:`Node.start` and cancelled in
:meth:`Node.stop`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING

from broker_adapters import Broker, open_broker
from broker_adapters.base import BrokerError

from .access import AccessPolicy, Identity, Refusal
from .hub import Hub
from .metrics import Metrics
from .protocol import HEARTBEAT_FRAME, CloseCode, ErrorCode
from .settings import Settings

if TYPE_CHECKING:
    from .connection import Connection, Message

log = logging.getLogger("fanline.node")


class Node:
    def __init__(self, settings: Settings, broker: Broker | None = None) -> None:
        self.settings = settings
        self.name = settings.node_name
        self.metrics = Metrics()
        self.broker = broker if broker is not None else open_broker(settings.broker)
        self.hub = Hub(self.broker, metrics=self.metrics, replay_limit=settings.replay_limit)
        self.access = AccessPolicy(settings)
        self.connections: set[Connection[str] | Connection[bytes]] = set()
        self.draining = False
        self._tasks: list[asyncio.Task[None]] = []
        self._broker_started = False
        self._connection_gauges = {
            t: self.metrics.connections.labels(t) for t in ("ws", "sse")
        }

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        log.info("node starting", extra={"node": self.name, "settings": self.settings.redacted()})
        self._tasks.append(asyncio.create_task(self._connect_broker(), name="broker-connect"))
        self._tasks.append(asyncio.create_task(self._heartbeat_forever(), name="heartbeat"))

    async def stop(self) -> None:
        for connection in list(self.connections):
            connection.close(CloseCode.GOING_AWAY, "node stopping")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.hub.close()
        await self.broker.close()

    async def _connect_broker(self) -> None:
        """Start the broker, retrying with jittered backoff; then watch its health."""
        delay = 0.2
        while not self._broker_started:
            try:
                await self.broker.start(self.hub)
                self._broker_started = True
            except (BrokerError, OSError) as exc:
                self.hub.on_availability(False)
                log.warning("broker not reachable, retrying", extra={"error": str(exc), "retry_in": round(delay, 2)})
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 10.0)
        while True:
            await self.hub.check_broker()
            await asyncio.sleep(1.0)

    async def ready(self) -> tuple[bool, str]:
        """Readiness: serving clients needs a reachable broker and no drain."""
        if self.draining:
            return False, "draining"
        if not self._broker_started:
            return False, "broker not connected"
        try:
            async with asyncio.timeout(1.0):
                ok = await self.hub.check_broker()
        except TimeoutError:
            self.hub.on_availability(False)
            ok = False
        return (True, "ok") if ok else (False, "broker unreachable")

    # -- connections -------------------------------------------------------------------

    def admit(self, scope: Message, transport: str) -> Identity | Refusal:
        if self.draining:
            self.limit_rejected("draining")
            return Refusal(503, "draining", "node is draining; connect to another node", CloseCode.TRY_AGAIN_LATER, 1)
        if len(self.connections) >= self.settings.max_connections:
            self.limit_rejected("connections")
            log.warning("connection refused: node full", extra={"limit": self.settings.max_connections})
            return Refusal(
                503, "too_many_connections", "node is at its connection limit", CloseCode.TRY_AGAIN_LATER, 5
            )
        return self.access.authenticate(scope)

    def register(self, connection: Connection[str] | Connection[bytes]) -> None:
        self.connections.add(connection)
        self._connection_gauges[connection.transport_name].inc()
        self.metrics.connections_total.labels(connection.transport_name).inc()

    def unregister(self, connection: Connection[str] | Connection[bytes]) -> None:
        if connection in self.connections:
            self.connections.discard(connection)
            self._connection_gauges[connection.transport_name].dec()

    def limit_rejected(self, limit: str) -> None:
        self.metrics.limit_rejections.labels(limit).inc()

    def reconnect_hint_ms(self) -> int:
        return self.settings.sse_retry_ms

    # -- heartbeats ----------------------------------------------------------------------

    async def _heartbeat_forever(self) -> None:
        # One ticker for the whole node rather than a timer per connection.
        from .sse import KEEPALIVE, SSEStream

        interval = self.settings.heartbeat_interval
        while True:
            await asyncio.sleep(interval)
            for connection in list(self.connections):
                if connection.closing is not None:
                    continue
                if isinstance(connection, SSEStream):
                    connection.queue(KEEPALIVE)
                else:
                    connection.queue(HEARTBEAT_FRAME)  # type: ignore[arg-type]


__all__ = ["Node", "ErrorCode"]
