"""Clients written from docs/protocol.md alone, and the ways they die.

Each :class:`Client` is one logical client (an app, a browser tab) that keeps
its stored position per channel exactly as the protocol says: the ``id`` of
every ``subscribed``, ``event`` and ``reset`` it processed (SSE: the composite
``id:`` of every event, given back as ``Last-Event-ID`` or, after a "page
reload", as ``last_event_id``). Its connections come and go: it reconnects
with jittered exponential backoff, honours ``drain`` hints, ``Retry-After``
and the SSE ``retry:`` field, and retries a ``subscribe`` refused with
``broker_unavailable`` after a jittered backoff (0.5 s doubling to 5 s) with
the same ``since``.

Some connections die on purpose at the worst moments (:class:`Death`): right
after connecting, right after processing the ``subscribed`` line (before the
``reset`` that may follow in the same frame), in the middle of a replay, or
by not reading at all for 3-22 s.

Everything the client processes goes into its :class:`ChannelLog` for the
checker; the client itself judges nothing.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import quote

import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from .checker import ChannelLog, Entry, Kind, Refusal, Stage

BACKOFF_BASE = 0.5
BACKOFF_CAP = 5.0
SUBSCRIBE_RETRY_CAP = 5.0


class Death(StrEnum):
    NONE = "none"
    AFTER_CONNECT = "after_connect"  # abort right after the handshake
    AFTER_SUBSCRIBED = "after_subscribed"  # abort right after processing a subscribed line
    MID_REPLAY = "mid_replay"  # abort after some of the replayed events
    PAUSE = "pause"  # stop reading for 3-22 s, then go on (if the node kept the connection)


@dataclass
class Stats:
    connections: int = 0
    connect_failures: int = 0
    deaths: dict[str, int] = field(default_factory=dict)
    subscribe_retries: int = 0
    drain_hints: int = 0
    protocol_errors: int = 0  # messages that break the documented shape (e.g. a composite part != the event id)
    pauses: int = 0
    # Unexpected exceptions in a connection (a malformed answer, a client bug), by message: the client reconnects.
    errors: dict[str, int] = field(default_factory=dict)

    def add(self, other: Stats) -> None:
        for name, value in vars(other).items():
            if isinstance(value, int):
                setattr(self, name, getattr(self, name) + value)
        for key, count in other.deaths.items():
            self.deaths[key] = self.deaths.get(key, 0) + count
        for key, count in other.errors.items():
            self.errors[key] = self.errors.get(key, 0) + count


@dataclass
class Env:
    """What clients share: where the nodes are, the run's clock, and where refusals go."""

    nodes: Callable[[], Sequence[tuple[str, int]]]  # (host, port) of the nodes a load balancer would offer
    started: float
    refusals: list[Refusal]
    heartbeat: float
    stop: asyncio.Event
    settling: asyncio.Event  # the faults are over: paused clients read again


    def now(self) -> float:
        return time.monotonic() - self.started


def backoff(rng: random.Random, attempt: int, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP) -> float:
    """Full jitter: a random wait between 0 and min(cap, base * 2^attempt)."""
    return rng.uniform(0, min(cap, base * 2**attempt))


def seq_of(data: Any) -> int | None:
    if isinstance(data, dict) and isinstance(data.get("seq"), int):
        return int(data["seq"])
    return None


