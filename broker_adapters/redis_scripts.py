"""The Lua scripts behind the Redis adapter, the key layout they assume, and their replies.

docs/brokers/redis.md reproduces :data:`PUBLISH_SCRIPT` verbatim so that
applications in other languages can publish natively; the raw-client test in
tests/test_cluster.py runs the copy in the docs, so the two cannot drift.

Per channel ``C`` with key prefix ``P``:

- ``P:{C}:meta``   hash: ``epoch`` (string), ``offset`` (integer);
- ``P:{C}:stream`` stream: entry id ``<offset>-0``, fields ``d`` (data),
  ``e`` (event type or empty), ``t`` (publish time, ms since the Unix epoch);
- ``P:{C}:live``   pub/sub channel carrying ``1:<epoch>:<offset>:<time_ms>:<event>\\n<data>``.

The ``{C}`` hash tag puts all three in one Redis Cluster slot, so one script
may touch them atomically.  One more key serves every channel:

- ``P:generation`` string: a random name for the data set, never expiring.

Only a publication creates a channel's keys.  A history read of a channel
without a meta hash stores nothing for it (at most the generation, once) and
reports offset 0 of the epoch a first publication would create at that
moment, derived from the generation, the meta key's name and the current
``meta_ttl`` period exactly as :func:`broker_adapters.empty.empty_epoch`
does it.
"""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass

_TOKEN_ALPHABET = string.ascii_letters + string.digits


def new_generation() -> str:
    """A fresh random name for a data set ([A-Za-z0-9]{8})."""
    return "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(8))


@dataclass(frozen=True, slots=True)
class ChannelKeys:
    """The names of one channel's keys under ``prefix``."""

    prefix: str
    channel: str

    @property
    def script_keys(self) -> list[str]:
        """KEYS of both scripts: meta hash, stream, generation."""
        tagged = f"{self.prefix}:{{{self.channel}}}"
        return [f"{tagged}:meta", f"{tagged}:stream", f"{self.prefix}:generation"]

    @property
    def live(self) -> str:
        return f"{self.prefix}:{{{self.channel}}}:live"


# KEYS[1] meta hash, KEYS[2] stream, KEYS[3] generation.
# ARGV[1] live pub/sub channel, ARGV[2] data, ARGV[3] event type or "",
# ARGV[4] history size (entries), ARGV[5] history ttl (ms), ARGV[6] meta ttl (ms),
# ARGV[7] a fresh random generation ([A-Za-z0-9]{8}), used only if the data set has none,
# ARGV[8] (optional) "cluster" on a Redis Cluster: SPUBLISH instead of PUBLISH, KEYS[3] is the
# generation key of the channel's slot, and a channel last written by another node (a failover
# or a slot migration since) starts a new epoch (docs/brokers/redis-cluster.md).
# Returns {epoch, offset, time_ms, created (1 for a channel's first publication)}.
PUBLISH_SCRIPT = """\
local now = redis.call('TIME')
local time_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local cluster = ARGV[8] == 'cluster'
local writer = cluster and redis.call('CLUSTER', 'MYID') or ''
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local created = 0
if epoch and cluster and redis.call('HGET', KEYS[1], 'w') ~= writer then
  epoch = string.sub(redis.sha1hex(epoch .. ':' .. writer), 1, 16)
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'w', writer)
  redis.call('DEL', KEYS[2])
end
if not epoch then
  redis.call('SET', KEYS[3], ARGV[7], 'NX')
  local period = tonumber(ARGV[6])
  local phase = tonumber(string.sub(redis.sha1hex(KEYS[1]), 1, 8), 16) % period
  local index = string.format('%d', math.floor((time_ms + phase) / period))
  local generation = redis.call('GET', KEYS[3])
  if cluster then generation = generation .. '@' .. writer end
  epoch = string.sub(redis.sha1hex(generation .. ':' .. KEYS[1] .. ':' .. index), 1, 16)
  redis.call('HSET', KEYS[1], 'epoch', epoch)
  if cluster then redis.call('HSET', KEYS[1], 'w', writer) end
  redis.call('DEL', KEYS[2])
  created = 1
end
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
local size = tonumber(ARGV[4])
if size > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', size, offset .. '-0', 'd', ARGV[2], 'e', ARGV[3], 't', time_ms)
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
else
  redis.call('DEL', KEYS[2])
end
redis.call('PEXPIRE', KEYS[1], ARGV[6])
local payload = '1:' .. epoch .. ':' .. offset .. ':' .. time_ms .. ':' .. ARGV[3] .. '\\n' .. ARGV[2]
redis.call(cluster and 'SPUBLISH' or 'PUBLISH', ARGV[1], payload)
return {epoch, offset, time_ms, created}
"""

