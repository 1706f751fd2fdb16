"""Which topic incarnation an answer came from (broker_adapters/kafka_topic.py, Topic.confirm).

The broker is a stand-in here on purpose: what is tested is the decision,
and above all that a confirmation never rides on a metadata request that
left before the answer (issue 10: a request in flight when the broker
restarted named the old topic, and a record of the new one got its epoch).
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from broker_adapters.errors import BrokerUnavailable
from broker_adapters.kafka import KafkaOptions
from broker_adapters.kafka_topic import Layout, Topic
from broker_adapters.tasks import TaskSet

OLD, NEW = Layout(b"\x01" * 16, 4), Layout(b"\x02" * 16, 4)


def client(*conns: object) -> SimpleNamespace:
    return SimpleNamespace(_client=SimpleNamespace(_conns={i: c for i, c in enumerate(conns)}))


class Broker:
    """Answers metadata requests; ``layout`` is what a request that starts now would be told."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.requests = 0


def topic_on(broker: Broker) -> Topic:
    topic = Topic(KafkaOptions(), TaskSet(), asyncio.Event(), lambda layout, replaced: None)

    async def fetch() -> Layout:
        broker.requests += 1
        answer = broker.layout  # read when the request starts
        await asyncio.sleep(0)
        return answer

    topic._fetch = fetch  # type: ignore[method-assign]
    topic.client = client(object())  # type: ignore[assignment]
    return topic


async def test_unchanged_connections_need_no_request() -> None:
    broker = Broker(OLD)
    topic = topic_on(broker)
    await topic.fresh()
    producer = client(object())
    await topic.confirm("producer", producer, OLD, "publish")  # first answer: checked
    checked = broker.requests
    await topic.confirm("producer", producer, OLD, "publish")  # same sockets: same broker process
    assert broker.requests == checked


async def test_a_reconnected_client_is_checked_by_a_new_request() -> None:
    broker = Broker(OLD)
    topic = topic_on(broker)
    await topic.fresh()
    await topic.confirm("producer", client(object()), OLD, "publish")
    broker.layout = NEW  # the broker restarted empty and the topic came back under another id
    with pytest.raises(BrokerUnavailable):
        await topic.confirm("producer", client(object()), OLD, "publish")
    assert topic.layout == NEW


async def test_a_confirmation_does_not_join_a_request_already_in_flight() -> None:
    broker = Broker(OLD)
    topic = topic_on(broker)
    await topic.fresh()
    in_flight = asyncio.ensure_future(topic.refresh())  # left while the old topic existed
    await asyncio.sleep(0)
    broker.layout = NEW  # then the restart; our answer came from the new broker
    with pytest.raises(BrokerUnavailable):
        await topic.confirm("producer", client(object()), OLD, "publish")
    await in_flight


async def test_an_answer_partly_over_the_admin_client_is_checked_when_that_reconnected() -> None:
    """A history answer from the key index and a ListOffsets: only the admin client talked."""
    broker = Broker(OLD)
    topic = topic_on(broker)
    await topic.fresh()
    reader = client(object())
    await topic.confirm("reader", reader, OLD, "history read")
    broker.layout = NEW
    topic.client = client(object())  # type: ignore[assignment]  # the admin client reconnected to a new broker
    with pytest.raises(BrokerUnavailable):
        await topic.confirm("reader", reader, OLD, "history read")
