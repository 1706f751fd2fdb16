"""Presence and the server API across a real 3-node cluster, on each networked broker.

Three real node processes share one real broker (Kafka keeps presence in a
Redis beside it, ``presence_store``).  Clients are real WebSocket clients;
one of them is a separate process killed with SIGKILL, and one node is
killed with SIGKILL too.  Waits are bounded polls, never timed assertions.
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import jwt
import pytest
import websockets

from .clients import WSClient
from .processes import NodeProcess
from .servers import running, server_class

SECRET = "presence-test-secret-of-at-least-32-bytes"
TTL = 2.0
_rooms = itertools.count()

pytestmark = pytest.mark.slow


def token(user: str, **claims: Any) -> str:
    return jwt.encode({"sub": user, "exp": time.time() + 600, **claims}, SECRET, algorithm="HS256")


KINDS = [k for k in ("redis", "nats", "kafka") if server_class(k) is not None]


@pytest.fixture(scope="module", params=KINDS)
def cluster(request: pytest.FixtureRequest) -> Iterator[list[NodeProcess]]:
    kind = request.param
    with running(kind) as server:
        extra: list[str] = []
        side = None
        if kind == "kafka":
            side = running("redis")
            extra = ["--presence-store", side.__enter__().url()]
        flags = [
            "--presence-namespaces", "chat", "--presence-ttl", str(TTL), "--presence-refresh", "0.5",
            "--announce-interval", "0.5", "--jwt-secret", SECRET, "--channel-rules", "*=subscribe:users",
            "--stream-check-interval", "0", *extra,
        ]
        nodes = [NodeProcess(server.url(), *flags) for _ in range(3)]
        try:
            with ThreadPoolExecutor(3) as pool:  # three starts at once: a third of the wait
                list(pool.map(lambda node: node.start(), nodes))
            yield nodes
        finally:
            for node in nodes:
                node.stop()
            if side is not None:
                side.__exit__(None, None, None)


async def connect(node: NodeProcess, user: str, **claims: Any) -> WSClient:
    return await WSClient.connect(node.ws_url, additional_headers={"Authorization": f"Bearer {token(user, **claims)}"})


# join and leave messages that arrived while a test waited for something else, per client
_events: dict[int, list[dict[str, Any]]] = {}


async def next_of(client: WSClient, kinds: tuple[str, ...]) -> dict[str, Any]:
    """The next message of one of ``kinds``; join/leave met on the way are kept for :func:`next_event`."""
    while True:
        message = await client.recv(timeout=10)
        if message["type"] in kinds:
            return message
        if message["type"] in ("join", "leave"):
            _events.setdefault(id(client), []).append(message)
        elif message["type"] != "heartbeat":
            raise AssertionError(f"expected {kinds}, got {message}")


async def next_event(client: WSClient) -> dict[str, Any]:
    kept = _events.get(id(client))
    if kept:
        return kept.pop(0)
    return await next_of(client, ("join", "leave"))


async def presence_of(client: WSClient, channel: str) -> set[tuple[str, str]]:
    client.rid += 1
    await client.send({"type": "presence", "channel": channel, "rid": client.rid})
    answer = await next_of(client, ("presence",))
    return {(c["user"], c["client"]) for c in answer["clients"]}


async def until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def api(node: NodeProcess, path: str, body: dict[str, Any]) -> Any:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(f"{node.url}/api/{path}", json=body)
        assert response.status_code == 200, response.text
        return response.json()


async def test_presence_is_the_same_on_every_node_and_join_leave_reach_subscribers(
    cluster: list[NodeProcess],
) -> None:
    room = f"chat:r{next(_rooms)}"
    watcher = await connect(cluster[0], "watcher", info={"role": "mod"})
    await watcher.send({"type": "subscribe", "channel": room, "join_leave": True, "rid": 1})
    await watcher.recv_type("subscribed")
    others = [await connect(node, f"u{i}") for i, node in enumerate(cluster)]
    for client in others:
        await client.subscribe(room)
    # Every node lists the same four clients.
    async def consistent() -> bool:
        views = [await presence_of(c, room) for c in [watcher, *others]]
        return all(len(v) == 4 for v in views) and all(v == views[0] for v in views)

    await until(consistent, 10, "the same presence on every node")
    users = {user for user, _ in await presence_of(others[2], room)}
    assert users == {"watcher", "u0", "u1", "u2"}
    listed = (await api(cluster[1], "presence", {"channel": room}))["clients"]
    assert {"client": next(c["client"] for c in listed if c["user"] == "watcher"), "user": "watcher",
            "info": {"role": "mod"}} in listed
    # The watcher hears the three joins, from all three nodes (and, depending
    # on timing, its own: its relay may start before or after its own join).
    joins = set()
    while len(joins - {"watcher"}) < 3:
        message = await next_event(watcher)
        assert message["type"] == "join"
        joins.add(message["user"])
    assert joins - {"watcher"} == {"u0", "u1", "u2"}
    await others[1].send({"type": "unsubscribe", "channel": room, "rid": 9})
    await others[1].recv_type("unsubscribed")
    message = await next_event(watcher)
    assert (message["type"], message["user"]) == ("leave", "u1")
    # Nodes that have just started learn of each other from their first
    # announcements: until then a node asks only those it knows.
    async def counted() -> bool:
        stats = await api(cluster[2], "info", {"channel": room})
        return (stats["subscribers"], stats["presence"], stats["nodes"], stats["nodes_expected"]) == (3, 3, 3, 3)

    await until(counted, 10, "every node counted in info")
    for client in [watcher, *others]:
        await client.close()


async def test_presence_needs_the_right_to_subscribe_and_a_presence_namespace(cluster: list[NodeProcess]) -> None:
    client = await WSClient.connect(cluster[0].ws_url, additional_headers={"Authorization": f"Bearer {token('x')}"})
    await client.send({"type": "presence", "channel": "news", "rid": 1})
    assert (await client.recv_type("error"))["code"] == "presence_disabled"
    await client.send({"type": "presence_stats", "channel": "notes#someone-else", "rid": 2})
    assert (await client.recv_type("error"))["code"] == "subscribe_forbidden"
    await client.close()


CLIENT = """
import asyncio, sys, websockets
async def main():
    async with websockets.connect(sys.argv[1], additional_headers={"Authorization": "Bearer " + sys.argv[2]}) as ws:
        await ws.recv()
        await ws.send('{"type":"subscribe","channel":"%s"}' % sys.argv[3])
        await ws.recv()
        print("subscribed", flush=True)
        await asyncio.sleep(600)
