"""Redis Cluster slots (broker_adapters/redis_slots.py): pure functions, no server."""

from __future__ import annotations

import pytest
from redis.crc import key_slot as redis_py_key_slot

from broker_adapters.redis_slots import (
    SLOTS,
    channel_slot,
    generation_key,
    generation_tag,
    key_slot,
    owner_table,
    parse_cluster_slots,
)


@pytest.mark.parametrize("key", [b"fanline:{news.eu}:meta", b"plain", b"{}empty-tag", b"a{b}c{d}", b"{user1000}.following"])
def test_slots_match_redis(key: bytes) -> None:
    assert key_slot(key) == redis_py_key_slot(key)


@pytest.mark.parametrize("channel", ["news", "news.eu", "chat:42", "a", "x/y=z@w#1"])
def test_a_channels_keys_and_its_generation_key_share_one_slot(channel: str) -> None:
    slot = channel_slot(channel)
    for key in (f"fanline:{{{channel}}}:meta", f"fanline:{{{channel}}}:stream", f"fanline:{{{channel}}}:live"):
        assert key_slot(key) == slot
    assert key_slot(generation_key("fanline", channel)) == slot
    assert generation_key("fanline", channel) == f"fanline:{{{generation_tag(slot)}}}:generation"


def test_every_slot_has_a_generation_tag_and_they_are_the_smallest() -> None:
    tags = {generation_tag(slot) for slot in range(SLOTS)}
    assert len(tags) == SLOTS
    assert generation_tag(key_slot(b"g0")) == "g0"


def test_cluster_slots_become_an_owner_table() -> None:
    reply = [
        [0, 5460, [b"10.0.0.1", 6379, b"id1"], [b"10.0.0.4", 6379, b"id4"]],
        [5461, 16383, [b"", 6380, b"id2"]],
    ]
    table = owner_table(parse_cluster_slots(reply), "10.0.0.9")
    assert table[0] == table[5460] == "10.0.0.1:6379"
    assert table[5461] == table[16383] == "10.0.0.9:6380"
    assert owner_table(parse_cluster_slots(reply[:1]), "h")[6000] is None
