"""The reconnect storm: a node dies, and its clients resume on the survivors all at once.

Three nodes share a real Redis (tests/servers).  Clients hold WebSocket
connections spread over the three, each subscribed to several channels, while
a publisher publishes steadily straight to Redis (as a backend would).  Then
one node is SIGKILLed: its clients see the connection drop and reconnect at
once to the two survivors, each resuming every channel from the last id it
processed.  Measured: the time from the kill until every moved client has its
``subscribed`` answers, and, once publishing stops, whether every client got
every acknowledged publication of its channels exactly once, in order.

The clients are a lean asyncio protocol (:mod:`loadtest.fastclient`'s
framing), reading ids with one regular expression per frame.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import re
import signal
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from .fastclient import _control, _mask
from .local import LocalNode

EVENT = re.compile(rb'"type":"event","channel":"([^"]+)","id":"([^"]+)"')
SUBSCRIBED = re.compile(rb'"type":"subscribed","channel":"([^"]+)","id":"[^"]+"(,"recovered":(true|false))?')
CODE = re.compile(rb'"code": *"([a-z_]+)"')
RETRY_AFTER = re.compile(rb"(?i)\r\nretry-after: *([0-9.]+)")
RESET = re.compile(rb'"type":"reset","channel":"([^"]+)","id":"([^"]+)"')


@dataclass
class Storm:
    """What every client of the run reports into."""

    moved_subscribed: int = 0
    resets: int = 0
    not_recovered: int = 0
    last_resumed_at: float = 0.0
    # Close codes the nodes sent (4008: slow consumer, ...), and reconnects.
    closes: Counter[int] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    # How connections ended: "eof" (the node closed), or the error's type.
    ends: Counter[str] = field(default_factory=Counter)
    reconnects: int = 0
    # The moved clients (by their shared position map) with every channel resumed.
    resumed: set[int] = field(default_factory=set)
    moving: int = 0
    all_resumed: asyncio.Event = field(default_factory=asyncio.Event)


class StormClient(asyncio.Protocol):
    """One WebSocket client: subscribes to its channels, keeps each channel's last id, resumes with it."""

    def __init__(
        self, storm: Storm, channels: list[str], last: dict[str, str], received: dict[str, list[str]], moved: bool
    ) -> None:
        self.storm = storm
        self.channels = channels
        # Shared across this client's connections: channel -> last id, and every id received.
        self.last = last
        self.received = received
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.open = False
        self.moved = moved
        self.answered = 0
        self.retry_after = 0.0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        self.transport.write(
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )

    def connection_lost(self, exc: Exception | None) -> None:
        how = "eof" if exc is None else type(exc).__name__
        self.storm.ends[f"{how} {'after' if self.open else 'before'} the 101"] += 1
        if not self.ended.done():
            self.ended.set_result(None)
        if not self.done.done():
            self.done.set_exception(ConnectionError("closed"))
            self.done.exception()

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if not self.open:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buffer[:end])
            if not head.startswith(b"HTTP/1.1 101"):
                # Refused (503 too_many_pending while a node is swamped): come
                # back after Retry-After, as the official clients do.
                code = CODE.search(buffer)
                why = code.group(1).decode() if code else ""
                self.storm.refused[f"{head[9:12].decode(errors='replace')} {why}".strip()] += 1
                found = RETRY_AFTER.search(head)
                self.retry_after = float(found.group(1)) if found else 0.0
                assert self.transport is not None
                self.transport.close()
                return
            del buffer[: end + 4]
            self.open = True
            for channel in self.channels:
                message: dict[str, Any] = {"type": "subscribe", "channel": channel}
                if channel in self.last:
                    message["since"] = self.last[channel]
                assert self.transport is not None
                self.transport.write(_mask(json.dumps(message).encode()))
        while len(buffer) >= 2:
            length = buffer[1] & 0x7F
            head = 2
            if length == 126:
                if len(buffer) < 4:
                    return
                length = int.from_bytes(buffer[2:4], "big")
                head = 4
            elif length == 127:
                if len(buffer) < 10:
                    return
                length = int.from_bytes(buffer[2:10], "big")
                head = 10
            if len(buffer) < head + length:
                return
            opcode = buffer[0] & 0x0F
            payload = bytes(buffer[head : head + length])
            del buffer[: head + length]
            if opcode == 1:
                self.frame(payload)
            elif opcode == 9 and self.transport is not None:
                # A ping: answer it, or the node closes the connection as dead.
                self.transport.write(_control(0xA, payload))  # a pong
            elif opcode == 8 and self.transport is not None:
                self.storm.closes[int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005] += 1
                self.transport.close()

    def frame(self, payload: bytes) -> None:
        for channel, event_id in EVENT.findall(payload):
            name = channel.decode()
            self.received.setdefault(name, []).append(event_id.decode())
            self.last[name] = event_id.decode()
        for _channel, _, recovered in SUBSCRIBED.findall(payload):
            self.answered += 1
            if self.moved:
                self.storm.moved_subscribed += 1
                if recovered == b"false":
                    self.storm.not_recovered += 1
        for channel, event_id in RESET.findall(payload):
            self.storm.resets += 1
            self.last[channel.decode()] = event_id.decode()
        if self.answered >= len(self.channels) and not self.done.done():
            if self.moved and id(self.last) not in self.storm.resumed:
                self.storm.resumed.add(id(self.last))
                self.storm.last_resumed_at = time.perf_counter()
                if len(self.storm.resumed) >= self.storm.moving:
                    self.storm.all_resumed.set()
            self.done.set_result(None)


