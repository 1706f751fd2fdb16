"""The per-partition key index and the connection checks of the Kafka adapter, without a broker."""

from __future__ import annotations

from types import SimpleNamespace

from broker_adapters.kafka_incarnation import connections
from broker_adapters.kafka_index import KeyIndex, KeyIndexes
from broker_adapters.kafka_topic import Layout


def test_an_index_keeps_the_last_offset_of_each_key() -> None:
    index = KeyIndex(stream="s", base=0, scanned_to=0)
    for key, offset in [("a", 3), ("b", 5), ("a", 9), ("a", 4)]:
        index.see(key, offset)
    assert index.last == {"a": 9, "b": 5}


def test_an_index_follows_only_records_that_join_what_it_saw() -> None:
    index = KeyIndex(stream="s", base=0, scanned_to=10)
    index.follow("a", 12, expected=10)  # 10 and 11 were seen by the reader and hold nothing
    assert (index.last, index.scanned_to) == ({"a": 12}, 13)
    index.follow("b", 20, expected=15)  # 13..14 unseen: the index cannot take it
    assert (index.last, index.scanned_to) == ({"a": 12}, 13)
    index.follow(None, 13, expected=13)  # a record without key still moves the index on
    assert index.scanned_to == 14
    index.follow("c", 14, expected=14)  # our own publish, acknowledged at the next offset
    assert index.last["c"] == 14


def test_an_index_fits_only_the_log_it_was_built_on() -> None:
    index = KeyIndex(stream="s", base=100, scanned_to=150)
    assert index.fits("s", log_start=90, end=160, scan_limit=1000)
    assert not index.fits("other", log_start=90, end=160, scan_limit=1000)  # a new topic incarnation
    assert not index.fits("s", log_start=90, end=140, scan_limit=1000)  # the log lost records
    assert not index.fits("s", log_start=151, end=160, scan_limit=1000)  # trimmed before we saw them
    assert not index.fits("s", log_start=0, end=2000, scan_limit=1000)  # too far behind to catch up


def test_indexes_are_rebuilt_when_stale_and_dropped_when_too_large() -> None:
    indexes = KeyIndexes(scan_limit=100, max_keys=2)
    index = indexes.for_read(0, "s", log_start=0, end=500)
    assert (index.base, index.scanned_to) == (400, 400)  # at most scan_limit back
    assert indexes.for_read(0, "s", 0, 500) is index
    index.see("a", 410)
    indexes.scanned(0, index, 500)
    assert indexes.valid(0, "s") is index and indexes.valid(0, "t") is None
    index.see("b", 420)
    index.see("c", 430)
    indexes.scanned(0, index, 500)
    assert indexes.valid(0, "s") is None


def test_a_read_reaches_as_far_as_live_delivery_did_in_the_same_incarnation() -> None:
    indexes = KeyIndexes(scan_limit=100, max_keys=10)
    assert indexes.read_end(0, "s", listed_end=50) == 50  # nothing delivered live yet
    indexes.live_reached(0, "s", 60)  # fetched up to 59 while ListOffsets still says 50
    assert indexes.read_end(0, "s", listed_end=50) == 60
    assert indexes.read_end(0, "s", listed_end=70) == 70
    assert indexes.read_end(0, "t", listed_end=5) == 5  # another incarnation: its own log
    assert indexes.read_end(1, "s", listed_end=5) == 5
    index = indexes.for_read(0, "s", 0, 50)
    indexes.scanned(0, index, 50)
    index.follow("a", 59, expected=50)  # live delivery extended the index past the listed end
    assert indexes.for_read(0, "s", 0, indexes.read_end(0, "s", 50)) is index  # kept, with "a" at 59
    assert indexes.for_read(0, "s", 0, 50) is not index  # the listed end alone would rebuild it stale
    indexes.clear()
    assert indexes.read_end(0, "s", listed_end=50) == 50


def test_layouts_name_epochs_per_channel_and_incarnation() -> None:
    one, two = Layout(b"\x01" * 16, 4), Layout(b"\x02" * 16, 4)
    assert one.epoch("a") == Layout(b"\x01" * 16, 4).epoch("a")
    assert len({one.epoch("a"), one.epoch("b"), two.epoch("a"), Layout(b"\x01" * 16, 8).epoch("a")}) == 4
    assert one.epoch("a").isalnum() and len(one.epoch("a")) == 16


def _client(*conns: object) -> SimpleNamespace:
    return SimpleNamespace(_client=SimpleNamespace(_conns={i: c for i, c in enumerate(conns)}))


def test_connections_are_compared_by_identity() -> None:
    old, new = object(), object()
    assert connections(_client(old)) == connections(_client(old))
    assert connections(_client(old)) != connections(_client(new))  # reconnected: not the same socket
    assert connections(SimpleNamespace()) is None  # a shape we do not know: unverifiable
