"""The hub: one node's channels, their subscribers, and the rules of resume applied.

The broker delivers each publication to the hub once.  The hub wraps it in
one :class:`Delivery` and hands that to every local :class:`Subscription`
without awaiting anything, so a slow client can never hold up the others:
each connection has its own bounded outbox.  The transports encode a
delivery at most once per wire format (:attr:`Delivery.memo`); the hub knows
nothing of frames.

Every decision about what a subscriber is sent is a pure function of
:mod:`node.resume`; this module does the I/O around them.  A subscribe
*holds* live publications from the moment it is registered, then reads
history, then merges; a channel whose live delivery may have skipped
something holds its live publications, re-reads history from the last
position it fanned out, and merges the same way.

Reading the broker is what a subscribe costs most, so the hub avoids it
where it already knows the answer, and shares it where it does not:

- a channel live on this node keeps a small window of its last publications
  (``resume_window``); a subscribe without ``since``, or with a ``since``
  inside that window, is answered from it at once, with no I/O at all
  (:meth:`Hub.subscribe_now`);
- concurrent subscribes to one channel from one position share one history
  read, provided the read starts after every one of them registered (a read
  already in flight may predate a publication they would then miss).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from broker_adapters.backoff import Backoff
from broker_adapters.base import Broker, BrokerError, BrokerUnavailable
from broker_adapters.tasks import TaskSet
from broker_adapters.types import RESERVED_CHANNEL_PREFIX, History, Position, Publication

from .metrics import Metrics
from .resume import (
    MergeGap,
    Reset,
    ResetReason,
    ResumePlan,
    history_is_behind,
    history_up_to,
    plan_repair,
    plan_subscribe,
    replay_from_recent,
)

log = logging.getLogger("fanline.hub")

# How often a subscribe reads history again when its read raced a live gap.
_READ_ATTEMPTS = 5


class Delivery:
    """One publication as it is handed to every subscriber of its channel.

    ``memo`` keeps what the transports built from it (frames, chunks), keyed
    by wire format, so that a publication is encoded once per node however
    many connections receive it.
    """

    __slots__ = ("publication", "position", "memo")

    def __init__(self, publication: Publication) -> None:
        self.publication = publication
        # Built once here, not once per subscriber.
        self.position = publication.position
        self.memo: dict[str, bytes] | None = None

    def encoded(self, form: str, build: Callable[[Delivery], bytes]) -> bytes:
        """The delivery in wire format ``form``, built by ``build`` the first time it is asked for."""
        memo = self.memo
        if memo is None:
            memo = self.memo = {}
        value = memo.get(form)
        if value is None:
            value = memo[form] = build(self)
        return value


class Subscriber(Protocol):
    """The connection side of a subscription (a WebSocket session or an SSE stream)."""

    def push(self, subscription: Subscription, delivery: Delivery) -> None:
        """Queue an event for the client.  Must not block."""

    def push_reset(self, subscription: Subscription, position: Position, reason: ResetReason) -> None:
        """Queue a reset for the client.  Must not block."""


class Subscription:
    """One connection's subscription to one channel."""

    __slots__ = ("channel", "subscriber", "index", "position", "held")

    def __init__(self, channel: str, subscriber: Subscriber, index: int = 0) -> None:
        self.channel = channel
        self.subscriber = subscriber
        # Position of this channel in an SSE stream's composite event id.
        self.index = index
        # The last position sent to this client (an event, or a reset's position).
        self.position = Position("", 0)
        # While subscribing: live deliveries held back until history is merged.
        self.held: list[Delivery] | None = []

    def deliver(self, delivery: Delivery) -> None:
        held = self.held
        if held is not None:
            held.append(delivery)
            return
        publication = delivery.publication
        position = self.position
        if publication.epoch != position.epoch:
            # The stream started again under us: never splice two epochs
            # (see node.resume.follow, which this inlines for the hot path).
            self.reset(Position(publication.epoch, publication.offset - 1), ResetReason.EPOCH_CHANGED)
        elif publication.offset <= position.offset:
            return
        self.position = delivery.position
        self.subscriber.push(self, delivery)

    def reset(self, position: Position, reason: ResetReason) -> None:
        self.position = position
        self.subscriber.push_reset(self, position, reason)