@dataclass
class Client:
    """A client across its connections: its channels, its positions, what it received."""

    channels: list[str]
    node: int
    last: dict[str, str] = field(default_factory=dict)
    received: dict[str, list[str]] = field(default_factory=dict)
    protocol: StormClient | None = None


async def connect(client: Client, storm: Storm, port: int, *, moved: bool = False) -> None:
    loop = asyncio.get_running_loop()
    # ``moved`` goes in with the protocol: under uvloop the answers can arrive
    # before create_connection returns here.
    _, protocol = await loop.create_connection(
        lambda: StormClient(storm, client.channels, client.last, client.received, moved), "127.0.0.1", port
    )
    client.protocol = protocol
    await protocol.done


async def run(
    redis_url: str,
    *,
    moved: int,
    staying: int,
    channels_per_client: int,
    channels: int,
    rate: float,
    settle: float,
    flags: list[str],
    cpu: int | None,
) -> dict[str, Any]:
    """The storm: ``moved`` clients on the node that dies, ``staying`` on each survivor; returns the figures.

    Every client behaves as a real one does: whatever ends its connection
    (the kill, or a node closing it), it connects again at once and resumes
    every channel; a client of the dead node goes to a survivor.
    """
    from broker_adapters.publisher import Publisher

    names = [f"storm:{i}" for i in range(channels)]
    homes = [0] * moved + [1 + i % 2 for i in range(2 * staying)]
    population = [
        Client([names[(i * channels_per_client + k) % channels] for k in range(channels_per_client)], home)
        for i, home in enumerate(homes)
    ]
    storm = Storm()
    nodes = [LocalNode(redis_url, flags, cpu=cpu) for _ in range(3)]
    for node in nodes:
        node.start(timeout=40)
    published: dict[str, list[str]] = defaultdict(list)
    stop = asyncio.Event()
    dead: set[int] = set()
    gate = asyncio.Semaphore(200)
    first_connects: list[asyncio.Future[None]] = []
    spread = 0

    async def keep_connected(client: Client, connected: asyncio.Future[None]) -> None:
        nonlocal spread
        first = True
        attempt = 0
        while not stop.is_set():
            if not first:
                # The official clients' reconnect: a hint (Retry-After) plus a
                # full-jitter backoff from 0.5 s, doubling to 30 s.
                hint = client.protocol.retry_after if client.protocol is not None else 0.0
                await asyncio.sleep(hint + random.uniform(0, min(30.0, 0.5 * 2**attempt)))
                attempt += 1
            node = client.node
            if node in dead:
                node = 1 + spread % 2
                spread += 1
            try:
                if not connected.done():
                    async with gate:
                        await connect(client, storm, nodes[node].port)
                    first = False
                    connected.set_result(None)
                else:
                    storm.reconnects += 1
                    await connect(client, storm, nodes[node].port, moved=client.node in dead)
            except (OSError, ConnectionError):
                first = False  # refused, or the node died under this connect: the next one
                continue
            attempt = 0
            assert client.protocol is not None
            await client.protocol.ended

    def close_all() -> None:
        for client in population:
            if client.protocol is not None and client.protocol.transport is not None:
                client.protocol.transport.abort()

    async def publisher() -> None:
        async with Publisher(redis_url) as pub:
            i = 0
            started = time.perf_counter()
            while not stop.is_set():
                delay = started + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                channel = names[i % channels]
                position = await pub.publish(channel, {"i": i})
                published[channel].append(position.event_id)
                i += 1

    try:
        async with asyncio.TaskGroup() as tasks:
            for client in population:
                future = asyncio.get_running_loop().create_future()
                first_connects.append(future)
                tasks.create_task(keep_connected(client, future))
            try:
                async with asyncio.timeout(180):
                    await asyncio.gather(*first_connects)
                publishing = tasks.create_task(publisher())
                await asyncio.sleep(settle)
                victims = [c for c in population if c.node == 0]
                killed_at = time.perf_counter()
                assert nodes[0].proc is not None
                storm.moving = len(victims)
                cpu_before = sum(nodes[i].cpu_seconds() for i in (1, 2))
                dead.add(0)
                nodes[0].proc.send_signal(signal.SIGKILL)
                try:
                    async with asyncio.timeout(180):
                        await storm.all_resumed.wait()
                except TimeoutError:
                    stuck = Counter(
                        "no connection" if c.protocol is None
                        else f"open={c.protocol.open} answered={c.protocol.answered} closing={c.protocol.transport is not None and c.protocol.transport.is_closing()}"
                        for c in victims if id(c.last) not in storm.resumed
                    )
                    raise RuntimeError(
                        f"stuck: {dict(stuck)}; "
                        f"storm: {len(storm.resumed)} of {len(victims)} moved clients resumed in 180 s;"
                        f" ends {dict(storm.ends)}, refused {dict(storm.refused)}, closes {dict(storm.closes)},"
                        f" reconnects {storm.reconnects}"
                    ) from None
                resumed_seconds = storm.last_resumed_at - killed_at
                # What the storm cost the survivors (their live traffic included).
                storm_cpu = sum(nodes[i].cpu_seconds() for i in (1, 2)) - cpu_before
                await asyncio.sleep(settle)
                stop.set()
                await publishing
                await _until_delivered(population, published)
            finally:
                stop.set()
                close_all()
        figures = _verdict(population, published, storm, victims, resumed_seconds)
        figures["survivors_cpu_seconds"] = storm_cpu
        figures["node_ms_per_moved_client"] = 1000 * storm_cpu / max(len(victims), 1)
        return figures
    finally:
        for node in nodes:
            node.stop()


