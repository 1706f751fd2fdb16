"""Backend hooks against a real backend (tests/hook_backend.py) and real nodes.

Slow, failing, garbled and denying answers; a dead backend under both
failure policies; a slow connect hook never holds up other connections.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import websockets

from .clients import WSClient
from .processes import ROOT, NodeProcess, free_port, http_status, wait_for

HOOK_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def backend() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.hook_backend", str(port)], cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: http_status(url + "/healthz") == 200, what="the hook backend")
        yield url
    finally:
        proc.kill()
        proc.wait(10)


def hook_flags(url: str) -> list[str]:
    return [
        "--hook-connect-url", f"{url}/connect", "--hook-subscribe-url", f"{url}/subscribe",
        "--hook-publish-url", f"{url}/publish", "--hook-refresh-url", f"{url}/refresh",
        "--hook-cookies", "session,mode", "--hook-headers", "x-trace", "--hook-timeout", str(HOOK_TIMEOUT),
        "--presence-namespaces", "chat", "--client-publish", "--channel-rules", "*=subscribe:anyone,publish:anyone",
    ]


@pytest.fixture(scope="module")
def node(backend: str) -> Iterator[NodeProcess]:
    with NodeProcess("memory://", *hook_flags(backend)) as node:
        yield node


def cookies(**values: str) -> dict[str, str]:
    return {"Cookie": "; ".join(f"{k}={v}" for k, v in values.items()), "X-Trace": "t-1"}


async def closed_with(url: str, headers: dict[str, str]) -> tuple[int, str]:
    async with websockets.connect(url, additional_headers=headers, open_timeout=10) as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, closed.value.rcvd.reason


async def test_the_connect_hook_names_the_user_and_subscribes_server_side(node: NodeProcess) -> None:
    client = await WSClient.connect(node.ws_url, additional_headers=cookies(session="42"))
    subscribed = await client.recv_type("subscribed")
    assert subscribed["channel"] == "chat:server" and subscribed["server"] is True and "rid" not in subscribed
    client.rid += 1
    await client.send({"type": "presence", "channel": "chat:server", "rid": client.rid})
    (me,) = [c for c in (await client.recv_type("presence"))["clients"] if c["user"] == "sess-42"]
    assert me["info"] == {"plan": "pro", "trace": "t-1"}
    # Resuming a server-side channel: the position goes in the URL.
    await client.close()
    published = await _publish(node, "chat:server", "missed")
    resumed = await WSClient.connect(
        f"{node.ws_url}?since=chat:server:{subscribed['id']}", additional_headers=cookies(session="42")
    )
    again = await resumed.recv_type("subscribed")
    assert again["recovered"] is True and again["replayed"] == 1
    (event,) = await resumed.events(1)
    assert event["id"] == published
    await resumed.close()


async def _publish(node: NodeProcess, channel: str, data: Any) -> str:
    import httpx

    async with httpx.AsyncClient() as http:
        response = await http.post(node.url + "/api/publish", json={"channel": channel, "data": data})
        return str(response.json()["id"])


@pytest.mark.parametrize(
    ("mode", "code", "reason"),
    [("deny", 4003, "forbidden"), ("fail", 1013, "backend_unavailable"), ("garbage", 1013, "backend_unavailable")],
)
async def test_refusals_of_the_connect_hook(node: NodeProcess, mode: str, code: int, reason: str) -> None:
    assert await closed_with(node.ws_url, cookies(session="1", mode=mode)) == (code, reason)


async def test_the_subscribe_and_publish_hooks_can_refuse(node: NodeProcess) -> None:
    client = await WSClient.connect(node.ws_url, additional_headers=cookies(session="7"))
    await client.recv_type("subscribed")
    await client.send({"type": "subscribe", "channel": "secret:plans", "rid": 1})
    error = await client.recv_type("error")
    assert (error["code"], error["channel"], error["rid"]) == ("subscribe_forbidden", "secret:plans", 1)
    assert (await client.subscribe("open:news"))["channel"] == "open:news"
    await client.send({"type": "publish", "channel": "open:news", "data": "forbidden", "rid": 3})
    assert (await client.recv_type("error"))["code"] == "publish_forbidden"
    await client.send({"type": "publish", "channel": "open:news", "data": "fine", "rid": 4})
    assert (await client.recv())["type"] in ("event", "published")
    await client.close()


async def test_the_refresh_hook_extends_a_connection_at_its_expiry(node: NodeProcess) -> None:
    client = await WSClient.connect(node.ws_url, additional_headers=cookies(session="9", mode="short"))
    await client.recv_type("subscribed")
    await asyncio.sleep(1.5)  # past the 1 s expiry the connect hook gave: the refresh hook extended it
    await client.send({"type": "ping", "rid": "alive"})
    assert (await client.recv_type("pong"))["rid"] == "alive"
    await client.close()
    assert node.metrics()['fanline_hook_calls_total{hook="refresh",outcome="allow"}'] >= 1


async def test_a_slow_connect_hook_holds_only_its_own_connections(node: NodeProcess) -> None:
    slow = [
        asyncio.create_task(closed_with(node.ws_url, cookies(session=str(i), mode="slow"))) for i in range(20)
    ]
    await asyncio.sleep(0.2)  # the slow handshakes are waiting for the backend now
    started = time.monotonic()
    fast = await WSClient.connect(node.ws_url, additional_headers=cookies(session="fast"))
    await fast.recv_type("subscribed")
    print(f"connect with hook while 20 handshakes wait on a slow hook: {1000 * (time.monotonic() - started):.1f} ms")
    assert not any(task.done() for task in slow), "the fast connection waited for the slow ones"
    results = await asyncio.gather(*slow)
    assert set(results) == {(1013, "backend_unavailable")}
    await fast.close()


@pytest.mark.parametrize(("policy", "connects"), [("deny", False), ("allow", True)])
async def test_a_dead_backend_is_decided_by_the_failure_policy(policy: str, connects: bool) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with NodeProcess("memory://", *hook_flags(dead), "--hook-failure", policy) as node:
        if connects:
            client = await WSClient.connect(node.ws_url, additional_headers=cookies(session="1"))
            await client.send({"type": "ping", "rid": 1})
            assert (await client.recv_type("pong"))["rid"] == 1
            await client.close()
        else:
            assert await closed_with(node.ws_url, cookies(session="1")) == (1013, "backend_unavailable")
        metrics = node.metrics()
        outcome = "error"
        assert metrics[f'fanline_hook_calls_total{{hook="connect",outcome="{outcome}"}}'] >= 1
