"""Kafka-specific behaviour of the adapter, against a real Tansu broker.

The shared contract is in test_conformance.py; these cover what only Kafka
has: foreign producers that pick the partition themselves, several channels
sharing one partition, and a broker that restarts without its data under a
live subscription.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from aiokafka.partitioner import DefaultPartitioner

from broker_adapters import BrokerUnavailable, open_broker
from broker_adapters.kafka import KafkaBroker, partition_for
from broker_adapters.types import encode_data

from .listener import Recorder
from .servers import running
from .servers.kafka_server import Server

_names = itertools.count()


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with running("kafka") as instance:
        yield instance


@pytest.fixture
def name() -> str:
    return f"kafka.c{next(_names)}"


async def _open(url: str, listener: Recorder | None = None) -> KafkaBroker:
    broker = open_broker(url)
    assert isinstance(broker, KafkaBroker)
    await broker.start(listener or Recorder())
    return broker


@pytest.fixture
async def broker(server: Server) -> AsyncIterator[KafkaBroker]:
    broker = await _open(server.url())
    yield broker
    await broker.close()


def test_the_partition_is_the_one_kafkas_default_partitioner_picks() -> None:
    partitioner = DefaultPartitioner()
    for i in range(200):
        key = f"room:{i}.messages"
        for count in (1, 3, 16):
            assert partition_for(key, count) == partitioner(key.encode(), list(range(count)), [])


async def test_a_foreign_producer_reaches_live_and_history(server: Server, name: str) -> None:
    listener = Recorder()
    broker = await _open(server.url(), listener)
    try:
        await broker.subscribe(name)
        ours = await broker.publish(name, encode_data({"n": 1}))
        # Pretty-printed JSON, an event header, and a payload that is not JSON.
        await asyncio.to_thread(server.raw_publish, name, b'{\n  "n": 2\n}', "tick")
        await asyncio.to_thread(server.raw_publish, name, b"plain text")
        live = await listener.wait_for(3)
        assert [(p.data, p.event) for p in live] == [('{"n":1}', None), ('{"n":2}', "tick"), ('"plain text"', None)]
        assert live[0].position == ours.position
        assert len({p.epoch for p in live}) == 1 and [p.offset for p in live] == sorted({p.offset for p in live})
        history = await broker.history(name, 0, 10)
        assert history.complete and list(history.publications) == live
        assert history.top == live[-1].position
    finally:
        await broker.close()


async def test_channels_sharing_a_partition_stay_separate(server: Server) -> None:
    broker = await _open(server.url(partitions=1, topic="shared"))
    try:
        a, b = f"share.a{next(_names)}", f"share.b{next(_names)}"
        for i in range(30):
            await broker.publish(a if i % 3 else b, encode_data(i))
        first_a = (await broker.history(a, 0, 100)).publications
        assert [p.data for p in first_a] == [str(i) for i in range(30) if i % 3]
        # Resuming from the middle skips the other channel's offsets too.
        middle = first_a[9]
        rest = await broker.history(a, middle.offset, 5)
        assert [p.data for p in rest.publications] == [p.data for p in first_a[10:15]]
        assert rest.complete and rest.top == first_a[-1].position
        # A position that was never issued beyond the top is reported as such.
        ahead = await broker.history(b, first_a[-1].offset + 50, 10)
        assert ahead.top.offset < first_a[-1].offset + 50
    finally:
        await broker.close()


async def test_a_broker_restart_without_data_is_an_explicit_resync_in_a_new_epoch(name: str) -> None:
    server = Server()
    server.start()
    listener = Recorder()
    try:
        broker = await _open(server.url(timeout=2, check_interval=0.2), listener)
        try:
            await broker.subscribe(name)
            before = await broker.publish(name, encode_data("before"))
            await listener.wait_for(1)
            server.kill()
            started = time.monotonic()
            with pytest.raises(BrokerUnavailable):
                await broker.publish(name, encode_data("while down"))
            assert time.monotonic() - started < 10  # reported, not hung
            with pytest.raises(BrokerUnavailable):
                await broker.ping()
            await asyncio.to_thread(server.restart)

            for _ in range(400):  # at most 20 s
                if listener.resyncs and listener.availability[-1] is True:
                    break
                await asyncio.sleep(0.05)
            assert False in listener.availability
            assert listener.resyncs[-1] is None  # every channel re-reads history
            await broker.ping()

            after = await broker.publish(name, encode_data("after"))
            assert after.epoch != before.epoch
            received = await listener.wait_for(2)
            assert received[-1].position == after.position
            assert all(p.epoch == before.epoch for p in received[:-1])
            history = await broker.history(name, before.offset, 10)
            assert history.top.epoch == after.epoch
        finally:
            await broker.close()
    finally:
        server.stop()
