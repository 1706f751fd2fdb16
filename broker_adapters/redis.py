"""The Redis broker: a capped stream per channel for history, pub/sub for fan-out.

The layout follows Centrifugo's Redis engine (see broker_adapters/redis_scripts.py
for the keys and scripts).  Publishing is one Lua script, so appending to the
history and broadcasting are one atomic step per channel, and offsets are
consecutive: a live publication whose offset is not last + 1 proves a gap.
Live delivery is one pub/sub connection per node whose every reconnect is
followed by a resync (broker_adapters/redis_live.py).  Only a publication
creates a channel's keys: a read or a subscribe of a channel that was never
published stores nothing (broker_adapters/empty.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .base import Broker, BrokerListener, BrokerUnavailable
from .foreign import stored_publication
from .options import parse_options
from .presence import PresenceSettings
from .redis_live import REDIS, LiveConnection
from .redis_presence import RedisPresence
from .redis_scripts import HISTORY_SCRIPT, PUBLISH_SCRIPT, ChannelKeys, new_generation, unpack_entries
from .types import History, Position, Publication


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
        if min(self.command_timeout, self.connect_timeout, self.live_ping_interval, self.reconnect_max_delay) <= 0:
            raise ValueError("timeouts and intervals must be positive")

    @property
    def retention(self) -> float:
        """How long a channel's epoch and offset outlive its last publish or read.

        At least the history's age, or a returning client would see a new
        epoch where "history trimmed" is the truth.  Also the period of the
        epochs of channels without a stream (broker_adapters/empty.py).
        """
        return max(self.meta_ttl, self.history_ttl)


class RedisBroker(Broker):
    """History in a capped stream per channel, fan-out over pub/sub; see the module docstring."""

    kind = "redis"
    contiguous_offsets = True

    def __init__(self, url: str, options: RedisOptions | None = None) -> None:
        self.options = options or RedisOptions()
        super().__init__()
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
        self._meta_ms = int(self.options.retention * 1000)
        self._live: LiveConnection | None = None

    def live_channel(self, channel: str) -> str:
        return ChannelKeys(self.options.prefix, channel).live

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self, listener: BrokerListener) -> None:
        if self._live is not None:
            return
        live = LiveConnection(self._redis_url, self.options, listener, self._pool)
        await live.start()
        self._live = live

    async def close(self) -> None:
        live, self._live = self._live, None
        if live is not None:
            await live.close()
        with REDIS.ignored():
            await self._client.aclose()
            await self._pool.aclose()

    # -- commands ----------------------------------------------------------------------

    async def publish(self, channel: str, data: str, *, event: str | None = None) -> Publication:
        keys = ChannelKeys(self.options.prefix, channel)
        args: list[str | int] = [
            keys.live,
            data,
            event or "",
            self.options.history_size,
            self._history_ms,
            self._meta_ms,
            new_generation(),
        ]
        with REDIS.unavailable("publish"):
            epoch, offset, time_ms, created = await self._publish_script(keys=keys.script_keys, args=args)
        self.stats.streams_created += int(created)
        return Publication(
            channel=channel, epoch=_text(epoch), offset=int(offset), data=data, event=event, time_ms=int(time_ms)
        )

    async def history(self, channel: str, since: int | None, limit: int) -> History:
        args: list[str | int] = [
            new_generation(),
            -1 if since is None else since,
            max(limit, 0),
            self.options.history_size,
            self._history_ms,
            self._meta_ms,
        ]
        keys = ChannelKeys(self.options.prefix, channel).script_keys
        with REDIS.unavailable("history read"):
            reply = await self._history_script(keys=keys, args=args)
        history = history_from_reply(channel, since, limit, reply)
        if history.top.offset == 0:
            self.stats.empty_reads += 1
        return history

    async def subscribe(self, channel: str) -> None:
        live = self._live
        if live is None:
            raise BrokerUnavailable("redis broker is not started")
        await live.subscribe(channel)

    async def unsubscribe(self, channel: str) -> None:
        if self._live is not None:
            await self._live.unsubscribe(channel)

    async def ping(self) -> None:
        with REDIS.unavailable("ping"):
            await self._client.ping()
        live = self._live
        if live is not None and not live.healthy:
            # Redis answers again but this node cannot receive live events
            # yet: not ready.  Skip the rest of the reconnect backoff.
            live.wake()
            raise BrokerUnavailable("redis live connection is down; reconnecting")


    def presence(self, settings: PresenceSettings) -> RedisPresence:
        return RedisPresence(self._client, self.options.prefix, settings)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def history_from_reply(channel: str, since: int | None, limit: int, reply: list[Any]) -> History:
    """The history script's reply (epoch, top, complete, packed entries), one Redis or a cluster's shard."""
    epoch, top, complete, entries = reply
    epoch_text = _text(epoch)
    return History(
        top=Position(epoch_text, int(top)),
        publications=[
            stored_publication(channel, epoch_text, offset, data, event, time_ms)
            for offset, time_ms, event, data in unpack_entries(entries, max(limit, 0))
        ],
        complete=since is None or bool(int(complete)),
    )


def from_url(url: str) -> RedisBroker:
    """``redis://host:6379/0?history_size=1000&history_ttl=600&meta_ttl=86400&prefix=fanline``."""
    return RedisBroker(url, parse_options(url, RedisOptions))
