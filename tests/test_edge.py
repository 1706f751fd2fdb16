"""The handshake path under attack: every socket is answered or closed in time, and served clients stay served.

Real sockets against a real node process.  Deadlines are shortened with
flags so the tests are quick; what is asserted is what a user sees: a status
line, a closed socket, a client that still gets its events.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import time

import httpx
import jwt
import pytest

from .clients import WSClient, publish
from .processes import NodeProcess, http_status, wait_for
from .rawws import RawWebSocket

UPGRADE = (
    "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
)


def _key() -> str:
    return base64.b64encode(os.urandom(16)).decode()


def _send(port: int, data: bytes, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(data)
    return sock


def _answer(sock: socket.socket) -> tuple[int | None, bytes]:
    """The status the node answered with (None if it closed without one), and the body."""
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except (ConnectionError, TimeoutError, OSError):
        pass
    finally:
        sock.close()
    if not data.startswith(b"HTTP/1.1 "):
        return None, data
    return int(data.split(b" ", 2)[1]), data.split(b"\r\n\r\n", 1)[-1]


@pytest.fixture(scope="module")
def node() -> NodeProcess:
    with NodeProcess("memory://", "--handshake-timeout", "1.5", "--max-pending", "300") as process:
        yield process


@pytest.mark.parametrize(
    "head,status,code",
    [
        # More headers than the node accepts (uvicorn used to hang on > 128).
        (UPGRADE + "".join(f"X-{i}: a\r\n" for i in range(150)) + "\r\n", 431, "headers_too_large"),
        # A header line over 8192 bytes.
        (UPGRADE + "X-Big: " + "a" * 9000 + "\r\n\r\n", 431, "headers_too_large"),
        # A request line over 8192 bytes.
        ("GET /ws?" + "a" * 9000 + " HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_request"),
        # Not HTTP at all.
        ("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400, "bad_request"),
        # An upgrade without a usable key.
        ("GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n", 400, "bad_request"),
    ],
    ids=["150 headers", "long header line", "long request line", "TLS to a plain port", "no key"],
)
def test_an_oversized_or_broken_handshake_gets_an_answer_and_a_close(
    node: NodeProcess, head: str, status: int, code: str
) -> None:
    got, body = _answer(_send(node.port, head.replace("{key}", _key()).encode(), timeout=5))
    assert got == status
    assert json.loads(body)["error"] == code


def test_partial_heads_are_closed_at_the_deadline_and_others_are_served(node: NodeProcess, channel: str) -> None:
    hung = [_send(node.port, (UPGRADE.format(key=_key()) + "X-Slow: ").encode(), timeout=10) for _ in range(100)]
    silent = [_send(node.port, b"", timeout=10) for _ in range(100)]

    async def served() -> None:
        client = await WSClient.connect(node.ws_url)
        await client.subscribe(channel)
        await publish(node.url, channel, "still here")
        (event,) = await client.events(1)
        assert event["data"] == "still here"
        await client.close()

    asyncio.run(served())
    assert http_status(node.internal_url + "/healthz") == 200
    answers = [_answer(sock) for sock in hung + silent]
    # Every one was closed (by the deadline: the sockets' own timeout is longer),
    # those that had started a request with 408.
    assert all(status == 408 for status, _ in answers[:100])
    assert all(status in (408, None) for status, _ in answers[100:])


def test_past_max_pending_sockets_are_refused_at_once_and_the_internal_port_still_answers() -> None:
    with NodeProcess("memory://", "--max-pending", "20", "--handshake-timeout", "30") as node:
        held = [_send(node.port, b"GET /ws HTTP/1.1\r\n") for _ in range(20)]
        time.sleep(0.3)
        refused = _send(node.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", timeout=5)
        status, body = _answer(refused)
        assert status == 503 and json.loads(body)["error"] == "too_many_pending"
        # The internal port has its own account: health checks get through.
        assert http_status(node.internal_url + "/healthz") == 200
        assert node.metrics()['fanline_limit_rejections_total{limit="pending"}'] >= 1
        for sock in held:
            sock.close()
        wait_for(lambda: http_status(node.url + "/healthz") == 200, what="client port serves again")


def test_memory_stays_bounded_under_hung_handshakes() -> None:
    with NodeProcess("memory://", "--handshake-timeout", "2", "--max-pending", "2000") as node:
        before = node.rss_kib()
        socks = [_send(node.port, (UPGRADE.format(key=_key()) + "X-Pad: " + "a" * 4000).encode()) for _ in range(1500)]
        grown = (node.rss_kib() - before) / 1024
        answers = [_answer(sock) for sock in socks]
        assert all(status == 408 for status, _ in answers)
        assert grown < 60, f"1500 hung handshakes cost {grown:.0f} MiB"
        wait_for(lambda: node.metrics()['fanline_pending_connections{port="client"}'] == 0, what="no pending left")


SECRET = "a-test-secret-that-is-long-enough-for-hs256"


def test_unauthenticated_sockets_never_take_an_authenticated_clients_slot(channel: str) -> None:
    """Security review #1: pending sockets count apart from max_connections."""
    flags = ("--jwt-secret", SECRET, "--max-connections", "5", "--auth-timeout", "30")
    with NodeProcess("memory://", *flags) as node:
        squatters = [RawWebSocket("127.0.0.1", node.port) for _ in range(30)]
        assert all(s.status == 101 for s in squatters)
        token = jwt.encode({"sub": "ada", "exp": time.time() + 300}, SECRET, algorithm="HS256")

        async def legit() -> None:
            clients = [await WSClient.connect(f"{node.ws_url}?token={token}") for _ in range(5)]
            for client in clients:
                await client.close()

        asyncio.run(legit())
        assert node.metrics()['fanline_pending_connections{port="client"}'] == 30
        for squatter in squatters:
            squatter.close()


def test_a_reader_too_slow_for_its_stream_is_handled_within_max_lag(channel: str) -> None:
    """The kernel's send buffer is capped, so lag shows in the outbox and max_lag applies."""
    with NodeProcess("memory://", "--max-lag", "2", "--send-timeout", "30") as node:
        slow = RawWebSocket("127.0.0.1", node.port, recv_buffer=2048)
        slow.recv_messages()
        slow.send_json({"type": "subscribe", "channel": channel})
        slow.sock.settimeout(0.5)

        async def stream() -> None:
            async with httpx.AsyncClient(timeout=10) as http:
                for i in range(200):
                    batch = [{"channel": channel, "data": {"i": i, "pad": "x" * 1000}} for _ in range(10)]
                    await http.post(node.url + "/api/publish/batch", json={"publications": batch})
                    await asyncio.sleep(0.05)
                    # A trickle of reading: a client on a very slow link.
                    try:
                        slow.sock.recv(256)
                    except (TimeoutError, OSError):
                        return

        asyncio.run(stream())
        wait_for(
            lambda: node.metrics().get('fanline_slow_consumer_actions_total{policy="disconnect"}', 0) >= 1,
            timeout=30,
            what="the lagging client handled",
        )
        assert node.metrics()["fanline_connection_lag_seconds_count"] >= 1
        slow.close()