@dataclass(frozen=True, slots=True)
class Subscribed:
    """A subscribe that succeeded: what the reply says and what follows it."""

    subscription: Subscription
    plan: ResumePlan
    # The held deliveries the plan's publications came from (by identity of
    # the publication), so that they keep their shared encodings.
    held: dict[int, Delivery]


class ChannelState:
    __slots__ = ("name", "subscribers", "last", "ready", "buffer", "generation", "recent", "base")

    def __init__(self, name: str) -> None:
        self.name = name
        self.subscribers: dict[Subscription, None] = {}
        # The position up to which this node knows the stream without a hole:
        # the last live publication fanned out, or the first subscriber's read.
        self.last: Position | None = None
        # Completes when the broker delivers this channel to the node.
        self.ready: asyncio.Future[None] | None = None
        # Live publications held back while the channel re-reads history.
        self.buffer: list[Publication] | None = None
        # Bumped whenever live delivery may have skipped something, so a
        # history read that overlapped it is known to be stale.
        self.generation = 0
        # The last live publications fanned out, without a hole, and the
        # position just before the first of them; None while not known.
        self.recent: deque[Publication] = deque()
        self.base: Position | None = None

    def remember(self, publication: Publication, size: int) -> None:
        """Keep ``publication`` in the recent window (called as it is fanned out)."""
        base = self.base
        if base is None:
            return
        if publication.epoch != base.epoch:
            self.forget()
            return
        recent = self.recent
        if size <= 0:
            self.base = publication.position
            return
        recent.append(publication)
        if len(recent) > size:
            self.base = recent.popleft().position

    def forget(self, base: Position | None = None) -> None:
        """The window no longer joins the stream (a reset, an epoch change): start again at ``base``."""
        self.recent.clear()
        self.base = base


def _ignore(delivery: Delivery) -> None:
    pass


