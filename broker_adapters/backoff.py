"""Jittered exponential backoff, bounded: how a loop waits between failed attempts.

A fleet of nodes that lost the same broker must not retry in lockstep, and a
broker that stays away must still be tried every few seconds.  Each wait is
the previous one times ``factor``, capped at ``most``, and spread by
±``jitter`` (a fraction); :meth:`Backoff.reset` after a success starts again
from ``first``.  :func:`wait_until_set` lets a waiting loop be cut short,
for when something else learns that the broker answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(slots=True)
class Backoff:
    first: float = 0.1
    most: float = 5.0
    factor: float = 2.0
    jitter: float = 0.5
    uniform: Callable[[float, float], float] = random.uniform
    _delay: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.first <= self.most or self.factor < 1 or not 0 <= self.jitter < 1:
            raise ValueError("backoff needs 0 < first <= most, factor >= 1 and 0 <= jitter < 1")
        self._delay = self.first

    def next(self) -> float:
        """The wait before the next attempt; the one after it is longer, up to ``most``."""
        wait = self._delay * self.uniform(1 - self.jitter, 1 + self.jitter)
        self._delay = min(self._delay * self.factor, self.most)
        return wait

    def reset(self) -> None:
        self._delay = self.first


async def wait_until_set(event: asyncio.Event, seconds: float) -> bool:
    """Wait up to ``seconds`` for ``event``; whether it was set.  Clearing it is the caller's."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
    return event.is_set()
