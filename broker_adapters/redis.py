"""The Redis broker: a capped stream per channel for history, pub/sub for fan-out.

The layout follows Centrifugo's Redis engine (see broker_adapters/redis_scripts.py
for the keys and scripts).  Publishing is one Lua script, so appending to the
history and broadcasting are one atomic step per channel, and offsets are
consecutive: a live publication whose offset is not last + 1 proves a gap.

Live delivery uses one dedicated pub/sub connection per node, driven by hand
rather than through redis-py's ``PubSub``: redis-py reconnects and resubscribes
silently and loses what was published meanwhile (redis-py #3979).  Here every
reconnect is visible, and is followed by ``on_resync(None)`` so the hub
re-reads history from the last position it delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import secrets
import string
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .base import Broker, BrokerListener, BrokerUnavailable, NullListener
from .redis_scripts import HISTORY_SCRIPT, PUBLISH_SCRIPT
from .types import (
    History,
    InvalidEventType,
    Position,
    Publication,
    normalize_data,
    validate_event_type,
)

log = logging.getLogger("fanline.broker.redis")

_EPOCH_ALPHABET = string.ascii_letters + string.digits
_PAYLOAD_VERSION = b"1"
# Channels per SUBSCRIBE command when restoring a connection, to keep single
# commands small.
_SUBSCRIBE_BATCH = 500
# Errors that mean "Redis did not do it": connection loss, timeouts, a
# server still loading its data, script errors.
_REDIS_ERRORS = (RedisError, OSError, TimeoutError)


def new_epoch() -> str:
    return "".join(secrets.choice(_EPOCH_ALPHABET) for _ in range(8))


@dataclass(frozen=True, slots=True)
class RedisOptions:
    history_size: int = 1000
    history_ttl: float = 600.0  # seconds
    meta_ttl: float = 86400.0  # seconds
    prefix: str = "fanline"
    # Seconds a command may take before the broker counts as unreachable.
    command_timeout: float = 5.0
    connect_timeout: float = 2.0
    # Connections for commands (publish, history); more callers wait.
    pool_size: int = 64
    # The live connection is pinged this often; silence for three intervals
    # means it is dead, so a half-open connection is noticed in seconds.
    live_ping_interval: float = 1.0
    reconnect_max_delay: float = 5.0

    def __post_init__(self) -> None:
        if self.history_size < 0 or self.history_ttl <= 0 or self.meta_ttl <= 0:
            raise ValueError("history_size must be >= 0, history_ttl and meta_ttl > 0")
        if self.pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        if not self.prefix or any(c in self.prefix for c in "{} "):
            raise ValueError("prefix must be non-empty, without braces or spaces")


class RedisBroker(Broker):
    kind = "redis"
    contiguous_offsets = True

    def __init__(self, url: str, options: RedisOptions | None = None) -> None:
        self.options = options or RedisOptions()
        # Our options live in the query string; redis-py must not see them.
        parts = urlsplit(url)
        self._redis_url = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        # Commands: no automatic retry, because a publish whose reply was lost
        # may have happened; retrying it would publish twice.  The caller
        # (an HTTP client, the hub's resync loop) retries instead.
        # A blocking pool: when every connection is busy (a reconnect storm
        # resuming thousands of clients at once), a command waits for one
        # instead of failing with "Too many connections" (redis-py's default
        # pool refuses beyond 100).
        self._pool = BlockingConnectionPool.from_url(
            self._redis_url,
            max_connections=self.options.pool_size,
            timeout=self.options.command_timeout,
            socket_timeout=self.options.command_timeout,
            socket_connect_timeout=self.options.connect_timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self._client: Redis = Redis(connection_pool=self._pool)
        self._publish_script = self._client.register_script(PUBLISH_SCRIPT)
        self._history_script = self._client.register_script(HISTORY_SCRIPT)
        self._history_ms = int(self.options.history_ttl * 1000)
        # The epoch must outlive the history, or a returning client would see
        # a new epoch where "history trimmed" is the truth.
        self._meta_ms = int(max(self.options.meta_ttl, self.options.history_ttl) * 1000)
        self._listener: BrokerListener = NullListener()
        self._live: _LiveConnection | None = None

    # -- keys ------------------------------------------------------------------------

    def _keys(self, channel: str) -> list[str]:
        prefix = self.options.prefix
        return [f"{prefix}:{{{channel}}}:meta", f"{prefix}:{{{channel}}}:stream"]

    def live_channel(self, channel: str) -> str:
        return f"{self.options.prefix}:{{{channel}}}:live"

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self, listener: BrokerListener) -> None:
        if self._live is not None:
            return
        self._listener = listener
        live = _LiveConnection(self)
        await live.start()
        self._live = live

    async def close(self) -> None:
        live, self._live = self._live, None
        if live is not None:
            await live.close()
        self._listener = NullListener()
        try:
            await self._client.aclose()
            await self._pool.aclose()
        except _REDIS_ERRORS:
            pass

    # -- commands ----------------------------------------------------------------------

    async def publish(self, channel: str, data: str, *, event: str | None = None) -> Publication:
        args: list[str | int] = [
            self.live_channel(channel),
            data,
            event or "",
            self.options.history_size,
            self._history_ms,
            self._meta_ms,
            new_epoch(),
        ]
        try:
            epoch, offset, time_ms = await self._publish_script(keys=self._keys(channel), args=args)
        except _REDIS_ERRORS as exc:
            raise BrokerUnavailable(f"redis publish failed: {exc}") from exc
        return Publication(
            channel=channel,
            epoch=_text(epoch),
            offset=int(offset),
            data=data,
            event=event,
            time_ms=int(time_ms),
        )

    async def history(self, channel: str, since: int | None, limit: int) -> History:
        args: list[str | int] = [
            new_epoch(),
            -1 if since is None else since,
            max(limit, 0),
            self.options.history_size,
            self._history_ms,
            self._meta_ms,
        ]
        try:
            epoch, top, complete, entries = await self._history_script(keys=self._keys(channel), args=args)
        except _REDIS_ERRORS as exc:
            raise BrokerUnavailable(f"redis history read failed: {exc}") from exc
        epoch_text = _text(epoch)
        publications = [
            Publication(
                channel=channel,
                epoch=epoch_text,
                offset=offset,
                data=normalize_data(data),
                event=_event_type(event),
                time_ms=time_ms,
            )
            for offset, time_ms, event, data in unpack_entries(entries, max(limit, 0))
        ]
        return History(
            top=Position(epoch_text, int(top)),
            publications=publications,
            complete=since is None or bool(int(complete)),
        )

    async def subscribe(self, channel: str) -> None:
        live = self._live
        if live is None:
            raise BrokerUnavailable("redis broker is not started")
        await live.subscribe(channel)

    async def unsubscribe(self, channel: str) -> None:
        if self._live is not None:
            await self._live.unsubscribe(channel)

    async def ping(self) -> None:
        try:
            await self._client.ping()
        except _REDIS_ERRORS as exc:
            raise BrokerUnavailable(f"redis ping failed: {exc}") from exc
        live = self._live
        if live is not None and not live.healthy:
            # Redis answers again but this node cannot receive live events
            # yet: not ready.  Skip the rest of the reconnect backoff.
            live.wake()
            raise BrokerUnavailable("redis live connection is down; reconnecting")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _event_type(raw: bytes) -> str | None:
    if not raw:
        return None
    try:
        return validate_event_type(raw.decode("utf-8", errors="replace"))
    except InvalidEventType:
        # A foreign publisher's event type that would break SSE framing or
        # impersonate a Fanline event: keep the data, drop the type.
        log.warning("dropping invalid event type from a foreign publisher", extra={"event": raw[:80]})
        return None


def unpack_entries(packed: bytes, limit: int) -> list[tuple[int, int, bytes, bytes]]:
    """Split the history script's packed entries into (offset, time_ms, event, data)."""
    out: list[tuple[int, int, bytes, bytes]] = []
    view = memoryview(packed)
    position = 0
    while position < len(packed) and len(out) < limit:
        newline = packed.index(b"\n", position)
        offset, time_ms, event_length, data_length = packed[position:newline].split(b":")
        event_end = newline + 1 + int(event_length)
        data_end = event_end + int(data_length)
        out.append((int(offset), int(time_ms), bytes(view[newline + 1 : event_end]), bytes(view[event_end:data_end])))
        position = data_end
    return out