async def _until_delivered(population: list[Client], published: dict[str, list[str]], quiet: float = 5.0) -> None:
    """Wait until every client holds the last publication of each of its channels, or nothing moves for ``quiet`` s."""

    def behind() -> int:
        return sum(
            1
            for client in population
            for channel in client.channels
            if published[channel] and client.last.get(channel) != published[channel][-1]
        )

    left, still = behind(), 0.0
    while left and still < quiet:
        await asyncio.sleep(0.25)
        now = behind()
        still = still + 0.25 if now == left else 0.0
        left = now


def _verdict(
    population: list[Client],
    published: dict[str, list[str]],
    storm: Storm,
    victims: list[Client],
    resumed_seconds: float,
) -> dict[str, Any]:
    """Every client's stream per channel against what was acknowledged: losses, duplicates, reorders."""
    lost = duplicated = reordered = checked = 0
    for client in population:
        for channel in client.channels:
            stream = published[channel]
            received = client.received.get(channel, [])
            if not received:
                continue
            index = {event_id: n for n, event_id in enumerate(stream)}
            positions = [index[r] for r in received if r in index]
            checked += len(positions)
            duplicated += len(positions) - len(set(positions))
            reordered += sum(1 for a, b in zip(positions, positions[1:], strict=False) if b < a)
            if positions:
                expected = set(range(positions[0], len(stream)))
                lost += len(expected - set(positions))
    return {
        "clients": len(population),
        "moved_clients": len(victims),
        "resumed_seconds": resumed_seconds,
        "moved_subscribes": storm.moved_subscribed,
        "not_recovered": storm.not_recovered,
        "resets": storm.resets,
        "closes": {str(code): count for code, count in sorted(storm.closes.items())},
        "reconnects": storm.reconnects,
        "refused": dict(storm.refused),
        "ends": dict(storm.ends),
        "deliveries_checked": checked,
        "lost": lost,
        "duplicated": duplicated,
        "reordered": reordered,
    }
