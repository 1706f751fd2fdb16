"""A rolling restart loses nothing: SIGTERM drains a node into its neighbours.

Two nodes share a real Redis.  Clients on node A are closed by A's paced
drain; each reconnects to node B with its last id and resumes, while a
publisher keeps publishing through node B the whole time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets

from .clients import SSEClient, WSClient
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
    """Follow the protocol: on 1012, wait reconnect_after, then resume on another node."""
    received: list[int] = []
    notes: list[Any] = []
    client = await WSClient.connect(a.ws_url)
    last = (await client.subscribe(channel))["id"]
    ready.set()
    reconnect_after = None
    try:
        while True:
            message = await client.recv(timeout=30)
            if message["type"] == "event":
                received.append(message["data"])
                last = message["id"]
            elif message["type"] == "drain":
                reconnect_after = message["reconnect_after"]
    except websockets.ConnectionClosed as closed:
        notes.append(closed.rcvd.code if closed.rcvd else None)
    notes.append(reconnect_after)
    await asyncio.sleep((reconnect_after or 0) / 1000)
    client = await WSClient.connect(b.ws_url)
    reply = await client.subscribe(channel, since=last)
    notes.append(reply["recovered"])
    while not received or received[-1] != EVENTS - 1:
        message = await client.recv(timeout=30)
        if message["type"] == "event":
            received.append(message["data"])
    await client.close()
    return received, notes


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
        assert all(code == 1012 and hint and recovered for code, hint, recovered in ws_notes), ws_notes
        sse_notes = [notes for _, notes in results[CLIENTS_PER_TRANSPORT:]]
        assert all(retry and recovered for retry, recovered in sse_notes), sse_notes
        assert exit_code in (0, -15)
        assert elapsed < 2 + 5 + 5, f"node A took {elapsed:.1f}s to exit"
    finally:
        a.stop()
        b.stop()
