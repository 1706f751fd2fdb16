"""The hub: one node's channels, their subscribers, and the rules of resume.

The broker delivers each publication to the hub once.  The hub encodes it
once (:class:`Delivery`) and hands it to every local :class:`Subscription`
without awaiting anything, so a slow client can never hold up the others: each
connection has its own bounded outbox and writer.

Resume follows one rule everywhere: *buffer live, read history, merge by
offset*.  A subscription starts in the pending state, collecting live
publications; then the history after the client's position is read; then
history and the buffered live publications are delivered in offset order,
each offset at most once.  If the position cannot be continued (another
epoch, trimmed history, too far behind) the client gets an explicit reset.

The same rule repairs live gaps: when the broker reports it may have dropped
something (a reconnect, or an offset that skips on a contiguous stream), the
channel buffers live publications again, re-reads history from the last
position it delivered, and merges.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from broker_adapters.base import Broker, BrokerError, BrokerUnavailable
from broker_adapters.tasks import TaskSet
from broker_adapters.types import Position, Publication

from .direct import sse_chunk, websocket_frame
from .metrics import Metrics
from .protocol import ResetReason, event_frame

log = logging.getLogger("fanline.hub")


class Delivery:
    """A publication and its encodings, built at most once per node.

    Every subscriber of the channel receives this same object; the transports
    take the encoding they need.
    """

    __slots__ = ("publication", "_text", "_sse_body", "_sse_frame", "_ws_wire", "_sse_wire")

    def __init__(self, publication: Publication) -> None:
        self.publication = publication
        self._text: str | None = None
        self._sse_body: bytes | None = None
        self._sse_frame: bytes | None = None
        self._ws_wire: bytes | None = None
        self._sse_wire: bytes | None = None

    @property
    def text(self) -> str:
        """The event message as JSON text: a WebSocket frame and the SSE data."""
        if self._text is None:
            self._text = event_frame(self.publication)
        return self._text

    @property
    def sse_body(self) -> bytes:
        """The SSE event without its ``id:`` line (``event:`` and ``data:``)."""
        if self._sse_body is None:
            event = self.publication.event
            head = f"event: {event}\n" if event else ""
            self._sse_body = f"{head}data: {self.text}\n\n".encode()
        return self._sse_body

    @property
    def sse_frame(self) -> bytes:
        """The whole SSE event for a one-channel stream, ``id:`` included."""
        if self._sse_frame is None:
            self._sse_frame = b"id: " + self.publication.position.event_id.encode() + b"\n" + self.sse_body
        return self._sse_frame

    @property
    def ws_wire(self) -> bytes:
        """The event as WebSocket frame bytes, ready for the socket (see node.direct)."""
        if self._ws_wire is None:
            self._ws_wire = websocket_frame(self.text.encode())
        return self._ws_wire

    @property
    def sse_wire(self) -> bytes:
        """The one-channel SSE event as an HTTP/1.1 chunk, ready for the socket."""
        if self._sse_wire is None:
            self._sse_wire = sse_chunk(self.sse_frame)
        return self._sse_wire


class Subscriber(Protocol):
    """The connection side of a subscription (a WebSocket session or an SSE stream)."""

    def push(self, subscription: Subscription, delivery: Delivery) -> None:
        """Queue an event for the client.  Must not block."""

    def push_reset(self, subscription: Subscription, position: Position, reason: str) -> None:
        """Queue a reset for the client.  Must not block."""


class Subscription:
    """One connection's subscription to one channel."""

    __slots__ = ("channel", "subscriber", "index", "epoch", "floor", "pending")

    def __init__(self, channel: str, subscriber: Subscriber, index: int = 0) -> None:
        self.channel = channel
        self.subscriber = subscriber
        # Position of this channel in an SSE stream's composite event id.
        self.index = index
        # The last position delivered (or skipped by a reset) to this client.
        self.epoch = ""
        self.floor = 0
        # While resuming: live deliveries held back until history is merged.
        self.pending: list[Delivery] | None = []

    @property
    def position(self) -> Position:
        return Position(self.epoch, self.floor)

    def deliver(self, delivery: Delivery) -> None:
        pending = self.pending
        if pending is not None:
            pending.append(delivery)
            return
        publication = delivery.publication
        if publication.epoch != self.epoch:
            # The stream started again under us: never splice two epochs.
            self.reset(Position(publication.epoch, publication.offset - 1), ResetReason.EPOCH_CHANGED)
        elif publication.offset <= self.floor:
            return
        self.floor = publication.offset
        self.subscriber.push(self, delivery)

    def reset(self, position: Position, reason: str) -> None:
        self.epoch = position.epoch
        self.floor = position.offset
        self.subscriber.push_reset(self, position, reason)