asyncio.run(main())
"""


async def test_a_client_killed_with_sigkill_leaves_presence(cluster: list[NodeProcess]) -> None:
    room = f"chat:k{next(_rooms)}"
    proc = await asyncio.to_thread(
        subprocess.Popen,
        [sys.executable, "-c", CLIENT, cluster[1].ws_url, token("doomed"), room],
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        assert (await asyncio.to_thread(proc.stdout.readline)).strip() == b"subscribed"
        observer = await connect(cluster[0], "observer")
        await until(lambda: _has(observer, room, "doomed"), 10, "the client to appear")
        proc.kill()
        proc.wait(10)
        await until(lambda: _lacks(observer, room, "doomed"), 3 * TTL, "the killed client to leave")
        await observer.close()
    finally:
        proc.kill()
        proc.wait(10)


async def _has(client: WSClient, room: str, user: str) -> bool:
    return user in {u for u, _ in await presence_of(client, room)}


async def _lacks(client: WSClient, room: str, user: str) -> bool:
    return not await _has(client, room, user)


async def test_disconnect_through_the_api_closes_the_user_on_every_node(cluster: list[NodeProcess]) -> None:
    victims = [await connect(node, "mallory") for node in cluster]
    bystander = await connect(cluster[1], "alice")
    await asyncio.sleep(1.5)  # announcements: every node knows the others (not a measurement)
    started = time.monotonic()
    await api(cluster[0], "disconnect", {"user": "mallory", "code": 4020, "reason": "bye", "ban": 5})
    for victim in victims:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await victim.recv(timeout=10)
        assert closed.value.rcvd is not None and (closed.value.rcvd.code, closed.value.rcvd.reason) == (4020, "bye")
    print(f"disconnect reached 3 nodes in {time.monotonic() - started:.3f}s")
    # Banned for 5 s, on every node: the next connect is refused with forbidden (4003).
    again = await websockets.connect(cluster[2].ws_url, additional_headers={"Authorization": f"Bearer {token('mallory')}"})
    with pytest.raises(websockets.ConnectionClosed) as refused:
        await again.recv()
    assert refused.value.rcvd is not None and refused.value.rcvd.code == 4003
    await bystander.send({"type": "ping", "rid": 1})
    assert (await bystander.recv_type("pong"))["rid"] == 1
    await bystander.close()


async def test_unsubscribe_and_revoke_through_the_api(cluster: list[NodeProcess]) -> None:
    room = f"chat:u{next(_rooms)}"
    client = await connect(cluster[2], "carol")
    await client.subscribe(room)
    await api(cluster[0], "unsubscribe", {"user": "carol", "channel": room})
    message = await client.recv_type("unsubscribed")
    assert message == {"type": "unsubscribed", "channel": room, "reason": "server"}
    await api(cluster[1], "revoke", {"user": "carol"})
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while True:
            await client.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4011


async def test_history_through_the_api_oldest_or_newest_first(cluster: list[NodeProcess]) -> None:
    channel = f"hist.c{next(_rooms)}"
    ids = [(await api(cluster[0], "publish", {"channel": channel, "data": i}))["id"] for i in range(5)]
    oldest = await api(cluster[1], "history", {"channel": channel, "limit": 3})
    assert [p["data"] for p in oldest["publications"]] == [0, 1, 2] and oldest["top"] == ids[-1]
    newest = await api(cluster[2], "history", {"channel": channel, "limit": 2, "reverse": True})
    assert [p["id"] for p in newest["publications"]] == [ids[4], ids[3]]
    after = await api(cluster[2], "history", {"channel": channel, "since": ids[2]})
    assert [p["id"] for p in after["publications"]] == ids[3:] and after["complete"]


async def test_the_publisher_has_the_same_calls(cluster: list[NodeProcess]) -> None:
    from broker_adapters.publisher import Publisher

    room = f"chat:p{next(_rooms)}"
    client = await connect(cluster[1], "dave")
    await client.subscribe(room)
    async with Publisher(cluster[0].broker) as publisher:
        if not cluster[0].broker.startswith("kafka"):
            await until(lambda: _listed(publisher, room), 10, "dave in the publisher's presence")
            assert await publisher.presence_count(room) == 1
        assert await publisher.subscribers(room) == 1
        position = await publisher.publish(room, {"n": 1})
        history = await publisher.history(room)
        assert history.top == position and [p.data for p in history.publications][-1:] == ['{"n":1}']
        await publisher.disconnect("dave", code=4040, reason="publisher says bye")
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while True:
            await client.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4040


async def _listed(publisher: Any, room: str) -> bool:
    return [e.user for e in await publisher.presence(room)] == ["dave"]


async def test_a_killed_nodes_clients_leave_presence_within_the_ttl(cluster: list[NodeProcess]) -> None:
    # Last in this module: it kills a node of the shared cluster.
    room = f"chat:n{next(_rooms)}"
    doomed = await connect(cluster[2], "on-the-dead-node")
    await doomed.subscribe(room)
    observer = await connect(cluster[0], "observer2")
    await until(lambda: _has(observer, room, "on-the-dead-node"), 10, "the client to appear")
    cluster[2].kill()
    started = time.monotonic()
    await until(lambda: _lacks(observer, room, "on-the-dead-node"), 3 * TTL, "the dead node's client to leave")
    print(f"a killed node's client left presence after {time.monotonic() - started:.2f}s (ttl {TTL}s)")
    await observer.close()
