"""The node's /status and /shed endpoints, with real clients that must lose nothing.

Shedding closes some connections exactly as a drain does (``drain`` then 1012
on WebSocket, ``retry:`` and the end of the stream on SSE), while the node
stays ready; the clients reconnect, resume from their last id and get every
event published meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from broker_adapters.client import Client, ClientEvent, Disconnected, Draining, Publication
from node.errors import ClientError
from node.shed import choose_victims, parse_request

from .clients import SSEClient, WSClient
from .processes import NodeProcess

EVENTS = 60


@pytest.fixture(scope="module")
def node() -> Iterator[NodeProcess]:
    with NodeProcess("memory://?history_size=500", "--drain-window", "3") as started:
        yield started


def status(node: NodeProcess) -> dict[str, Any]:
    response = httpx.get(node.internal_url + "/status", timeout=5)
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


# -- pure parts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [({"count": "5"}, (5, 20.0)), ({"count": "0", "window": "2.5"}, (0, 2.5)), ({"count": "7", "window": "0"}, (7, 0.0))],
)
def test_shed_request_parsing(query: dict[str, str], expected: tuple[int, float]) -> None:
    parsed = parse_request(query, default_window=20.0)
    assert (parsed.count, parsed.window) == expected


@pytest.mark.parametrize(
    "query", [{}, {"count": "-1"}, {"count": "x"}, {"count": "1", "window": "nan"}, {"count": "1", "window": "7200"}]
)
def test_shed_request_refuses_nonsense(query: dict[str, str]) -> None:
    with pytest.raises(ClientError):
        parse_request(query, default_window=20.0)


def test_victims_are_distinct_and_skip_those_already_pending() -> None:
    connections = set(range(10))
    victims = choose_victims(connections, {0, 1, 2}, 5)
    assert len(set(victims)) == 5 and not set(victims) & {0, 1, 2}
    assert sorted(choose_victims(connections, {0, 1, 2}, 50)) == list(range(3, 10))


# -- against a node ----------------------------------------------------------------------------


async def test_status_reports_connections_by_transport(node: NodeProcess, channel: str) -> None:
    ws = [await WSClient.connect(node.ws_url) for _ in range(3)]
    for client in ws:
        await client.subscribe(channel)
    sse = [await SSEClient.connect(node.url, [channel, channel + "b"]) for _ in range(2)]
    for stream in sse:
        await stream.next_event()  # fanline.subscribed
    try:
        body = status(node)
        assert body["connections"] == {"ws": 3, "sse": 2, "total": 5}
        assert body["subscriptions"] == 3 + 2 * 2
        assert body["draining"] is False and body["shedding"] == 0
        assert body["ready"] is True and body["broker"] == {"kind": "memory", "available": True}
        assert body["node"] == f"node-{node.port}" and body["version"] and body["age_seconds"] >= 0
    finally:
        for client in ws:
            await client.close()
        for stream in sse:
            await stream.close()


def test_shed_refuses_bad_parameters(node: NodeProcess) -> None:
    response = httpx.post(node.internal_url + "/shed", params={"count": "many"}, timeout=5)
    assert response.status_code == 400 and response.json()["error"] == "invalid_message"
    # Not on the client port.
    assert httpx.post(node.url + "/shed", params={"count": "1"}, timeout=5).status_code == 404


async def _ws_client(node: NodeProcess, channel: str, ready: asyncio.Event) -> dict[str, Any]:
    """The Python client: a shed connection takes the hint, comes back (here to the same node) and resumes."""
    received: list[int] = []
    events: list[ClientEvent] = []
    async with Client(node.url, on_event=events.append) as client:
        subscription = client.subscribe(channel)
        await subscription.wait_subscribed(20)
        ready.set()
        async with asyncio.timeout(60):
            async for item in subscription:
                assert isinstance(item, Publication), item
                received.append(item.data)
                if item.data == EVENTS - 1:
                    break
        last = subscription.last_subscribed
    shed: dict[str, Any] = {}
    for event in events:
        if isinstance(event, Draining):
            shed["reconnect_after"] = event.reconnect_after
        elif isinstance(event, Disconnected):
            shed["code"], shed["delay"] = event.code, event.delay
            shed["recovered"] = last.recovered if last else None
    return {"received": received, **shed}


async def _sse_client(node: NodeProcess, channel: str, ready: asyncio.Event) -> dict[str, Any]:
    received: list[int] = []
    stream = await SSEClient.connect(node.url, [channel])
    await stream.next_event()
    ready.set()
    shed: dict[str, Any] = {}
    while not received or received[-1] != EVENTS - 1:
        try:
            event = await stream.next_event(timeout=30)
        except EOFError:
            # As EventSource does: wait `retry`, reconnect with Last-Event-ID.
            shed["retry"], last = stream.retry, stream.last_event_id
            await stream.close()
            await asyncio.sleep((stream.retry or 0) / 1000)
            stream = await SSEClient.connect(node.url, [channel], last_event_id=last)
            shed["recovered"] = (await stream.next_event()).json()["channels"][channel]["recovered"]
            continue
        received.append(event.json()["data"])
    await stream.close()
    return {"received": received, **shed}


async def test_shed_closes_n_connections_paced_and_nothing_is_lost(node: NodeProcess, channel: str) -> None:
    ready = [asyncio.Event() for _ in range(30)]
    tasks = [asyncio.create_task(_ws_client(node, channel, ready[i])) for i in range(20)]
    tasks += [asyncio.create_task(_sse_client(node, channel, ready[20 + i])) for i in range(10)]
    async with asyncio.timeout(20):
        await asyncio.gather(*(r.wait() for r in ready))

    async def publisher() -> None:
        async with httpx.AsyncClient(timeout=10) as http:
            for i in range(EVENTS):
                response = await http.post(node.url + "/api/publish", json={"channel": channel, "data": i})
                response.raise_for_status()
                await asyncio.sleep(0.04)

    publishing = asyncio.create_task(publisher())
    await asyncio.sleep(0.3)
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(node.internal_url + "/shed", params={"count": "12", "window": "1"})
        assert response.status_code == 200, response.text
        assert response.json() == {"requested": 12, "shedding": 12, "window": 1.0, "connections": 30}
        assert (await http.get(node.internal_url + "/status")).json()["shedding"] > 0
        # Shedding is not draining: the node stays ready and keeps accepting clients.
        assert (await http.get(node.internal_url + "/readyz")).status_code == 200
    await publishing
    async with asyncio.timeout(60):
        results = await asyncio.gather(*tasks)
    for result in results:
        assert result["received"] == list(range(EVENTS)), result
    shed = [r for r in results if "recovered" in r]
    assert len(shed) == 12, results
    for result in shed:
        assert result["recovered"] is True
        if "code" in result:  # WebSocket: 1012, after exactly the hint
            assert result["code"] == 1012 and result["delay"] == result["reconnect_after"] > 0, result
        else:
            assert result["retry"], result
    assert status(node)["shedding"] == 0


def test_a_draining_node_refuses_to_shed() -> None:
    with NodeProcess("memory://", "--drain-window", "1") as draining:
        assert httpx.post(draining.internal_url + "/drain", timeout=5).status_code == 200
        response = httpx.post(draining.internal_url + "/shed", params={"count": "1"}, timeout=5)
        assert response.status_code == 503 and response.json()["error"] == "draining"
        assert status(draining)["draining"] is True
