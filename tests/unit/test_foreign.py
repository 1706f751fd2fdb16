"""Publications a foreign publisher wrote to the broker (broker_adapters/foreign.py)."""

from __future__ import annotations

import logging

import pytest

from broker_adapters.foreign import foreign_event_type, stored_publication


@pytest.mark.parametrize("raw", ["headline", b"order.updated", "a" * 64])
def test_a_valid_event_type_is_kept(raw: str | bytes) -> None:
    assert foreign_event_type(raw) == (raw.decode() if isinstance(raw, bytes) else raw)


@pytest.mark.parametrize("raw", [None, "", b""])
def test_no_event_type(raw: str | bytes | None) -> None:
    assert foreign_event_type(raw) is None


@pytest.mark.parametrize("raw", ["headline\n", "fanline.reset", "1st", "a" * 65, b"\xff\xfe", "with space"])
def test_an_invalid_event_type_is_dropped_with_a_warning(raw: str | bytes, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="fanline.broker"):
        assert foreign_event_type(raw) is None
    assert "invalid event type" in caplog.text


def test_the_data_of_a_dropped_event_type_still_goes_through() -> None:
    publication = stored_publication("news", "ep", 7, b'{\n  "a": 1\n}', b"fanline.reset", 123)
    assert (publication.data, publication.event, publication.offset, publication.time_ms) == ('{"a":1}', None, 7, 123)


@pytest.mark.parametrize(
    "data,expected", [(b'{"a":1}', '{"a":1}'), ("plain text", '"plain text"'), (None, "null"), (b"[1,\r\n2]", "[1,2]")]
)
def test_data_is_one_line_json(data: bytes | str | None, expected: str) -> None:
    assert stored_publication("c", "ep", 1, data, None, 0).data == expected
