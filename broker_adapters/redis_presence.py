"""Presence on Redis: per channel a hash of entries and a sorted set of expiry times.

The layout is centrifuge's (field notes): for channel ``C`` under prefix ``P``

- ``P:{C}:presence``      hash: client id -> ``[user, info]`` (JSON);
- ``P:{C}:presence:exp``  sorted set: client id scored by its expiry (ms since the Unix epoch).

The ``{C}`` hash tag keeps both in one Redis Cluster slot with the channel's
stream.  Every script first drops the expired members (a range of the
sorted set, then ``HDEL``), so a dead node's clients vanish from every read
``ttl`` after its last refresh, and both keys expire with the last refresh
(nothing is left behind once a channel is empty).  A count is ``ZCARD``
after that cleanup: it does not read the entries.

A node writes all its changes of one interval in one pipeline: one script
call per channel (split every 500 entries), one round trip in all.
"""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis

from .presence import ChannelPresence, PresenceEntry, PresenceSettings, PresenceStore
from .redis_live import REDIS

# Entries per script call: keeps one call's arguments small.
_CHUNK = 500

_CLEAN = """\
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now_ms)
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now_ms)
  for i = 1, #expired, 500 do
    redis.call('HDEL', KEYS[1], unpack(expired, i, math.min(i + 499, #expired)))
  end
end
"""

# KEYS[1] hash, KEYS[2] sorted set.  ARGV[1] ttl (ms), ARGV[2] cap, ARGV[3] n,
# then n pairs (client, entry) to add or renew, then the clients to remove.
# Returns the number of entries refused because the channel was full.
WRITE_SCRIPT = _CLEAN + """\
local ttl = tonumber(ARGV[1])
local cap = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
for i = 4 + 2 * n, #ARGV do
  redis.call('ZREM', KEYS[2], ARGV[i])
  redis.call('HDEL', KEYS[1], ARGV[i])
end
local count = redis.call('ZCARD', KEYS[2])
local expiry = now_ms + ttl
local refused = 0
for i = 0, n - 1 do
  local client = ARGV[4 + 2 * i]
  if count < cap or redis.call('ZSCORE', KEYS[2], client) then
    count = count + redis.call('ZADD', KEYS[2], expiry, client)
    redis.call('HSET', KEYS[1], client, ARGV[5 + 2 * i])
  else
    refused = refused + 1
  end
end
if count > 0 and n > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
return refused
"""

# KEYS[1] hash, KEYS[2] sorted set.  Returns HGETALL of what is left.
LIST_SCRIPT = _CLEAN + "return redis.call('HGETALL', KEYS[1])\n"

# KEYS[1] hash, KEYS[2] sorted set.  Returns the number of unexpired entries.
COUNT_SCRIPT = _CLEAN + "return redis.call('ZCARD', KEYS[2])\n"


def presence_keys(prefix: str, channel: str) -> list[str]:
    tagged = f"{prefix}:{{{channel}}}"
    return [f"{tagged}:presence", f"{tagged}:presence:exp"]


class RedisPresence(PresenceStore):
    def __init__(self, client: Redis, prefix: str, settings: PresenceSettings) -> None:
        super().__init__(settings)
        self._client = client
        self._prefix = prefix
        self._write = client.register_script(WRITE_SCRIPT)
        self._list = client.register_script(LIST_SCRIPT)
        self._count = client.register_script(COUNT_SCRIPT)
        self._ttl_ms = int(settings.ttl * 1000)

    async def write(self, owner: str, changes: Sequence[ChannelPresence]) -> None:
        calls: list[tuple[ChannelPresence, list[str], list[str | int]]] = []
        for change in changes:
            keys = presence_keys(self._prefix, change.channel)
            written = list(change.present if change.refresh else change.added)
            removed = list(change.removed)
            first = True
            while first or written:
                first = False
                chunk, written = written[:_CHUNK], written[_CHUNK:]
                args: list[str | int] = [self._ttl_ms, self.settings.max_clients, len(chunk)]
                for entry in chunk:
                    args += [entry.client, entry.encode()]
                args += removed
                removed = []
                calls.append((change, keys, args))
        if not calls:
            return
        with REDIS.unavailable("presence write"):
            async with self._client.pipeline(transaction=False) as pipe:
                for _, keys, args in calls:
                    await self._write(keys=keys, args=args, client=pipe)
                results = await pipe.execute()
        for change in changes:
            change.refused = 0
        for (change, _, _), refused in zip(calls, results, strict=True):
            change.refused += int(refused)

    async def list(self, channel: str) -> list[PresenceEntry]:
        with REDIS.unavailable("presence read"):
            flat = await self._list(keys=presence_keys(self._prefix, channel))
        entries = []
        for i in range(0, len(flat) - 1, 2):
            client = flat[i].decode() if isinstance(flat[i], bytes) else str(flat[i])
            entry = PresenceEntry.decode(client, flat[i + 1])
            if entry is not None:
                entries.append(entry)
        return entries[: self.settings.max_clients]

    async def count(self, channel: str) -> int:
        with REDIS.unavailable("presence count"):
            return int(await self._count(keys=presence_keys(self._prefix, channel)))


