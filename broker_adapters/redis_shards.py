"""The Redis Cluster adapter's live side: sharded pub/sub, one connection per shard, driven by hand.

Every channel's pub/sub name (``P:{C}:live``) is a *shard channel*: the
publish script ``SPUBLISH``es it on the primary that owns the channel's slot,
and only that shard carries it.  A node holds one connection to each primary
that owns a channel it serves (:class:`Shard`), and ``SSUBSCRIBE``s there the
channels of that primary's slots.  Live traffic therefore scales with the
shards, unlike classic ``PUBLISH``, which every cluster node relays to every
other.

redis-py 8.1's ``ClusterPubSub`` polls the shard connections one after the
other and resubscribes silently after a reconnect, losing what was published
meanwhile (redis-py #3979); so, as on a single Redis
(broker_adapters/redis_live.py), the connections are driven here and every
possible gap is visible:

- a shard connection lost and re-established: its channels are subscribed
  again, and once Redis confirmed them all the listener hears
  ``on_resync(those channels)``;
- a slot moved to another primary (a migration: the old owner pushes
  ``sunsubscribe``; a failover: the old owner is gone; ``MOVED`` in reply to
  ``SSUBSCRIBE``): the cluster's slot map is read again (``CLUSTER SLOTS``),
  the channel is subscribed on its new owner and resynced once confirmed.

Replies are matched to commands in order (:class:`_Command`): Redis answers
each ``SSUBSCRIBE``/``SUNSUBSCRIBE`` with one confirmation per channel, or
with one error for the whole command; an ``sunsubscribe`` that answers no
command of ours is Redis telling us the slot left that node.

A shard that cannot be reached affects only its own channels: their
subscribes fail with ``BrokerUnavailable`` (clients retry) and their live
delivery pauses until the shard (or the replica that replaced it) answers,
then resumes from history.  The node stays available while any primary
answers (``ping``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from redis.asyncio.connection import AbstractConnection, Connection, SSLConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import MovedError, RedisClusterException, RedisError, ResponseError

from .backoff import Backoff, wait_until_set
from .base import BrokerListener, BrokerUnavailable
from .library_errors import LibraryErrors
from .redis_live import parse_live_payload
from .redis_scripts import ChannelKeys
from .redis_slots import key_slot, owner_table, parse_cluster_slots, split_address
from .tasks import TaskSet

if TYPE_CHECKING:
    from .redis import RedisOptions

log = logging.getLogger("fanline.broker.redis_cluster")

#: redis-py's cluster errors are not all RedisErrors.
REDIS_CLUSTER = LibraryErrors("redis cluster", (RedisError, RedisClusterException, OSError, TimeoutError))

# Channels per SSUBSCRIBE: one slot's channels only (Redis refuses CROSSSLOT), and small commands.
_SUBSCRIBE_BATCH = 500
# How often the slot map is read even when nothing went wrong: notices a
# failover or migration on a shard this node holds no connection to.
_TOPOLOGY_INTERVAL = 5.0


class Moved(BrokerUnavailable):
    """The shard answered MOVED: the slot map is out of date."""


@dataclass(slots=True)
class _Command:
    """One SSUBSCRIBE/SUNSUBSCRIBE sent, waiting for a confirmation per channel or one error."""

    kind: bytes  # b"ssubscribe" or b"sunsubscribe"
    waiting: dict[bytes, asyncio.Future[None]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    """How to open a connection to any node of the cluster (from the URL)."""

    username: str | None
    password: str | None
    tls: bool
    connect_timeout: float

    def open(self, address: str) -> AbstractConnection:
        host, port = split_address(address)
        kind: type[Connection] = SSLConnection if self.tls else Connection
        connection: AbstractConnection = kind(
            host=host,
            port=port,
            username=self.username,
            password=self.password,
            socket_timeout=None,
            socket_connect_timeout=self.connect_timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
            client_name="fanline-live",
            # RESP2: pub/sub messages are plain replies, in order with the confirmations.
            protocol=2,
        )
        return connection


class Shard:
    """This node's one live connection to one primary, and the shard channels subscribed there."""

    def __init__(self, address: str, live: ShardedLive) -> None:
        self.address = address
        self._live = live
        self._options = live.options
        #: Shard channels this connection must carry (name -> channel).
        self.names: dict[bytes, str] = {}
        self._connection: AbstractConnection | None = None
        self._commands: deque[_Command] = deque()
        self._restoring: set[bytes] | None = None
        self._connected = asyncio.Event()
        self._wake = asyncio.Event()
        self._tasks = TaskSet()
        self._closed = False

    @property
    def healthy(self) -> bool:
        connection = self._connection
        return connection is not None and connection.is_connected and self._restoring is None

    def start(self) -> None:
        self._tasks.spawn(self._run(), f"redis-shard-{self.address}")

    def wake(self) -> None:
        self._wake.set()

    async def close(self) -> None:
        self._closed = True
        await self._tasks.cancel_all()
        await self._drop()

    # -- subscription changes ---------------------------------------------------------

    async def subscribe(self, names: list[bytes], *, resync: bool) -> None:
        """SSUBSCRIBE ``names`` (one slot's) once connected; wait for Redis to confirm.

        Raises :class:`Moved` when this primary no longer owns the slot,
        :class:`BrokerUnavailable` when it cannot be reached in time.
        With ``resync``, the listener re-reads the channels once confirmed:
        they were live elsewhere until now and may have missed something.
        """
        timeout = self._options.command_timeout
        if not await wait_until_set(self._connected, timeout):
            raise BrokerUnavailable(f"redis shard {self.address} is not reachable")
        await self._send(b"ssubscribe", names, timeout)
        if resync:
            self._live.resync([self.names[n] for n in names if n in self.names])

    async def unsubscribe(self, name: bytes) -> None:
        self.names.pop(name, None)
        if not self._connected.is_set():
            return  # a lost connection takes the subscription with it
        try:
            await self._send(b"sunsubscribe", [name], self._options.command_timeout)
        except BrokerUnavailable:
            pass

    async def _send(self, kind: bytes, names: list[bytes], timeout: float) -> None:
        connection = self._connection
        if connection is None or not connection.is_connected:
            raise BrokerUnavailable(f"redis shard {self.address} connection is down")
        command = self._expect(kind, names)
        with REDIS_CLUSTER.unavailable(kind.decode()):
            async with asyncio.timeout(timeout):
                await connection.send_command(kind.decode().upper(), *names)
                await asyncio.gather(*(asyncio.shield(f) for f in command.waiting.values()))

    def _expect(self, kind: bytes, names: list[bytes]) -> _Command:
        loop = asyncio.get_running_loop()
        command = _Command(kind, {name: loop.create_future() for name in names})
        self._commands.append(command)
        return command

    # -- the reader ---------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = Backoff(first=0.1, most=self._options.reconnect_max_delay)
        first = True
        while not self._closed:
            try:
                connection = self._live.settings.open(self.address)
                with REDIS_CLUSTER.unavailable(f"live connection to {self.address}"):
                    try:
                        await connection.connect()  # type: ignore[no-untyped-call]
                    except REDIS_CLUSTER.errors:
                        await connection.disconnect(nowait=True)
                        raise
            except BrokerUnavailable as exc:
                wait = backoff.next()
                log.info("redis shard reconnect failed", extra={"shard": self.address, "error": str(exc)})
                # Perhaps a replica took over: read the slot map again.
                self._live.topology_stale()
                self._wake.clear()
                await wait_until_set(self._wake, wait)
                continue
            self._connection = connection
            self._connected.set()
            pinger = self._tasks.spawn(self._ping_forever(connection), f"redis-shard-ping-{self.address}")
            try:
                self._restore(connection, resync=not first)
                first = False
                await self._read_forever(connection)
            except REDIS_CLUSTER.errors + (BrokerUnavailable,) as exc:
                log.warning("redis shard connection lost", extra={"shard": self.address, "error": str(exc)})
            finally:
                await self._tasks.cancel(pinger)
            await self._drop()
            self._live.topology_stale()
            backoff.reset()

    def _restore(self, connection: AbstractConnection, *, resync: bool) -> None:
        """SSUBSCRIBE everything this shard carries, one slot at a time; resync once all are confirmed."""
        by_slot: dict[int, list[bytes]] = {}
        for name in self.names:
            by_slot.setdefault(key_slot(name), []).append(name)
        if not by_slot:
            self._restoring = None
            return
        self._restoring = set(self.names)
        channels = list(self.names.values())

        async def restore() -> None:
            for names in by_slot.values():
                for start in range(0, len(names), _SUBSCRIBE_BATCH):
                    batch = names[start : start + _SUBSCRIBE_BATCH]
                    try:
                        await self._send(b"ssubscribe", batch, self._options.command_timeout)
                    except Moved:
                        for name in batch:
                            self._live.moved(name, self)
            self._restoring = None
            log.info("redis shard restored", extra={"shard": self.address, "channels": len(channels)})
            if resync:
                # Whatever was published while the connection was down reached nobody here.
                self._live.resync(channels)

        self._tasks.spawn(self._guarded(restore()), f"redis-shard-restore-{self.address}")

    async def _guarded(self, coro: Any) -> None:
        try:
            await coro
        except REDIS_CLUSTER.errors + (BrokerUnavailable,) as exc:
            # The reader notices the dead connection and starts over.
            log.info("redis shard restore interrupted", extra={"shard": self.address, "error": str(exc)})
            connection = self._connection
            if connection is not None:
                with REDIS_CLUSTER.ignored():
                    await connection.disconnect(nowait=True)

    async def _ping_forever(self, connection: AbstractConnection) -> None:
        while connection.is_connected:
            await asyncio.sleep(self._options.live_ping_interval)
            if connection.is_connected:
                await connection.send_command("PING")

    async def _read_forever(self, connection: AbstractConnection) -> None:
        silence = 3 * self._options.live_ping_interval
        while True:
            try:
                response = await connection.read_response(timeout=silence, disconnect_on_error=True)
            except ResponseError as exc:
                self._error(exc)
                continue
            if response is None:
                raise TimeoutError(f"no answer from redis shard {self.address} for {silence:.1f}s")
            self._dispatch(response)

    def _error(self, exc: ResponseError) -> None:
        """An error answers the oldest command still waiting: fail all its channels."""
        if not self._commands:
            log.warning("unexpected error on a redis shard connection", extra={"error": str(exc)})
            return
        command = self._commands.popleft()
        failure: BrokerUnavailable = (
            Moved(f"redis shard {self.address}: {exc}")
            if isinstance(exc, MovedError) or str(exc).startswith("MOVED")
            else BrokerUnavailable(f"redis shard {self.address}: {exc}")
        )
        for future in command.waiting.values():
            if not future.done():
                future.set_exception(failure)
                future.exception()

    def _dispatch(self, response: Any) -> None:
        if not isinstance(response, list) or len(response) != 3:
            return
        kind, name = response[0], response[1]
        if kind == b"smessage":
            channel = self.names.get(name)
            if channel is None:
                return  # unsubscribed meanwhile
            publication = parse_live_payload(channel, response[2])
            if publication is None:
                log.warning("malformed payload on a live channel", extra={"channel": channel})
                return
            self._live.listener.on_publication(publication)
        elif kind in (b"ssubscribe", b"sunsubscribe"):
            head = self._commands[0] if self._commands else None
            if head is not None and head.kind == kind and name in head.waiting:
                future = head.waiting.pop(name)
                if not head.waiting:
                    self._commands.popleft()
                if not future.done():
                    future.set_result(None)
            elif kind == b"sunsubscribe" and name in self.names:
                # Not an answer: Redis says the slot left this primary.
                self._live.moved(name, self)

    async def _drop(self) -> None:
        connection, self._connection = self._connection, None
        self._connected.clear()
        self._restoring = None
        failed = BrokerUnavailable(f"redis shard {self.address} connection lost")
        for command in self._commands:
            for future in command.waiting.values():
                if not future.done():
                    future.set_exception(failed)
                    future.exception()
        self._commands.clear()
        if connection is not None:
            with REDIS_CLUSTER.ignored():
                await connection.disconnect(nowait=True)


