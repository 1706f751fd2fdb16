"""Heartbeats spread over the interval: one slice of the connections per tick, never all at once.

Queuing a heartbeat on every connection in one pass costs one write per
connection, all in that pass: about 15 µs each here, so 1,000 connections
stall every publication for 15 ms once per interval, and 50,000 for most of
a second (the likely cause of the peer benchmark's runs whose p99 was 5 ms
above the others).

So each connection belongs to one of ``slices`` buckets, and every tick
(``interval / slices`` seconds) the node pings one bucket and checks the one
it pinged ``timeout`` earlier.  A new connection joins a bucket the ticker
has just passed, so its first heartbeat comes about one interval after it
connected (between 0.9 and 1 interval: the last tenth spreads connections
that arrive in the same tick over several buckets).  Each connection then
gets a heartbeat every ``interval`` seconds, and a peer that does not answer
is closed between ``timeout`` and ``timeout`` plus one tick after the ping.
"""

from __future__ import annotations

import math
from typing import Generic, Protocol, TypeVar


class Sliced(Protocol):
    number: int
    heartbeat_slot: int


C = TypeVar("C", bound=Sliced)

# At most this many slices, and ticks no shorter than this (for the short
# intervals of tests): 25 s / 250 = a tick every 0.1 s.
MAX_SLICES = 250
MIN_TICK = 0.01


class HeartbeatSlices(Generic[C]):
    """The connections, in buckets by when they connected; :meth:`advance` says who is due at each tick."""

    __slots__ = ("slices", "tick", "check_lag", "_spread", "_buckets", "_next")

    def __init__(self, interval: float, timeout: float) -> None:
        self.slices = max(1, min(MAX_SLICES, int(interval / MIN_TICK)))
        #: Seconds between ticks.
        self.tick = interval / self.slices
        #: Ticks from pinging a bucket to checking it: the first tick at least ``timeout`` later.
        self.check_lag = max(1, math.ceil(timeout / self.tick - 1e-9))
        # New connections go into one of the last this-many buckets passed.
        self._spread = max(1, self.slices // 10)
        self._buckets: list[set[C]] = [set() for _ in range(self.slices)]
        self._next = 0

    def add(self, connection: C) -> None:
        slot = (self._next - 1 - connection.number % self._spread) % self.slices
        connection.heartbeat_slot = slot
        self._buckets[slot].add(connection)

    def discard(self, connection: C) -> None:
        self._buckets[connection.heartbeat_slot].discard(connection)

    def advance(self) -> tuple[list[C], list[C]]:
        """The next tick: (connections to ping now, connections whose ping is ``timeout`` old)."""
        index = self._next
        self._next = (index + 1) % self.slices
        return list(self._buckets[index]), list(self._buckets[(index - self.check_lag) % self.slices])
