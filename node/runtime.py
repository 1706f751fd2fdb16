"""A running node: its broker, hub, connections and background tasks.

:class:`Node` is the one owner of everything long-lived in a node process.
Each background task is started in :meth:`Node.start` and cancelled in
:meth:`Node.stop`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Coroutine
from typing import TYPE_CHECKING

from broker_adapters import Broker, open_broker
from broker_adapters.base import BrokerError
from broker_adapters.tasks import TaskSet

from .access import AccessPolicy, Identity, Refusal
from .hub import Hub
from .logs import LogThrottle
from .metrics import Metrics
from .pacing import drain_paced
from .protocol import CloseCode, ErrorCode
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
        self.hub = Hub(
            self.broker,
            metrics=self.metrics,
            replay_limit=settings.replay_limit,
            subscribe_wait=settings.subscribe_wait,
        )
        self.access = AccessPolicy(settings)
        self.connections: set[Connection[str] | Connection[bytes]] = set()
        self.draining = False
        self._tasks = TaskSet()
        self._broker_started = False
        self._drain_task: asyncio.Task[None] | None = None
        self._all_closed = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._namespace_policies = settings.namespace_policies()
        self._limit_log = LogThrottle(10.0)
        self._connection_gauges = {
            t: self.metrics.connections.labels(t) for t in ("ws", "sse")
        }

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        log.info("node starting", extra={"node": self.name, "settings": self.settings.redacted()})
        self._tasks.spawn(self._connect_broker(), "broker-connect")
        self._tasks.spawn(self._heartbeat_forever(), "heartbeat")
        if self.settings.stream_check_interval > 0:
            self._tasks.spawn(self.hub.check_streams_forever(self.settings.stream_check_interval), "stream-check")

    async def stop(self) -> None:
        for connection in list(self.connections):
            connection.close(CloseCode.GOING_AWAY, "node stopping")
        await self._tasks.cancel_all()
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
            self.metrics.limit_rejections.labels("draining").inc()
            return Refusal(503, ErrorCode.DRAINING, "node is draining; connect to another node", CloseCode.TRY_AGAIN_LATER, 1)
        if not self.hub.broker_available:
            # Health tells the truth: a node that cannot reach its broker takes
            # no clients (they would only get broker_unavailable answers), at
            # start-up as during an outage.  Connected clients stay.
            self.metrics.limit_rejections.labels("broker_unavailable").inc()
            return Refusal(
                503,
                ErrorCode.BROKER_UNAVAILABLE,
                "node cannot reach its broker; try again",
                CloseCode.TRY_AGAIN_LATER,
                1,
            )
        if len(self.connections) >= self.settings.max_connections:
            self.limit_rejected("connections", max_connections=self.settings.max_connections)
            return Refusal(
                503, ErrorCode.TOO_MANY_CONNECTIONS, "node is at its connection limit", CloseCode.TRY_AGAIN_LATER, 5
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
            if self.draining and not self.connections:
                self._all_closed.set()

    def limit_rejected(self, limit: str, **details: object) -> None:
        """Count a refusal by a limit, and log it without flooding the log."""
        self.metrics.limit_rejections.labels(limit).inc()
        suppressed = self._limit_log.allow(limit)
        if suppressed is not None:
            log.warning("limit reached", extra={"limit": limit, "suppressed_since_last": suppressed, **details})

    def slow_consumer_policy(self, channel: str) -> str:
        namespace, sep, _ = channel.partition(":")
        if sep and namespace in self._namespace_policies:
            return self._namespace_policies[namespace]
        return self.settings.slow_consumer_policy

    # -- drain ---------------------------------------------------------------------------

    def begin_drain(self) -> asyncio.Task[None]:
        """Start the paced drain (idempotent) and return the task doing it."""
        if self._drain_task is None:
            self.draining = True
            if not self.connections:
                self._all_closed.set()
            self.metrics.draining.set(1.0)
            log.info("drain started", extra={"connections": len(self.connections), "window": self.settings.drain_window})
            self._drain_task = self._tasks.spawn(self._drain(), "drain")
        return self._drain_task

    async def _drain(self) -> None:
        """Close every connection over ``drain_window`` seconds, in random order (see node.pacing)."""
        victims = list(self.connections)
        random.shuffle(victims)
        await drain_paced(
            victims,
            self.settings.drain_window,
            lambda c: c.closing is None and c in self.connections,
            nobody_left=self._all_closed,
        )
        # Closed clients need a moment to say goodbye; stragglers are left
        # to uvicorn's shutdown.
        if self.connections:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await self._all_closed.wait()
        log.info("drain finished", extra={"left": len(self.connections)})

    def spawn(self, coroutine: Coroutine[object, object, None], name: str) -> asyncio.Task[None]:
        """Run a background task the node owns: cancelled in :meth:`stop` (used by node.shed)."""
        return self._tasks.spawn(coroutine, name)

    # -- heartbeats ----------------------------------------------------------------------

    async def _heartbeat_forever(self) -> None:
        # One ticker for the whole node rather than a timer per connection.
        interval = self.settings.heartbeat_interval
        while True:
            await asyncio.sleep(interval)
            for connection in list(self.connections):
                if connection.closing is None:
                    connection.send_heartbeat()

