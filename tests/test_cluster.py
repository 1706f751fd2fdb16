"""Several nodes on one networked broker: cross-node fan-out and client failover.

Parametrized over every networked broker whose test server module exists, so
an adapter joins by adding ``tests/servers/<kind>_server.py``.  A server
class may offer ``raw_publish(channel, data)`` to publish the way a
non-Python application would; the raw-client test runs only where it does.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from broker_adapters.client import Client, ClientEvent, Disconnected, Publication, Reset
from broker_adapters.publisher import Publisher

from .clients import SSEClient, WSClient, publish
from .processes import NodeProcess
from .servers import available_kinds, running

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=available_kinds(include_memory=False))
def server(request: pytest.FixtureRequest) -> Iterator[Any]:
    with running(request.param) as instance:
        yield instance


@pytest.fixture(scope="module")
def survivor(server: Any) -> Iterator[NodeProcess]:
    """Node B: publishes, and takes over the clients of a killed node."""
    with NodeProcess(server.url()) as node:
        yield node


@pytest.fixture
def node_a(server: Any) -> Iterator[NodeProcess]:
    """Node A: where clients connect first; some tests kill it."""
    with NodeProcess(server.url()) as node:
        yield node


@contextlib.asynccontextmanager
async def publishing(url: str, channel: str, count: int, pause: float = 0.01) -> AsyncIterator[list[str]]:
    """Publish 0..count-1 through node ``url`` in the background; yields the ids so far."""
    ids: list[str] = []

    async def run() -> None:
        async with httpx.AsyncClient(timeout=10) as http:
            for i in range(count):
                response = await http.post(url + "/api/publish", json={"channel": channel, "data": i})
                response.raise_for_status()
                ids.append(response.json()["id"])
                await asyncio.sleep(pause)

    task = asyncio.create_task(run())
    try:
        yield ids
        async with asyncio.timeout(60):
            await task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_publications_from_another_node_and_from_the_broker_reach_a_client(
    server: Any, node_a: NodeProcess, survivor: NodeProcess, channel: str
) -> None:
    client = await WSClient.connect(node_a.ws_url)
    await client.subscribe(channel)
    via_node = await publish(survivor.url, channel, {"via": "node B"})
    async with Publisher(server.url()) as publisher:
        via_broker = (await publisher.publish(channel, {"via": "broker"}, event="note")).event_id
    first, second = await client.events(2)
    assert (first["id"], first["data"]) == (via_node, {"via": "node B"})
    assert (second["id"], second["data"], second["event"]) == (via_broker, {"via": "broker"}, "note")
    await client.close()


async def test_an_application_publishing_with_the_raw_client_reaches_live_and_resuming_clients(
    server: Any, node_a: NodeProcess, survivor: NodeProcess, channel: str
) -> None:
    raw_publish = getattr(server, "raw_publish", None)
    if raw_publish is None:
        pytest.skip(f"the {server.kind} test server offers no raw_publish")
    client = await WSClient.connect(node_a.ws_url)
    start = (await client.subscribe(channel))["id"]
    # Pretty-printed JSON and a payload that is not JSON at all: both keep
    # their place in the stream, on one line each.
    payloads = [b'{\n  "n": 1\n}', b"plain text", b"[2]"]
    for payload in payloads:
        await asyncio.to_thread(raw_publish, channel, payload)
    live = await client.events(3)
    assert [e["data"] for e in live] == [{"n": 1}, "plain text", [2]]
    await client.close()
    # The same publications come back from history, on the other node.
    again = await WSClient.connect(survivor.ws_url)
    reply = await again.subscribe(channel, since=start)
    assert reply["recovered"] is True and reply["replayed"] == 3
    replayed = await again.events(3)
    assert [(e["id"], e["data"]) for e in replayed] == [(e["id"], e["data"]) for e in live]
    await again.close()


async def test_websocket_client_fails_over_to_another_node_without_loss_or_duplicates(
    node_a: NodeProcess, survivor: NodeProcess, channel: str
) -> None:
    total = 120
    events: list[ClientEvent] = []
    # The Python client, given node A then node B (as a client configured with several nodes).
    async with Client([node_a.url, survivor.url], shuffle=False, backoff_base=0.05, on_event=events.append) as client:
        subscription = client.subscribe(channel)
        await subscription.wait_subscribed(10)
        received: list[Publication | Reset] = []
        async with publishing(survivor.url, channel, total) as ids:
            async with asyncio.timeout(60):
                async for item in subscription:
                    received.append(item)
                    if len(received) == 20:
                        await asyncio.to_thread(node_a.kill)
                    if len(received) == total:
                        break
        assert client.url == survivor.ws_url and subscription.last_subscribed is not None
        assert subscription.last_subscribed.recovered is True
    assert all(isinstance(item, Publication) for item in received)
    assert [item.data for item in received] == list(range(total))  # type: ignore[union-attr]
    assert [item.id for item in received] == ids
    assert [e.code for e in events if isinstance(e, Disconnected)] == [1006]


async def test_sse_client_fails_over_to_another_node_without_loss_or_duplicates(
    node_a: NodeProcess, survivor: NodeProcess, channel: str
) -> None:
    total = 120
    stream = await SSEClient.connect(node_a.url, [channel])
    assert (await stream.next_event()).event == "fanline.subscribed"
    received: list[Any] = []
    async with publishing(survivor.url, channel, total) as ids:
        received += [e.json() for e in await stream.events(20)]
        await asyncio.to_thread(node_a.kill)
        with contextlib.suppress(EOFError, TimeoutError, httpx.HTTPError):
            for _ in range(10_000):
                event = await stream.next_event(timeout=5)
                if event.event != "fanline.subscribed":
                    received.append(event.json())
        last_id = stream.last_event_id
        await stream.close()
        # As EventSource reconnects: same URL on another node, Last-Event-ID header.
        stream = await SSEClient.connect(survivor.url, [channel], last_event_id=last_id)
        hello = await stream.next_event()
        assert hello.json()["channels"][channel]["recovered"] is True
        received += [e.json() for e in await stream.events(total - len(received), timeout=20)]
    assert [e["type"] for e in received] == ["event"] * total
    assert [e["data"] for e in received] == list(range(total))
    assert [e["id"] for e in received] == ids
    await stream.close()


async def test_channels_a_client_only_names_store_nothing_and_an_empty_channel_resumes_elsewhere(
    server: Any, node_a: NodeProcess, survivor: NodeProcess, channel: str
) -> None:
    # Issue 13: a client subscribing to channels nobody publishes must not grow
    # the broker (live interest, such as NATS subscriptions, comes and goes).
    def stored() -> set[tuple[Any, ...]]:
        # What exists (keys, subjects, topics), not how far a log has grown:
        # the nodes' own announcements on the control channel append to it.
        return {fact[:2] for fact in server.state() if fact[0] != "subscriptions"}

    client = await WSClient.connect(node_a.ws_url)
    start = (await client.subscribe(channel))["id"]  # may create the data set's one generation key
    await client.close()
    before = await asyncio.to_thread(stored)
    for batch in range(4):  # each connection stays within its message burst
        client = await WSClient.connect(node_a.ws_url)
        for i in range(25):
            await client.subscribe(f"{channel}.never{batch}.{i}")
        await client.close()
    assert await asyncio.to_thread(stored) - before == set()
    assert node_a.metrics()["fanline_broker_empty_reads_total"] >= 101
    # The empty channel's first publications, on another node, continue the position the client holds.
    created = survivor.metrics()["fanline_broker_streams_created_total"]
    ids = [await publish(survivor.url, channel, i) for i in range(3)]
    again = await WSClient.connect(survivor.ws_url)
    reply = await again.subscribe(channel, since=start)
    assert reply["recovered"] is True and reply["replayed"] == 3
    assert [e["id"] for e in await again.events(3)] == ids
    await again.close()
    # Kafka keeps no per-channel state: a channel is only a record key.
    created = survivor.metrics()["fanline_broker_streams_created_total"] - created
    assert created == (0 if server.kind == "kafka" else 1)
