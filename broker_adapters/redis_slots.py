"""Redis Cluster hash slots: which slot a key is in, which node serves it, and the per-slot generation key.

Pure functions, no I/O.  A Redis Cluster splits the key space into 16384
slots; a key's slot is CRC16 (XMODEM) of its hash tag (the text between the
first ``{`` and the next ``}``, if non-empty) modulo 16384.  Fanline's keys of
channel ``C`` all carry the tag ``{C}``, so one channel lives in one slot and
one script may touch its keys atomically.

A script may only touch keys of one slot, so the single Redis's one
``P:generation`` key (the name of the data set, see docs/brokers/redis.md)
becomes one key **per slot** in a cluster: ``P:{g<n>}:generation``, where
``g<n>`` is the first tag of that form (n = 0, 1, 2, ...) that hashes to the
slot.  A slot's generation is lost exactly when the slot's data is, which is
what the epochs of its channels must follow.  There are at most 16384 such
keys, however many channels there are.
"""

from __future__ import annotations

import binascii
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache

SLOTS = 16384


def hash_tag(key: bytes) -> bytes:
    """The part of ``key`` that decides its slot."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def key_slot(key: bytes | str) -> int:
    raw = key.encode() if isinstance(key, str) else key
    return binascii.crc_hqx(hash_tag(raw), 0) % SLOTS


def channel_slot(channel: str) -> int:
    """The slot of every key (and the shard channel) of ``channel``: its tag is the channel."""
    return key_slot(channel.encode())


@cache
def _generation_tags() -> tuple[int, ...]:
    """For each slot, the smallest n whose tag ``g<n>`` hashes to it (about 0.2 s, once)."""
    table = [-1] * SLOTS
    left = SLOTS
    n = 0
    while left:
        slot = binascii.crc_hqx(b"g%d" % n, 0) % SLOTS
        if table[slot] < 0:
            table[slot] = n
            left -= 1
        n += 1
    return tuple(table)


def generation_tag(slot: int) -> str:
    return f"g{_generation_tags()[slot]}"


def generation_key(prefix: str, channel: str) -> str:
    """The generation key in ``channel``'s slot: ``P:{g<n>}:generation``."""
    return f"{prefix}:{{{generation_tag(channel_slot(channel))}}}:generation"


@dataclass(frozen=True, slots=True)
class SlotRange:
    first: int
    last: int
    primary: str  # "host:port"


def parse_cluster_slots(reply: Iterable[Sequence[object]]) -> list[SlotRange]:
    """``CLUSTER SLOTS`` as ranges with their primary's address.

    Each entry is ``[first, last, [host, port, id, ...], replicas...]``; an
    empty host means "the address you reached me on", which on loopback and
    in tests is 127.0.0.1 but in general is unknown, so such entries need
    ``fallback_host``.
    """
    ranges = []
    for entry in reply:
        first, last, primary = int(entry[0]), int(entry[1]), entry[2]  # type: ignore[call-overload]
        assert isinstance(primary, (list, tuple))
        host = primary[0].decode() if isinstance(primary[0], bytes) else str(primary[0])
        ranges.append(SlotRange(first, last, f"{host}:{int(primary[1])}"))
    return sorted(ranges, key=lambda r: r.first)


def owner_table(ranges: Iterable[SlotRange], fallback_host: str) -> list[str | None]:
    """Slot -> primary address ("host:port"), None for uncovered slots."""
    table: list[str | None] = [None] * SLOTS
    for r in ranges:
        address = r.primary
        if address.startswith(":") or address.startswith("?:"):
            address = fallback_host + ":" + address.rsplit(":", 1)[1]
        for slot in range(r.first, r.last + 1):
            table[slot] = address
    return table


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)