def parse_live_payload(channel: str, payload: bytes) -> Publication | None:
    """Decode ``1:<epoch>:<offset>:<time_ms>:<event>\\n<data>``; None if malformed."""
    head, newline, data = payload.partition(b"\n")
    parts = head.split(b":")
    if not newline or len(parts) != 5 or parts[0] != _PAYLOAD_VERSION:
        return None
    try:
        epoch = parts[1].decode("ascii")
        offset = int(parts[2])
        time_ms = int(parts[3] or 0)
    except ValueError:
        return None
    if not epoch or not epoch.isalnum() or offset < 1:
        return None
    return Publication(
        channel=channel,
        epoch=epoch,
        offset=offset,
        data=normalize_data(data),
        event=_event_type(parts[4]),
        time_ms=time_ms,
    )


class _LiveConnection:
    """The node's one pub/sub connection, its reader task and its reconnects.

    Subscription changes are matched to Redis's confirmations in order, per
    channel: Redis answers every SUBSCRIBE and UNSUBSCRIBE once per channel,
    in the order sent, so ``subscribe()`` can return only once Redis is
    really delivering the channel to us.
    """

    def __init__(self, broker: RedisBroker) -> None:
        self._broker = broker
        self._options = broker.options
        self._pool = ConnectionPool.from_url(
            broker._redis_url,
            socket_timeout=None,
            socket_connect_timeout=self._options.connect_timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
            client_name="fanline-live",
            # RESP2: pub/sub messages are plain replies in order with the
            # SUBSCRIBE confirmations, not RESP3 pushes routed elsewhere.
            protocol=2,
        )
        # Channels this node wants, by their pub/sub name.
        self._wanted: dict[bytes, str] = {}
        self._confirmations: dict[bytes, deque[asyncio.Future[None]]] = {}
        self._connection: AbstractConnection | None = None
        # Channels of the SUBSCRIBE sent right after a reconnect; once all
        # are confirmed, the listener is told to re-read history.
        self._restoring: set[bytes] | None = None
        self._task: asyncio.Task[None] | None = None
        self._pinger: asyncio.Task[None] | None = None
        # Set when Redis is known to answer again, to cut a reconnect backoff short.
        self._wake = asyncio.Event()

    @property
    def healthy(self) -> bool:
        """Connected, and every wanted channel subscribed after the last reconnect."""
        connection = self._connection
        return connection is not None and connection.is_connected and self._restoring is None

    def wake(self) -> None:
        self._wake.set()

    @property
    def _listener(self) -> BrokerListener:
        return self._broker._listener

    async def start(self) -> None:
        connection = await self._connect()
        self._connection = connection
        self._listener.on_availability(True)
        self._task = asyncio.create_task(self._run(connection), name="redis-live")

    async def close(self) -> None:
        for task in (self._task, self._pinger):
            if task is not None:
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, *_REDIS_ERRORS):
                    pass
        self._task = self._pinger = None
        await self._drop_connection()
        await self._pool.aclose()

    async def _connect(self) -> AbstractConnection:
        connection: AbstractConnection = self._pool.make_connection()  # type: ignore[no-untyped-call]
        try:
            await connection.connect()  # type: ignore[no-untyped-call]
        except _REDIS_ERRORS as exc:
            await connection.disconnect(nowait=True)
            raise BrokerUnavailable(f"redis live connection failed: {exc}") from exc
        return connection

    # -- subscriptions -------------------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        name = self._broker.live_channel(channel).encode()
        # Kept in _wanted even on failure below only if the connection is
        # down: the reconnect then subscribes it and resyncs.
        self._wanted[name] = channel
        try:
            await self._change("SUBSCRIBE", name)
        except BrokerUnavailable:
            self._wanted.pop(name, None)
            raise

    async def unsubscribe(self, channel: str) -> None:
        name = self._broker.live_channel(channel).encode()
        self._wanted.pop(name, None)
        try:
            await self._change("UNSUBSCRIBE", name)
        except BrokerUnavailable:
            pass  # a lost connection takes the subscription with it

    async def _change(self, command: str, name: bytes) -> None:
        """Send (UN)SUBSCRIBE and wait until Redis confirms it."""
        connection = self._connection
        # is_connected matters: redis-py's send would silently reconnect a
        # dropped connection, and nobody would read the new one.
        if connection is None or not connection.is_connected:
            raise BrokerUnavailable("redis live connection is down")
        confirmed = self._expect(name)
        try:
            async with asyncio.timeout(self._options.command_timeout):
                await connection.send_command(command, name)
                await asyncio.shield(confirmed)
        except (*_REDIS_ERRORS, BrokerUnavailable) as exc:
            raise BrokerUnavailable(f"redis {command.lower()} failed: {exc}") from exc

    def _expect(self, name: bytes) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._confirmations.setdefault(name, deque()).append(future)
        return future

    def _confirm(self, name: bytes) -> None:
        waiting = self._confirmations.get(name)
        if waiting:
            future = waiting.popleft()
            if not waiting:
                del self._confirmations[name]
            if not future.done():
                future.set_result(None)

    # -- the reader ------------------------------------------------------------------------

    async def _run(self, connection: AbstractConnection | None) -> None:
        delay = 0.1
        while True:
            if connection is None:
                try:
                    connection = await self._connect()
                    self._connection = connection
                    await self._restore(connection)
                except (*_REDIS_ERRORS, BrokerUnavailable) as exc:
                    await self._drop_connection()
                    connection = None
                    wait = delay * random.uniform(0.5, 1.5)
                    log.info("redis live reconnect failed", extra={"error": str(exc), "retry_in": round(wait, 2)})
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await self._wake.wait()
                    delay = min(delay * 2, self._options.reconnect_max_delay)
                    continue
            self._pinger = asyncio.create_task(self._ping_forever(connection), name="redis-live-ping")
            try:
                await self._read_forever(connection)
            except _REDIS_ERRORS as exc:
                log.warning("redis live connection lost", extra={"error": str(exc)})
            finally:
                self._pinger.cancel()
                try:
                    await self._pinger
                except (asyncio.CancelledError, *_REDIS_ERRORS):
                    pass
                self._pinger = None
            await self._drop_connection()
            self._listener.on_availability(False)
            # The idle command connections went to the same server; close them
            # now, or the first commands after a restart fail on dead sockets.
            with contextlib.suppress(*_REDIS_ERRORS):
                await self._broker._client.connection_pool.disconnect(inuse_connections=False)
            connection = None
            delay = 0.1

    async def _restore(self, connection: AbstractConnection) -> None:
        """Subscribe everything wanted on a fresh connection; resync once confirmed."""
        names = list(self._wanted)
        self._restoring = set(names)
        for start in range(0, len(names), _SUBSCRIBE_BATCH):
            batch = names[start : start + _SUBSCRIBE_BATCH]
            for name in batch:
                self._expect(name)
            await connection.send_command("SUBSCRIBE", *batch)
        if not names:
            self._restored()

    def _restored(self) -> None:
        self._restoring = None
        log.info("redis live connection restored", extra={"channels": len(self._wanted)})
        self._listener.on_availability(True)
        # Whatever was published while we were away reached nobody here.
        self._listener.on_resync(None)

    async def _ping_forever(self, connection: AbstractConnection) -> None:
        while connection.is_connected:
            await asyncio.sleep(self._options.live_ping_interval)
            if connection.is_connected:
                await connection.send_command("PING")

    async def _read_forever(self, connection: AbstractConnection) -> None:
        silence = 3 * self._options.live_ping_interval
        while True:
            response = await connection.read_response(timeout=silence, disconnect_on_error=True)
            if response is None:
                raise TimeoutError(f"no answer from redis for {silence:.1f}s")
            self._dispatch(response)

    def _dispatch(self, response: Any) -> None:
        if not isinstance(response, list) or not response:
            return
        kind = response[0]
        if kind == b"message" and len(response) == 3:
            channel = self._wanted.get(response[1])
            if channel is None:
                return  # unsubscribed meanwhile
            publication = parse_live_payload(channel, response[2])
            if publication is None:
                log.warning("malformed payload on a live channel", extra={"channel": channel})
                return
            self._listener.on_publication(publication)
        elif kind in (b"subscribe", b"unsubscribe") and len(response) == 3:
            name = response[1]
            self._confirm(name)
            restoring = self._restoring
            if kind == b"subscribe" and restoring is not None:
                restoring.discard(name)
                if not restoring:
                    self._restored()

    async def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        self._restoring = None
        failed = BrokerUnavailable("redis live connection lost")
        for waiting in self._confirmations.values():
            for future in waiting:
                if not future.done():
                    future.set_exception(failed)
                    # Marks the exception retrieved when nobody awaits it.
                    future.exception()
        self._confirmations.clear()
        if connection is not None:
            # nowait: the socket is dead or about to be; do not wait on it.
            try:
                await connection.disconnect(nowait=True)
            except _REDIS_ERRORS:
                pass


def from_url(url: str) -> RedisBroker:
    """``redis://host:6379/0?history_size=1000&history_ttl=600&meta_ttl=86400&prefix=fanline``."""
    from . import UnknownBrokerURL, url_options

    options = url_options(
        url,
        {
            "history_size": int,
            "history_ttl": float,
            "meta_ttl": float,
            "prefix": str,
            "command_timeout": float,
            "connect_timeout": float,
            "live_ping_interval": float,
            "pool_size": int,
        },
    )
    for key in ("history_ttl", "meta_ttl", "command_timeout", "connect_timeout", "live_ping_interval"):
        value = options.get(key)
        if isinstance(value, float) and not math.isfinite(value):
            raise UnknownBrokerURL(f"broker URL option {key} must be finite")
    try:
        return RedisBroker(url, RedisOptions(**options))  # type: ignore[arg-type]
    except ValueError as exc:
        raise UnknownBrokerURL(f"redis broker URL: {exc}") from None


__all__ = ["RedisBroker", "RedisOptions", "from_url", "new_epoch", "parse_live_payload", "unpack_entries"]
