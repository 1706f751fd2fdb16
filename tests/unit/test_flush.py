"""The flush's one decision: which deliveries skip the queue and are written at once."""

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


async def test_the_first_publication_of_a_quiet_pass_is_written_at_once_for_every_connection() -> None:
    flush = Flush()
    first = delivery(1)
    # Asked once per connection: the same answer for all of them.
    assert [flush.writes_now(first) for _ in range(3)] == [True, True, True]


async def test_later_publications_of_the_same_pass_are_queued() -> None:
    flush = Flush()
    first, second = delivery(1), delivery(2)
    assert flush.writes_now(first)
    assert not flush.writes_now(second)
    assert not flush.writes_now(second)


async def test_after_a_burst_the_next_pass_queues_too_then_a_quiet_pass_writes_at_once_again() -> None:
    flush = Flush()
    assert flush.writes_now(delivery(1))
    assert not flush.writes_now(delivery(2))
    await next_pass()
    # The last pass carried a burst: this one queues even its first publication,
    # so that a sustained burst costs one write per connection per pass.
    assert not flush.writes_now(delivery(3))
    await next_pass()
    assert flush.writes_now(delivery(4))


async def test_one_publication_per_pass_is_always_written_at_once() -> None:
    flush = Flush()
    for offset in range(1, 6):
        assert flush.writes_now(delivery(offset))
        await next_pass()
