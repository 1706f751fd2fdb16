"""Channels without a stream (broker_adapters/empty.py), and the embedded broker keeping nothing for them."""

from __future__ import annotations

from broker_adapters.empty import empty_epoch, period_index
from broker_adapters.memory import MemoryBroker, MemoryOptions
from broker_adapters.types import EPOCH_PATTERN

DAY = 86_400_000.0


def test_the_epoch_is_stable_within_a_period_and_names_generation_channel_and_period() -> None:
    start = 1.7e12  # an instant, in ms since the Unix epoch
    epoch = empty_epoch("gen", "news", start, DAY)
    assert EPOCH_PATTERN.match(epoch) and len(epoch) == 16
    assert empty_epoch("gen", "news", start, DAY) == epoch
    assert period_index("news", start + DAY, DAY) == period_index("news", start, DAY) + 1
    assert empty_epoch("other", "news", start, DAY) != epoch
    assert empty_epoch("gen", "sport", start, DAY) != empty_epoch("gen", "sport", start + DAY, DAY)


def test_each_period_starts_once_and_channels_change_at_different_times() -> None:
    # Walking a day in minutes, each channel's epoch changes exactly once,
    # and the channels do not all change at the same minute.
    changes = {}
    for channel in ("a", "b", "c", "d", "e", "f", "g", "h"):
        epochs = [empty_epoch("gen", channel, minute * 60_000, DAY) for minute in range(24 * 60 + 1)]
        flips = [i for i in range(1, len(epochs)) if epochs[i] != epochs[i - 1]]
        assert len(flips) == 1
        changes[channel] = flips[0]
    assert len(set(changes.values())) > 1


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_reading_a_never_published_channel_keeps_nothing() -> None:
    broker = MemoryBroker(clock=Clock())
    for i in range(100):
        await broker.subscribe(f"c{i}")
        history = await broker.history(f"c{i}", None, 0)
        assert history.top.offset == 0 and history.complete
        assert (await broker.history(f"c{i}", 0, 10)).complete
        await broker.unsubscribe(f"c{i}")
    assert broker.stream_count == 0
    assert (broker.stats.streams_created, broker.stats.empty_reads) == (0, 200)


async def test_the_first_publication_continues_the_empty_position() -> None:
    clock = Clock()
    broker = MemoryBroker(MemoryOptions(meta_ttl=3600, history_ttl=60), clock=clock)
    empty = (await broker.history("news", None, 0)).top
    clock.now += 10
    first = await broker.publish("news", '"x"')
    assert (first.epoch, first.offset) == (empty.epoch, 1)
    resumed = await broker.history("news", empty.offset, 10)
    assert resumed.complete and [p.data for p in resumed.publications] == ['"x"']
    assert (broker.stream_count, broker.stats.streams_created) == (1, 1)


async def test_a_stream_forgotten_and_started_again_gets_another_epoch() -> None:
    clock = Clock()
    broker = MemoryBroker(MemoryOptions(meta_ttl=3600, history_ttl=60), clock=clock)
    old = await broker.publish("news", '"old"')
    clock.now += 3601
    broker.sweep()
    assert broker.stream_count == 0
    new = await broker.publish("news", '"new"')
    assert new.offset == 1 and new.epoch != old.epoch
    # A client still at the old position is told, never served the new stream as its continuation.
    assert (await broker.history("news", old.offset, 10)).top.epoch != old.epoch
