"""Publications read back from a broker, where any application may have written them.

Fanline's adapters write only valid data and event types, but the broker
pages invite applications in other languages to publish natively, so what
comes back is accepted, never trusted.  The data is normalised to one-line
JSON (:func:`~broker_adapters.types.normalize_data`; a null Kafka value is
``null``).  An event type that would break SSE framing or impersonate a
Fanline control event is dropped with a warning while the data still goes
through: the publication has a position, and dropping it whole would leave a
silent hole in the stream.
"""

from __future__ import annotations

import logging

from .errors import InvalidEventType
from .types import Publication, normalize_data, validate_event_type

log = logging.getLogger("fanline.broker")


def foreign_event_type(raw: bytes | str | None) -> str | None:
    """A stored event type if it is a valid one; None (and a warning) otherwise."""
    if not raw:
        return None
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    try:
        return validate_event_type(text)
    except InvalidEventType:
        log.warning("dropping invalid event type from a foreign publisher", extra={"event": text[:80]})
        return None


def stored_publication(
    channel: str, epoch: str, offset: int, data: bytes | str | None, event: bytes | str | None, time_ms: int
) -> Publication:
    """A publication as read from the broker, whoever wrote it."""
    return Publication(
        channel=channel,
        epoch=epoch,
        offset=offset,
        data="null" if data is None else normalize_data(data),
        event=foreign_event_type(event),
        time_ms=time_ms,
    )
