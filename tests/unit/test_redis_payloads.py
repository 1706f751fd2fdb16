"""What the Redis adapter reads back from its scripts and its pub/sub channels, without a server."""

from __future__ import annotations

import pytest

from broker_adapters.redis_live import parse_live_payload
from broker_adapters.redis_scripts import ChannelKeys, unpack_entries


def test_keys_share_the_channels_hash_tag() -> None:
    keys = ChannelKeys("fanline", "news.eu")
    assert keys.script_keys[:2] == ["fanline:{news.eu}:meta", "fanline:{news.eu}:stream"]
    assert keys.live == "fanline:{news.eu}:live"


def test_packed_history_entries_unpack_in_order_up_to_the_limit() -> None:
    packed = b"3:1000:4:7\ntick{\"a\":1}" + b"5:1001:0:2\n[]" + b"6:1002:0:1\n1"
    assert unpack_entries(packed, 2) == [(3, 1000, b"tick", b'{"a":1}'), (5, 1001, b"", b"[]")]
    assert len(unpack_entries(packed, 10)) == 3
    assert unpack_entries(b"", 10) == []


def test_a_live_payload_becomes_a_publication() -> None:
    publication = parse_live_payload("news", b"1:Ab3:42:1700000000000:tick\n{\n\"a\": 1}")
    assert publication is not None
    assert (publication.epoch, publication.offset, publication.time_ms) == ("Ab3", 42, 1700000000000)
    assert (publication.event, publication.data) == ("tick", '{"a":1}')


@pytest.mark.parametrize(
    "payload",
    [b"2:Ab3:42:0:\n1", b"1:Ab3:42:0\n1", b"1:Ab3:x:0:\n1", b"1::42:0:\n1", b"1:A-b:42:0:\n1", b"1:Ab3:0:0:\n1", b"1:Ab3:4:0:"],
)
def test_a_malformed_live_payload_is_refused(payload: bytes) -> None:
    assert parse_live_payload("news", payload) is None
