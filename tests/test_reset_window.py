"""The reset window (issue 10, bug 2): a cut anywhere in a resume's answer never hides a gap.

A client resumes from a position that cannot be recovered (a stale epoch on
one node with the embedded broker), and the connection is cut at every point
of the answer: before the handshake's end, before ``connected``, between
frames, inside a frame's header and payload, and, for a frame holding several
messages, after each message (a client that dies while processing the frame).
The client keeps its stored position exactly as docs/protocol.md says.
Whatever the cut, the client must end knowing of the gap: it processed the
``reset``, or its stored id is still the stale ``since``, so its next resume
gets the reset (checked by resuming once more). 1000 cuts per transport.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from .processes import NodeProcess

CUTS = 1000
STALE = "deadbeef-3"  # an epoch the node never issued: the answer must be a reset


@pytest.fixture(scope="module")
def node() -> Iterator[NodeProcess]:
    with NodeProcess("memory://", "--log-level", "warning") as process:
        yield process


def publish(node: NodeProcess, channel: str, data: object) -> str:
    request = urllib.request.Request(
        node.url + "/api/publish", json.dumps({"channel": channel, "data": data}).encode(),
        {"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(json.loads(response.read())["id"])


def connect(node: NodeProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", node.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_exactly(sock: socket.socket, count: int) -> bytes:
    """Up to ``count`` bytes: fewer only if the server closed first."""
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            break
        data += chunk
    return data


def cut(sock: socket.socket) -> None:
    # RST, not FIN: the connection dies as in a crash or a network cut.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# -- WebSocket -------------------------------------------------------------------------


def ws_open(node: NodeProcess, subscribe: dict[str, Any]) -> socket.socket:
    """Handshake, then one subscribe frame; the answer's bytes are what the caller reads next."""
    sock = connect(node)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{node.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    payload = json.dumps(subscribe).encode()
    mask = os.urandom(4)
    assert len(payload) < 126
    sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
    return sock


def ws_frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """Complete server frames in ``data``: (start, payload start, end, payload)."""
    frames = []
    at = 0
    while at + 2 <= len(data):
        length = data[at + 1] & 0x7F
        header = 2
        if length == 126:
            if at + 4 > len(data):
                break
            (length,) = struct.unpack("!H", data[at + 2 : at + 4])
            header = 4
        elif length == 127:
            if at + 10 > len(data):
                break
            (length,) = struct.unpack("!Q", data[at + 2 : at + 10])
            header = 10
        end = at + header + length
        if end > len(data):
            break
        frames.append((at, at + header, end, data[at + header : end]))
        at = end
    return frames


@dataclass
class WSClientState:
    """The documented client: the id of every subscribed, event and reset, per channel."""

    stored: str
    reset: bool = False
    seen: list[str] = field(default_factory=list)

    def process(self, message: dict[str, Any]) -> None:
        self.seen.append(message["type"])
        if message["type"] in ("subscribed", "event", "reset"):
            self.stored = message["id"]
        if message["type"] == "reset":
            self.reset = True


def ws_messages(data: bytes) -> list[list[dict[str, Any]]]:
    return [[json.loads(line) for line in payload.decode().split("\n")] for op, _, _, payload in
            ((f[0], f[1], f[2], f[3]) for f in ws_frames(data)) if payload and data[op] & 0x0F == 0x1]


def ws_answer(node: NodeProcess, channel: str, since: str) -> bytes:
    """The whole answer to a resume, up to the reset (or the subscribed when recovered)."""
    sock = ws_open(node, {"type": "subscribe", "channel": channel, "since": since})
    data = b""
    try:
        for _ in range(100):
            data += sock.recv(65536)
            types = [m["type"] for frame in ws_messages(data) for m in frame]
            if "reset" in types or any(
                m.get("recovered") for frame in ws_messages(data) for m in frame if m["type"] == "subscribed"
            ):
                return data
        raise AssertionError(f"no complete answer: {data!r}")
    finally:
        cut(sock)


def ws_cut_points(answer: bytes) -> list[tuple[int, int | None]]:
    """(bytes read, messages of the last complete frame processed) for every point of interest."""
    points: list[tuple[int, int | None]] = [(0, None), (1, None)]
    for start, body, end, payload in ws_frames(answer):
        points += [(start + 1, None), (body, None), (body + len(payload) // 2, None), (end - 1, None), (end, None)]
        lines = payload.count(b"\n") + 1
        points += [(end, processed) for processed in range(1, lines)]
    return sorted(set(points), key=lambda p: (p[0], p[1] or 10**9))


def test_websocket_client_knows_of_the_gap_whatever_the_cut(node: NodeProcess) -> None:
    channel = "rw:ws"
    for i in range(5):
        publish(node, channel, i)
    points = ws_cut_points(ws_answer(node, channel, STALE))
    outcomes: dict[str, int] = {}
    failures = []
    for i in range(CUTS):
        count, processed = points[i % len(points)]
        sock = ws_open(node, {"type": "subscribe", "channel": channel, "since": STALE})
        try:
            data = read_exactly(sock, count)
        finally:
            cut(sock)
        client = WSClientState(STALE)
        frames = ws_messages(data)
        for index, messages in enumerate(frames):
            if index == len(frames) - 1 and processed is not None:
                messages = messages[:processed]  # the client died inside the frame
            for message in messages:
                client.process(message)
        if client.reset:
            outcomes["reset received"] = outcomes.get("reset received", 0) + 1
            continue
        # No reset: the client must still stand at the stale since, so that
        # its next resume is answered with the reset again.
        answer = [m for frame in ws_messages(ws_answer(node, channel, client.stored)) for m in frame]
        if any(m["type"] == "reset" for m in answer):
            outcomes["reset on the next resume"] = outcomes.get("reset on the next resume", 0) + 1
        else:
            failures.append((count, processed, client.seen, client.stored))
    assert not failures, (
        f"{len(failures)} of {CUTS} cuts left the client past the gap without a reset "
        f"(bytes read, messages processed, messages seen, stored id): {failures[:5]}; outcomes {outcomes}"
    )


# -- SSE -------------------------------------------------------------------------------


def sse_open(node: NodeProcess, channels: list[str], last_event_id: str) -> socket.socket:
    sock = connect(node)
    query = "&".join(f"channel={c}" for c in channels)
    sock.sendall(
        f"GET /sse?{query} HTTP/1.1\r\nHost: 127.0.0.1:{node.port}\r\nLast-Event-ID: {last_event_id}\r\n\r\n".encode()
    )
    return sock


def dechunk(data: bytes) -> tuple[bytes, list[int]]:
    """The body bytes a client has after reading ``data`` (head and chunk framing removed), and raw offsets of chunk ends."""
    if b"\r\n\r\n" not in data:
        return b"", []
    head, rest = data.split(b"\r\n\r\n", 1)
    base = len(head) + 4
    assert b"chunked" in head.lower(), head
    body = b""
    ends = []
    at = 0
    while True:
        line_end = rest.find(b"\r\n", at)
        if line_end < 0:
            break
        size = int(rest[at:line_end].split(b";")[0] or b"0", 16)
        start = line_end + 2
        available = rest[start : start + size]
        body += available
        if len(available) < size or size == 0:
            break
        at = start + size + 2
        ends.append(base + at)
    return body, ends


@dataclass
class SSEClientState:
    """An EventSource: the last event id is set when an event is dispatched (at its blank line)."""

    last_event_id: str
    channels: list[str]
    resets: set[str] = field(default_factory=set)

    def feed(self, body: bytes) -> None:
        buffered_id: str | None = None
        for block in body.split(b"\n\n")[:-1]:  # complete events only
            event = "message"
            for line in block.decode().split("\n"):
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "id":
                    buffered_id = value
                elif name == "event":
                    event = value
                elif name == "data" and event == "fanline.reset":
                    self.resets.add(json.loads(value)["channel"])
            if buffered_id is not None:
                self.last_event_id = buffered_id

    def part(self, channel: str) -> str:
        return self.last_event_id.split(".")[self.channels.index(channel)]


def sse_answer(node: NodeProcess, channels: list[str], last_event_id: str, stale: str) -> bytes:
    """The answer up to the reset of ``stale`` (or up to fanline.subscribed if it was recovered)."""
    sock = sse_open(node, channels, last_event_id)
    data = b""
    try:
        for _ in range(200):
            data += sock.recv(65536)
            body, _ = dechunk(data)
            if b'"channel":"' + stale.encode() + b'"' in body and b"fanline.reset" in body:
                return data
            if b"fanline.subscribed" in body and b"\n\n" in body.split(b"fanline.subscribed", 1)[1]:
                summary = json.loads(body.split(b"fanline.subscribed", 1)[1].split(b"data: ", 1)[1].split(b"\n", 1)[0])
                if summary["channels"][stale]["recovered"]:
                    return data
        raise AssertionError(f"no complete answer: {data!r}")
    finally:
        cut(sock)


def sse_cut_points(answer: bytes) -> list[int]:
    head_end = answer.index(b"\r\n\r\n") + 4
    points = {0, 1, head_end - 1, head_end}
    _, chunk_ends = dechunk(answer)
    for end in chunk_ends:
        points.update({end - 3, end - 1, end})
    previous = head_end
    for end in chunk_ends:
        points.add((previous + end) // 2)
        previous = end
    return sorted(p for p in points if 0 <= p <= len(answer))


def test_sse_client_knows_of_the_gap_whatever_the_cut(node: NodeProcess) -> None:
    fresh, stale = "rw:sse-fresh", "rw:sse-stale"
    top = ""
    for i in range(5):
        top = publish(node, fresh, i)
        publish(node, stale, i)
    channels = [fresh, stale]
    composite = f"{top}.{STALE}"
    points = sse_cut_points(sse_answer(node, channels, composite, stale))
    outcomes: dict[str, int] = {}
    failures = []
    for i in range(CUTS):
        count = points[i % len(points)]
        sock = sse_open(node, channels, composite)
        try:
            data = read_exactly(sock, count)
        finally:
            cut(sock)
        client = SSEClientState(composite, channels)
        body, _ = dechunk(data)
        client.feed(body)
        if stale in client.resets:
            outcomes["reset received"] = outcomes.get("reset received", 0) + 1
            continue
        follow_up = SSEClientState(client.last_event_id, channels)
        follow_up.feed(dechunk(sse_answer(node, channels, client.last_event_id, stale))[0])
        if stale in follow_up.resets:
            outcomes["reset on the next resume"] = outcomes.get("reset on the next resume", 0) + 1
        else:
            failures.append((count, client.last_event_id))
    assert not failures, (
        f"{len(failures)} of {CUTS} cuts left the client past the gap without a reset "
        f"(bytes read, stored composite id): {failures[:5]}; outcomes {outcomes}"
    )
