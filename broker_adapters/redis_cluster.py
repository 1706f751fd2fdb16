"""The Redis Cluster broker: the Redis adapter's layout, spread over the shards of a cluster.

``redis+cluster://host1:6379,host2:6379?history_size=1000`` (``rediss+cluster://`` for TLS):
any reachable nodes of the cluster (the rest is discovered), and the same
options as ``redis://``.

What changes from a single Redis (docs/brokers/redis-cluster.md):

- **Commands** go through redis-py's ``RedisCluster``, which routes each
  script to the primary of the channel's slot (all of a channel's keys carry
  the ``{channel}`` hash tag) and follows ``MOVED`` and ``ASK`` redirects.
  No command is retried after a connection error: a publish whose reply was
  lost may have happened.
- **The generation key** is one per slot (broker_adapters/redis_slots.py).
- **Live delivery** is sharded pub/sub: the publish script ``SPUBLISH``es on
  the channel's shard, and each node holds one connection per primary it
  needs (broker_adapters/redis_shards.py).
- **A channel written by another primary than the one serving it now** (a
  replica promoted in a failover may lack the last publications, which
  clients may already have seen live; a slot migration) starts a new epoch
  at its next publish or read, so a stream is never rolled back under the
  same epoch: resuming clients get an explicit ``epoch_changed`` reset.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError

from .base import Broker, BrokerListener, BrokerUnavailable
from .options import parse_options
from .redis import RedisOptions, _text, history_from_reply
from .redis_scripts import HISTORY_SCRIPT, PUBLISH_SCRIPT, ChannelKeys, new_generation
from .redis_shards import REDIS_CLUSTER, ConnectionSettings, ShardedLive
from .redis_slots import generation_key, split_address
from .types import History, Publication

_CLUSTER = "cluster"


class RedisClusterBroker(Broker):
    """History per channel on its slot's primary, fan-out by sharded pub/sub; see the module docstring."""

    kind = "redis_cluster"
    contiguous_offsets = True

    def __init__(self, seeds: list[str], options: RedisOptions | None = None, *, settings: ConnectionSettings) -> None:
        super().__init__()
        self.options = options or RedisOptions()
        self.seeds = seeds
        self._settings = settings
        nodes = [ClusterNode(*split_address(seed)) for seed in seeds]
        self._client = RedisCluster(
            startup_nodes=nodes,
            username=settings.username,
            password=settings.password,
            ssl=settings.tls,
            # One shard may be failing over while the others serve.
            require_full_coverage=False,
            socket_timeout=self.options.command_timeout,
            socket_connect_timeout=self.options.connect_timeout,
            # No retry after a connection error: a publish whose reply was
            # lost may have happened.  Redirects (MOVED, ASK) are followed.
            retry=Retry(NoBackoff(), 0),
            max_connections=self.options.pool_size,
            health_check_interval=0,
        )
        # Callers wait for a connection instead of failing with "Too many
        # connections" (a reconnect storm resuming thousands of clients).
        self._slots = asyncio.Semaphore(self.options.pool_size)
        self._history_ms = int(self.options.history_ttl * 1000)
        self._meta_ms = int(self.options.retention * 1000)
        self._scripts: dict[str, str] = {}
        self._live: ShardedLive | None = None
        generation_key(self.options.prefix, "warm")  # builds the slot table now, not on the first publish

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self, listener: BrokerListener) -> None:
        if self._live is not None:
            return
        with REDIS_CLUSTER.unavailable("cluster discovery"):
            await self._client.initialize()
        live = ShardedLive(self.seeds, self.options, listener, self._settings)
        await live.start()
        self._live = live
        listener.on_availability(True)

    async def close(self) -> None:
        live, self._live = self._live, None
        if live is not None:
            await live.close()
        with REDIS_CLUSTER.ignored():
            await self._client.aclose()

    @property
    def shard_connections(self) -> int:
        return self._live.shards if self._live is not None else 0

    # -- commands ----------------------------------------------------------------------

    async def _script(self, script: str, keys: list[str], args: list[str | int], what: str) -> Any:
        sha = self._scripts.get(script)
        with REDIS_CLUSTER.unavailable(what):
            async with asyncio.timeout(self.options.command_timeout * 2):
                async with self._slots:
                    if sha is not None:
                        try:
                            return await self._client.execute_command("EVALSHA", sha, len(keys), *keys, *args)
                        except NoScriptError:
                            pass  # a new primary (failover) has not seen it yet
                    # EVAL runs it and caches it on that primary for the EVALSHAs after it.
                    result = await self._client.execute_command("EVAL", script, len(keys), *keys, *args)
                    if sha is None:
                        self._scripts[script] = _sha1(script)
                    return result

    def _keys(self, channel: str) -> list[str]:
        meta, stream, _ = ChannelKeys(self.options.prefix, channel).script_keys
        return [meta, stream, generation_key(self.options.prefix, channel)]

    async def publish(self, channel: str, data: str, *, event: str | None = None) -> Publication:
        args: list[str | int] = [
            ChannelKeys(self.options.prefix, channel).live,
            data,
            event or "",
            self.options.history_size,
            self._history_ms,
            self._meta_ms,
            new_generation(),
            _CLUSTER,
        ]
        epoch, offset, time_ms, created = await self._script(PUBLISH_SCRIPT, self._keys(channel), args, "publish")
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
            _CLUSTER,
        ]
        reply = await self._script(HISTORY_SCRIPT, self._keys(channel), args, "history read")
        history = history_from_reply(channel, since, limit, reply)
        if history.top.offset == 0:
            self.stats.empty_reads += 1
        return history

    async def subscribe(self, channel: str) -> None:
        live = self._live
        if live is None:
            raise BrokerUnavailable("redis cluster broker is not started")
        await live.subscribe(channel)

    async def unsubscribe(self, channel: str) -> None:
        if self._live is not None:
            await self._live.unsubscribe(channel)

    async def ping(self) -> None:
        """Ready while any primary answers; a shard in failover only pauses its own channels."""
        live = self._live
        if live is not None:
            live.wake_if_unhealthy()
        last: BaseException | None = None
        with REDIS_CLUSTER.unavailable("cluster discovery"):
            await self._client.initialize()
        for node in self._client.get_primaries():
            try:
                async with asyncio.timeout(self.options.command_timeout):
                    await self._client.execute_command("PING", target_nodes=node)
                return
            except REDIS_CLUSTER.errors as exc:
                last = exc
        raise BrokerUnavailable(f"no redis cluster primary answers: {last}")


def _sha1(text: str) -> str:
    import hashlib

    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()


def from_url(url: str) -> RedisClusterBroker:
    """``redis+cluster://h1:6379,h2:6379?history_size=1000&prefix=fanline`` (``rediss+cluster://``: TLS)."""
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":") if userinfo else ("", "", "")
    seeds = [h.strip() for h in (hosts or "127.0.0.1:6379").split(",") if h.strip()]
    seeds = [s if ":" in s.rsplit("]", 1)[-1] else f"{s}:6379" for s in seeds]
    options = parse_options(url, RedisOptions)
    settings = ConnectionSettings(
        username=unquote(username) or None,
        password=unquote(password) or None,
        tls=parts.scheme.startswith("rediss"),
        connect_timeout=options.connect_timeout,
    )
    return RedisClusterBroker(seeds, options, settings=settings)
