"""A node keeps serving everyone while a few clients are slow, dead or hostile."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import pytest

from .clients import SSEClient, WSClient, publish
from .processes import NodeProcess
from .rawws import ClosedByServer, RawWebSocket

PAYLOAD = "x" * 2000


async def _flood(node: NodeProcess, channel: str, count: int) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        for start in range(0, count, 25):
            batch = [{"channel": channel, "data": {"i": i, "pad": PAYLOAD}} for i in range(start, min(count, start + 25))]
            response = await http.post(node.url + "/api/publish/batch", json={"publications": batch})
            response.raise_for_status()


def _subscribe_raw(node: NodeProcess, channel: str) -> RawWebSocket:
    raw = RawWebSocket("127.0.0.1", node.port)
    assert raw.status == 101
    raw.recv_messages()  # connected
    raw.send_json({"type": "subscribe", "channel": channel})
    replies: list[dict[str, object]] = []
    while not replies:
        replies = [m for m in raw.recv_messages() if m["type"] != "heartbeat"]
    assert replies[0]["type"] == "subscribed"
    return raw


async def test_a_client_that_never_reads_is_disconnected_and_memory_stays_bounded(channel: str) -> None:
    # The default outbox: since the kernel's send buffer is capped (send_buffer),
    # the outbox is what absorbs a healthy reader's momentary lag.
    flags = ("--send-timeout", "2")
    with NodeProcess("memory://?history_size=100", *flags) as node:
        bystander = await WSClient.connect(node.ws_url)
        await bystander.subscribe(channel)
        stalled = _subscribe_raw(node, channel)
        rss_before = node.rss_kib()
        total = 3000  # about 6 MB of events: far beyond the outbox and socket buffers
        received, _ = await asyncio.gather(bystander.events(total, timeout=30), _flood(node, channel, total))
        assert [e["data"]["i"] for e in received] == list(range(total))
        rss_growth_mib = (node.rss_kib() - rss_before) / 1024
        assert rss_growth_mib < 40, f"node grew {rss_growth_mib:.1f} MiB for one stalled client"
        assert node.metrics()['fanline_slow_consumer_actions_total{policy="disconnect"}'] >= 1
        # The stalled client finds a close frame (4008) once it reads again,
        # or the connection already gone: either way, it was dealt with.
        stalled.sock.settimeout(5)
        with pytest.raises((ClosedByServer, ConnectionError, OSError)) as closed:
            while True:
                stalled.recv_messages()
        if isinstance(closed.value, ClosedByServer):
            assert closed.value.code == 4008
        stalled.close()
        await bystander.close()


async def test_reset_policy_drops_the_backlog_and_says_so() -> None:
    flags = ("--outbox-max-messages", "20", "--send-timeout", "10", "--slow-consumer-namespaces", "feed=reset")
    with NodeProcess("memory://", *flags) as node:
        raw = _subscribe_raw(node, "feed:news")
        await _flood(node, "feed:news", 3000)
        last = await publish(node.url, "feed:news", "after the flood")
        messages: list[dict[str, object]] = []
        # The last event arrives, or was itself dropped and a reset at its
        # position says so: either way the client knows where it stands.
        while not any(m.get("id") == last for m in messages):
            messages.extend(raw.recv_messages())
        resets = [m for m in messages if m["type"] == "reset"]
        assert resets and resets[0]["reason"] == "slow_consumer"
        events = [m for m in messages if m["type"] == "event"]
        assert len(events) < 3001  # some were dropped, and the client was told
        offsets = [int(str(e["id"]).split("-")[1]) for e in events]
        assert offsets == sorted(set(offsets))
        assert node.metrics()['fanline_slow_consumer_actions_total{policy="reset"}'] >= 1
        raw.close()


async def test_latest_policy_keeps_the_newest_event_per_channel() -> None:
    flags = ("--outbox-max-messages", "20", "--send-timeout", "10", "--slow-consumer-namespaces", "ticker=latest")
    with NodeProcess("memory://", *flags) as node:
        raw = _subscribe_raw(node, "ticker:ACME")
        await _flood(node, "ticker:ACME", 3000)
        messages: list[dict[str, object]] = []
        while not any(isinstance(m.get("data"), dict) and m["data"]["i"] == 2999 for m in messages):  # type: ignore[index]
            messages.extend(raw.recv_messages())
        events = [m for m in messages if m["type"] == "event"]
        seen = [e["data"]["i"] for e in events]  # type: ignore[index]
        assert seen == sorted(set(seen)) and seen[-1] == 2999 and len(seen) < 3000
        assert not [m for m in messages if m["type"] == "reset"]
        assert node.metrics()['fanline_slow_consumer_actions_total{policy="latest"}'] >= 1
        raw.close()


async def test_a_peer_that_stops_answering_pings_is_closed_within_the_timeout(channel: str) -> None:
    with NodeProcess("memory://", "--heartbeat-interval", "1", "--heartbeat-timeout", "1") as node:
        raw = _subscribe_raw(node, channel)
        started = time.monotonic()
        raw.sock.settimeout(15)
        with pytest.raises((ClosedByServer, ConnectionError)):
            while True:
                raw.recv_messages()  # pings arrive and are never answered
        elapsed = time.monotonic() - started
        assert elapsed < 8, f"dead peer noticed after {elapsed:.1f}s"
        raw.close()


async def test_each_limit_has_its_error_and_the_node_keeps_serving(channel: str) -> None:
    flags = ("--max-connections", "3", "--max-subscriptions", "2", "--rate-limit", "5", "--rate-burst", "5")
    with NodeProcess("memory://", *flags) as node:
        first = await WSClient.connect(node.ws_url)
        flooder = await WSClient.connect(node.ws_url)
        sse = await SSEClient.connect(node.url, [channel])
        # Connections: the fourth is refused with 503 and Retry-After.
        async with httpx.AsyncClient() as http:
            response = await http.get(node.url + "/sse", params={"channel": channel})
            assert response.status_code == 503 and response.headers["retry-after"]
            assert response.json()["error"] == "too_many_connections"
        refused = RawWebSocket("127.0.0.1", node.port)
        assert refused.status == 503
        refused.close()
        # Subscriptions per connection.
        await first.subscribe(channel)
        await first.subscribe(channel + ".2")
        await first.send({"type": "subscribe", "channel": channel + ".3"})
        assert (await first.recv_type("error"))["code"] == "too_many_subscriptions"
        # Inbound message rate: the burst passes, then one error, then a close.
        for _ in range(30):
            await flooder.send({"type": "ping"})
        kinds = []
        with pytest.raises(Exception) as closed:
            while True:
                message = await flooder.recv(timeout=5)
                kinds.append(message.get("code") or message["type"])
        assert kinds.count("pong") == 5 and kinds.count("rate_limited") == 1
        assert getattr(getattr(closed.value, "rcvd", None), "code", None) == 4029
        # The others never noticed.
        await publish(node.url, channel, "still here")
        assert (await first.events(1))[0]["data"] == "still here"
        assert (await sse.events(1))[0].json()["data"] == "still here"
        metrics = node.metrics()
        for limit in ("connections", "subscriptions", "message_rate"):
            assert metrics[f'fanline_limit_rejections_total{{limit="{limit}"}}'] >= 1
        assert "limit reached" in node.log()
        await first.close()
        await sse.close()


async def test_drain_refuses_new_connections_and_closes_with_a_reconnect_hint(channel: str) -> None:
    with NodeProcess("memory://", "--drain-window", "1") as node:
        ws = await WSClient.connect(node.ws_url)
        await ws.subscribe(channel)
        sse = await SSEClient.connect(node.url, [channel])
        await sse.next_event()
        async with httpx.AsyncClient() as http:
            status = (await http.post(node.internal_url + "/drain")).json()
            assert status["draining"] is True
            assert (await http.get(node.url + "/readyz")).status_code == 503
            refused = await http.get(node.url + "/sse", params={"channel": channel})
            assert refused.status_code == 503 and refused.json()["error"] == "draining"
        drain = await ws.recv_type("drain", timeout=5)
        assert 0 < drain["reconnect_after"] <= 5000
        with pytest.raises(Exception) as closed:
            await ws.recv(timeout=5)
        assert getattr(getattr(closed.value, "rcvd", None), "code", None) == 1012
        with pytest.raises(EOFError):
            await sse.next_event(timeout=5)
        assert sse.retry is not None
        await sse.close()


def test_sigterm_exits_within_the_grace_period() -> None:
    node = NodeProcess("memory://", "--drain-window", "2")
    node.start()
    clients = []
    try:
        for _ in range(20):
            sock = socket.create_connection(("127.0.0.1", node.port))
            sock.sendall(b"GET /sse?channel=t HTTP/1.1\r\nHost: x\r\n\r\n")
            clients.append(sock)
        started = time.monotonic()
        code = node.terminate(timeout=15)
        elapsed = time.monotonic() - started
        assert elapsed < 2 + 5 + 3, f"took {elapsed:.1f}s to exit"
        assert code in (0, -15), node.log()
        assert "drain finished" in node.log()
    finally:
        for sock in clients:
            sock.close()
        node.stop()


async def test_heartbeats_pass_over_a_stalled_socket_so_the_latest_policy_keeps_it_open() -> None:
    # Heartbeats every 0.2 s: several fall while the client reads nothing.  A
    # heartbeat queued on a socket whose outbox is full used to count as an
    # overflow of the connection's own messages, and closed it with 4008 even
    # though its channel keeps only the latest event.
    flags = (
        "--outbox-max-messages", "20", "--send-timeout", "10", "--slow-consumer-namespaces", "ticker=latest",
        "--heartbeat-interval", "0.2", "--heartbeat-timeout", "5",
    )
    with NodeProcess("memory://", *flags) as node:
        raw = _subscribe_raw(node, "ticker:ACME")
        await _flood(node, "ticker:ACME", 3000)
        await asyncio.sleep(1.0)
        messages: list[dict[str, object]] = []
        while not any(isinstance(m.get("data"), dict) and m["data"]["i"] == 2999 for m in messages):  # type: ignore[index]
            messages.extend(raw.recv_messages())
        assert node.metrics().get('fanline_slow_consumer_actions_total{policy="disconnect"}', 0) == 0
        raw.close()