# KEYS[1] meta hash, KEYS[2] stream, KEYS[3] generation.
# ARGV[1] a fresh random generation, used only if the data set has none,
# ARGV[2] since (offset; -1 asks for the top only), ARGV[3] limit,
# ARGV[4] history size, ARGV[5] history ttl (ms), ARGV[6] meta ttl (ms),
# ARGV[7] (optional) "cluster", as ARGV[8] of the publish script.
# Returns {epoch, top_offset, complete (0/1), packed entries}: the
# publications after `since`, oldest first, without the ones older than the
# ttl, packed as described in the script.
HISTORY_SCRIPT = """\
local since = tonumber(ARGV[2])
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local cluster = ARGV[7] == 'cluster'
local writer = cluster and redis.call('CLUSTER', 'MYID') or ''
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if epoch and cluster and redis.call('HGET', KEYS[1], 'w') ~= writer then
  -- Written last by another node: the same rule as the publish script.
  epoch = string.sub(redis.sha1hex(epoch .. ':' .. writer), 1, 16)
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'w', writer)
  redis.call('DEL', KEYS[2])
end
if not epoch then
  -- No stream: nothing is stored for the channel; its first publication
  -- would create it now in this epoch (the same rule as the publish script).
  redis.call('SET', KEYS[3], ARGV[1], 'NX')
  local period = tonumber(ARGV[6])
  local phase = tonumber(string.sub(redis.sha1hex(KEYS[1]), 1, 8), 16) % period
  local index = string.format('%d', math.floor((now_ms + phase) / period))
  local generation = redis.call('GET', KEYS[3])
  if cluster then generation = generation .. '@' .. writer end
  epoch = string.sub(redis.sha1hex(generation .. ':' .. KEYS[1] .. ':' .. index), 1, 16)
  return {epoch, 0, since == 0 and 1 or 0, ''}
end
redis.call('PEXPIRE', KEYS[1], ARGV[6])
local top = tonumber(redis.call('HGET', KEYS[1], 'offset') or '0')
if since < 0 or since >= top then
  return {epoch, top, since == top and 1 or 0, ''}
end
local limit = tonumber(ARGV[3])
if limit < 1 then limit = 1 end
local horizon = now_ms - tonumber(ARGV[5])
local entries = redis.call('XRANGE', KEYS[2], (since + 1) .. '-0', '+', 'COUNT', limit)
-- Packed into one string, `<offset>:<time_ms>:<event length>:<data length>` and a newline,
-- then the event and data bytes, per entry: one bulk reply parses far faster
-- in redis-py than hundreds of nested array elements.
local packed = {}
local first = nil
for _, entry in ipairs(entries) do
  local fields = entry[2]
  local d, e, t = '', '', 0
  for i = 1, #fields, 2 do
    local name = fields[i]
    if name == 'd' then d = fields[i + 1]
    elseif name == 'e' then e = fields[i + 1]
    elseif name == 't' then t = tonumber(fields[i + 1]) or 0 end
  end
  if t >= horizon then
    local offset = string.match(entry[1], '^(%d+)-')
    if first == nil then first = offset end
    table.insert(packed, offset .. ':' .. string.format('%d', t) .. ':' .. #e .. ':' .. #d .. '\\n' .. e .. d)
  end
end
-- Complete only if the very next offset is still there, inside the size
-- window and not expired: anything else means a publication after `since`
-- is gone.
local complete = 0
if first ~= nil and tonumber(first) == since + 1 and since >= top - tonumber(ARGV[4]) then
  complete = 1
end
return {epoch, top, complete, table.concat(packed)}
"""


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