class ShardedLive:
    """Every shard connection of this node, the slot map that routes channels to them, and its refreshes."""

    def __init__(
        self,
        seeds: list[str],
        options: RedisOptions,
        listener: BrokerListener,
        settings: ConnectionSettings,
        on_topology: Callable[[], None] | None = None,
    ) -> None:
        self.options = options
        self.listener = listener
        self.settings = settings
        self._seeds = seeds
        self._on_topology = on_topology
        self._owner: list[str | None] = []
        #: Wanted shard channels: name -> channel.
        self._wanted: dict[bytes, str] = {}
        #: Which shard each wanted name is assigned to.
        self._where: dict[bytes, Shard] = {}
        self._shards: dict[str, Shard] = {}
        self._stale = asyncio.Event()
        self._tasks = TaskSet()

    @property
    def shards(self) -> int:
        """Open shard connections (for tests and metrics)."""
        return len(self._shards)

    def healthy_for(self, channel: str) -> bool:
        shard = self._where.get(self._name(channel))
        return shard is not None and shard.healthy

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        await self.refresh()
        self._tasks.spawn(self._topology_forever(), "redis-cluster-topology")

    async def close(self) -> None:
        await self._tasks.cancel_all()
        shards, self._shards = list(self._shards.values()), {}
        for shard in shards:
            await shard.close()
        self._where.clear()

    def wake_if_unhealthy(self) -> None:
        """The cluster answers: cut the reconnect backoff of shards that are down short."""
        unhealthy = [shard for shard in self._shards.values() if not shard.healthy]
        for shard in unhealthy:
            shard.wake()
        if unhealthy or any(name not in self._where for name in self._wanted):
            self._stale.set()

    # -- subscriptions -------------------------------------------------------------------

    def _name(self, channel: str) -> bytes:
        return ChannelKeys(self.options.prefix, channel).live.encode()

    async def subscribe(self, channel: str) -> None:
        name = self._name(channel)
        self._wanted[name] = channel
        try:
            for attempt in range(4):
                shard = self._assign(name)
                try:
                    await shard.subscribe([name], resync=False)
                    return
                except Moved:
                    self._unassign(name)
                    if attempt == 3:
                        raise
                    await self.refresh()
        except BrokerUnavailable:
            if self._wanted.get(name) == channel:
                del self._wanted[name]
                self._unassign(name)
            raise

    async def unsubscribe(self, channel: str) -> None:
        name = self._name(channel)
        self._wanted.pop(name, None)
        shard = self._where.pop(name, None)
        if shard is not None:
            await shard.unsubscribe(name)
            self._close_if_idle(shard)

    def resync(self, channels: list[str]) -> None:
        wanted = [c for c in channels if self._wanted.get(self._name(c)) == c]
        if wanted:
            self.listener.on_resync(wanted)

    def moved(self, name: bytes, shard: Shard) -> None:
        """``name`` is no longer carried by ``shard``: route it again, then resync it."""
        if self._where.get(name) is shard:
            self._unassign(name)
        self.topology_stale()

    def topology_stale(self) -> None:
        self._stale.set()

    # -- routing -----------------------------------------------------------------------------

    def _owner_of(self, name: bytes) -> str:
        owner = self._owner[key_slot(name)] if self._owner else None
        if owner is None:
            raise BrokerUnavailable("no redis primary serves this channel's slot now")
        return owner

    def _assign(self, name: bytes) -> Shard:
        address = self._owner_of(name)
        shard = self._shards.get(address)
        if shard is None:
            shard = self._shards[address] = Shard(address, self)
            shard.start()
        previous = self._where.get(name)
        if previous is not None and previous is not shard:
            previous.names.pop(name, None)
        self._where[name] = shard
        shard.names[name] = self._wanted[name]
        return shard

    def _unassign(self, name: bytes) -> None:
        shard = self._where.pop(name, None)
        if shard is not None:
            shard.names.pop(name, None)

    def _close_if_idle(self, shard: Shard) -> None:
        if not shard.names and self._shards.get(shard.address) is shard:
            del self._shards[shard.address]
            self._tasks.spawn(shard.close(), f"redis-shard-close-{shard.address}")

    # -- topology ----------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Read the slot map from any node that answers; then move channels whose slot moved."""
        candidates = list(dict.fromkeys([*self._shards, *self._seeds, *(o for o in self._owner if o)]))
        last: BaseException | None = None
        for address in candidates:
            connection = self.settings.open(address)
            try:
                async with asyncio.timeout(self.options.command_timeout):
                    await connection.connect()  # type: ignore[no-untyped-call]
                    await connection.send_command("CLUSTER", "SLOTS")
                    reply = await connection.read_response()
            except REDIS_CLUSTER.errors as exc:
                last = exc
                continue
            finally:
                with REDIS_CLUSTER.ignored():
                    await connection.disconnect(nowait=True)
            host, _ = split_address(address)
            self._owner = owner_table(parse_cluster_slots(reply), host)
            self._reconcile()
            if self._on_topology is not None:
                self._on_topology()
            return
        raise BrokerUnavailable(f"no redis cluster node answers CLUSTER SLOTS: {last}")

    def _reconcile(self) -> None:
        """Subscribe every wanted channel on the primary that owns its slot now."""
        moves: dict[tuple[Shard, int], list[bytes]] = {}
        for name in list(self._wanted):
            owner = self._owner[key_slot(name)]
            current = self._where.get(name)
            if owner is None or (current is not None and current.address == owner):
                continue
            if current is not None:
                self._tasks.spawn(current.unsubscribe(name), f"redis-shard-leave-{current.address}")
            shard = self._assign(name)
            moves.setdefault((shard, key_slot(name)), []).append(name)
        for (shard, _), names in moves.items():
            log.info("redis shard channels moved", extra={"shard": shard.address, "channels": len(names)})
            self._tasks.spawn(self._move(shard, names), f"redis-shard-move-{shard.address}")
        for shard in list(self._shards.values()):
            self._close_if_idle(shard)

    async def _move(self, shard: Shard, names: list[bytes]) -> None:
        try:
            await shard.subscribe(names, resync=True)
        except BrokerUnavailable as exc:
            # Not there yet (a failover in progress, an old map): try again after the next refresh.
            log.info("redis shard move deferred", extra={"shard": shard.address, "error": str(exc)})
            for name in names:
                if self._where.get(name) is shard:
                    self._unassign(name)
            self.topology_stale()

    async def _topology_forever(self) -> None:
        backoff = Backoff(first=0.1, most=self.options.reconnect_max_delay)
        while True:
            await wait_until_set(self._stale, _TOPOLOGY_INTERVAL)
            self._stale.clear()
            try:
                await self.refresh()
                backoff.reset()
            except BrokerUnavailable as exc:
                log.info("redis cluster topology refresh failed", extra={"error": str(exc)})
                await asyncio.sleep(backoff.next())
                self._stale.set()
            if any(name not in self._where for name in self._wanted):
                # Some channel has no shard yet: look again soon.
                await asyncio.sleep(backoff.next())
                self._stale.set()