@dataclass(frozen=True, slots=True)
class SubscribeOutcome:
    subscription: Subscription
    position: Position  # where the subscription starts, before replayed events
    recovered: bool | None  # None when the client asked for no resume
    replayed: int
    reset_reason: str | None
    reset_position: Position | None


class ChannelState:
    __slots__ = ("name", "subscribers", "last", "ready", "buffer", "generation")

    def __init__(self, name: str) -> None:
        self.name = name
        self.subscribers: dict[Subscription, None] = {}
        # The last live position fanned out; None until the first one.
        self.last: Position | None = None
        # Completes when the broker delivers this channel to the node.
        self.ready: asyncio.Future[None] | None = None
        # Live publications held back while the channel re-reads history.
        self.buffer: list[Publication] | None = None
        # Bumped whenever live delivery may have skipped something, so a
        # history read that overlapped it is known to be stale.
        self.generation = 0


class Hub:
    """Implements :class:`broker_adapters.base.BrokerListener` for one node."""

    def __init__(
        self,
        broker: Broker,
        *,
        metrics: Metrics,
        replay_limit: int = 300,
        pending_limit: int = 10000,
    ) -> None:
        self.broker = broker
        self.metrics = metrics
        self.replay_limit = replay_limit
        self.pending_limit = pending_limit
        self._channels: dict[str, ChannelState] = {}
        self._unsubscribing: dict[str, asyncio.Task[None]] = {}
        self._tasks = TaskSet()
        self._contiguous = broker.contiguous_offsets
        self.broker_available = False
        metrics.channels._read = lambda: float(len(self._channels))

    # -- ownership -----------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        return self._tasks.spawn(coro, name)

    async def close(self) -> None:
        await self._tasks.cancel_all()
        self._channels.clear()

    # -- subscribe and resume ----------------------------------------------------------

    async def subscribe(
        self, subscriber: Subscriber, channel: str, since: Position | None, index: int = 0
    ) -> SubscribeOutcome:
        """Subscribe, resuming from ``since`` if given.

        Raises :class:`BrokerError` if the broker cannot serve the channel
        now; the subscription is then not registered.
        """
        state = self._channels.get(channel)
        if state is None:
            state = self._channels[channel] = ChannelState(channel)
            state.ready = self._spawn(self._broker_subscribe(state), f"subscribe:{channel}")
        subscription = Subscription(channel, subscriber, index)
        # Registered before the history read, so every live publication from
        # now on is either in the pending buffer or in the history we read.
        state.subscribers[subscription] = None
        self.metrics.subscriptions.inc()
        try:
            assert state.ready is not None
            await asyncio.shield(state.ready)
            for _ in range(5):
                generation = state.generation
                history = await self.broker.history(
                    channel, None if since is None else since.offset, self.replay_limit + 1
                )
                if state.generation == generation:
                    break
            else:
                raise BrokerError("live delivery keeps skipping on this channel; try again")
        except BaseException:
            self._remove(state, subscription)
            raise

        top = history.top
        reason: str | None = None
        replay: list[Publication] = []
        if since is None:
            start = top
        elif since.epoch != top.epoch:
            reason = ResetReason.EPOCH_CHANGED
        elif since.offset > top.offset:
            reason = ResetReason.POSITION_AHEAD
        elif not history.complete:
            reason = ResetReason.HISTORY_TRIMMED
        elif len(history.publications) > self.replay_limit:
            reason = ResetReason.TOO_FAR_BEHIND
        else:
            replay = list(history.publications)
        if since is not None:
            start = top if reason else since
            self.metrics.resumes.labels("reset" if reason else "recovered").inc()
            if reason is None:
                self.metrics.replayed.observe(len(replay))

        held = subscription.pending or []
        if len(held) > self.pending_limit:
            self._remove(state, subscription)
            raise BrokerError("too many live events arrived while resuming; try again")
        subscription.epoch = start.epoch
        subscription.floor = start.offset
        # History first, then the held-back live events after the top.  An
        # event of another epoch makes the subscription reset itself when it
        # is delivered: a spurious reset is safe, a spliced stream is not.
        queued = [Delivery(p) for p in replay]
        queued.extend(
            d for d in held if d.publication.epoch != top.epoch or d.publication.offset > top.offset
        )
        # Still pending: the caller sends its reply, then start_delivery().
        subscription.pending = queued
        return SubscribeOutcome(
            subscription=subscription,
            position=start,
            recovered=None if since is None else reason is None,
            replayed=len(replay),
            reset_reason=reason,
            reset_position=top if reason else None,
        )

    def start_delivery(self, subscription: Subscription) -> None:
        """Release the events queued by the merge; called after the subscribed reply."""
        queued = subscription.pending or []
        subscription.pending = None
        for delivery in queued:
            subscription.deliver(delivery)

    def unsubscribe(self, subscription: Subscription) -> None:
        state = self._channels.get(subscription.channel)
        if state is not None:
            self._remove(state, subscription)

    def _remove(self, state: ChannelState, subscription: Subscription) -> None:
        if subscription in state.subscribers:
            del state.subscribers[subscription]
            self.metrics.subscriptions.dec()
        if not state.subscribers and self._channels.get(state.name) is state:
            del self._channels[state.name]
            self._unsubscribing[state.name] = self._spawn(
                self._broker_unsubscribe(state), f"unsubscribe:{state.name}"
            )

    async def _broker_subscribe(self, state: ChannelState) -> None:
        previous = self._unsubscribing.get(state.name)
        if previous is not None:
            await asyncio.gather(previous, return_exceptions=True)
        try:
            await self.broker.subscribe(state.name)
        except BaseException:
            # Forget the channel so the next subscriber tries again.
            if self._channels.get(state.name) is state:
                del self._channels[state.name]
            raise

    async def _broker_unsubscribe(self, state: ChannelState) -> None:
        try:
            if state.ready is not None and not state.ready.done():
                await asyncio.gather(state.ready, return_exceptions=True)
            await self.broker.unsubscribe(state.name)
        except BrokerError as exc:
            log.warning("broker unsubscribe failed", extra={"channel": state.name, "error": str(exc)})
        finally:
            if self._unsubscribing.get(state.name) is asyncio.current_task():
                del self._unsubscribing[state.name]

    # -- live delivery ---------------------------------------------------------------

    def on_publication(self, publication: Publication) -> None:
        self.metrics.events_in.inc()
        if publication.time_ms:
            self.metrics.lag_seconds.observe(max(0.0, time.time() - publication.time_ms / 1000))
        state = self._channels.get(publication.channel)
        if state is None:
            return
        if state.buffer is not None:
            state.buffer.append(publication)
            return
        last = state.last
        if last is not None and publication.epoch == last.epoch:
            if publication.offset <= last.offset:
                return  # already delivered, by history or an earlier copy
            if self._contiguous and publication.offset != last.offset + 1:
                log.warning(
                    "live gap detected",
                    extra={"channel": state.name, "expected": last.offset + 1, "got": publication.offset},
                )
                self._start_resync(state, [publication])
                return
        self._fan_out(state, publication)

    def _fan_out(self, state: ChannelState, publication: Publication) -> None:
        state.last = publication.position
        delivery = Delivery(publication)
        # No copy of the subscriber set: delivering never unsubscribes (a
        # connection that overflows is closed later, by its own handler).
        for subscription in state.subscribers:
            subscription.deliver(delivery)

    def on_resync(self, channels: Iterable[str] | None) -> None:
        names = list(self._channels) if channels is None else [c for c in channels if c in self._channels]
        for name in names:
            self._start_resync(self._channels[name], [])

    async def check_streams_forever(self, interval: float) -> None:
        """Compare each channel's stream top with what was delivered, every ``interval`` s.

        A safety net under the adapters' own gap detection: a live message
        lost without any sign (a broker bug, a network path that dropped one
        datagram of a pub/sub stream) is noticed within one interval on an
        otherwise idle channel, instead of only when the next publication
        arrives.  One history read per channel per interval; a publication
        in flight can trigger a harmless extra resync.
        """
        while True:
            await asyncio.sleep(interval)
            for name, state in list(self._channels.items()):
                last = state.last
                if last is None or state.buffer is not None:
                    continue
                try:
                    history = await self.broker.history(name, None, 0)
                except BrokerError:
                    continue  # availability is the health check's business
                top = history.top
                if state.last is last and (top.epoch != last.epoch or top.offset > last.offset):
                    self.metrics.resyncs.labels("stream_check").inc()
                    self._start_resync(state, [])

    def on_availability(self, available: bool) -> None:
        if available != self.broker_available:
            level = logging.INFO if available else logging.WARNING
            log.log(level, "broker %s", "available" if available else "unavailable", extra={"broker": self.broker.kind})
        self.broker_available = available
        self.metrics.broker_available.labels().set(1.0 if available else 0.0)

    def _start_resync(self, state: ChannelState, buffered: list[Publication]) -> None:
        state.generation += 1
        if state.buffer is not None:
            state.buffer.extend(buffered)
            return
        state.buffer = buffered
        self._spawn(self._resync(state), f"resync:{state.name}")

    def _resync_origin(self, state: ChannelState) -> Position | None:
        if state.last is not None:
            return state.last
        floors = [s.position for s in state.subscribers if s.pending is None]
        return min(floors, key=lambda p: p.offset) if floors else None

    async def _resync(self, state: ChannelState) -> None:
        """Re-read history after a possible live gap, then resume live delivery."""
        delay = 0.1
        while True:
            origin = self._resync_origin(state)
            if origin is None:
                # Nobody has a position yet: pending subscribers re-read
                # history themselves because the generation changed.
                break
            try:
                history = await self.broker.history(state.name, origin.offset, self.replay_limit + 1)
            except BrokerError as exc:
                log.warning("resync history read failed", extra={"channel": state.name, "error": str(exc)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                if state.buffer is not None and len(state.buffer) > self.pending_limit:
                    # Holding more would be unbounded; a reset is explicit.
                    state.buffer = []
                continue
            if self._channels.get(state.name) is not state:
                return
            top = history.top
            if top.epoch != origin.epoch:
                outcome = "epoch_changed"
                self._reset_all(state, top, ResetReason.EPOCH_CHANGED)
            elif not history.complete or len(history.publications) > self.replay_limit:
                outcome = "reset"
                self._reset_all(state, top, ResetReason.HISTORY_TRIMMED)
            else:
                outcome = "recovered"
                for publication in history.publications:
                    self._fan_out(state, publication)
            self.metrics.resyncs.labels(outcome).inc()
            break
        buffered = state.buffer or []
        state.buffer = None
        for publication in buffered:
            self.on_publication_after_resync(state, publication)

    def on_publication_after_resync(self, state: ChannelState, publication: Publication) -> None:
        last = state.last
        if last is not None and publication.epoch == last.epoch and publication.offset <= last.offset:
            return
        self._fan_out(state, publication)

    def _reset_all(self, state: ChannelState, top: Position, reason: str) -> None:
        state.last = top
        for subscription in list(state.subscribers):
            if subscription.pending is None:
                subscription.reset(top, reason)

    # -- publishing and health -----------------------------------------------------------

    async def publish(self, channel: str, data: str, event: str | None, source: str) -> Publication:
        started = time.perf_counter()
        publication = await self.broker.publish(channel, data, event=event)
        self.metrics.broker_publish_seconds.observe(time.perf_counter() - started)
        self.metrics.published.labels(source).inc()
        return publication

    async def check_broker(self) -> bool:
        try:
            await self.broker.ping()
        except (TimeoutError, BrokerUnavailable, BrokerError, OSError):
            self.on_availability(False)
            return False
        self.on_availability(True)
        return True
