"""A client connection after its handshake, WebSocket or SSE: what both have in common.

A :class:`Connection` is the asyncio protocol of its socket from the
handshake on: Fanline owns the bytes, with no ASGI in between, so an idle
connection is one small object and its transport, and no task.

Writing.  The hub pushes deliveries and the connection queues its own
messages into its :class:`~node.outbox.Outbox`, without awaiting.  The
node's :class:`Flush` runs once per pass of the event loop and gives every
connection with something queued one ``transport.write`` for all of it:
publications that arrive together leave together, and connections that get
the same messages share the bytes (see :meth:`Connection.encode`).  Nothing
is delayed to make that happen: the flush is the end of the current pass.
At low rates, where a pass carries one publication, even that is skipped: a
connection with nothing queued writes the first publication of a quiet pass
at once, during the fan-out (:attr:`Flush.direct`).

Bounds.  The transport stops us (``pause_writing``) once the kernel's send
buffer, capped per socket, and the transport's own buffer are full; messages
then wait in the outbox, and only then do its bounds apply: what a socket
that takes data gets in one pass is written at the end of that pass.  A client is a *slow consumer* when its outbox
overflows, when its oldest waiting message is older than ``max_lag``, or
when its socket has taken nothing for ``send_timeout``.  The first two apply
the channel's policy (disconnect, reset or latest); the last aborts the TCP
connection, since a client that reads nothing cannot be helped.  So a
connection's memory is bounded by the outbox's bytes, the transport's
high-water mark and the capped kernel buffer (docs/operations.md states the
figure).
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from broker_adapters.types import Position

from .errors import CloseCode
from .hub import Delivery, Subscription
from .outbox import Outbox
from .resume import ResetReason

if TYPE_CHECKING:
    from .access import Identity
    from .runtime import Node

log = logging.getLogger("fanline.connection")


class ResetItem:
    """A reset waiting in an outbox; SSE encodes it when it is written (its composite id moves then)."""

    __slots__ = ("subscription", "position", "reason")

    def __init__(self, subscription: Subscription, position: Position, reason: ResetReason) -> None:
        self.subscription = subscription
        self.position = position
        self.reason = reason


#: What an outbox holds: a publication, a reset, or bytes the transport built already.
Item = Delivery | ResetItem | bytes

# Size estimate of a delivery beyond its data: the envelope and framing.
_ENVELOPE = 96


class Flush:
    """Once per loop pass, write what every connection has queued: one write each.

    It also decides which delivery is not queued at all (:attr:`direct`).
    Queuing until the end of the pass is what lets publications that arrive
    together leave in one write; for a publication that arrives alone it only
    adds the cost of the queue and makes the first client wait for the last
    one's queuing.  So the first publication of a pass goes straight to the
    sockets of connections with nothing queued, unless the previous pass
    carried several (a burst, where one write per pass is what counts).
    """

    __slots__ = ("_dirty", "_scheduled", "_loop", "direct", "_publications", "_quiet")

    def __init__(self) -> None:
        self._dirty: list[Connection] = []
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        #: The delivery that connections with nothing queued write at once, if any.
        self.direct: Delivery | None = None
        # Publications fanned out in this pass, and whether the last pass had at most one.
        self._publications = 0
        self._quiet = True

    def add(self, connection: Connection) -> None:
        self._dirty.append(connection)
        if not self._scheduled:
            self._scheduled = True
            self._soon(self.run)

    def fanning_out(self, delivery: Delivery) -> None:
        """The hub is about to hand ``delivery`` to its subscribers (once per publication, not per connection)."""
        self._publications += 1
        if self._publications == 1:
            self._soon(self._pass_ended)
            self.direct = delivery if self._quiet else None
        else:
            self.direct = None

    def _pass_ended(self) -> None:
        self._quiet = self._publications <= 1
        self._publications = 0
        self.direct = None

    def _soon(self, callback: Callable[[], None]) -> None:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        loop.call_soon(callback)

    def run(self) -> None:
        self._scheduled = False
        dirty, self._dirty = self._dirty, []
        # Bytes built this pass, by content: connections that receive the same
        # publications share one encoding.
        shared: dict[Any, bytes] = {}
        for connection in dirty:
            connection.flush(shared)


class Connection(asyncio.Protocol, abc.ABC):
    """The protocol of one client socket after its handshake."""

    kind: ClassVar[str]

    # Slots, not a __dict__: at 50,000 connections every attribute counts.
    __slots__ = (
        "node", "transport", "number", "identity", "subscriptions", "outbox", "closing", "paused_at",
        "reconnect_after_ms", "established", "heartbeat_slot", "_dirty", "_expiry", "_goodbye_sent", "_released",
        "__weakref__",
    )

    def __init__(self, node: Node, transport: asyncio.Transport, number: int, identity: Identity | None) -> None:
        self.node = node
        self.transport = transport
        # For log lines about this connection.
        self.number = number
        # None while a WebSocket waits for its auth frame.
        self.identity = identity
        self.subscriptions: dict[str, Subscription] | None = None
        self.outbox: Outbox[Item] = Outbox()
        # Set once the connection is being closed: (close code, reason).
        self.closing: tuple[int, str] | None = None
        # Loop time when the transport paused writing (None: it takes data).
        self.paused_at: float | None = None
        # How long the client should wait before reconnecting, when we end it.
        self.reconnect_after_ms = node.settings.sse_retry_ms
        # False while it still counts as pending (a WebSocket awaiting its auth frame).
        self.established = False
        # Which slice of the node's heartbeat ticker it is in (node.heartbeats).
        self.heartbeat_slot = 0
        self._dirty = False
        self._expiry: asyncio.TimerHandle | None = None
        self._goodbye_sent = False
        self._released = False

    # -- asyncio.Protocol ---------------------------------------------------------------

    def pause_writing(self) -> None:
        now = self.node.loop_time()
        self.paused_at = now
        self.outbox.mark(now)
        self.node.paused.add(self)

    def resume_writing(self) -> None:
        self.paused_at = None
        self.node.paused.discard(self)
        waited = self.outbox.waited_since()
        if waited is not None:
            self.node.metrics.connection_lag.observe(self.node.loop_time() - waited)
        self._mark_dirty()

    def connection_lost(self, exc: Exception | None) -> None:
        self.release()

    # -- what the hub calls ---------------------------------------------------------------

    def push(self, subscription: Subscription, delivery: Delivery) -> None:
        if self.closing is not None:
            return
        outbox = self.outbox
        if self.paused_at is None:
            if self.node.flush.direct is delivery and not self._dirty and not outbox:
                # Nothing queued before it: written now, in order (see Flush).
                self._write([delivery], {})
                return
            # The socket takes data: whatever this pass queues is written at
            # its end, so there is no backlog to bound (a burst that arrived
            # in one pass is shared data, not this client falling behind).
            outbox.force(delivery, len(delivery.publication.data) + _ENVELOPE)
        elif outbox.conflated(channel := subscription.channel):
            # A channel being conflated keeps only its newest event, so its
            # events never leave out of order.
            outbox.put_latest(channel, delivery, self.node.loop_time())
            self.node.metrics.slow_consumers.labels("latest").inc()
        elif not outbox.put(delivery, len(delivery.publication.data) + _ENVELOPE, self.node.outbox_limits):
            self.overflow(subscription, delivery)
            return
        if not self._dirty:
            self._dirty = True
            self.node.flush.add(self)

    def push_reset(self, subscription: Subscription, position: Position, reason: ResetReason) -> None:
        self.outbox.drop_latest(subscription.channel)
        self.send(ResetItem(subscription, position, reason))

    # -- what the connection itself sends ----------------------------------------------------

    def send(self, item: Item) -> None:
        """Queue a message of the connection's own (a reply, a reset, a heartbeat) after everything before it."""
        if self.closing is not None:
            return
        size = len(item) if isinstance(item, bytes) else _ENVELOPE
        if self.paused_at is None:
            self.outbox.force(item, size)
        elif not self.outbox.put(item, size, self.node.outbox_limits):
            self.slow_consumer("disconnect", "outbox full")
            return
        self._mark_dirty()

    def _mark_dirty(self) -> None:
        if not self._dirty:
            self._dirty = True
            self.node.flush.add(self)

    def overflow(self, subscription: Subscription, delivery: Delivery) -> None:
        """The outbox is full: apply the channel's slow-consumer policy."""
        policy = self.node.slow_consumer_policy(subscription.channel)
        if policy == "latest":
            self.outbox.put_latest(subscription.channel, delivery, self.node.loop_time())
            self.node.metrics.slow_consumers.labels("latest").inc()
            self._mark_dirty()
        elif policy == "reset":
            self.reset_everything("outbox full")
        else:
            self.slow_consumer("disconnect", "outbox full")

    def reset_everything(self, why: str) -> None:
        """Drop what is queued and tell every channel so, with a reset at its last queued position."""
        self.node.metrics.slow_consumers.labels("reset").inc()
        dropped = self.outbox.clear()
        self.node.log_throttled(
            log, "slow consumer reset", connection=self.number, transport=self.kind, dropped=dropped, why=why
        )
        for subscription in (self.subscriptions or {}).values():
            if subscription.held is None:
                self.outbox.force(ResetItem(subscription, subscription.position, ResetReason.SLOW_CONSUMER), _ENVELOPE)
        self._mark_dirty()

    def conflate_everything(self) -> None:
        """The ``latest`` policy for a lagging connection: keep only each channel's newest queued event."""
        queued = self.outbox.take(len(self.outbox) + 1)
        now = self.node.loop_time()
        for item in queued:
            if isinstance(item, Delivery):
                self.outbox.put_latest(item.publication.channel, item, now)
            else:
                self.outbox.force(item, len(item) if isinstance(item, bytes) else _ENVELOPE)
        self.outbox.mark(now)
        self.node.metrics.slow_consumers.labels("latest").inc()

    # -- writing ----------------------------------------------------------------------------

    def flush(self, shared: dict[Any, bytes]) -> None:
        """Write what is queued, as one write per ``write_batch`` messages; called by :class:`Flush`."""
        self._dirty = False
        if self._released:
            return
        if self.paused_at is not None:
            # Nothing can be written; what was queued this pass starts waiting now.
            self.outbox.mark(self.node.loop_time())
            return
        outbox = self.outbox
        limit = self.node.settings.write_batch
        while outbox and self.paused_at is None:
            self._write(outbox.take(limit), shared)
        if self.paused_at is not None:
            outbox.mark(self.paused_at)
        elif self.closing is not None and not self._goodbye_sent:
            self._goodbye_sent = True
            self.say_goodbye()

    def _write(self, items: list[Item], shared: dict[Any, bytes]) -> None:
        """One ``transport.write`` for ``items``, counted."""
        data = self.encode(items, shared)
        if data:
            self.transport.write(data)
            self.node.count_written(self.kind, items, len(data))

    @abc.abstractmethod
    def encode(self, items: list[Item], shared: dict[Any, bytes]) -> bytes:
        """The bytes for ``items``, in order; reuse ``shared`` where the bytes do not depend on the connection."""

    @abc.abstractmethod
    def say_goodbye(self) -> None:
        """Tell the client the connection ends (a close frame, the end of the stream) and close."""

    @abc.abstractmethod
    def send_heartbeat(self) -> None:
        """Queue something the client can see, so both ends know the link lives."""

    def say_draining(self, reconnect_after_ms: int) -> None:
        """Queue the transport's drain notice, if it has one."""

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self, code: int, reason: str, *, flush: bool = True) -> None:
        """Stop sending new messages and say goodbye after what is queued (or instead of it).

        ``flush=False`` drops the queue (a slow consumer's backlog).  Safe to
        call more than once.
        """
        if self.closing is not None or self._released:
            return
        self.closing = (code, reason)
        if not flush:
            self.outbox.clear()
        self._mark_dirty()

    def drain(self, reconnect_after_ms: int) -> None:
        """Close because the node drains; the client should reconnect elsewhere."""
        self.reconnect_after_ms = reconnect_after_ms
        self.say_draining(reconnect_after_ms)
        self.close(CloseCode.SERVICE_RESTART, "node draining")

    def shutdown(self) -> None:
        """uvicorn's shutdown hook: the server is stopping now."""
        self.close(CloseCode.GOING_AWAY, "node stopping")

    def slow_consumer(self, policy: str, why: str) -> None:
        """Count and log a slow-consumer action; ``disconnect`` also closes."""
        if self.closing is not None:
            return
        self.node.metrics.slow_consumers.labels(policy).inc()
        self.node.log_throttled(
            log, "slow consumer disconnected", connection=self.number, transport=self.kind, why=why,
            queued=len(self.outbox),
        )
        self.close(CloseCode.SLOW_CONSUMER, "slow consumer", flush=False)

    def abort(self) -> None:
        """Drop the socket at once, whatever is buffered for it."""
        if not self.transport.is_closing():
            self.transport.abort()
        self.release()

    def expire_at(self, deadline: float | None, callback: Callable[[], None]) -> None:
        """Run ``callback`` at loop time ``deadline`` (a token's expiry); replaces an earlier one."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if deadline is not None:
            self._expiry = asyncio.get_running_loop().call_at(deadline, callback)

    def release(self) -> None:
        """The connection has ended: unsubscribe everything and forget it.  Idempotent."""
        if self._released:
            return
        self._released = True
        if self.closing is None:
            self.closing = (1006, "connection ended")
        self.outbox.clear()
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        hub = self.node.hub
        self.node.presence.released(self)
        for subscription in (self.subscriptions or {}).values():
            hub.unsubscribe(subscription)
        self.subscriptions = None
        self.node.unregister(self)
        self.released()

    def released(self) -> None:
        """Subclasses release what they own (tasks, timers)."""
