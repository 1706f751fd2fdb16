"""Fanline's messages, without I/O: what clients send and what the node answers.

Client messages are parsed into dataclasses here and nowhere else; server
messages are encoded here and nowhere else, as the compact JSON that a
WebSocket text frame carries (one per line, several lines per frame) and an
SSE event carries as its data.  The framing of each transport is elsewhere
(:mod:`node.websocket_frames`, :mod:`node.sse_events`).  docs/protocol.md is
the specification; this module is its implementation.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from broker_adapters.types import (
    InvalidChannel,
    InvalidData,
    InvalidEventId,
    InvalidEventType,
    Position,
    Publication,
    encode_data,
    validate_channel,
    validate_event_type,
)

from .errors import ClientError, ErrorCode

# Re-exported: the reset reasons are part of the wire protocol.
from .resume import ResetReason as ResetReason

PROTOCOL_VERSION = 1


def _refusal(code: ErrorCode, message: str, rid: Any = None, channel: str | None = None) -> ClientError:
    return ClientError(code, message, rid=rid, channel=channel)


def _not_json(token: str) -> float:
    raise ValueError(f"{token} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:24]} is beyond a double")
    return value


def strict_loads(text: str | bytes) -> Any:
    """``json.loads`` without Python's extensions: NaN, Infinity and numbers beyond a double
    raise ValueError, so no such value gets in to be echoed back as non-JSON (a ``rid``)
    or to become a time (a ticket's ``exp``)."""
    if isinstance(text, str):
        if text.startswith("\ufeff"):
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        return _STRICT.decode(text)  # one decoder for all: json.loads with options builds one per call
    return json.loads(text, parse_constant=_not_json, parse_float=_finite)


_STRICT = json.JSONDecoder(parse_constant=_not_json, parse_float=_finite)


# -- client messages -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Subscribe:
    channel: str
    since: Position | None = None
    rid: Any = None
    #: Send this connection the channel's join and leave events (docs/presence.md).
    join_leave: bool = False
    #: A server-side subscription (the connect hook's channels): never parsed from a client.
    server: bool = False


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    channel: str
    rid: Any = None


@dataclass(frozen=True, slots=True)
class Publish:
    channel: str
    data: str  # compact JSON text
    event: str | None = None
    rid: Any = None


@dataclass(frozen=True, slots=True)
class Ping:
    rid: Any = None


@dataclass(frozen=True, slots=True)
class Auth:
    """``auth`` (the first frame, when the handshake had no credential) or ``refresh``
    (later, to extend the connection).  Exactly one of token and ticket is set."""

    token: str | None = None
    ticket: str | None = None
    rid: Any = None


@dataclass(frozen=True, slots=True)
class PresenceQuery:
    """``presence`` (the list of present clients) or ``presence_stats`` (only the count)."""

    channel: str
    stats: bool = False
    rid: Any = None


ClientMessage = Subscribe | Unsubscribe | Publish | Ping | Auth | PresenceQuery


def _rid(message: dict[str, Any]) -> Any:
    rid = message.get("rid")
    # Echoed back verbatim, so keep it small and scalar.
    if rid is None or isinstance(rid, (int, float)) and not isinstance(rid, bool):
        return rid
    if isinstance(rid, str) and len(rid) <= 64:
        return rid
    raise _refusal(ErrorCode.INVALID_MESSAGE, "rid must be a number or a string of at most 64 characters")


def parse_client_message(text: str, *, max_channel_length: int = 255) -> ClientMessage:
    """Parse one client message.  Raises :class:`~node.errors.ClientError` with a documented code."""
    try:
        message = strict_loads(text)
    except ValueError as exc:
        raise _refusal(ErrorCode.INVALID_JSON, f"frame is not JSON: {exc}") from None
    except RecursionError:
        # Deep nesting exhausts the decoder's recursion, which is not a ValueError.
        raise _refusal(ErrorCode.INVALID_JSON, "frame is nested too deeply") from None
    if not isinstance(message, dict):
        raise _refusal(ErrorCode.INVALID_MESSAGE, "frame must be a JSON object")
    rid = _rid(message)
    kind = message.get("type")
    try:
        if kind == "ping":
            return Ping(rid=rid)
        if kind in ("auth", "refresh"):
            token, ticket = message.get("token"), message.get("ticket")
            given = [v for v in (token, ticket) if v is not None]
            if len(given) != 1 or not isinstance(given[0], str) or not given[0]:
                raise _refusal(ErrorCode.INVALID_MESSAGE, f"{kind} needs a token or a ticket string", rid)
            return Auth(token=token, ticket=ticket, rid=rid)
        if kind in ("subscribe", "unsubscribe", "publish", "presence", "presence_stats"):
            channel = validate_channel(message.get("channel"), max_channel_length)
            if kind == "unsubscribe":
                return Unsubscribe(channel, rid=rid)
            if kind in ("presence", "presence_stats"):
                return PresenceQuery(channel, stats=kind == "presence_stats", rid=rid)
            if kind == "subscribe":
                since_raw = message.get("since")
                if since_raw is not None and not isinstance(since_raw, str):
                    raise _refusal(ErrorCode.INVALID_EVENT_ID, "since must be an event id string", rid, channel)
                since = Position.parse(since_raw) if since_raw else None
                join_leave = message.get("join_leave", False)
                if not isinstance(join_leave, bool):
                    raise _refusal(ErrorCode.INVALID_MESSAGE, "join_leave must be true or false", rid, channel)
                return Subscribe(channel, since=since, rid=rid, join_leave=join_leave)
            if "data" not in message:
                raise _refusal(ErrorCode.INVALID_MESSAGE, "publish needs a data field", rid, channel)
            event = validate_event_type(message.get("event"))
            return Publish(channel, encode_data(message["data"]), event=event, rid=rid)
    except InvalidChannel as exc:
        raise _refusal(ErrorCode.INVALID_CHANNEL, str(exc), rid) from None
    except InvalidEventId as exc:
        raise _refusal(ErrorCode.INVALID_EVENT_ID, str(exc), rid, _named(message)) from None
    except InvalidEventType as exc:
        raise _refusal(ErrorCode.INVALID_EVENT_TYPE, str(exc), rid, _named(message)) from None
    except InvalidData as exc:
        raise _refusal(ErrorCode.INVALID_DATA, str(exc), rid, _named(message)) from None
    if kind is None:
        raise _refusal(ErrorCode.INVALID_MESSAGE, "frame needs a type field", rid)
    shown = kind[:40] if isinstance(kind, str) else type(kind).__name__
    raise _refusal(ErrorCode.UNKNOWN_TYPE, f"unknown message type {shown!r}", rid)


def _named(message: dict[str, Any]) -> str | None:
    """The message's channel, once it is known to be a valid one."""
    channel = message.get("channel")
    return channel if isinstance(channel, str) else None


# -- server messages -----------------------------------------------------------------

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _frame(**fields: Any) -> str:
    return _dumps({k: v for k, v in fields.items() if v is not None})


def connected_frame(node: str, heartbeat_interval: float) -> str:
    return _frame(type="connected", version=PROTOCOL_VERSION, node=node, heartbeat=heartbeat_interval)


def subscribed_frame(
    channel: str, position: Position, *, recovered: bool | None, replayed: int, rid: Any, server: bool = False
) -> str:
    return _frame(
        type="subscribed",
        channel=channel,
        id=position.event_id,
        recovered=recovered,
        replayed=replayed if recovered else None,
        rid=rid,
        server=server or None,
    )


def unsubscribed_frame(channel: str, rid: Any, reason: str | None = None) -> str:
    """The answer to an unsubscribe; with ``reason`` "server", one the server did unasked."""
    return _frame(type="unsubscribed", channel=channel, rid=rid, reason=reason)


def presence_frame(channel: str, clients: list[dict[str, Any]], users: int, rid: Any) -> str:
    return _frame(type="presence", channel=channel, clients=clients, users=users, rid=rid)


def presence_stats_frame(channel: str, clients: int, rid: Any) -> str:
    return _frame(type="presence_stats", channel=channel, clients=clients, rid=rid)


def published_frame(channel: str, position: Position, rid: Any) -> str:
    return _frame(type="published", channel=channel, id=position.event_id, rid=rid)


def event_frame(publication: Publication) -> str:
    """The event frame for one publication; built once and shared by all subscribers."""
    head = _dumps(
        {"type": "event", "channel": publication.channel, "id": publication.position.event_id}
        if publication.event is None
        else {
            "type": "event",
            "channel": publication.channel,
            "id": publication.position.event_id,
            "event": publication.event,
        }
    )
    # The data is already compact JSON: splice it in rather than re-encoding.
    return f'{head[:-1]},"data":{publication.data}}}'


def reset_frame(channel: str, position: Position, reason: str) -> str:
    return _frame(type="reset", channel=channel, id=position.event_id, reason=str(reason))


def error_frame(error: ClientError) -> str:
    """An error answer; ``channel`` names the channel of a failed subscribe, unsubscribe or publish."""
    return _frame(type="error", code=error.code.value, message=error.message, rid=error.rid, channel=error.channel)


def refreshed_frame(user: str | None, expires: float | None, rid: Any) -> str:
    return _frame(type="refreshed", user=user, exp=expires, rid=rid)


def pong_frame(rid: Any) -> str:
    return _frame(type="pong", rid=rid)


HEARTBEAT_FRAME = _frame(type="heartbeat")


def drain_frame(reconnect_after_ms: int) -> str:
    return _frame(type="drain", reconnect_after=reconnect_after_ms)
