"""Fanline's messages (node/protocol.py): every parse error has its documented code."""

from __future__ import annotations

import json

import pytest

from broker_adapters.types import Position, Publication
from node import protocol
from node.errors import ClientError, ErrorCode


@pytest.mark.parametrize(
    "text,code",
    [
        ("not json", ErrorCode.INVALID_JSON),
        ("[" * 100_000, ErrorCode.INVALID_JSON),
        ("[]", ErrorCode.INVALID_MESSAGE),
        ('{"rid": 1}', ErrorCode.INVALID_MESSAGE),
        ('{"type": "nope"}', ErrorCode.UNKNOWN_TYPE),
        ('{"type": "subscribe", "channel": "a..b"}', ErrorCode.INVALID_CHANNEL),
        ('{"type": "subscribe", "channel": "news\\n"}', ErrorCode.INVALID_CHANNEL),
        ('{"type": "subscribe", "channel": "a", "since": "x"}', ErrorCode.INVALID_EVENT_ID),
        ('{"type": "publish", "channel": "a"}', ErrorCode.INVALID_MESSAGE),
        ('{"type": "publish", "channel": "a", "data": 1, "event": "fanline.x"}', ErrorCode.INVALID_EVENT_TYPE),
        ('{"type": "publish", "channel": "a", "data": 1, "event": "headline\\n"}', ErrorCode.INVALID_EVENT_TYPE),
        # Not JSON at all (issue 13, #6): refused before any field is looked at.
        ('{"type": "publish", "channel": "a", "data": NaN}', ErrorCode.INVALID_JSON),
        ('{"type": "ping", "rid": Infinity}', ErrorCode.INVALID_JSON),
        ('{"type": "ping", "rid": 1e400}', ErrorCode.INVALID_JSON),
        ('{"type": "ping", "rid": [1]}', ErrorCode.INVALID_MESSAGE),
        ('{"type": "auth"}', ErrorCode.INVALID_MESSAGE),
    ],
)
def test_bad_messages(text: str, code: ErrorCode) -> None:
    with pytest.raises(ClientError) as raised:
        protocol.parse_client_message(text)
    assert raised.value.code is code


def test_errors_about_a_channel_name_it() -> None:
    with pytest.raises(ClientError) as raised:
        protocol.parse_client_message('{"type": "subscribe", "channel": "a", "since": "x", "rid": 4}')
    assert json.loads(protocol.error_frame(raised.value)) == {
        "type": "error", "code": "invalid_event_id", "message": raised.value.message, "rid": 4, "channel": "a",
    }


def test_an_event_splices_its_data_unchanged() -> None:
    publication = Publication("news", "ep", 3, '{"a":[1,2]}', event="headline")
    assert json.loads(protocol.event_frame(publication)) == {
        "type": "event", "channel": "news", "id": "ep-3", "event": "headline", "data": {"a": [1, 2]},
    }


def test_subscribed_omits_what_does_not_apply() -> None:
    fresh = json.loads(protocol.subscribed_frame("c", Position("e", 0), recovered=None, replayed=0, rid=None))
    assert fresh == {"type": "subscribed", "channel": "c", "id": "e-0"}
    failed = json.loads(protocol.subscribed_frame("c", Position("e", 5), recovered=False, replayed=0, rid=1))
    assert failed == {"type": "subscribed", "channel": "c", "id": "e-5", "recovered": False, "rid": 1}
