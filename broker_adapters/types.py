"""Wire-independent domain types shared by the brokers and the node.

A channel is an ordered stream of publications.  Every publication has a
:class:`Position` in its channel's stream: an *epoch* that names one
incarnation of the stream, and an *offset* that grows with every
publication.  When a stream is lost (history flushed, topic recreated, broker
reset without persistence) the epoch changes, so an old position can never be
mistaken for a continuation of the new stream.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from .errors import InvalidChannel as InvalidChannel
from .errors import InvalidData as InvalidData
from .errors import InvalidEventId as InvalidEventId
from .errors import InvalidEventType as InvalidEventType

# Epochs are short and URL-safe so that an event id stays readable in logs and
# fits in a query string.  Adapters derive them from their own notion of a
# stream's identity and must keep to this alphabet.
EPOCH_PATTERN = re.compile(r"^[A-Za-z0-9]{1,32}$")
_ID_PATTERN = re.compile(r"^([A-Za-z0-9]{1,32})-(0|[1-9][0-9]{0,18})$")
_MAX_OFFSET = 2**63 - 1

# Channel names must survive being a NATS subject token sequence, a Redis key
# and a Kafka record key without escaping, and be readable in a URL.
CHANNEL_PATTERN = re.compile(r"^[A-Za-z0-9_:#@=/-]+(\.[A-Za-z0-9_:#@=/-]+)*$")
EVENT_TYPE_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
RESERVED_EVENT_PREFIX = "fanline."
# Channels the node keeps for itself (tickets, the control channel, presence events): no client may name them.
RESERVED_CHANNEL_PREFIX = "fanline."




@dataclass(frozen=True, slots=True)
class Position:
    """Where a reader stands in a channel: after ``offset`` in stream ``epoch``.

    Offset 0 means "before the first publication".  Offsets only grow within
    one epoch; adapters may skip values (NATS stream sequences and Kafka
    partition offsets are shared with other channels).
    """

    epoch: str
    offset: int

    @property
    def event_id(self) -> str:
        """The opaque, URL-safe token a client stores to resume from here."""
        return f"{self.epoch}-{self.offset}"

    @classmethod
    def parse(cls, event_id: str) -> Position:
        match = _ID_PATTERN.fullmatch(event_id)
        if match is None:
            raise InvalidEventId(f"not a Fanline event id: {event_id[:80]!r}")
        offset = int(match.group(2))
        if offset > _MAX_OFFSET:
            raise InvalidEventId("event id offset out of range")
        return cls(match.group(1), offset)


@dataclass(frozen=True, slots=True)
class Publication:
    """One message in one channel, as stored and delivered.

    ``data`` is compact JSON text (no raw newlines), validated once where the
    publication enters the system, so that transports can splice it into
    their frames without decoding it again.
    """

    channel: str
    epoch: str
    offset: int
    data: str
    event: str | None = None
    # Publish time in milliseconds since the Unix epoch, for lag metrics.
    time_ms: int = 0

    @property
    def position(self) -> Position:
        return Position(self.epoch, self.offset)


@dataclass(frozen=True, slots=True)
class History:
    """The answer to a history read.

    ``publications`` are those after the requested offset, oldest first, at
    most ``limit`` of them.  ``complete`` is False when some publication after
    the requested offset is no longer retained (trimmed by size or expired by
    age), so the reader cannot be brought up to date from history alone.
    """

    top: Position
    publications: Sequence[Publication] = field(default_factory=tuple)
    complete: bool = True


def validate_channel(channel: object, max_length: int = 255) -> str:
    if not isinstance(channel, str) or not channel:
        raise InvalidChannel("channel must be a non-empty string")
    if len(channel) > max_length:
        raise InvalidChannel(f"channel is longer than {max_length} characters")
    if CHANNEL_PATTERN.fullmatch(channel) is None:
        raise InvalidChannel(
            "channel may contain only letters, digits and _ : # @ = / - ,"
            " and dots between non-empty parts"
        )
    return channel


def validate_event_type(event: object) -> str | None:
    if event is None:
        return None
    if not isinstance(event, str) or EVENT_TYPE_PATTERN.fullmatch(event) is None:
        raise InvalidEventType(
            "event type must start with a letter and contain at most 64 letters,"
            " digits, _ . or -"
        )
    if event.startswith(RESERVED_EVENT_PREFIX):
        raise InvalidEventType("event types starting with 'fanline.' are reserved")
    return event


def encode_data(value: object) -> str:
    """Encode an application value as the compact JSON a publication carries."""
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidData(f"data is not JSON-serialisable: {exc}") from None


def _reject_constant(name: str) -> object:
    # NaN and Infinity are not JSON; browsers' JSON.parse rejects them.
    raise ValueError(f"{name} is not JSON")


def normalize_data(raw: bytes | str) -> str:
    """Accept a payload from a foreign publisher and return it as compact JSON.

    Applications publishing straight to the broker may send pretty-printed
    JSON; raw newlines would break SSE framing, so anything not already on
    one line is re-encoded.  A payload that is not JSON at all still has a
    position in the stream, and dropping it would leave a silent hole, so it
    is delivered as a JSON string of its text instead.
    """
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except ValueError:
        return encode_data(text)
    if "\n" in text or "\r" in text:
        return encode_data(value)
    return text.strip()
