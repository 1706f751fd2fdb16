"""NATS-specific behaviour, against a real nats-server: what the shared suites cannot express.

Faults are real: the server is SIGKILLed and restarted, the stream deleted,
and a TCP proxy between adapter and server cut, while another client keeps
publishing.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Callable, Iterator

import nats
import pytest

from broker_adapters import Broker, BrokerUnavailable, open_broker
from broker_adapters.nats import _ErrorLogThrottle
from broker_adapters.types import encode_data

from .listener import Recorder, open_started
from .processes import free_port
from .servers import running
from .servers.nats_server import Server

_names = itertools.count()


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with running("nats") as instance:
        yield instance


@pytest.fixture
def name() -> str:
    return f"nats.c{next(_names)}"


@pytest.fixture
async def broker(server: Server) -> AsyncIterator[Broker]:
    broker = await open_started(server.url())
    yield broker
    await broker.close()


class Proxy:
    """A loopback TCP proxy whose connections can be cut, like a network partition."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.open = True
        self.refused = 0  # connections closed at once while cut
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.open:
            self.refused += 1
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        self.open = False
        for writer in self._writers:
            writer.close()
        self._writers.clear()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def _wait_until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"condition not met within {timeout}s")


async def test_native_publisher_following_the_docs_is_live_and_resumable(server: Server, name: str) -> None:
    listener = Recorder()
    broker = await open_started(server.url(), listener)
    try:
        await broker.subscribe(name)
        first = await broker.publish(name, encode_data("from fanline"))
        seq = server.raw_publish(name, b'{\n  "pretty": true\n}', event="note")
        server.raw_publish(name, b"not json")
        received = await listener.wait_for(3)
        assert [p.data for p in received] == ['"from fanline"', '{"pretty":true}', '"not json"']
        assert received[1].offset == seq and received[1].event == "note"
        assert {p.epoch for p in received} == {first.epoch}
        assert not listener.resyncs
        history = await broker.history(name, first.offset, 10)
        assert history.complete and [p.offset for p in history.publications] == [p.offset for p in received[1:]]
    finally:
        await broker.close()


async def test_native_publisher_without_fanline_prev_falls_back_conservatively(
    server: Server, broker: Broker, name: str
) -> None:
    nc = await nats.connect(server.address)
    try:
        js = nc.jetstream()
        first = (await js.publish(f"fanline.{name}", b"1")).seq
        await broker.publish(name + ".other", encode_data("interleaved"))
        second = (await js.publish(f"fanline.{name}", b"2")).seq
    finally:
        await nc.close()
    # The message at `first` is still retained, so nothing after it was removed.
    history = await broker.history(name, first, 10)
    assert history.complete and [p.offset for p in history.publications] == [second]
    # From before the channel's first message nothing proves completeness.
    assert not (await broker.history(name, 0, 10)).complete


async def test_a_position_only_fits_its_own_channel(broker: Broker, name: str) -> None:
    a = await broker.publish(name + ".a", encode_data(1))
    b = await broker.publish(name + ".b", encode_data(2))
    assert a.epoch != b.epoch
    assert (await broker.history(name + ".b", a.offset, 10)).top.epoch == b.epoch


async def test_concurrent_publishers_on_one_channel_keep_history_complete(server: Server, name: str) -> None:
    brokers = [await open_started(server.url()) for _ in range(3)]
    try:
        results = await asyncio.gather(
            *(b.publish(name, encode_data(f"{i}:{n}")) for n in range(10) for i, b in enumerate(brokers))
        )
        offsets = sorted(p.offset for p in results)
        history = await brokers[0].history(name, 0, 100)
        assert history.complete and [p.offset for p in history.publications] == offsets
        middle = await brokers[1].history(name, offsets[9], 100)
        assert middle.complete and [p.offset for p in middle.publications] == offsets[10:]
    finally:
        for b in brokers:
            await b.close()


async def test_start_fails_fast_when_nats_is_down() -> None:
    port = free_port()
    broker = open_broker(f"nats://127.0.0.1:{port}?connect_timeout=1")
    with pytest.raises(BrokerUnavailable) as failure:
        async with asyncio.timeout(10):
            await broker.start(Recorder())
    await broker.close()
    # Where, and the real cause, not the timeout that ended the attempt.
    assert f"NATS connection to 127.0.0.1:{port} failed: ConnectionRefusedError" in str(failure.value)


