"""The hub, in-process on the embedded broker: subscribe, resume, live delivery and repair."""

from __future__ import annotations

import asyncio

import pytest

from broker_adapters.memory import MemoryBroker, MemoryOptions
from broker_adapters.types import Position, Publication
from node.hub import Delivery, Hub, Subscribed, Subscription
from node.metrics import Metrics
from node.resume import ResetReason


class Recorder:
    """A subscriber that records what it is sent: offsets for events, ("reset", reason) for resets."""

    def __init__(self) -> None:
        self.got: list[object] = []

    def push(self, subscription: Subscription, delivery: Delivery) -> None:
        self.got.append(delivery.publication.offset)

    def push_reset(self, subscription: Subscription, position: Position, reason: ResetReason) -> None:
        self.got.append(("reset", reason.value, position.offset))


async def started_hub(**options: object) -> tuple[Hub, MemoryBroker]:
    broker = MemoryBroker(MemoryOptions(history_size=50))
    hub = Hub(broker, metrics=Metrics(), replay_limit=20, **options)  # type: ignore[arg-type]
    await broker.start(hub)
    hub.on_availability(True)
    return hub, broker


async def subscribe(hub: Hub, recorder: Recorder, channel: str, since: Position | None = None) -> Subscribed:
    subscribed = hub.subscribe_now(recorder, channel, since) or await hub.subscribe(recorder, channel, since)
    hub.start_delivery(subscribed)
    return subscribed


async def publish(broker: MemoryBroker, channel: str, count: int) -> list[Publication]:
    return [await broker.publish(channel, str(i)) for i in range(count)]


async def test_a_resume_gets_exactly_what_it_missed_then_live_events() -> None:
    hub, broker = await started_hub()
    first = Recorder()
    start = (await subscribe(hub, first, "c")).plan.start
    await publish(broker, "c", 3)
    again = Recorder()
    subscribed = await subscribe(hub, again, "c", since=start)
    assert subscribed.plan.recovered is True and subscribed.plan.replayed == 3
    await publish(broker, "c", 1)
    assert again.got == first.got == [1, 2, 3, 4]
    await hub.close()


async def test_live_resumes_are_answered_from_the_window_without_a_read() -> None:
    hub, broker = await started_hub(resume_window=8)
    await subscribe(hub, Recorder(), "c")
    await publish(broker, "c", 5)
    state = hub._channels["c"]
    assert [p.offset for p in state.recent] == [1, 2, 3, 4, 5]
    late = Recorder()
    subscribed = hub.subscribe_now(late, "c", Position(state.base.epoch, 2))  # type: ignore[union-attr]
    assert subscribed is not None and subscribed.plan.replayed == 3
    hub.start_delivery(subscribed)
    assert late.got == [3, 4, 5]
    await hub.close()


async def test_a_resume_before_the_window_reads_the_broker() -> None:
    hub, broker = await started_hub(resume_window=2)
    head = await subscribe(hub, Recorder(), "c")
    await publish(broker, "c", 5)
    assert hub.subscribe_now(Recorder(), "c", head.plan.start) is None  # older than the window
    late = Recorder()
    await subscribe(hub, late, "c", since=head.plan.start)
    assert late.got == [1, 2, 3, 4, 5]
    await hub.close()


async def test_an_unrecoverable_resume_keeps_since_and_resets_first() -> None:
    hub, broker = await started_hub()
    await publish(broker, "c", 2)
    recorder = Recorder()
    subscribed = await subscribe(hub, recorder, "c", since=Position("gone", 7))
    assert subscribed.plan.start == Position("gone", 7) and subscribed.plan.recovered is False
    assert recorder.got == [("reset", "epoch_changed", 2)]
    await hub.close()


async def test_concurrent_subscribes_from_one_position_share_one_read() -> None:
    hub, broker = await started_hub(resume_window=0)
    await publish(broker, "c", 3)
    since = Position((await broker.history("c", None, 0)).top.epoch, 1)
    recorders = [Recorder() for _ in range(10)]
    await asyncio.gather(*(subscribe(hub, r, "c", since) for r in recorders))
    assert all(r.got == [2, 3] for r in recorders)
    counts = hub.metrics.subscribes
    assert counts.labels("read").value == 1 and counts.labels("shared_read").value == 9
    await hub.close()


async def test_a_live_gap_is_repaired_from_history() -> None:
    hub, broker = await started_hub()
    recorder = Recorder()
    await subscribe(hub, recorder, "c")
    await broker.unsubscribe("c")  # stop live delivery for a moment: publications 1-2 go unseen
    await publish(broker, "c", 2)
    await broker.subscribe("c")
    await publish(broker, "c", 1)  # offset 3 arrives live: 1 and 2 are missing, so the hub repairs
    for _ in range(100):
        if recorder.got == [1, 2, 3]:
            break
        await asyncio.sleep(0.01)
    assert recorder.got == [1, 2, 3]
    assert hub.metrics.resyncs.labels("recovered").value == 1
    await hub.close()


async def test_a_subscribe_waits_for_the_broker_then_gives_up() -> None:
    hub, _ = await started_hub(subscribe_wait=0.05)
    hub.on_availability(False)
    with pytest.raises(Exception) as raised:
        await hub.subscribe(Recorder(), "c", None)
    assert "cannot reach its broker" in str(raised.value)
    await hub.close()


async def test_concurrent_first_publishes_start_the_publisher_once() -> None:
    from broker_adapters.publisher import Publisher

    publisher = Publisher("memory://")
    starts = 0
    real_start = publisher._broker.start

    async def counting_start(listener: object) -> None:
        nonlocal starts
        starts += 1
        await asyncio.sleep(0.01)
        await real_start(listener)  # type: ignore[arg-type]

    publisher._broker.start = counting_start  # type: ignore[method-assign]
    await asyncio.gather(*(publisher.publish("c", i) for i in range(10)))
    assert starts == 1
    await publisher.close()


async def test_a_live_publication_behind_a_later_read_still_reaches_who_lacks_it() -> None:
    """A history read can be ahead of live delivery; the channel must not drop what one subscriber lacks."""
    hub, broker = await started_hub(resume_window=0)
    early, late = Recorder(), Recorder()
    first = await hub.subscribe(early, "c", None)  # reads the top: offset 0
    broker._subscribed.discard("c")  # live delivery lags: the next publication is not seen yet
    await broker.publish("c", "1")
    second = await hub.subscribe(late, "c", None)  # a later read: its top is 1, ahead of live
    hub.start_delivery(second)  # the channel learns position 1 from this read
    hub.start_delivery(first)
    broker._subscribed.add("c")
    publication = (await broker.history("c", 0, 10)).publications[0]
    hub.on_publication(publication)  # the lagging live copy of 1 arrives
    assert early.got == [1] and late.got == []
    await hub.close()
