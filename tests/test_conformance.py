"""One contract, every adapter: the same tests against each real broker.

These talk to the adapter API directly (no node), against real servers
started by the fixtures in tests/servers/.  An adapter joins by providing its
``tests/servers/<kind>_server.py``.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from broker_adapters import Broker
from broker_adapters.types import encode_data

from .listener import Recorder, open_started
from .servers import available_kinds, running

_names = itertools.count()


@pytest.fixture(scope="module", params=available_kinds())
def server(request: pytest.FixtureRequest) -> Iterator[Any]:
    with running(request.param) as instance:
        yield instance


@pytest.fixture
def name() -> str:
    return f"conf.c{next(_names)}"


@pytest.fixture
async def broker(server: Any) -> AsyncIterator[Broker]:
    broker = await open_started(server.url())
    yield broker
    await broker.close()


async def test_publications_get_growing_positions_in_one_epoch(broker: Broker, name: str) -> None:
    published = [await broker.publish(name, encode_data({"n": i})) for i in range(5)]
    assert len({p.epoch for p in published}) == 1
    offsets = [p.offset for p in published]
    assert offsets == sorted(offsets) and len(set(offsets)) == 5 and offsets[0] > 0
    if broker.contiguous_offsets:
        assert offsets == list(range(offsets[0], offsets[0] + 5))
    history = await broker.history(name, 0, 100)
    assert history.complete
    assert [(p.offset, p.data) for p in history.publications] == [(p.offset, p.data) for p in published]
    assert history.top == published[-1].position


async def test_history_since_a_position_and_limit(broker: Broker, name: str) -> None:
    published = [await broker.publish(name, encode_data(i), event="tick" if i % 2 else None) for i in range(6)]
    history = await broker.history(name, published[2].offset, 100)
    assert [p.data for p in history.publications] == ["3", "4", "5"]
    assert [p.event for p in history.publications] == ["tick", None, "tick"]
    limited = await broker.history(name, published[0].offset, 2)
    assert [p.data for p in limited.publications] == ["1", "2"]
    top_only = await broker.history(name, None, 0)
    assert top_only.top == published[-1].position and not top_only.publications


async def test_an_empty_channel_already_has_an_epoch(broker: Broker, name: str) -> None:
    empty = await broker.history(name, None, 0)
    assert empty.top.epoch and empty.top.offset == 0
    first = await broker.publish(name, encode_data("x"))
    assert first.epoch == empty.top.epoch
    resumed = await broker.history(name, 0, 10)
    assert resumed.complete and [p.data for p in resumed.publications] == ['"x"']


async def test_channels_are_independent_streams(broker: Broker, name: str) -> None:
    for i in range(3):
        await broker.publish(name + ".a", encode_data(f"a{i}"))
        await broker.publish(name + ".b", encode_data(f"b{i}"))
    a = await broker.history(name + ".a", 0, 100)
    b = await broker.history(name + ".b", 0, 100)
    assert [p.data for p in a.publications] == ['"a0"', '"a1"', '"a2"']
    assert [p.data for p in b.publications] == ['"b0"', '"b1"', '"b2"']


async def test_live_delivery_in_order_after_subscribe(server: Any, name: str) -> None:
    listener = Recorder()
    broker = await open_started(server.url(), listener)
    try:
        await broker.subscribe(name)
        published = [await broker.publish(name, encode_data(i)) for i in range(20)]
        received = await listener.wait_for(20)
        assert [p.position for p in received] == [p.position for p in published]
        assert all(p.channel == name for p in received)
        await broker.unsubscribe(name)
        await broker.publish(name, encode_data("after"))
        await asyncio.sleep(0.3)
        assert len(listener.publications) == 20
    finally:
        await broker.close()


async def test_one_nodes_publication_reaches_another_node(server: Any, name: str) -> None:
    if server.kind == "memory":
        pytest.skip("the embedded broker has one node by definition")
    listener = Recorder()
    receiver = await open_started(server.url(), listener)
    sender = await open_started(server.url())
    try:
        await receiver.subscribe(name)
        sent = await sender.publish(name, encode_data({"from": "sender"}))
        (received,) = await listener.wait_for(1)
        assert received.position == sent.position and received.data == '{"from":"sender"}'
    finally:
        await receiver.close()
        await sender.close()


async def test_trimmed_history_is_reported_incomplete(server: Any, name: str) -> None:
    broker = await open_started(server.url(history_size=5))
    try:
        published = [await broker.publish(name, encode_data(i)) for i in range(12)]
        history = await broker.history(name, published[1].offset, 100)
        assert not history.complete
        recent = await broker.history(name, published[-4].offset, 100)
        assert recent.complete and [p.data for p in recent.publications] == ["9", "10", "11"]
    finally:
        await broker.close()


async def test_expired_history_is_reported_incomplete(server: Any, name: str) -> None:
    broker = await open_started(server.url(history_ttl=1))
    try:
        first = await broker.publish(name, encode_data("old"))
        await asyncio.sleep(2.2)
        second = await broker.publish(name, encode_data("new"))
        history = await broker.history(name, first.offset - 1, 100)
        assert not history.complete
        assert (await broker.history(name, first.offset, 100)).complete
        assert second.epoch == first.epoch
    finally:
        await broker.close()


async def test_losing_the_brokers_data_starts_a_new_epoch(server: Any, name: str) -> None:
    if server.kind == "memory":
        pytest.skip("covered by restarting a node (tests/test_resume.py)")
    broker = await open_started(server.url())
    try:
        before = await broker.publish(name, encode_data("before"))
        server.lose_data()
        after = None
        async with asyncio.timeout(30):
            while after is None:
                try:
                    after = await broker.publish(name, encode_data("after"))
                except Exception:
                    await asyncio.sleep(0.2)
        assert after.epoch != before.epoch
        history = await broker.history(name, before.offset, 100)
        assert history.top.epoch == after.epoch
    finally:
        await broker.close()


async def test_a_reconnect_storm_of_history_reads_all_succeed(broker: Broker, name: str) -> None:
    # Thousands of clients resuming at once after a node died: every read is
    # answered (callers may wait for a pooled connection, never fail).
    published = [await broker.publish(name, encode_data(i)) for i in range(3)]
    histories = await asyncio.gather(*(broker.history(name, published[0].offset, 10) for _ in range(300)))
    assert all([p.data for p in h.publications] == ["1", "2"] for h in histories)


async def _held(server: Any, broker: Broker) -> set[tuple[Any, ...]]:
    """What the broker holds: asked of the real server; of the adapter itself for the embedded one."""
    await broker.ping()  # every earlier command of this adapter has reached the broker
    if server.kind == "memory":
        return {("streams", broker.stream_count)}  # type: ignore[attr-defined]
    facts: set[tuple[Any, ...]] = await asyncio.to_thread(server.state)
    return facts


async def test_never_published_channels_leave_nothing_on_the_broker(server: Any, broker: Broker, name: str) -> None:
    # Issue 13: clients naming channels must not grow the broker's state.
    await broker.history(name + ".first", None, 0)  # may create the data set's one generation key
    before = await _held(server, broker)

    async def touch(channel: str, resume: bool) -> None:
        await broker.subscribe(channel)
        assert (await broker.history(channel, None, 0)).top.offset >= 0
        if resume:
            assert not (await broker.history(channel, 0, 10)).publications
        await broker.unsubscribe(channel)

    channels = [f"{name}.never{i}" for i in range(1000)]
    for start in range(0, len(channels), 100):
        await asyncio.gather(*(touch(c, i % 10 == 0) for i, c in enumerate(channels[start : start + 100])))
    # NATS's /subsz monitor may count a just-unsubscribed subscription for a
    # moment (seen once in three clean runs): what is held must be gone soon.
    for _ in range(50):
        left = await _held(server, broker) - before
        if not left:
            break
        await asyncio.sleep(0.2)
    assert left == set()
    assert broker.stats.streams_created == 0 and broker.stats.empty_reads >= 1100


async def test_an_empty_channels_position_is_shared_and_its_first_publications_continue_it(
    server: Any, broker: Broker, name: str
) -> None:
    # Every node reports the same position for a channel without a stream, and
    # a client that subscribed there and resumes later gets every publication.
    others = [] if server.kind == "memory" else [await open_started(server.url()) for _ in range(2)]
    try:
        nodes = [broker, *others]
        tops = {(await node.history(name, None, 0)).top for node in nodes}
        assert len(tops) == 1
        (start,) = tops
        published = [await nodes[-1].publish(name, encode_data(i)) for i in range(3)]
        assert {p.epoch for p in published} == {start.epoch}
        for node in nodes:
            resumed = await node.history(name, start.offset, 10)
            assert resumed.complete and resumed.top == published[-1].position
            assert [p.position for p in resumed.publications] == [p.position for p in published]
        # Kafka keeps no per-channel state: a channel is only a record key.
        assert nodes[-1].stats.streams_created == (0 if server.kind == "kafka" else 1)
    finally:
        for other in others:
            await other.close()
