"""The Redis adapter's live side: one pub/sub connection per node, driven by hand.

redis-py's ``PubSub`` reconnects and resubscribes silently and loses what was
published meanwhile (redis-py #3979).  Here every reconnect is visible: the
connection is marked down (``on_availability(False)``), re-established with
jittered backoff, every wanted channel is subscribed again, and once Redis
has confirmed them all the listener hears ``on_resync(None)``, so the hub
re-reads history from the last position it delivered.

Subscription changes are matched to Redis's confirmations in order, per
channel: Redis answers every SUBSCRIBE and UNSUBSCRIBE once per channel, in
the order sent, so :meth:`LiveConnection.subscribe` returns only once Redis
really delivers the channel to this node.  A ping every
``live_ping_interval`` and a read deadline of three intervals notice a
half-open connection within seconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from redis.asyncio import ConnectionPool
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .backoff import Backoff, wait_until_set
from .base import BrokerListener, BrokerUnavailable
from .foreign import stored_publication
from .library_errors import LibraryErrors
from .redis_scripts import ChannelKeys
from .tasks import TaskSet
from .types import Publication

if TYPE_CHECKING:
    from .redis import RedisOptions

log = logging.getLogger("fanline.broker.redis")

#: What redis-py raises when Redis did not do it: connection loss, timeouts,
#: a server still loading its data, script errors.
REDIS = LibraryErrors("redis", (RedisError, OSError, TimeoutError))

_PAYLOAD_VERSION = b"1"
# Channels per SUBSCRIBE command when restoring a connection, to keep single
# commands small.
_SUBSCRIBE_BATCH = 500


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
    return stored_publication(channel, epoch, offset, data, parts[4], time_ms)


class LiveConnection:
    """The node's one pub/sub connection, its reader task and its reconnects."""

    def __init__(
        self, redis_url: str, options: RedisOptions, listener: BrokerListener, commands: ConnectionPool
    ) -> None:
        self._options = options
        self._listener = listener
        # The adapter's command connections go to the same server: when this
        # connection is lost, their idle ones are closed too.
        self._commands = commands
        self._pool = ConnectionPool.from_url(
            redis_url,
            socket_timeout=None,
            socket_connect_timeout=options.connect_timeout,
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
        self._tasks = TaskSet()
        # Set when Redis is known to answer again, to cut a reconnect backoff short.
        self._wake = asyncio.Event()

    @property
    def healthy(self) -> bool:
        """Connected, and every wanted channel subscribed after the last reconnect."""
        connection = self._connection
        return connection is not None and connection.is_connected and self._restoring is None

    def wake(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        connection = await self._connect()
        self._connection = connection
        self._listener.on_availability(True)
        self._tasks.spawn(self._run(connection), "redis-live")

    async def close(self) -> None:
        await self._tasks.cancel_all()
        await self._drop_connection()
        await self._pool.aclose()

    async def _connect(self) -> AbstractConnection:
        connection: AbstractConnection = self._pool.make_connection()  # type: ignore[no-untyped-call]
        with REDIS.unavailable("live connection"):
            try:
                await connection.connect()  # type: ignore[no-untyped-call]
            except REDIS.errors:
                await connection.disconnect(nowait=True)
                raise
        return connection

    # -- subscriptions -------------------------------------------------------------------

    def _name(self, channel: str) -> bytes:
        return ChannelKeys(self._options.prefix, channel).live.encode()

    async def subscribe(self, channel: str) -> None:
        name = self._name(channel)
        # Kept in _wanted even on failure below only if the connection is
        # down: the reconnect then subscribes it and resyncs.
        self._wanted[name] = channel
        try:
            await self._change("SUBSCRIBE", name)
        except BrokerUnavailable:
            self._wanted.pop(name, None)
            raise

    async def unsubscribe(self, channel: str) -> None:
        name = self._name(channel)
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
        with REDIS.unavailable(command.lower()):
            async with asyncio.timeout(self._options.command_timeout):
                await connection.send_command(command, name)
                await asyncio.shield(confirmed)

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
        backoff = Backoff(first=0.1, most=self._options.reconnect_max_delay)
        while True:
            if connection is None:
                try:
                    connection = await self._connect()
                    self._connection = connection
                    await self._restore(connection)
                except REDIS.errors + (BrokerUnavailable,) as exc:
                    await self._drop_connection()
                    connection = None
                    wait = backoff.next()
                    log.info("redis live reconnect failed", extra={"error": str(exc), "retry_in": round(wait, 2)})
                    self._wake.clear()
                    await wait_until_set(self._wake, wait)
                    continue
            pinger = self._tasks.spawn(self._ping_forever(connection), "redis-live-ping")
            try:
                await self._read_forever(connection)
            except REDIS.errors as exc:
                log.warning("redis live connection lost", extra={"error": str(exc)})
            finally:
                await self._tasks.cancel(pinger)
            await self._drop_connection()
            self._listener.on_availability(False)
            # The idle command connections went to the same server; close them
            # now, or the first commands after a restart fail on dead sockets.
            with REDIS.ignored():
                await self._commands.disconnect(inuse_connections=False)
            connection = None
            backoff.reset()

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
            with REDIS.ignored():
                await connection.disconnect(nowait=True)
