"""The broker dies under a running node: the node must say so, and lose nothing silently.

Parametrized over every networked broker whose test server module exists.
The broker process is really SIGKILLed and restarted on the same port.

What a broker restart means for resuming clients depends on whether the
broker keeps its data across a crash.  A server class says so with a
``restart_keeps_data`` attribute; without one, the defaults below apply:

- redis: our test Redis runs with ``appendfsync always``, so every
  acknowledged publication survives and clients get every event exactly once;
- nats: JetStream file storage survives a restart the same way;
- kafka: the test broker keeps topics in memory, so a restart is a new
  stream: the correct outcome is an explicit ``reset`` with ``epoch_changed``.

The clusters (redis_cluster, nats_cluster) are restarted whole here and keep
their data; they run with ``make test-long``.  Losing one member of a cluster
mid-stream is tests/test_broker_clusters.py, part of ``make test``.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets

from broker_adapters import BrokerError, Position, open_broker
from broker_adapters.base import NullListener
from broker_adapters.publisher import Publisher

from .clients import WSClient
from .processes import NodeProcess, http_status, wait_for
from .servers import kind_params, running

pytestmark = pytest.mark.slow

RESTART_KEEPS_DATA = {"redis": True, "nats": True, "kafka": False}


@pytest.fixture(scope="module", params=kind_params(include_memory=False, long_clusters=True))
def server(request: pytest.FixtureRequest) -> Iterator[Any]:
    with running(request.param) as instance:
        yield instance


@pytest.fixture(scope="module")
def node(server: Any) -> Iterator[NodeProcess]:
    with NodeProcess(server.url()) as process:
        yield process


def _restart_keeps_data(server: Any) -> bool:
    return bool(getattr(server, "restart_keeps_data", RESTART_KEEPS_DATA.get(server.kind, True)))


async def _wait_ready(node: NodeProcess, status: int, timeout: float) -> None:
    await asyncio.to_thread(
        wait_for, lambda: http_status(node.url + "/readyz", timeout=3) == status, timeout, 0.1, f"/readyz {status}"
    )


async def test_readiness_and_publishing_follow_the_broker(server: Any, node: NodeProcess, channel: str) -> None:
    await _wait_ready(node, 200, 40)
    await asyncio.to_thread(server.kill)
    try:
        await _wait_ready(node, 503, 20)
        # A node that cannot serve takes no clients (issue 10, the start-up
        # window): the handshake is refused, with a hint when to come back.
        async with httpx.AsyncClient(timeout=20) as http:
            refused = await http.get(node.url + "/sse", params={"channel": channel})
            assert refused.status_code == 503 and refused.json()["error"] == "broker_unavailable"
            assert refused.headers.get("retry-after")
        with pytest.raises(websockets.InvalidStatus) as handshake:
            await websockets.connect(node.ws_url, open_timeout=10)
        assert handshake.value.response.status_code == 503
        async with httpx.AsyncClient(timeout=20) as http:
            for i in range(3):
                response = await http.post(node.url + "/api/publish", json={"channel": channel, "data": i})
                # Never a false 200: nothing can have been stored.
                assert response.status_code == 503
                assert response.json()["error"] == "broker_unavailable"
                assert response.headers.get("retry-after")
    finally:
        await asyncio.to_thread(server.restart)
    await _wait_ready(node, 200, 40)
    # Ready again means serving again: a subscriber gets what is published.
    client = await WSClient.connect(node.ws_url)
    await client.subscribe(channel)
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(node.url + "/api/publish", json={"channel": channel, "data": "back"})
        assert response.status_code == 200
    (event,) = await client.events(1)
    assert (event["id"], event["data"]) == (response.json()["id"], "back")
    await client.close()


async def _publish_retrying(publisher: Publisher, channel: str, data: object, timeout: float = 40) -> Position:
    """Publish as an application would right after a broker restart: retry until accepted."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                return await publisher.publish(channel, data)
            except BrokerError:
                await asyncio.sleep(0.1)


async def _stream_truth(url: str, channel: str, since: Position) -> tuple[Position, list[tuple[str, Any]]]:
    """What the broker holds for the channel: its top and every (id, data) after ``since``."""
    broker = open_broker(url)
    await broker.start(NullListener())
    try:
        history = await broker.history(channel, since.offset if since.epoch else 0, 1000)
        if history.top.epoch != since.epoch:
            history = await broker.history(channel, 0, 1000)
        assert history.complete
        return history.top, [(p.position.event_id, json.loads(p.data)) for p in history.publications]
    finally:
        await broker.close()


async def test_no_silent_gap_across_a_broker_restart(server: Any, node: NodeProcess, channel: str) -> None:
    # Ready means able to subscribe, even right after another test's outage.
    await _wait_ready(node, 200, 40)
    client = await WSClient.connect(node.ws_url)
    start = Position.parse((await client.subscribe(channel))["id"])
    async with Publisher(server.url()) as publisher:
        for i in range(3):
            await publisher.publish(channel, ["before", i])
        received = await client.events(3)

        # The node stalls (as in a long GC pause or a starved VM) across the
        # broker's crash and restart, so the "early" publications below are
        # certainly made before its live connection is back: they can reach
        # the client only through the resync from history.
        assert node.proc is not None
        node.proc.send_signal(signal.SIGSTOP)
        try:
            await asyncio.to_thread(server.kill)
            await asyncio.to_thread(server.restart)
            for i in range(5):
                await _publish_retrying(publisher, channel, ["early", i])
        finally:
            node.proc.send_signal(signal.SIGCONT)
        await _wait_ready(node, 200, 40)
        for i in range(5):
            final = await _publish_retrying(publisher, channel, ["after", i])

    def caught_up() -> bool:
        # The last publication arrived, or a reset already moved past it
        # (a repair that ran after it was published covers it too).
        if not received:
            return False
        last = received[-1]
        if last["type"] == "reset":
            at = Position.parse(last["id"])
            return at.epoch == final.epoch and at.offset >= final.offset
        return bool(last.get("data") == ["after", 4])

    try:
        async with asyncio.timeout(30):
            while not caught_up():
                received += await client.events(1, timeout=30)
    except TimeoutError:
        raise AssertionError(f"the client stopped receiving; it got {received}") from None
    finally:
        await client.close()

    resets = [m for m in received if m["type"] == "reset"]
    if _restart_keeps_data(server):
        # The stream survived: every event exactly once, in order, no reset.
        assert resets == []
        top, truth = await _stream_truth(server.url(), channel, start)
        assert top.epoch == start.epoch
        assert [(m["id"], m["data"]) for m in received] == truth
        data = [m["data"] for m in received]
        assert data == [["before", i] for i in range(3)] + [["early", i] for i in range(5)] + [["after", i] for i in range(5)]
    else:
        # The stream was lost: one explicit reset to the new epoch, then the
        # new stream from that point exactly once, in order.
        assert [m["reason"] for m in resets] == ["epoch_changed"]
        cut = received.index(resets[0])
        assert all(m["type"] == "event" for m in received[:cut])
        reset_at = Position.parse(resets[0]["id"])
        assert reset_at.epoch != start.epoch
        _, truth = await _stream_truth(server.url(), channel, Position(reset_at.epoch, 0))
        after_reset = [(i, d) for i, d in truth if Position.parse(i).offset > reset_at.offset]
        assert [(m["id"], m["data"]) for m in received[cut + 1 :]] == after_reset
