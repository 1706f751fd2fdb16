"""The embedded broker: history and fan-out inside one node process.

It is the default, for development and single-node deployments.  It keeps
the same contract as the networked brokers (positions, bounded history,
epochs), so clients behave identically; but its state dies with the process,
and a restarted node starts every channel in a new epoch, which resuming
clients see as an explicit reset.

A channel's stream exists from its first publication until it has been idle
for ``meta_ttl``; reading or subscribing to a channel keeps nothing for it,
and a channel without a stream reports the epoch its first publication will
get (:mod:`broker_adapters.empty`).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice

from .base import Broker, BrokerListener, NullListener
from .empty import empty_epoch
from .memory_presence import MemoryPresence
from .options import parse_options
from .presence import PresenceSettings
from .tasks import TaskSet
from .types import History, Position, Publication


@dataclass(frozen=True, slots=True)
class MemoryOptions:
    history_size: int = 1000
    history_ttl: float = 600.0  # seconds
    # A channel's epoch and offset outlive its history by this long, so a
    # client that returns after the history expired gets "trimmed", not a
    # new epoch; after that the stream is forgotten to bound memory.
    meta_ttl: float = 86400.0  # seconds

    def __post_init__(self) -> None:
        if self.history_size < 0 or self.history_ttl <= 0 or self.meta_ttl <= 0:
            raise ValueError("history_size must be >= 0, history_ttl and meta_ttl > 0")

    @property
    def retention(self) -> float:
        """How long an idle stream is kept: at least as long as its history."""
        return max(self.meta_ttl, self.history_ttl)


@dataclass(slots=True)
class _Stream:
    epoch: str
    offset: int = 0
    # (monotonic append time, publication), oldest first.
    items: deque[tuple[float, Publication]] = field(default_factory=deque)
    touched: float = 0.0


class MemoryBroker(Broker):
    """History and fan-out in this process, for one node; see the module docstring."""

    kind = "memory"
    contiguous_offsets = True

    def __init__(self, options: MemoryOptions | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.options = options or MemoryOptions()
        self._clock = clock
        # This process's data set: a restart is a new one.
        self._generation = secrets.token_hex(8)
        self._streams: dict[str, _Stream] = {}
        self._subscribed: set[str] = set()
        self._listener: BrokerListener = NullListener()
        self._tasks = TaskSet()

    @property
    def stream_count(self) -> int:
        """Channels whose stream this broker holds (published, not yet forgotten)."""
        return len(self._streams)

    async def start(self, listener: BrokerListener) -> None:
        self._listener = listener
        if not self._tasks:
            self._tasks.spawn(self._sweep_forever(), "memory-broker-sweep")

    async def close(self) -> None:
        await self._tasks.cancel_all()
        self._listener = NullListener()

    def _epoch(self, channel: str) -> str:
        """The epoch a stream created now would have (and an empty channel reports)."""
        return empty_epoch(self._generation, channel, self._clock() * 1000, self.options.retention * 1000)

    def _existing(self, channel: str) -> _Stream | None:
        stream = self._streams.get(channel)
        if stream is not None:
            now = self._clock()
            stream.touched = now
            self._expire(stream, now)
        return stream

    def _expire(self, stream: _Stream, now: float) -> None:
        horizon = now - self.options.history_ttl
        items = stream.items
        while items and items[0][0] < horizon:
            items.popleft()

    async def publish(self, channel: str, data: str, *, event: str | None = None) -> Publication:
        stream = self._existing(channel)
        if stream is None:
            stream = self._streams[channel] = _Stream(epoch=self._epoch(channel), touched=self._clock())
            self.stats.streams_created += 1
        stream.offset += 1
        publication = Publication(
            channel=channel,
            epoch=stream.epoch,
            offset=stream.offset,
            data=data,
            event=event,
            time_ms=int(time.time() * 1000),
        )
        if self.options.history_size:
            stream.items.append((stream.touched, publication))
            if len(stream.items) > self.options.history_size:
                stream.items.popleft()
        if channel in self._subscribed:
            self._listener.on_publication(publication)
        return publication

    async def history(self, channel: str, since: int | None, limit: int) -> History:
        stream = self._existing(channel)
        if stream is None:
            self.stats.empty_reads += 1
            return History(top=Position(self._epoch(channel), 0), complete=since is None or since == 0)
        top = Position(stream.epoch, stream.offset)
        if since is None or since >= stream.offset:
            return History(top=top, publications=(), complete=since is None or since == stream.offset)
        first_retained = stream.items[0][1].offset if stream.items else stream.offset + 1
        complete = since >= first_retained - 1
        # Offsets are consecutive, so the first wanted item is found by index.
        start = max(0, since + 1 - first_retained)
        publications = [pub for _, pub in islice(stream.items, start, start + max(limit, 0))]
        return History(top=top, publications=publications, complete=complete)

    async def subscribe(self, channel: str) -> None:
        self._subscribed.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._subscribed.discard(channel)

    async def ping(self) -> None:
        return None

    def presence(self, settings: PresenceSettings) -> MemoryPresence:
        return MemoryPresence(settings, self._clock)

    async def _sweep_forever(self) -> None:
        interval = min(60.0, self.options.history_ttl)
        while True:
            await asyncio.sleep(interval)
            self.sweep()

    def sweep(self) -> None:
        """Expire old history and forget streams idle for longer than ``meta_ttl``."""
        now = self._clock()
        for channel, stream in list(self._streams.items()):
            self._expire(stream, now)
            idle = now - stream.touched > self.options.retention
            if idle and not stream.items and channel not in self._subscribed:
                del self._streams[channel]


def from_url(url: str) -> MemoryBroker:
    """``memory://?history_size=1000&history_ttl=600&meta_ttl=86400``."""
    return MemoryBroker(parse_options(url, MemoryOptions))
