"""The Server-Sent Events wire format of a Fanline stream, without I/O.

An event is a block of ``id:``, ``event:`` and ``data:`` lines ended by an
empty line (the WHATWG EventSource format).  A stream names one or more
channels; its ``id:`` is the *composite* of every channel's position, in the
order the URL names the channels, joined by ``.``, so that the one
``Last-Event-ID`` a browser keeps resumes every channel.

The response body goes out in HTTP/1.1 chunks (:func:`chunk`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from broker_adapters.types import InvalidEventId, Position, Publication

from . import protocol

KEEPALIVE = b": keepalive\n\n"
END_OF_BODY = b"0\r\n\r\n"


def chunk(body: bytes) -> bytes:
    """``body`` as one HTTP/1.1 chunk."""
    return b"%x\r\n%b\r\n" % (len(body), body)


def event_body(publication: Publication) -> bytes:
    """An event without its ``id:`` line: the publisher's type and the event message as data."""
    head = b"event: " + publication.event.encode() + b"\n" if publication.event else b""
    return head + b"data: " + protocol.event_frame(publication).encode() + b"\n\n"


def with_id(event_id: bytes, body: bytes) -> bytes:
    return b"id: " + event_id + b"\n" + body


def composite_id(tokens: Sequence[str]) -> bytes:
    return ".".join(tokens).encode()


def parse_composite(raw: str, count: int) -> list[Position]:
    """Split a composite id into one position per channel.  Raises InvalidEventId."""
    parts = raw.split(".")
    if len(parts) != count:
        raise InvalidEventId(
            f"the event id names {len(parts)} channel positions but the URL names {count} channels"
        )
    return [Position.parse(part) for part in parts]


def retry(milliseconds: int) -> bytes:
    """A ``retry:`` field: how long EventSource waits before it reconnects."""
    return b"retry: %d\n\n" % milliseconds


def subscribed(event_id: bytes, retry_ms: int, channels: dict[str, dict[str, object]]) -> bytes:
    """The first event of a stream: where every channel starts, and the reconnect delay."""
    data = json.dumps({"type": "subscribed", "channels": channels}, separators=(",", ":"), ensure_ascii=False)
    return (
        b"retry: %d\n" % retry_ms
        + b"event: fanline.subscribed\nid: "
        + event_id
        + b"\ndata: "
        + data.encode()
        + b"\n\n"
    )


def reset(event_id: bytes, channel: str, position: Position, reason: str) -> bytes:
    """A ``fanline.reset`` event; its ``id:`` is the composite with this channel moved on."""
    data = protocol.reset_frame(channel, position, reason)
    return b"event: fanline.reset\nid: " + event_id + b"\ndata: " + data.encode() + b"\n\n"
