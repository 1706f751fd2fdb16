"""The position of a channel that has no stream: derived, never stored.

Reading or subscribing to a channel must create nothing on the broker (one
client naming channels once added 54 MB of broker state in 44 s), yet a
client that subscribes to an empty channel needs a position that every node
reports alike and that the channel's first publication continues.  Brokers
that store an epoch per channel (memory, Redis) therefore derive it: a
channel without a stream stands at offset 0 of :func:`empty_epoch`, and its
first publication creates the stream in the epoch reported at that moment.

The epoch must still differ between two lives of a stream, or a position
from the first would be taken for one in the second.  A stream is forgotten
only after ``period`` (``meta_ttl``) of idleness, so no two lives start in
one period: the epoch names the data set (``generation``, new after the
broker lost its data), the channel, and the period in which the stream
starts.  Periods are phased per channel, so their ends are spread over time.
A first publication in a later period than a subscriber's read gives that
subscriber an explicit ``epoch_changed`` reset, never a silent gap.

Redis computes the same function in Lua (broker_adapters/redis_scripts.py).
"""

from __future__ import annotations

import hashlib


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()


def period_index(key: str, now_ms: float, period_ms: float) -> int:
    """Which of ``key``'s periods ``now_ms`` falls in; each key has its own phase."""
    period = max(1, int(period_ms))
    phase = int(_sha1(key)[:8], 16) % period
    return (int(now_ms) + phase) // period


def empty_epoch(generation: str, key: str, now_ms: float, period_ms: float) -> str:
    """The epoch a stream of ``key`` created at ``now_ms`` gets, and an empty channel reports."""
    return _sha1(f"{generation}:{key}:{period_index(key, now_ms, period_ms)}")[:16]
