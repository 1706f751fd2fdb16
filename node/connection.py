"""What a WebSocket session and an SSE stream have in common.

A :class:`Connection` owns its subscriptions, its bounded :class:`Outbox` and
the writer that drains the outbox to the socket.  The hub pushes into it
without awaiting.  An idle, unblocked socket is written at once (see
:mod:`node.direct`); otherwise the message is queued and a writer task,
started on demand and gone once the queue is empty, batches whatever has
queued up into as few writes as possible, each bounded by ``send_timeout``.
An idle connection therefore holds no task of its own.

A connection that cannot keep up is a *slow consumer*: its outbox overflows or
a write times out.  It is then closed with a documented code (or SSE simply
ends), and the client resumes from its last event id on reconnect, losing
nothing.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any, ClassVar, Generic

from broker_adapters.types import Position

from .direct import DirectWrite
from .hub import Delivery, Subscription
from .outbox import Outbox, T
from .protocol import CloseCode, ResetReason

if TYPE_CHECKING:
    from .runtime import Node

log = logging.getLogger("fanline.connection")

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]
Receive = Callable[[], Awaitable[Message]]


def transport_of(send: Send) -> asyncio.BaseTransport | None:
    """The socket transport behind an ASGI ``send``, if the server exposes it.

    uvicorn's ``send`` for both WebSocket and HTTP is a bound method of an
    object holding the transport.  A write blocked by a client that stopped
    reading cannot be cancelled through ASGI: closing politely queues a
    close frame behind the stuck data and the socket lingers.  Aborting the
    transport is the only way to free it, so we keep a handle when we can.
    """
    owner = getattr(send, "__self__", None)
    transport = getattr(owner, "transport", None)
    # uvloop's transports are not asyncio.BaseTransport subclasses: look for
    # the methods rather than the class.
    if all(callable(getattr(transport, name, None)) for name in ("write", "abort", "is_closing", "get_extra_info")):
        return transport  # type: ignore[no-any-return]
    return None


def _set_user_timeout(transport: asyncio.BaseTransport, seconds: float) -> None:
    """Let the kernel drop a peer that stops acknowledging what we send.

    Heartbeats guarantee that something is sent every interval; with
    TCP_USER_TIMEOUT, data left unacknowledged for ``seconds`` closes the
    socket, so a vanished peer (a laptop lid closed, a dead NAT entry) is
    detected even when nothing is reading from it and no ping is answered.
    """
    sock = transport.get_extra_info("socket")
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    if sock is None or option is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, option, int(seconds * 1000))
    except OSError:
        pass


class Connection(abc.ABC, Generic[T]):
    transport_name: ClassVar[str]

    # Slots, not a __dict__: at 100k connections every attribute counts.
    __slots__ = (
        "node", "send", "socket", "outbox", "subscriptions", "closing", "reconnect_after_ms", "direct",
        "writing", "_writer", "_goodbye_said", "_events_out", "_bytes_out", "_frames_out", "__weakref__",
    )

    def __init__(self, node: Node, send: Send) -> None:
        settings = node.settings
        self.node = node
        self.send = send
        self.socket = transport_of(send)
        if self.socket is not None:
            _set_user_timeout(self.socket, settings.heartbeat_timeout)
        self.outbox: Outbox[T] = Outbox(settings.outbox_max_messages, settings.outbox_max_bytes)
        self.subscriptions: dict[str, Subscription] = {}
        # Set once the connection is being closed: (close code, reason).
        self.closing: tuple[int, str] | None = None
        # How long the client should wait before reconnecting, when we close it.
        self.reconnect_after_ms = node.settings.sse_retry_ms
        # Set by the endpoint once the handshake is done (see node.direct).
        self.direct: DirectWrite | None = None
        # True while the writer task has a batch out of the outbox and not yet written.
        self.writing = False
        self._writer: asyncio.Task[None] | None = None
        self._goodbye_said = False
        metrics = node.metrics
        self._events_out = metrics.events_out.labels(self.transport_name)
        self._bytes_out = metrics.bytes_out.labels(self.transport_name)
        self._frames_out = metrics.frames_out.labels(self.transport_name)

    # -- what the hub calls --------------------------------------------------------

    def _direct_ok(self) -> bool:
        """Can bytes go to the socket now, without overtaking anything queued?"""
        return self.direct is not None and self.closing is None and not self.writing and not self.outbox

    def push(self, subscription: Subscription, delivery: Delivery) -> None:
        if self._direct_ok():
            data = self.wire_event(subscription, delivery)
            assert self.direct is not None
            if self.direct(data):
                self.count_written(1, len(data))
                return
        item = self.encode_event(subscription, delivery)
        outbox = self.outbox
        # While a channel is conflated, its newer events replace the held one,
        # so the client never sees that channel's events out of order.
        if outbox.latest and subscription.channel in outbox.latest:
            outbox.put_latest(subscription.channel, item)
            self.node.metrics.slow_consumers.labels("latest").inc()
        elif not outbox.put(item):
            self.overflow(subscription, item)
            return
        self._kick()

    def push_reset(self, subscription: Subscription, position: Position, reason: ResetReason) -> None:
        self.outbox.latest.pop(subscription.channel, None)
        self.queue(self.encode_reset(subscription, position, reason))

    def queue(self, item: T) -> None:
        """Send a control message (a reply, a reset, a heartbeat) after everything before it."""
        if self._direct_ok():
            data = self.wire(item)
            assert self.direct is not None
            if self.direct(data):
                self.count_written(1, len(data))
                return
        if not self.outbox.put(item):
            self.slow_consumer("disconnect", "outbox full")
            return
        self._kick()

    def _kick(self) -> None:
        """Make sure a writer is draining the outbox."""
        writer = self._writer
        if writer is None or writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_pending())

    def overflow(self, subscription: Subscription, item: T) -> None:
        """The outbox is full: apply the channel's slow-consumer policy."""
        policy = self.node.slow_consumer_policy(subscription.channel)
        if policy == "latest":
            self.outbox.put_latest(subscription.channel, item)
            self.node.metrics.slow_consumers.labels("latest").inc()
            self._kick()
        elif policy == "reset":
            self.slow_consumer("reset", "outbox full")
            dropped = self.outbox.clear()
            log.warning(
                "slow consumer reset",
                extra={"transport": self.transport_name, "dropped": dropped, "channel": subscription.channel},
            )
            # Every channel lost queued events: each gets an explicit reset
            # at the newest position the client has been told about.
            for sub in self.subscriptions.values():
                if sub.held is None:
                    self.push_reset(sub, sub.position, ResetReason.SLOW_CONSUMER)
        else:
            self.slow_consumer("disconnect", "outbox full")

    # -- transport specifics ---------------------------------------------------------

    @abc.abstractmethod
    def encode_event(self, subscription: Subscription, delivery: Delivery) -> T: ...

    @abc.abstractmethod
    def encode_reset(self, subscription: Subscription, position: Position, reason: ResetReason) -> T: ...

    @abc.abstractmethod
    def wire(self, item: T) -> bytes:
        """One queued message as the bytes the socket carries."""

    @abc.abstractmethod
    def wire_event(self, subscription: Subscription, delivery: Delivery) -> bytes:
        """An event as socket bytes, shared between subscribers where the transport allows."""

    @abc.abstractmethod
    async def write(self, batch: list[T]) -> None:
        """Write a batch to the socket (as few frames as the transport allows)."""

    @abc.abstractmethod
    async def say_goodbye(self, code: int, reason: str) -> None:
        """Tell the client the connection ends (a close frame, the end of the stream)."""

    # -- lifecycle ------------------------------------------------------------------------

    def close(self, code: int, reason: str, flush: bool = False, goodbye: bool = True) -> None:
        """Stop sending and say goodbye.  Safe to call more than once.

        ``flush`` writes what is already queued first; otherwise it is dropped
        (a slow consumer's backlog).  ``goodbye=False`` when the client is
        already gone and nobody is left to tell.
        """
        if self.closing is None:
            self.closing = (code, reason)
            self.outbox.close(discard=not flush)
            if goodbye:
                self._kick()
            else:
                self._goodbye_said = True

    def drain(self, reconnect_after_ms: int) -> None:
        """Close because the node drains; the client should reconnect elsewhere."""
        self.reconnect_after_ms = reconnect_after_ms
        self.say_draining(reconnect_after_ms)
        self.close(CloseCode.SERVICE_RESTART, "node draining", flush=True)

    def say_draining(self, reconnect_after_ms: int) -> None:
        """Queue the transport's drain notice, if it has one."""

    @abc.abstractmethod
    def send_heartbeat(self) -> None:
        """Queue something the client can see, so both ends know the link lives."""

    def slow_consumer(self, policy: str, why: str) -> None:
        """Count and log a slow-consumer action; ``disconnect`` also closes."""
        if self.closing is not None:
            return
        self.node.metrics.slow_consumers.labels(policy).inc()
        if policy == "disconnect":
            log.warning(
                "slow consumer disconnected",
                extra={"transport": self.transport_name, "why": why, "queued": len(self.outbox)},
            )
            self.close(CloseCode.SLOW_CONSUMER, "slow consumer")

    def abort(self) -> None:
        """Drop the socket at once, whatever is buffered for it."""
        if self.socket is not None and not self.socket.is_closing():
            abort = getattr(self.socket, "abort", None)
            if abort is not None:
                abort()

    async def _write_pending(self) -> None:
        """The writer: drain the outbox, then say goodbye if the connection is closing."""
        settings = self.node.settings
        limit = settings.write_batch
        timeout = settings.send_timeout
        try:
            while self.outbox:
                batch = self.outbox.take(limit)
                # No await between take() and here: pushes see either a
                # non-empty outbox or a write in flight, never neither.
                self.writing = True
                try:
                    async with asyncio.timeout(timeout):
                        await self.write(batch)
                except TimeoutError:
                    # Whatever the channel's policy, a write stuck this long
                    # means the client is not reading at all.
                    self.slow_consumer("disconnect", f"write blocked for {timeout}s")
                    self._goodbye_said = True
                    self.abort()
                    return
                finally:
                    self.writing = False
            if self.closing is not None and not self._goodbye_said:
                self._goodbye_said = True
                code, reason = self.closing
                try:
                    async with asyncio.timeout(timeout):
                        await self.say_goodbye(code, reason)
                except TimeoutError:
                    self.abort()
        except OSError:
            # The client went away mid-write (uvicorn's ClientDisconnected).
            self.close(1006, "client disconnected", goodbye=False)

    async def finish(self) -> None:
        """Close (if not yet) and wait for the writer to flush and say goodbye."""
        if self.closing is None:
            self.close(1000, "")
        try:
            while self._writer is not None and not self._writer.done():
                await asyncio.shield(self._writer)
        finally:
            if self._writer is not None and not self._writer.done():
                self._writer.cancel()
                await asyncio.gather(self._writer, return_exceptions=True)

    def count_written(self, events: int, size: int) -> None:
        self._events_out.inc(events)
        self._bytes_out.inc(size)
        self._frames_out.inc()

    def release(self) -> None:
        """Unsubscribe everything; called once when the connection has ended."""
        self.close(1006, "connection ended", goodbye=False)
        hub = self.node.hub
        for subscription in self.subscriptions.values():
            hub.unsubscribe(subscription)
        self.subscriptions.clear()
