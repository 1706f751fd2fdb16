"""A lean load client for the benchmark: raw asyncio protocols, no client library.

The benchmark must measure the node, not the client.  A general-purpose
client (``websockets``, ``httpx``) spends tens of microseconds per message in
Python; here a received frame costs one header parse and one ``bytes.count``
in C, so one client core can absorb several hundred thousand deliveries per
second.  Events are counted by the substring ``"type":"event"``, which every
event message carries on both transports (the SSE ``data:`` line is the same
JSON as the WebSocket message).

Latency mode additionally pulls the publisher's send timestamp ``"t":`` out of
every event with a regular expression, so the cost stays per frame, not per
JSON object.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

EVENT_MARK = b'"type":"event"'
RESET_MARK = b'"type":"reset"'
SUBSCRIBED_MARK = b'"type":"subscribed"'
STAMP = re.compile(rb'"t":([0-9.]+)')


@dataclass
class Totals:
    """Counters shared by every connection of one run (one client process, one loop)."""

    events: int = 0
    # Frames (WS) or chunks (SSE) that carried at least one event: events per
    # frame shows how much the node's write batching coalesced.
    frames: int = 0
    resets: int = 0
    closed: int = 0
    # Publish-to-receive latencies in seconds, only when ``record_latency``.
    latencies: list[float] = field(default_factory=list)
    record_latency: bool = False
    # Called when ``events`` crosses ``wake_at`` (the publisher's flow control).
    wake_at: int = -1
    on_wake: Callable[[], None] | None = None

    def add(self, payload: bytes) -> int:
        count = payload.count(EVENT_MARK)
        if count:
            self.events += count
            self.frames += 1
            if self.record_latency:
                now = time.time()
                self.latencies.extend(now - float(t) for t in STAMP.findall(payload))
            if self.on_wake is not None and self.events >= self.wake_at:
                self.on_wake()
        if RESET_MARK in payload:
            self.resets += payload.count(RESET_MARK)
        return count


class _Base(asyncio.Protocol):
    """What both transports share: a ready future, a per-connection count, the socket."""

    def __init__(self, totals: Totals) -> None:
        self.totals = totals
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.events = 0
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.totals.closed += 1
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before ready: {exc}"))

    def fail(self, why: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(why))
        if self.transport is not None:
            self.transport.close()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


def _mask(payload: bytes) -> bytes:
    """A masked client frame header + payload (RFC 6455 5.3: clients must mask)."""
    key = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes((0x81, 0x80 | n))
    elif n < 65536:
        head = bytes((0x81, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x81, 0x80 | 127)) + n.to_bytes(8, "big")
    # XOR through one big integer: C speed without numpy.
    repeated = (key * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big") if n else b""
    return head + key + masked


def _control(opcode: int, payload: bytes) -> bytes:
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes((0x80 | opcode, 0x80 | len(payload))) + key + masked


class WSClient(_Base):
    """One WebSocket connection subscribed to ``channels``; ready once every subscribed reply arrived."""

    def __init__(self, totals: Totals, host: str, port: int, channels: list[str]) -> None:
        super().__init__(totals)
        self.host = host
        self.port = port
        self.channels = channels
        self.upgraded = False
        self.pending_subscriptions = len(channels)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET /ws HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        assert self.transport is not None
        self.transport.write(request)

    def send_text(self, text: str) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_mask(text.encode()))

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.fail(buf[: buf.find(b"\r\n")].decode(errors="replace"))
                return
            del buf[: end + 4]
            self.upgraded = True
            # Subscribe only after the 101: uvicorn's sans-I/O implementation
            # drops frames pipelined behind the handshake request.
            assert self.transport is not None
            self.transport.write(
                b"".join(
                    _mask(json.dumps({"type": "subscribe", "channel": c, "rid": i}).encode())
                    for i, c in enumerate(self.channels)
                )
            )
        pos = 0
        size = len(buf)
        totals = self.totals
        while size - pos >= 2:
            b0 = buf[pos]
            length = buf[pos + 1] & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            end = pos + head + length
            if end > size:
                break
            opcode = b0 & 0x0F
            payload = bytes(buf[pos + head : end])
            pos = end
            if opcode in (0x1, 0x0):
                self.events += totals.add(payload)
                if self.pending_subscriptions and SUBSCRIBED_MARK in payload:
                    self.pending_subscriptions -= payload.count(SUBSCRIBED_MARK)
                    if self.pending_subscriptions <= 0 and not self.ready.done():
                        self.ready.set_result(None)
            elif opcode == 0x9:  # ping: answer, or uvicorn closes us after its timeout
                assert self.transport is not None
                self.transport.write(_control(0xA, payload))
            elif opcode == 0x8:
                self.fail(f"server closed: {payload[:2].hex()} {payload[2:].decode(errors='replace')}")
        if pos:
            del buf[:pos]


class SSEClient(_Base):
    """One SSE stream (``/sse?channel=...``); ready once ``fanline.subscribed`` arrived."""

    def __init__(self, totals: Totals, host: str, port: int, channels: list[str]) -> None:
        super().__init__(totals)
        self.host = host
        self.port = port
        self.channels = channels
        self.headers_done = False
        self.chunked = False
        # Bytes still owed by the current chunk (0: a size line comes next),
        # and whether the CRLF that ends a chunk is still to be skipped.
        self.chunk_left = 0
        self.need_crlf = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        query = "&".join(f"channel={c}" for c in self.channels)
        assert self.transport is not None
        self.transport.write(
            f"GET /sse?{query} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nAccept: text/event-stream\r\n\r\n".encode()
        )

    def _body(self, payload: bytes) -> None:
        self.events += self.totals.add(payload)
        if not self.ready.done() and b"event: fanline.subscribed" in payload:
            self.ready.set_result(None)

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        if not self.headers_done:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            if not head.startswith(b"http/1.1 200"):
                self.fail(bytes(buf[: buf.find(b"\r\n")]).decode(errors="replace"))
                return
            self.chunked = b"transfer-encoding: chunked" in head
            del buf[: end + 4]
            self.headers_done = True
        if not self.chunked:
            self._body(bytes(buf))
            buf.clear()
            return
        # De-chunk: uvicorn sends each ASGI body message as one chunk, and the
        # node writes whole events per message, so counting per chunk is exact.
        pos = 0
        size = len(buf)
        parts: list[bytes] = []
        while True:
            if self.need_crlf:
                if size - pos < 2:
                    break
                pos += 2
                self.need_crlf = False
            if self.chunk_left == 0:
                line_end = buf.find(b"\r\n", pos)
                if line_end < 0:
                    break
                self.chunk_left = int(bytes(buf[pos:line_end]).split(b";")[0], 16)
                pos = line_end + 2
                if self.chunk_left == 0:
                    self.fail("stream ended")
                    return
            if pos >= size:
                break
            take = min(self.chunk_left, size - pos)
            parts.append(bytes(buf[pos : pos + take]))
            pos += take
            self.chunk_left -= take
            if self.chunk_left == 0:
                self.need_crlf = True
        if pos:
            del buf[:pos]
        if parts:
            self._body(b"".join(parts))


async def open_clients(
    kind: str,
    host: str,
    port: int,
    count: int,
    channels: list[str],
    totals: Totals,
    *,
    concurrency: int = 200,
    timeout: float = 60.0,
) -> list[_Base]:
    """Open ``count`` connections (at most ``concurrency`` handshakes at once) and wait until all are subscribed."""
    loop = asyncio.get_running_loop()
    factory: Callable[[], _Base]
    if kind == "ws":
        factory = lambda: WSClient(totals, host, port, channels)  # noqa: E731
    elif kind == "sse":
        factory = lambda: SSEClient(totals, host, port, channels)  # noqa: E731
    else:
        raise ValueError(kind)
    gate = asyncio.Semaphore(concurrency)
    clients: list[_Base] = []

    async def one() -> None:
        async with gate:
            _, protocol = await loop.create_connection(factory, host, port)
            clients.append(protocol)
            await protocol.ready

    async with asyncio.timeout(timeout):
        await asyncio.gather(*(one() for _ in range(count)))
    return clients


class HTTPPublisher:
    """A keep-alive HTTP/1.1 connection for ``POST /api/publish[/batch]``, with no client library."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def post(self, path: str, body: Any) -> Any:
        assert self.reader is not None and self.writer is not None
        raw = json.dumps(body, separators=(",", ":")).encode()
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(raw)}\r\n\r\n".encode()
            + raw
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        reply = json.loads(await self.reader.readexactly(length)) if length else None
        if status != 200:
            raise RuntimeError(f"{path} answered {status}: {reply}")
        return reply

    async def publish_batch(self, channel: str, count: int, pad: str = "") -> None:
        now = time.time()
        await self.post(
            "/api/publish/batch",
            {"publications": [{"channel": channel, "data": {"t": now, "p": pad}} for _ in range(count)]},
        )

    async def publish(self, channel: str, pad: str = "") -> None:
        await self.post("/api/publish", {"channel": channel, "data": {"t": time.time(), "p": pad}})

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
