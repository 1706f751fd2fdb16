"""A rolling restart loses nothing: SIGTERM drains a node into its neighbours.

Two nodes share a real Redis.  Clients on node A are closed by A's paced
drain; each reconnects to node B with its last id and resumes, while a
publisher keeps publishing through node B the whole time.  The WebSocket
clients are the Python client (broker_adapters/client.py), given A then B;
the SSE clients behave as a browser's EventSource.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from broker_adapters.client import Client, ClientEvent, Disconnected, Draining, Publication

from .clients import SSEClient
from .processes import NodeProcess
from .servers import running

pytestmark = pytest.mark.slow

CLIENTS_PER_TRANSPORT = 10
EVENTS = 120


@pytest.fixture(scope="module")
def redis_server() -> Iterator[Any]:
    with running("redis") as server:
        yield server


async def _ws_client(a: NodeProcess, b: NodeProcess, channel: str, ready: asyncio.Event) -> tuple[list[int], list[Any]]:
    """The Python client, started on A: on A's drain it takes the hint and resumes on B."""
    received: list[int] = []
    events: list[ClientEvent] = []
    async with Client([a.url, b.url], shuffle=False, on_event=events.append) as client:
        subscription = client.subscribe(channel)
        await subscription.wait_subscribed(20)
        ready.set()
        async with asyncio.timeout(60):
            async for item in subscription:
                assert isinstance(item, Publication), item
                received.append(item.data)
                if item.data == EVENTS - 1:
                    break
        recovered = subscription.last_subscribed.recovered if subscription.last_subscribed else None
        now_on = client.url
    hint = [e.reconnect_after for e in events if isinstance(e, Draining)]
    gone = [(e.code, e.delay) for e in events if isinstance(e, Disconnected)]
    return received, [gone, hint, recovered, now_on == b.ws_url]


async def _sse_client(a: NodeProcess, b: NodeProcess, channel: str, ready: asyncio.Event) -> tuple[list[int], list[Any]]:
    """As a browser's EventSource: on end of stream, wait `retry`, reconnect with Last-Event-ID."""
    received: list[int] = []
    stream = await SSEClient.connect(a.url, [channel])
    await stream.next_event()
    ready.set()
    try:
        while True:
            event = await stream.next_event(timeout=30)
            received.append(event.json()["data"])
    except EOFError:
        pass
    retry, last = stream.retry, stream.last_event_id
    await stream.close()
    await asyncio.sleep((retry or 0) / 1000)
    stream = await SSEClient.connect(b.url, [channel], last_event_id=last)
    hello = (await stream.next_event()).json()["channels"][channel]
    while not received or received[-1] != EVENTS - 1:
        received.append((await stream.next_event(timeout=30)).json()["data"])
    await stream.close()
    return received, [retry, hello["recovered"]]


async def test_sigterm_drains_clients_to_another_node_without_loss(redis_server: Any, channel: str) -> None:
    a = NodeProcess(redis_server.url(), "--drain-window", "2").start()
    b = NodeProcess(redis_server.url()).start()
    try:
        ready = [asyncio.Event() for _ in range(2 * CLIENTS_PER_TRANSPORT)]
        tasks = [
            asyncio.create_task(_ws_client(a, b, channel, ready[i])) for i in range(CLIENTS_PER_TRANSPORT)
        ] + [
            asyncio.create_task(_sse_client(a, b, channel, ready[CLIENTS_PER_TRANSPORT + i]))
            for i in range(CLIENTS_PER_TRANSPORT)
        ]
        async with asyncio.timeout(20):
            await asyncio.gather(*(r.wait() for r in ready))

        async def publisher() -> None:
            async with httpx.AsyncClient(timeout=10) as http:
                for i in range(EVENTS):
                    response = await http.post(b.url + "/api/publish", json={"channel": channel, "data": i})
                    response.raise_for_status()
                    await asyncio.sleep(0.03)

        publishing = asyncio.create_task(publisher())
        await asyncio.sleep(0.5)
        started = time.monotonic()
        a.proc.send_signal(15)  # type: ignore[union-attr]
        exit_code = await asyncio.to_thread(a.proc.wait, 30)  # type: ignore[union-attr]
        elapsed = time.monotonic() - started
        await publishing
        async with asyncio.timeout(60):
            results = await asyncio.gather(*tasks)
        for received, notes in results:
            assert received == list(range(EVENTS)), notes
        ws_notes = [notes for _, notes in results[:CLIENTS_PER_TRANSPORT]]
        # One disconnection each: 1012 from A, after exactly the drain's hint; resumed on B, recovered.
        for gone, hint, recovered, on_b in ws_notes:
            assert gone == [(1012, hint[0])] and len(hint) == 1, (gone, hint)
            assert recovered is True and on_b, (recovered, on_b)
        sse_notes = [notes for _, notes in results[CLIENTS_PER_TRANSPORT:]]
        assert all(retry and recovered for retry, recovered in sse_notes), sse_notes
        assert exit_code in (0, -15)
        assert elapsed < 2 + 5 + 5, f"node A took {elapsed:.1f}s to exit"
    finally:
        a.stop()
        b.stop()
