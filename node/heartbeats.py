"""Heartbeats spread over the interval: one slice of the connections per tick, never all at once.

Queuing a heartbeat on every connection in one pass costs one write per
connection, all in that pass: about 15 µs each here, so 1,000 connections
stall every publication for 15 ms once per interval, and 50,000 for most of
a second (the likely cause of the peer benchmark's runs whose p99 was 5 ms
above the others).

So each connection belongs to one of ``slices`` buckets, by its number, and
every tick (``interval / slices`` seconds) the node pings one bucket and
checks the one it pinged ``timeout`` earlier.  Each connection still gets a
heartbeat every ``interval`` seconds (its first within ``interval`` of
connecting), and a peer that does not answer is closed between ``timeout``
and ``timeout`` plus one tick after the ping.
"""

from __future__ import annotations

import math
from typing import Generic, Protocol, TypeVar


class Numbered(Protocol):
    @property
    def number(self) -> int: ...


C = TypeVar("C", bound=Numbered)

# At most this many slices, and ticks no shorter than this (for the short
# intervals of tests): 25 s / 250 = a tick every 0.1 s.
MAX_SLICES = 250
MIN_TICK = 0.01


class HeartbeatSlices(Generic[C]):
    """The connections, in buckets by number; :meth:`advance` says who is due at each tick."""

    __slots__ = ("slices", "tick", "check_lag", "_buckets", "_next")

    def __init__(self, interval: float, timeout: float) -> None:
        self.slices = max(1, min(MAX_SLICES, int(interval / MIN_TICK)))
        #: Seconds between ticks.
        self.tick = interval / self.slices
        #: Ticks from pinging a bucket to checking it: the first tick at least ``timeout`` later.
        self.check_lag = max(1, math.ceil(timeout / self.tick - 1e-9))
        self._buckets: list[set[C]] = [set() for _ in range(self.slices)]
        self._next = 0

    def add(self, connection: C) -> None:
        self._buckets[connection.number % self.slices].add(connection)

    def discard(self, connection: C) -> None:
        self._buckets[connection.number % self.slices].discard(connection)

    def advance(self) -> tuple[list[C], list[C]]:
        """The next tick: (connections to ping now, connections whose ping is ``timeout`` old)."""
        index = self._next
        self._next = (index + 1) % self.slices
        return list(self._buckets[index]), list(self._buckets[(index - self.check_lag) % self.slices])