class Client:
    transport = "?"

    def __init__(
        self, name: str, channels: list[str], env: Env, rng: random.Random, death_weights: dict[Death, float],
        *, persistent: bool = True, start: dict[str, str] | None = None, lifetime: tuple[float, float] = (20, 90),
    ) -> None:
        self.name = name
        self.channels = channels
        self.env = env
        self.rng = rng
        self.death_weights = death_weights
        self.persistent = persistent
        self.lifetime = lifetime
        self.logs = {c: ChannelLog(name, self.transport, c, persistent=persistent) for c in channels}
        self.stored: dict[str, str | None] = {c: None for c in channels}
        for channel, event_id in (start or {}).items():
            self.stored[channel] = event_id
            self.logs[channel].entries.append(Entry(Kind.START, id=event_id))
        self.stats = Stats()
        self.attempt = 0
        self.hint: float | None = None
        self.pause_requested: float | None = None  # set by the fault schedule
        self.current_node: str | None = None  # for reports: the node the current connection went to

    def log(self, channel: str, entry: Entry) -> None:
        self.logs[channel].entries.append(entry)

    def end_connection(self) -> None:
        for log in self.logs.values():
            if log.entries and log.entries[-1].kind is not Kind.END:
                log.entries.append(Entry(Kind.END))

    def pick_death(self) -> Death:
        kinds = list(self.death_weights)
        return self.rng.choices(kinds, weights=[self.death_weights[k] for k in kinds])[0]

    def pick_node(self) -> tuple[str, int]:
        host, port = self.rng.choice(list(self.env.nodes()))
        self.current_node = f"port {port}"
        return host, port

    async def wait(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.env.stop.wait(), seconds)
        except TimeoutError:
            pass

    async def run(self, once: bool = False) -> None:
        """Connect, resume, reconnect, until the run stops (or after one connection when ``once``)."""
        while not self.env.stop.is_set():
            death = self.pick_death()
            if death is not Death.NONE:
                self.stats.deaths[death.value] = self.stats.deaths.get(death.value, 0) + 1
            deadline = time.monotonic() + self.rng.uniform(*self.lifetime)
            try:
                await self.session(death, deadline)
            except (OSError, TimeoutError, websockets.WebSocketException, ConnectionError, asyncio.IncompleteReadError):
                pass
            except Exception as exc:  # noqa: BLE001 - anything else is a finding of its own, and the client goes on
                key = f"{type(exc).__name__}: {exc}"[:200]
                self.stats.errors[key] = self.stats.errors.get(key, 0) + 1
            finally:
                self.end_connection()
            if once or self.env.stop.is_set():
                return
            if self.hint is not None:
                delay, self.hint = self.hint, None
            else:
                delay = backoff(self.rng, self.attempt)
                self.attempt += 1
            await self.wait(delay)

    async def session(self, death: Death, deadline: float) -> None:
        raise NotImplementedError

    async def pause(self, seconds: float) -> None:
        """Stop reading for ``seconds``, or until the run's faults are over."""
        self.stats.pauses += 1
        waits = [asyncio.ensure_future(self.env.stop.wait()), asyncio.ensure_future(self.env.settling.wait())]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()

    async def maybe_pause(self) -> None:
        if self.pause_requested is not None:
            seconds, self.pause_requested = self.pause_requested, None
            await self.pause(seconds)


class Cut(Exception):
    """The client dies here, on purpose."""


class WSClient(Client):
    transport = "ws"

    async def session(self, death: Death, deadline: float) -> None:
        host, port = self.pick_node()
        try:
            connection = await connect(
                f"ws://{host}:{port}/ws", open_timeout=5, close_timeout=2, max_queue=4, max_size=2**24,
                ping_interval=None, compression=None,
            )
        except InvalidStatus as exc:
            self.stats.connect_failures += 1
            retry_after = exc.response.headers.get("Retry-After")
            if exc.response.status_code == 503 and _body_error(exc.response.body) == "broker_unavailable":
                for channel in self.channels:
                    self.env.refusals.append(Refusal(self.env.now(), self.name, "ws", channel, Stage.HANDSHAKE))
            if retry_after and retry_after.isdigit():
                self.hint = float(retry_after) + self.rng.uniform(0, 0.5)
            return
        except (OSError, TimeoutError, websockets.WebSocketException):
            self.stats.connect_failures += 1
            raise
        self.stats.connections += 1
        try:
            await self._converse(connection, death, deadline)
        except Cut:
            connection.transport.abort()
        finally:
            if connection.state is not websockets.protocol.State.CLOSED:
                connection.transport.abort()

    async def _converse(self, connection: ClientConnection, death: Death, deadline: float) -> None:
        if death is Death.AFTER_CONNECT:
            raise Cut
        rids = 0
        retry_attempts: dict[str, int] = {}
        sent_since: dict[str, str | None] = {}
        retries: set[asyncio.Task[None]] = set()

        async def subscribe(channel: str) -> None:
            nonlocal rids
            rids += 1
            message: dict[str, Any] = {"type": "subscribe", "channel": channel, "rid": f"{channel}|{rids}"}
            since = self.stored[channel]
            if since:
                message["since"] = since
            sent_since[channel] = since
            await connection.send(json.dumps(message))

        async def retry_later(channel: str) -> None:
            attempt = retry_attempts.get(channel, 0)
            retry_attempts[channel] = attempt + 1
            await asyncio.sleep(backoff(self.rng, attempt, cap=SUBSCRIBE_RETRY_CAP) + 0.0)
            self.stats.subscribe_retries += 1
            await subscribe(channel)

        for channel in self.channels:
            await subscribe(channel)
        subscribed = 0
        heartbeat = self.env.heartbeat
        replay_cut: dict[str, int] = {}  # channel -> events left before the cut
        pause_after = self.rng.randint(1, 200) if death is Death.PAUSE else None
        processed = 0
        try:
            while not self.env.stop.is_set() and time.monotonic() < deadline:
                await self.maybe_pause()
                try:
                    frame = await asyncio.wait_for(connection.recv(), 2 * heartbeat)
                except TimeoutError:
                    return  # two heartbeats without a frame: the connection is dead
                if isinstance(frame, bytes):
                    frame = frame.decode()
                for line in frame.split("\n"):
                    message = json.loads(line)
                    kind = message.get("type")
                    channel = message.get("channel")
                    if kind == "connected":
                        heartbeat = float(message.get("heartbeat", heartbeat))
                    elif kind == "subscribed" and channel in self.logs:
                        recovered = message.get("recovered")
                        self.log(channel, Entry(
                            Kind.SUBSCRIBED, id=message["id"], recovered=recovered, since=sent_since.get(channel),
                            replayed=message.get("replayed"), node=self.current_node,
                        ))
                        self.stored[channel] = message["id"]
                        retry_attempts.pop(channel, None)
                        subscribed += 1
                        if subscribed == len(self.channels):
                            self.attempt = 0
                        if death is Death.AFTER_SUBSCRIBED and (recovered is False or self.rng.random() < 0.3):
                            raise Cut
                        if death is Death.MID_REPLAY and recovered and message.get("replayed", 0) >= 2:
                            replay_cut[channel] = self.rng.randint(1, message["replayed"] - 1)
                    elif kind == "event" and channel in self.logs:
                        self.log(channel, Entry(Kind.EVENT, id=message["id"], seq=seq_of(message.get("data"))))
                        self.stored[channel] = message["id"]
                        if channel in replay_cut:
                            replay_cut[channel] -= 1
                            if replay_cut[channel] <= 0:
                                raise Cut
                    elif kind == "reset" and channel in self.logs:
                        self.log(channel, Entry(Kind.RESET, id=message["id"], reason=message.get("reason")))
                        self.stored[channel] = message["id"]
                    elif kind == "drain":
                        self.stats.drain_hints += 1
                        self.hint = float(message.get("reconnect_after", 1000)) / 1000
                    elif kind == "error":
                        target = channel or str(message.get("rid", "")).partition("|")[0]
                        if message.get("code") == "broker_unavailable" and target in self.logs:
                            self.env.refusals.append(Refusal(self.env.now(), self.name, "ws", target))
                            task = asyncio.create_task(retry_later(target))
                            retries.add(task)
                            task.add_done_callback(retries.discard)
                        else:
                            self.stats.protocol_errors += 1
                    processed += 1
                    if pause_after is not None and processed >= pause_after:
                        pause_after = None
                        await self.pause(self.rng.uniform(3, 22))
            if time.monotonic() >= deadline:
                await connection.close()
        finally:
            for task in retries:
                task.cancel()


