"""Holes in a partition's offsets: wait a little before believing one.

A Kafka partition's offsets need not be dense (transaction markers and
compaction leave holes), so a fetch that jumps from offset N to N+2 may be
right.  But a broker may also make a record visible *after* later ones: Tansu
0.6's memory engine does, under concurrent producers (tests show a consumer
reading offset N+1 while N appears a moment later).  A reader that moves on
past N never sees it, and an acknowledged publication is lost silently.

So a reader that meets a hole fetches again from it, for at most ``wait``
seconds, before it accepts the hole as real.  Real holes cost that much
latency once each; out-of-order visibility costs nothing more than the wait.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger("fanline.broker.kafka")

# Holes remembered at once; a reader meets very few, and forgetting one only
# means waiting for it again.
_REMEMBERED = 1024


class Holes:
    __slots__ = ("wait", "_clock", "_first", "accepted")

    def __init__(self, wait: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.wait = wait
        self._clock = clock
        # (partition, offset) -> when the hole at that offset was first met.
        self._first: dict[tuple[int, int], float] = {}
        #: Holes given up on as real, for metrics and tests.
        self.accepted = 0

    def wait_for(self, partition: int, offset: int) -> bool:
        """A record after ``offset`` came first: fetch again from ``offset`` (True), or accept the hole."""
        key = (partition, offset)
        now = self._clock()
        first = self._first.get(key)
        if first is None:
            if len(self._first) >= _REMEMBERED:
                self._first.clear()
            self._first[key] = now
            return self.wait > 0
        if now - first < self.wait:
            return True
        del self._first[key]
        self.accepted += 1
        log.info(
            "kafka: a hole in a partition's offsets taken as real",
            extra={"partition": partition, "offset": offset, "waited": round(now - first, 3)},
        )
        return False

    def filled(self, partition: int, offset: int) -> None:
        """The record at ``offset`` arrived after all."""
        self._first.pop((partition, offset), None)
