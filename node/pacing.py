"""Closing connections gradually: the one pacing shared by drain and shed.

Closing many connections at once sends their clients at the other nodes in
one wave.  Spreading the closes evenly over a window, and giving each client a
random reconnect delay on top, keeps the reconnect load on the rest of the
cluster flat.  A draining node closes everyone this way; a shedding node
(rebalancing after a scale-out) closes only some.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

# Clients wait this long (ms, uniformly random) before reconnecting, on top of
# the pacing: a client closed at the same instant as another rarely comes
# back at the same instant.
RECONNECT_AFTER_MS = (250, 1250)


class Drainable(Protocol):
    def drain(self, reconnect_after_ms: int) -> None: ...


C = TypeVar("C", bound=Drainable)


def due_times(count: int, window: float) -> list[float]:
    """When (seconds from the start) the i-th of ``count`` closes is due: evenly over ``window``."""
    return [window * index / max(count, 1) for index in range(count)]


async def drain_paced(
    victims: Sequence[C],
    window: float,
    still_open: Callable[[C], bool],
    nobody_left: asyncio.Event | None = None,
) -> int:
    """Ask each victim to drain, spread evenly over ``window`` seconds; return how many were asked.

    ``still_open`` skips connections that ended (or started closing) while
    we waited for their turn.  ``nobody_left``, when given, ends the pacing
    as soon as it is set: a draining node whose clients all left by
    themselves has nothing left to wait for.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    asked = 0
    for connection, due in zip(victims, due_times(len(victims), window), strict=True):
        if nobody_left is not None and nobody_left.is_set():
            break
        if not still_open(connection):
            continue
        delay = started + due - loop.time()
        if delay > 0:
            if nobody_left is None:
                await asyncio.sleep(delay)
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await nobody_left.wait()
        if still_open(connection):
            connection.drain(random.randint(*RECONNECT_AFTER_MS))
            asked += 1
    return asked
