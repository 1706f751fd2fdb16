"""The flush's one decision: which delivery skips the queue and is written at once."""

from __future__ import annotations

import asyncio

from broker_adapters.types import Publication
from node.connection import Flush
from node.hub import Delivery


def delivery(offset: int) -> Delivery:
    return Delivery(Publication("c", "e", offset, "{}"))


async def next_pass() -> None:
    await asyncio.sleep(0)
    await asyncio.sleep(0)


async def test_the_first_publication_of_a_quiet_pass_is_written_at_once() -> None:
    flush = Flush()
    first = delivery(1)
    flush.fanning_out(first)
    assert flush.direct is first


async def test_later_publications_of_the_same_pass_are_queued() -> None:
    flush = Flush()
    first, second = delivery(1), delivery(2)
    flush.fanning_out(first)
    flush.fanning_out(second)
    assert flush.direct is None
    await next_pass()
    assert flush.direct is None


async def test_after_a_burst_the_next_pass_queues_too_then_a_quiet_pass_writes_at_once_again() -> None:
    flush = Flush()
    for offset in (1, 2, 3):
        flush.fanning_out(delivery(offset))
    await next_pass()
    # The last pass carried a burst: this one queues even its first publication,
    # so that a sustained burst costs one write per connection per pass.
    flush.fanning_out(delivery(4))
    assert flush.direct is None
    flush.fanning_out(delivery(5))
    await next_pass()
    # Still a burst (two publications): queued again, not every other pass.
    flush.fanning_out(last := delivery(6))
    assert flush.direct is None
    await next_pass()
    flush.fanning_out(last := delivery(7))
    assert flush.direct is last


async def test_one_publication_per_pass_is_always_written_at_once() -> None:
    flush = Flush()
    for offset in range(1, 6):
        flush.fanning_out(current := delivery(offset))
        assert flush.direct is current
        await next_pass()