def _body_error(body: bytes | bytearray | None) -> str | None:
    try:
        parsed = json.loads(body or b"")
    except ValueError:
        return None
    return parsed.get("error") if isinstance(parsed, dict) else None


class SSEClient(Client):
    """An ``EventSource`` as the HTML spec describes it, plus the application code docs/protocol.md gives."""

    transport = "sse"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.last_event_id: str | None = None
        start = [self.stored[c] for c in self.channels]
        if all(start):
            self.last_event_id = ".".join(s for s in start if s)

    async def session(self, death: Death, deadline: float) -> None:
        host, port = self.pick_node()
        query = "&".join(f"channel={quote(c, safe='')}" for c in self.channels)
        headers = ""
        sent: list[str | None] = list(self.last_event_id.split(".")) if self.last_event_id else [None] * len(self.channels)
        if self.last_event_id:
            if self.rng.random() < 0.3:  # a page reload: the id goes in the URL
                query += "&last_event_id=" + quote(self.last_event_id, safe="")
            else:
                headers = f"Last-Event-ID: {self.last_event_id}\r\n"
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
        try:
            writer.write(
                f"GET /sse?{query} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n{headers}\r\n".encode()
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            status = int(head.split(b" ", 2)[1])
            header_map = _headers(head)
            if status != 200:
                self.stats.connect_failures += 1
                body = await _read_body(reader, header_map)
                if status == 503 and _body_error(body) == "broker_unavailable":
                    for channel in self.channels:
                        self.env.refusals.append(Refusal(self.env.now(), self.name, "sse", channel, Stage.HANDSHAKE))
                retry_after = header_map.get("retry-after", "")
                delay = float(retry_after) if retry_after.isdigit() else 2.0
                self.hint = delay + self.rng.uniform(0, 3)  # the documented 2-5 s, or Retry-After
                return
            self.stats.connections += 1
            if death is Death.AFTER_CONNECT:
                return
            await self._stream(reader, header_map, death, deadline, sent)
        except Cut:
            pass
        finally:
            writer.transport.abort()

    async def _stream(
        self, reader: asyncio.StreamReader, header_map: dict[str, str], death: Death, deadline: float,
        sent: list[str | None],
    ) -> None:
        chunked = header_map.get("transfer-encoding", "").lower() == "chunked"
        buffer = b""
        fields: dict[str, str] = {}
        data_lines: list[str] = []
        replay_cut: dict[str, int] = {}
        pause_after = self.rng.randint(1, 200) if death is Death.PAUSE else None
        processed = 0
        heartbeat = self.env.heartbeat
        while not self.env.stop.is_set() and time.monotonic() < deadline:
            await self.maybe_pause()
            try:
                chunk = await asyncio.wait_for(_next_chunk(reader, chunked), 2 * heartbeat)
            except TimeoutError:
                return
            if not chunk:
                self.hint = (self.retry_ms / 1000) if self.retry_ms is not None else 2.0
                return
            buffer += chunk
            while b"\n" in buffer:
                raw, buffer = buffer.split(b"\n", 1)
                line = raw.decode().rstrip("\r")
                if line == "":
                    event_id = fields.get("id")
                    if event_id is not None:
                        self.last_event_id = event_id
                    if data_lines:
                        self._dispatch(fields.get("event", "message"), "\n".join(data_lines), event_id, death, replay_cut, sent)
                        processed += 1
                        if pause_after is not None and processed >= pause_after:
                            pause_after = None
                            await self.pause(self.rng.uniform(3, 22))
                    fields, data_lines = {}, []
                    continue
                if line.startswith(":"):
                    continue
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "data":
                    data_lines.append(value)
                elif name == "retry" and value.isdigit():
                    self.retry_ms = int(value)
                elif name in ("event", "id"):
                    fields[name] = value

    retry_ms: int | None = None

    def _part(self, channel: str) -> str | None:
        if not self.last_event_id:
            return None
        parts = self.last_event_id.split(".")
        index = self.channels.index(channel)
        return parts[index] if index < len(parts) else None

    def _dispatch(
        self, event: str, data: str, event_id: str | None, death: Death, replay_cut: dict[str, int],
        sent: list[str | None],
    ) -> None:
        message = json.loads(data)
        if event == "fanline.subscribed":
            for index, channel in enumerate(self.channels):
                facts = message["channels"][channel]
                recovered = facts.get("recovered")
                part = self._part(channel)
                self.log(channel, Entry(
                    Kind.SUBSCRIBED, id=part, recovered=recovered, since=sent[index], replayed=facts.get("replayed"),
                    node=self.current_node,
                ))
                self.stored[channel] = part
                if death is Death.MID_REPLAY and recovered and facts.get("replayed", 0) >= 2:
                    replay_cut[channel] = self.rng.randint(1, facts["replayed"] - 1)
            self.attempt = 0
            if death is Death.AFTER_SUBSCRIBED:
                raise Cut
        elif event == "fanline.reset":
            channel = message["channel"]
            part = self._part(channel)
            if part != message["id"]:
                self.stats.protocol_errors += 1
            self.log(channel, Entry(Kind.RESET, id=part, reason=message.get("reason")))
            self.stored[channel] = part
        elif message.get("type") == "event":
            channel = message["channel"]
            if channel not in self.logs:
                return
            part = self._part(channel)
            if part != message["id"]:
                self.stats.protocol_errors += 1
            self.log(channel, Entry(Kind.EVENT, id=message["id"], seq=seq_of(message.get("data"))))
            self.stored[channel] = part
            if channel in replay_cut:
                replay_cut[channel] -= 1
                if replay_cut[channel] <= 0:
                    raise Cut


def _headers(head: bytes) -> dict[str, str]:
    out = {}
    for line in head.decode(errors="replace").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        out[name.strip().lower()] = value.strip()
    return out


async def _read_body(reader: asyncio.StreamReader, header_map: dict[str, str]) -> bytes:
    if "content-length" in header_map:
        return await asyncio.wait_for(reader.readexactly(int(header_map["content-length"])), 5)
    if header_map.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        for _ in range(100):
            chunk = await asyncio.wait_for(_next_chunk(reader, True), 5)
            if not chunk:
                break
            body += chunk
        return body
    return b""


async def _next_chunk(reader: asyncio.StreamReader, chunked: bool) -> bytes:
    """The next piece of the body; b"" at its end."""
    if not chunked:
        return await reader.read(65536)
    size_line = await reader.readline()
    if not size_line:
        return b""
    size = int(size_line.split(b";")[0].strip() or b"0", 16)
    if size == 0:
        await reader.readline()
        return b""
    data = await reader.readexactly(size)
    await reader.readexactly(2)
    return data