class Hub:
    """Implements :class:`broker_adapters.base.BrokerListener` for one node."""

    def __init__(
        self,
        broker: Broker,
        *,
        metrics: Metrics,
        replay_limit: int = 300,
        pending_limit: int = 10000,
        subscribe_wait: float = 5.0,
        resume_window: int = 64,
        on_fan_out: Callable[[Delivery], None] | None = None,
    ) -> None:
        self.broker = broker
        # Told before each publication goes to the subscribers (the node's Flush counts them).
        self._on_fan_out = on_fan_out or _ignore
        self.metrics = metrics
        self.replay_limit = replay_limit
        self.pending_limit = pending_limit
        self.subscribe_wait = subscribe_wait
        self.resume_window = resume_window
        self._channels: dict[str, ChannelState] = {}
        # History reads waiting to be issued, shared by the subscribes that
        # registered before it goes out: (channel, since offset) -> read.
        self._batched: dict[tuple[str, int | None], asyncio.Future[History]] = {}
        self._unsubscribing: dict[str, asyncio.Task[None]] = {}
        self._tasks = TaskSet()
        self._contiguous = broker.contiguous_offsets
        self._available = asyncio.Event()
        metrics.channels._read = lambda: float(len(self._channels))

    @property
    def broker_available(self) -> bool:
        return self._available.is_set()

    # -- ownership -----------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        return self._tasks.spawn(coro, name)

    async def close(self) -> None:
        await self._tasks.cancel_all()
        self._channels.clear()

    # -- subscribe and resume ----------------------------------------------------------

    def subscribe_now(
        self, subscriber: Subscriber, channel: str, since: Position | None, index: int = 0
    ) -> Subscribed | None:
        """Subscribe without any I/O, if the node already knows the answer; None otherwise.

        A channel live on this node, not repairing a gap, knows its last
        position and its recent window: a fresh subscribe starts at that
        position, and a resume inside the window is replayed from it.
        Everything after it reaches the new subscription live.
        """
        state = self._channels.get(channel)
        if (
            state is None
            or state.base is None
            or state.buffer is not None
            or state.ready is None
            or not state.ready.done()
            or state.ready.cancelled()
            or state.ready.exception() is not None
            or not self._available.is_set()
        ):
            return None
        last = state.recent[-1].position if state.recent else state.base
        if since is None:
            plan = ResumePlan(last, None, 0, (), last)
        else:
            replay = replay_from_recent(since, state.base, state.recent, self.replay_limit)
            if replay is None:
                return None
            plan = ResumePlan(since, True, len(replay), tuple(replay), last)
            self.metrics.resumes.labels("recovered").inc()
            self.metrics.replayed.observe(len(replay))
        subscription = Subscription(channel, subscriber, index)
        state.subscribers[subscription] = None
        self._count(subscription, 1)
        self.metrics.subscribes.labels("window").inc()
        return Subscribed(subscription, plan, {})

    async def subscribe(
        self, subscriber: Subscriber, channel: str, since: Position | None, index: int = 0
    ) -> Subscribed:
        """Subscribe, resuming from ``since`` if given; the subscription starts held.

        The caller sends the ``subscribed`` reply, then calls
        :meth:`start_delivery` with the plan.  Raises :class:`BrokerError`
        if the broker cannot serve the channel now (after waiting up to
        ``subscribe_wait`` for it to come back); nothing is registered then.
        """
        await self._wait_available()
        state = self._channels.get(channel)
        if state is None:
            state = self._channels[channel] = ChannelState(channel)
            state.ready = self._spawn(self._broker_subscribe(state), f"subscribe:{channel}")
        subscription = Subscription(channel, subscriber, index)
        # Registered before the history read, so every live publication from
        # now on is either held or in the history we read.
        state.subscribers[subscription] = None
        self._count(subscription, 1)
        # What this node fanned out before the registration: the read must
        # reach at least that far, or it misses what is neither held nor read.
        fanned_out = state.last
        try:
            assert state.ready is not None
            await asyncio.shield(state.ready)
            subscribed = await self._read_and_plan(state, subscription, since, fanned_out)
        except BaseException:
            self._remove(state, subscription)
            raise
        plan = subscribed.plan
        if since is not None:
            self.metrics.resumes.labels("recovered" if plan.recovered else "reset").inc()
            if plan.recovered:
                self.metrics.replayed.observe(plan.replayed)
        return subscribed

    async def _read_and_plan(
        self, state: ChannelState, subscription: Subscription, since: Position | None, fanned_out: Position | None
    ) -> Subscribed:
        for attempt in range(_READ_ATTEMPTS):
            generation = state.generation
            history = await self._read(state.name, None if since is None else since.offset)
            if state.generation != generation:
                continue  # live delivery skipped something during the read
            # The broker may answer from a log shorter than what it already
            # delivered live (Tansu's offsets can lag its fetches): the
            # publications in between would be neither read nor held.  A
            # client ahead of the read may have seen the same: read again
            # before telling it position_ahead, which the last read decides.
            ahead = since is not None and history_is_behind(history.top, since)
            behind = history_is_behind(history.top, fanned_out)
            if (behind or ahead) and attempt < _READ_ATTEMPTS - 1:
                self.metrics.resyncs.labels("stale_history").inc()
                log.info(
                    "history read behind live delivery; reading again",
                    extra={"channel": state.name, "top": str(history.top), "delivered": str(fanned_out)},
                )
                await asyncio.sleep(0.05 * (attempt + 1))
                continue
            if behind:
                # Still behind after every read (a broker that lost its tail
                # in the same epoch stays so): never answer from it, and never
                # refuse forever either.
                assert fanned_out is not None
                log.warning(
                    "history stays behind live delivery; answering from the node's own position",
                    extra={"channel": state.name, "top": str(history.top), "delivered": str(fanned_out)},
                )
                history = history_up_to(history, fanned_out)
            held = subscription.held or []
            if len(held) > self.pending_limit:
                raise BrokerError("too many live events arrived while resuming; try again")
            try:
                plan = self._plan(since, history, held)
            except MergeGap as exc:
                self.metrics.resyncs.labels("merge_gap").inc()
                log.info("resume merge found a gap; reading again", extra={"channel": state.name, "gap": str(exc)})
                continue
            # Later arrivals are held apart from those the plan covers.
            subscription.held = []
            return Subscribed(subscription, plan, {id(d.publication): d for d in held})
        raise BrokerError("live delivery keeps skipping on this channel; try again")

    def _read(self, channel: str, since: int | None) -> asyncio.Future[History]:
        """A history read shared by the subscribes that join it before it is issued.

        The read goes out at the end of this loop pass; every subscribe that
        asks for the same channel and position until then shares it.  Each of
        them registered before asking, so the read cannot predate a
        publication any of them would miss.
        """
        key = (channel, since)
        batch = self._batched.get(key)
        if batch is None:
            batch = self._batched[key] = asyncio.get_running_loop().create_future()
            self.metrics.subscribes.labels("read").inc()
            asyncio.get_running_loop().call_soon(self._issue, key, batch)
        else:
            self.metrics.subscribes.labels("shared_read").inc()
        return batch

    def _issue(self, key: tuple[str, int | None], batch: asyncio.Future[History]) -> None:
        if self._batched.get(key) is batch:
            del self._batched[key]
        channel, since = key

        async def read() -> None:
            try:
                history = await self.broker.history(channel, since, self.replay_limit + 1)
            except BaseException as exc:
                if not batch.done():
                    batch.set_exception(exc if isinstance(exc, Exception) else BrokerUnavailable("cancelled"))
                    batch.exception()  # retrieved: a batch nobody awaits any more must not warn
                if not isinstance(exc, Exception):
                    raise
                return
            if not batch.done():
                batch.set_result(history)

        self._spawn(read(), f"history:{channel}")

    def _plan(self, since: Position | None, history: History, held: list[Delivery]) -> ResumePlan:
        return plan_subscribe(
            since,
            history,
            [d.publication for d in held],
            replay_limit=self.replay_limit,
            contiguous=self._contiguous,
        )

    def start_delivery(self, subscribed: Subscribed) -> None:
        """Send the plan's steps, then release what arrived since; call after the reply."""
        subscription, plan, deliveries = subscribed.subscription, subscribed.plan, subscribed.held
        subscriber = subscription.subscriber
        for step in plan.steps:
            if isinstance(step, Reset):
                subscription.position = step.position
                subscriber.push_reset(subscription, step.position, step.reason)
            else:
                subscription.position = step.position
                subscriber.push(subscription, deliveries.get(id(step)) or Delivery(step))
        subscription.position = plan.position
        later = subscription.held or []
        subscription.held = None
        for delivery in later:
            subscription.deliver(delivery)
        state = self._channels.get(subscription.channel)
        if state is not None and state.last is None and state.buffer is None:
            # From here on the channel's live stream is checked against this
            # position, and the recent window grows from it.
            state.last = subscription.position
            state.forget(subscription.position)

    def unsubscribe(self, subscription: Subscription) -> None:
        state = self._channels.get(subscription.channel)
        if state is not None:
            self._remove(state, subscription)

    def _count(self, subscription: Subscription, change: int) -> None:
        # Clients' subscriptions only: the node's own (the control channel,
        # presence relays) are on reserved channels no client can name.
        if not subscription.channel.startswith(RESERVED_CHANNEL_PREFIX):
            self.metrics.subscriptions.inc(change)

    def _remove(self, state: ChannelState, subscription: Subscription) -> None:
        if subscription in state.subscribers:
            del state.subscribers[subscription]
            self._count(subscription, -1)
        if not state.subscribers and self._channels.get(state.name) is state:
            del self._channels[state.name]
            self._unsubscribing[state.name] = self._spawn(
                self._broker_unsubscribe(state), f"unsubscribe:{state.name}"
            )

    async def _wait_available(self) -> None:
        """Hold a subscribe while the broker is (re)connecting, for a bounded time."""
        if self._available.is_set():
            return
        try:
            async with asyncio.timeout(self.subscribe_wait):
                await self._available.wait()
        except TimeoutError:
            raise BrokerUnavailable("the node cannot reach its broker") from None

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
                # Fanned out already (a copy after a repair), or behind a
                # position a history read gave this channel: a read can be
                # ahead of live delivery (Kafka's index knows our own
                # publishes first; a Redis read sees a publish whose pub/sub
                # message is still on its way).  A subscriber that started
                # from an older read still lacks it, so it is not dropped
                # here: each subscriber keeps only what it lacks.
                self._redeliver(state, publication)
                return
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
        state.remember(publication, self.resume_window)
        delivery = Delivery(publication)
        self._on_fan_out(delivery)
        # No copy of the subscriber set: delivering never unsubscribes (a
        # connection that overflows is closed later, by its own handler).
        for subscription in state.subscribers:
            subscription.deliver(delivery)

    def _redeliver(self, state: ChannelState, publication: Publication) -> None:
        """A publication at or below the channel's last position: to whichever subscriber lacks it."""
        delivery = Delivery(publication)
        self._on_fan_out(delivery)
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
        if available != self._available.is_set():
            level = logging.INFO if available else logging.WARNING
            log.log(level, "broker %s", "available" if available else "unavailable", extra={"broker": self.broker.kind})
        if available:
            self._available.set()
        else:
            self._available.clear()
        self.metrics.broker_available.labels().set(1.0 if available else 0.0)

    def _start_resync(self, state: ChannelState, buffered: list[Publication]) -> None:
        state.generation += 1
        if state.buffer is not None:
            state.buffer.extend(buffered)
            return
        state.buffer = buffered
        self._spawn(self._resync(state), f"resync:{state.name}")

    async def _resync(self, state: ChannelState) -> None:
        """Re-read history after a possible live gap, then resume live delivery."""
        backoff = Backoff(first=0.1, most=5.0)
        while state.last is not None:
            origin = state.last
            try:
                history = await self.broker.history(state.name, origin.offset, self.replay_limit + 1)
            except BrokerError as exc:
                log.warning("resync history read failed", extra={"channel": state.name, "error": str(exc)})
                await asyncio.sleep(backoff.next())
                if state.buffer is not None and len(state.buffer) > self.pending_limit:
                    # Holding more would be unbounded; a reset is explicit.
                    state.buffer = []
                continue
            if self._channels.get(state.name) is not state:
                return
            held, state.buffer = state.buffer or [], None
            # Copies at or below the origin change nothing for the channel,
            # but may be what a subscriber started from an older read lacks.
            for publication in held:
                if publication.epoch == origin.epoch and publication.offset <= origin.offset:
                    self._redeliver(state, publication)
            last, steps = plan_repair(origin, history, held, replay_limit=self.replay_limit)
            outcome = "recovered"
            for step in steps:
                if isinstance(step, Reset):
                    outcome = "epoch_changed" if step.reason is ResetReason.EPOCH_CHANGED else "reset"
                    self._reset_all(state, step)
                else:
                    self._fan_out(state, step)
            state.last = last
            self.metrics.resyncs.labels(outcome).inc()
            return
        # Nobody had a position yet: held subscribes read history themselves,
        # because the generation changed; live delivery simply goes on.
        buffered, state.buffer = state.buffer or [], None
        for publication in buffered:
            self._fan_out(state, publication)

    def _reset_all(self, state: ChannelState, reset: Reset) -> None:
        state.last = reset.position
        state.forget(reset.position)
        for subscription in list(state.subscribers):
            if subscription.held is None:
                subscription.reset(reset.position, reset.reason)

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
