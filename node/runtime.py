"""A running node: its broker, hub, connections and background tasks.

:class:`Node` is the one owner of everything long-lived in a node process.
Each background task is started in :meth:`Node.start` and cancelled in
:meth:`Node.stop`.  It also keeps the node-wide accounts of connections:
*pending* ones (in their handshake, or a WebSocket awaiting its auth frame;
bounded by ``max_pending`` per port) and *established* ones (bounded by
``max_connections``), and runs the one ticker that sends heartbeats and the
one sweeper that finds stalled writers, rather than a timer per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Coroutine, Mapping
from typing import TYPE_CHECKING, Any

from broker_adapters import Broker, open_broker
from broker_adapters.backoff import Backoff
from broker_adapters.base import BrokerError
from broker_adapters.tasks import TaskSet

from . import protocol
from .access import AccessPolicy
from .commands import Control
from .connection import Flush
from .errors import ClientError, CloseCode, ErrorCode
from .heartbeats import HeartbeatSlices
from .hooks import Gate
from .hub import Delivery, Hub
from .logs import LogThrottle
from .metrics import Metrics
from .outbox import OutboxLimits
from .pacing import drain_paced
from .presence import Presence
from .settings import Settings

if TYPE_CHECKING:
    from .connection import Connection, Item

log = logging.getLogger("fanline.node")


class Node:
    def __init__(self, settings: Settings, broker: Broker | None = None) -> None:
        self.settings = settings
        self.name = settings.node_name
        self.broker = broker if broker is not None else open_broker(settings.broker_url)
        self.metrics = Metrics(self.broker.stats)
        self.flush = Flush()
        self.hub = Hub(
            self.broker,
            metrics=self.metrics,
            replay_limit=settings.replay_limit,
            subscribe_wait=settings.subscribe_wait,
            resume_window=settings.resume_window,
            on_fan_out=self.flush.fanning_out,
        )
        self.access = AccessPolicy(settings)
        # Presence, the control channel and backend hooks (node.presence, node.commands, node.hooks).
        self.presence = Presence(self)
        self.control = Control(self)
        self.gate = Gate(self)
        # The first message of every WebSocket: the same bytes for all of them.
        self.hello = protocol.connected_frame(self.name, settings.heartbeat_interval).encode()
        self.connections: set[Connection] = set()
        # The same connections, in the slices the heartbeat ticker visits one at a time.
        self.heartbeats: HeartbeatSlices[Connection] = HeartbeatSlices(
            settings.heartbeat_interval, settings.heartbeat_timeout
        )
        self.draining = False
        # Connections whose transport stopped taking data (see Connection.pause_writing).
        self.paused: set[Connection] = set()
        self.outbox_limits = OutboxLimits(settings.outbox_max_messages, settings.outbox_max_bytes)
        # Pending connections per port (False: client port, True: internal port).
        self.pending = {False: 0, True: 0}
        # uvicorn's set of open connections, so its shutdown can reach ours.
        self.server_connections: set[Any] | None = None
        self._numbers = 0
        self._tasks = TaskSet()
        self._broker_started = False
        self._drain_task: asyncio.Task[None] | None = None
        self._all_closed = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._namespace_policies = settings.namespace_policies()
        self._limit_log = LogThrottle(10.0)
        m = self.metrics
        self._gauges = {t: m.connections.labels(t) for t in ("ws", "sse")}
        self._written = {
            t: (m.events_out.labels(t), m.bytes_out.labels(t), m.frames_out.labels(t)) for t in ("ws", "sse")
        }
        self._pending_gauges = {False: m.pending_connections.labels("client"), True: m.pending_connections.labels("internal")}

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        log.info("node starting", extra={"node": self.name, "settings": self.settings.redacted()})
        self._tasks.spawn(self._connect_broker(), "broker-connect")
        self._tasks.spawn(self._heartbeat_forever(), "heartbeat")
        self._tasks.spawn(self._sweep_forever(), "sweep")
        self._tasks.spawn(self.metrics.process.loop_lag.sample_forever(), "loop-lag")
        if self.settings.stream_check_interval > 0:
            self._tasks.spawn(self.hub.check_streams_forever(self.settings.stream_check_interval), "stream-check")
        await self.control.start()
        await self.presence.start()

    async def stop(self) -> None:
        for connection in list(self.connections):
            connection.close(CloseCode.GOING_AWAY, "node stopping")
        await self.presence.stop()
        await self.control.stop()
        await self.gate.close()
        await self._tasks.cancel_all()
        await self.hub.close()
        await self.broker.close()

    def loop_time(self) -> float:
        loop = self.loop
        if loop is None:
            loop = self.loop = asyncio.get_running_loop()
        return loop.time()

    async def _connect_broker(self) -> None:
        """Start the broker, retrying with jittered backoff; then watch its health."""
        backoff = Backoff(first=0.2, most=10.0)
        while not self._broker_started:
            try:
                await self.broker.start(self.hub)
                self._broker_started = True
            except (BrokerError, OSError) as exc:
                self.hub.on_availability(False)
                wait = backoff.next()
                self.log_throttled(log, "broker not reachable, retrying", error=str(exc), retry_in=round(wait, 2))
                await asyncio.sleep(wait)
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

    # -- admission and accounts ------------------------------------------------------------

    def admit(self, scope: Mapping[str, Any]) -> None:
        """May a new client connect at all?  Raises ClientError (answered before accepting)."""
        if self.draining:
            self.metrics.limit_rejections.labels("draining").inc()
            raise ClientError(ErrorCode.DRAINING, "node is draining; connect to another node")
        if not self.hub.broker_available:
            # Health tells the truth: a node that cannot reach its broker takes
            # no clients (they would only get broker_unavailable answers), at
            # start-up as during an outage.  Connected clients stay.
            self.metrics.limit_rejections.labels("broker_unavailable").inc()
            raise ClientError(ErrorCode.BROKER_UNAVAILABLE, "node cannot reach its broker; try again")
        self.access.check_origin(scope)

    def has_room(self) -> bool:
        return len(self.connections) < self.settings.max_connections

    def full(self) -> ClientError:
        self.limit_rejected("connections", max_connections=self.settings.max_connections)
        return ClientError(ErrorCode.TOO_MANY_CONNECTIONS, "node is at its connection limit")

    def take_pending(self, internal: bool) -> bool:
        """Count a new socket as pending; False (refuse it) past ``max_pending`` for its port."""
        if self.pending[internal] >= self.settings.max_pending:
            self.limit_rejected("pending", max_pending=self.settings.max_pending, internal_port=internal)
            return False
        self.pending[internal] += 1
        self._pending_gauges[internal].inc()
        return True

    def release_pending(self, internal: bool = False) -> None:
        self.pending[internal] -= 1
        self._pending_gauges[internal].dec()

    def next_number(self) -> int:
        self._numbers += 1
        return self._numbers

    def adopt(self, connection: Connection, *, established: bool) -> None:
        """A socket became a WebSocket or SSE connection (established, or still pending auth)."""
        settings = self.settings
        # Its kernel send buffer and TCP_USER_TIMEOUT come from the listening
        # socket (node.server.tune_listener).  Past this many bytes in the
        # transport's own buffer, it pauses us and messages wait in the
        # (bounded) outbox, where the policies can see them.
        connection.transport.set_write_buffer_limits(high=settings.send_buffer)
        if self.server_connections is not None:
            self.server_connections.add(connection)
        if established:
            self.register(connection)

    def promote(self, connection: Connection) -> bool:
        """A pending WebSocket proved who it is: count it as established, if there is room."""
        if not self.has_room():
            connection.refuse(self.full())  # type: ignore[attr-defined]
            return False
        self.release_pending()
        self.register(connection)
        return True

    def register(self, connection: Connection) -> None:
        connection.established = True
        self.connections.add(connection)
        self.heartbeats.add(connection)
        self._gauges[connection.kind].inc()
        self.metrics.connections_total.labels(connection.kind).inc()

    def unregister(self, connection: Connection) -> None:
        if self.server_connections is not None:
            self.server_connections.discard(connection)
        self.paused.discard(connection)
        if not connection.established:
            self.release_pending()
            connection.established = True  # released once
            return
        if connection in self.connections:
            self.connections.discard(connection)
            self.heartbeats.discard(connection)
            self._gauges[connection.kind].dec()
            if self.draining and not self.connections:
                self._all_closed.set()

    def count_written(self, kind: str, items: list[Item], size: int) -> None:
        events, written, writes = self._written[kind]
        if len(items) == 1:
            # The common case at low rates: one event per write.
            if type(items[0]) is Delivery:
                events.inc()
        else:
            events.inc(sum(1 for item in items if type(item) is Delivery))
        written.inc(size)
        writes.inc()

    def limit_rejected(self, limit: str, **details: object) -> None:
        """Count a refusal by a limit, and log it without flooding the log."""
        self.metrics.limit_rejections.labels(limit).inc()
        suppressed = self._limit_log.allow(limit)
        if suppressed is not None:
            log.warning("limit reached", extra={"limit": limit, "suppressed_since_last": suppressed, **details})

    def log_throttled(self, logger: logging.Logger, message: str, **details: object) -> None:
        """A warning that may repeat in bursts: at most one line per message per 10 s, with a count."""
        suppressed = self._limit_log.allow(message)
        if suppressed is not None:
            logger.warning(message, extra={**details, "suppressed_since_last": suppressed})

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

    # -- heartbeats and stalled writers ---------------------------------------------------------

    async def _heartbeat_forever(self) -> None:
        """One ticker for the whole node: each tick, check one slice's pings and send it heartbeats (node.heartbeats)."""
        slices = self.heartbeats
        timeout = self.settings.heartbeat_timeout
        loop = asyncio.get_running_loop()
        started = loop.time()
        ticks = 0
        while True:
            ticks += 1
            # A fixed schedule: the time a tick takes does not stretch the interval.
            await asyncio.sleep(max(0.0, started + ticks * slices.tick - loop.time()))
            to_ping, to_check = slices.advance()
            # Half a tick of slack: a ping sent by a late tick is not missed by an on-time one.
            self._close_silent_peers(to_check, timeout - slices.tick / 2)
            for connection in to_ping:
                # A paused socket gets none: it has data waiting already, a
                # heartbeat could only overflow its outbox (and close a client
                # whose channels keep only the latest event), and a socket that
                # takes nothing is send_timeout's business.
                if connection.closing is None and connection.paused_at is None:
                    connection.send_heartbeat()

    def _close_silent_peers(self, connections: list[Connection], timeout: float) -> None:
        now = self.loop_time()
        for connection in connections:
            sent = getattr(connection, "ping_sent", None)
            if sent is not None and now - sent >= timeout and connection.closing is None:
                self.metrics.limit_rejections.labels("ping_timeout").inc()
                connection.close(CloseCode.INTERNAL_ERROR, "keepalive ping timeout", flush=False)
                # The peer is not answering: do not wait for its close frame.
                connection.abort()

    async def _sweep_forever(self) -> None:
        """Once a second: writers stalled past ``send_timeout``, clients lagging past ``max_lag``."""
        settings = self.settings
        while True:
            await asyncio.sleep(1.0)
            now = self.loop_time()
            for connection in list(self.paused):
                paused_at = connection.paused_at
                if paused_at is not None and now - paused_at >= settings.send_timeout:
                    # Whatever the channel's policy, a socket that takes nothing
                    # for this long belongs to a client that is not reading.
                    connection.slow_consumer("disconnect", f"write blocked for {settings.send_timeout:g}s")
                    connection.abort()
                    continue
                waited = connection.outbox.waited_since()
                if waited is not None and now - waited >= settings.max_lag:
                    self._lagging(connection, now - waited)

    def _lagging(self, connection: Connection, lag: float) -> None:
        self.metrics.connection_lag.observe(lag)
        channels = list(connection.subscriptions or ())
        policy = self.slow_consumer_policy(channels[0]) if channels else self.settings.slow_consumer_policy
        why = f"{lag:.1f}s behind (max_lag {self.settings.max_lag:g}s)"
        if policy == "reset":
            connection.reset_everything(why)
        elif policy == "latest":
            connection.conflate_everything()
        else:
            connection.slow_consumer("disconnect", why)
            connection.abort()
