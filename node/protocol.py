"""The WebSocket wire protocol, without I/O.

Client messages are parsed into dataclasses here and nowhere else; server
messages are encoded here and nowhere else.  docs/protocol.md is the
specification; this module is its implementation.

A server text frame holds one or more JSON objects separated by ``\\n`` (the
server batches queued messages).  A client frame holds exactly one object.
"""

from __future__ import annotations

import json
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

# Re-exported: the reset reasons are part of the wire protocol.
from .resume import ResetReason as ResetReason

PROTOCOL_VERSION = 1


class ErrorCode:
    """Error codes carried by ``error`` frames and HTTP error bodies."""

    INVALID_JSON = "invalid_json"
    INVALID_MESSAGE = "invalid_message"
    UNKNOWN_TYPE = "unknown_type"
    INVALID_CHANNEL = "invalid_channel"
    INVALID_EVENT_ID = "invalid_event_id"
    INVALID_EVENT_TYPE = "invalid_event_type"
    INVALID_DATA = "invalid_data"
    MESSAGE_TOO_LARGE = "message_too_large"
    ALREADY_SUBSCRIBED = "already_subscribed"
    NOT_SUBSCRIBED = "not_subscribed"
    TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"
    PUBLISH_FORBIDDEN = "publish_forbidden"
    SUBSCRIBE_FORBIDDEN = "subscribe_forbidden"
    RATE_LIMITED = "rate_limited"
    BROKER_UNAVAILABLE = "broker_unavailable"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    DRAINING = "draining"
    INTERNAL = "internal"
    # -- security: see docs/security.md
    UNAUTHORIZED = "unauthorized"  # no credential where one is required
    INVALID_TOKEN = "invalid_token"
    TOKEN_EXPIRED = "token_expired"
    INVALID_TICKET = "invalid_ticket"  # forged, expired or already used
    INVALID_API_KEY = "invalid_api_key"
    ORIGIN_FORBIDDEN = "origin_forbidden"
    TICKETS_DISABLED = "tickets_disabled"


class CloseCode:
    """WebSocket close codes Fanline uses.  See docs/protocol.md."""

    NORMAL = 1000
    GOING_AWAY = 1001
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012  # draining: reconnect elsewhere and resume
    TRY_AGAIN_LATER = 1013
    SLOW_CONSUMER = 4008  # fell behind: reconnect and resume
    UNAUTHORIZED = 4001
    FORBIDDEN = 4003
    TOKEN_EXPIRED = 4011
    RATE_LIMITED = 4029
    BROKER_UNAVAILABLE = 4503


class ProtocolError(Exception):
    """A client message that cannot be acted on.  Answered with an error frame."""

    def __init__(self, code: str, message: str, rid: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.rid = rid


# -- client messages -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Subscribe:
    channel: str
    since: Position | None = None
    rid: Any = None


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


ClientMessage = Subscribe | Unsubscribe | Publish | Ping | Auth


def _rid(message: dict[str, Any]) -> Any:
    rid = message.get("rid")
    # Echoed back verbatim, so keep it small and scalar.
    if rid is None or isinstance(rid, (int, float)) and not isinstance(rid, bool):
        return rid
    if isinstance(rid, str) and len(rid) <= 64:
        return rid
    raise ProtocolError(ErrorCode.INVALID_MESSAGE, "rid must be a number or a string of at most 64 characters")


def parse_client_message(text: str, *, max_channel_length: int = 255) -> ClientMessage:
    """Parse one client frame.  Raises :class:`ProtocolError` with a documented code."""
    try:
        message = json.loads(text)
    except ValueError as exc:
        raise ProtocolError(ErrorCode.INVALID_JSON, f"frame is not JSON: {exc}") from None
    except RecursionError:
        # Deep nesting exhausts the decoder's recursion, which is not a ValueError.
        raise ProtocolError(ErrorCode.INVALID_JSON, "frame is nested too deeply") from None
    if not isinstance(message, dict):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "frame must be a JSON object")
    rid = _rid(message)
    kind = message.get("type")
    try:
        if kind == "ping":
            return Ping(rid=rid)
        if kind in ("auth", "refresh"):
            token, ticket = message.get("token"), message.get("ticket")
            given = [v for v in (token, ticket) if v is not None]
            if len(given) != 1 or not isinstance(given[0], str) or not given[0]:
                raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"{kind} needs a token or a ticket string", rid)
            return Auth(token=token, ticket=ticket, rid=rid)
        if kind in ("subscribe", "unsubscribe", "publish"):
            channel = validate_channel(message.get("channel"), max_channel_length)
            if kind == "unsubscribe":
                return Unsubscribe(channel, rid=rid)
            if kind == "subscribe":
                since_raw = message.get("since")
                if since_raw is not None and not isinstance(since_raw, str):
                    raise ProtocolError(ErrorCode.INVALID_EVENT_ID, "since must be an event id string", rid)
                since = Position.parse(since_raw) if since_raw else None
                return Subscribe(channel, since=since, rid=rid)
            if "data" not in message:
                raise ProtocolError(ErrorCode.INVALID_MESSAGE, "publish needs a data field", rid)
            event = validate_event_type(message.get("event"))
            return Publish(channel, encode_data(message["data"]), event=event, rid=rid)
    except InvalidChannel as exc:
        raise ProtocolError(ErrorCode.INVALID_CHANNEL, str(exc), rid) from None
    except InvalidEventId as exc:
        raise ProtocolError(ErrorCode.INVALID_EVENT_ID, str(exc), rid) from None
    except InvalidEventType as exc:
        raise ProtocolError(ErrorCode.INVALID_EVENT_TYPE, str(exc), rid) from None
    except InvalidData as exc:
        raise ProtocolError(ErrorCode.INVALID_DATA, str(exc), rid) from None
    if kind is None:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "frame needs a type field", rid)
    shown = kind[:40] if isinstance(kind, str) else type(kind).__name__
    raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {shown!r}", rid)


# -- server messages -----------------------------------------------------------------

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _frame(**fields: Any) -> str:
    return _dumps({k: v for k, v in fields.items() if v is not None})


def connected_frame(node: str, heartbeat_interval: float) -> str:
    return _frame(type="connected", version=PROTOCOL_VERSION, node=node, heartbeat=heartbeat_interval)


def subscribed_frame(
    channel: str, position: Position, *, recovered: bool | None, replayed: int, rid: Any
) -> str:
    return _frame(
        type="subscribed",
        channel=channel,
        id=position.event_id,
        recovered=recovered,
        replayed=replayed if recovered else None,
        rid=rid,
    )


def unsubscribed_frame(channel: str, rid: Any) -> str:
    return _frame(type="unsubscribed", channel=channel, rid=rid)


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
    return _frame(type="reset", channel=channel, id=position.event_id, reason=reason)


def error_frame(code: str, message: str, rid: Any = None, channel: str | None = None) -> str:
    """An error answer; ``channel`` names the channel of a failed subscribe, unsubscribe or publish."""
    return _frame(type="error", code=code, message=message, rid=rid, channel=channel)


def refreshed_frame(user: str | None, expires: float | None, rid: Any) -> str:
    return _frame(type="refreshed", user=user, exp=expires, rid=rid)


def pong_frame(rid: Any) -> str:
    return _frame(type="pong", rid=rid)


HEARTBEAT_FRAME = _frame(type="heartbeat")


def drain_frame(reconnect_after_ms: int) -> str:
    return _frame(type="drain", reconnect_after=reconnect_after_ms)