async def test_an_outage_logs_one_line_per_interval_not_per_attempt(
    server: Server, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = Proxy(server.port)
    await proxy.start()
    broker = await open_started(f"nats://127.0.0.1:{proxy.port}?reconnect_wait=0.1&timeout=2")
    try:
        caplog.set_level(logging.WARNING, logger="fanline.broker.nats")
        proxy.cut()
        # Many failed reconnect attempts, each reported by the client...
        await _wait_until(lambda: proxy.refused >= 5)
        errors = [r.__dict__ for r in caplog.records if r.getMessage() == "NATS connection error"]
        # ...and one line per kind of error (the cut, then the refusals); the
        # next comes after _ERROR_LOG_INTERVAL (30 s), with a count.
        kinds = [e["error"].partition(":")[0] for e in errors]
        assert len(kinds) == len(set(kinds)) < proxy.refused, kinds
        assert all(e["servers"] == f"127.0.0.1:{proxy.port}" for e in errors)
    finally:
        await broker.close()
        await proxy.close()


def test_error_log_throttle_counts_what_it_held_back() -> None:
    now = [0.0]
    throttle = _ErrorLogThrottle(30.0, clock=lambda: now[0])
    assert throttle.allow("ConnectionRefusedError") == 0
    assert throttle.allow("ConnectionRefusedError") is None
    assert throttle.allow("TimeoutError") == 0  # a new kind of error is told at once
    now[0] = 29.0
    assert throttle.allow("ConnectionRefusedError") is None
    now[0] = 30.0
    assert throttle.allow("ConnectionRefusedError") == 2


async def test_deleted_stream_while_subscribed_gives_a_new_epoch_live(server: Server, name: str) -> None:
    listener = Recorder()
    receiver = await open_started(server.url(), listener)
    sender = await open_started(server.url())
    try:
        await receiver.subscribe(name)
        before = await sender.publish(name, encode_data("before"))
        # Live delivery; or, if the connection dropped in between (seen
        # about once in ten full runs on a loaded machine), the resync the
        # adapter reports for it.
        await _wait_until(lambda: bool(listener.publications or listener.resyncs))
        server.lose_data()
        after = await sender.publish(name, encode_data("after"))  # recreates the stream
        assert after.epoch != before.epoch
        # The recreated stream republishes again, and the receiver learns the
        # new epoch (here from its health check) and asks for a resync.
        await receiver.ping()
        assert None in listener.resyncs
        again = await sender.publish(name, encode_data("again"))
        await _wait_until(lambda: any(p.position == again.position for p in listener.publications))
        # "after" may arrive before the receiver knows the new epoch; it is
        # then withheld (the resync reads it from history), never mislabelled.
        assert all(p.epoch == after.epoch for p in listener.publications[1:])
        history = await receiver.history(name, before.offset, 10)
        assert history.top.epoch == after.epoch
    finally:
        await receiver.close()
        await sender.close()


async def test_partition_is_reported_and_history_fills_the_gap(server: Server, name: str) -> None:
    proxy = Proxy(server.port)
    await proxy.start()
    listener = Recorder()
    receiver = await open_started(f"nats://127.0.0.1:{proxy.port}?reconnect_wait=0.2&timeout=2", listener)
    sender = await open_started(server.url())
    try:
        await receiver.subscribe(name)
        seen = await sender.publish(name, encode_data("seen"))
        await listener.wait_for(1)
        proxy.cut()
        await _wait_until(lambda: False in listener.availability)
        missed = [await sender.publish(name, encode_data(f"missed{i}")) for i in range(3)]
        proxy.open = True
        await _wait_until(lambda: listener.availability[-1] is True and None in listener.resyncs)
        # The resync the hub would do: history from the last delivered position.
        history = await receiver.history(name, seen.offset, 10)
        assert history.complete and [p.position for p in history.publications] == [p.position for p in missed]
        # Live delivery works again; its previous-sequence header shows the gap.
        after = await sender.publish(name, encode_data("after"))
        received = await listener.wait_for(2)
        assert received[-1].position == after.position
        assert [name] in listener.resyncs
    finally:
        await receiver.close()
        await sender.close()
        await proxy.close()


async def test_killed_server_comes_back_with_history_and_live_delivery(server: Server, name: str) -> None:
    listener = Recorder()
    broker = await open_started(server.url(reconnect_wait=0.2, timeout=2), listener)
    try:
        await broker.subscribe(name)
        before = [await broker.publish(name, encode_data(i)) for i in range(3)]
        await listener.wait_for(3)
        server.kill()
        with pytest.raises(BrokerUnavailable):
            await broker.ping()
        await _wait_until(lambda: False in listener.availability)
        server.restart()
        await _wait_until(lambda: listener.availability[-1] is True and None in listener.resyncs)
        after = None
        async with asyncio.timeout(20):
            while after is None:
                try:
                    after = await broker.publish(name, encode_data("after"))
                except BrokerUnavailable:
                    await asyncio.sleep(0.2)  # JetStream still recovering
        assert after.epoch == before[0].epoch
        history = await broker.history(name, 0, 10)
        assert history.complete and [p.offset for p in history.publications] == [
            *(p.offset for p in before),
            after.offset,
        ]
        received = await listener.wait_for(4)
        assert received[-1].position == after.position
    finally:
        await broker.close()
