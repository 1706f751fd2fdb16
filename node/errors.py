"""What a node says when it refuses something, in one place.

Every refusal a client or an operator sees is a :class:`ClientError` with an
:class:`ErrorCode`.  One table, :data:`ERRORS`, gives each code the HTTP
status a refused request answers with and the WebSocket close code a refused
connection is closed with, so no call site spells out a status of its own.
docs/protocol.md documents every code; a test holds the two together.

The whole tree of Fanline's own exceptions::

    FanlineError                         broker_adapters/errors.py
    ├── BrokerError                      the broker could not do what was asked
    │   └── BrokerUnavailable            it cannot be reached now; retry later
    ├── ConfigError                      a setting or URL outside what it accepts
    │   ├── UnknownBrokerURL
    │   └── SettingsError                node/settings.py
    ├── InvalidInput                     a value outside the documented form
    │   ├── InvalidChannel
    │   ├── InvalidEventId
    │   ├── InvalidEventType
    │   └── InvalidData
    └── ClientError                      a refusal sent to a client (this module)

Internal control-flow exceptions stay private to their modules
(``node.resume.MergeGap``, ``node.auth.TokenError``).
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

from broker_adapters.errors import FanlineError

from .redaction import redact


class ErrorCode(enum.StrEnum):
    """Error codes carried by ``error`` messages and HTTP error bodies."""

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
    TOO_MANY_PENDING = "too_many_pending"
    DRAINING = "draining"
    INTERNAL = "internal"
    # -- the HTTP layer: malformed or oversized requests
    BAD_REQUEST = "bad_request"
    HEADERS_TOO_LARGE = "headers_too_large"
    REQUEST_TIMEOUT = "request_timeout"
    # -- security: see docs/security.md
    UNAUTHORIZED = "unauthorized"
    INVALID_TOKEN = "invalid_token"
    TOKEN_EXPIRED = "token_expired"
    INVALID_TICKET = "invalid_ticket"
    INVALID_API_KEY = "invalid_api_key"
    ORIGIN_FORBIDDEN = "origin_forbidden"
    TICKETS_DISABLED = "tickets_disabled"
    # -- presence, the server API and backend hooks: docs/presence.md, server-api.md, hooks.md
    PRESENCE_DISABLED = "presence_disabled"
    FORBIDDEN = "forbidden"
    BACKEND_UNAVAILABLE = "backend_unavailable"


class CloseCode(enum.IntEnum):
    """WebSocket close codes Fanline uses.  See docs/protocol.md."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012  # draining: reconnect elsewhere and resume
    TRY_AGAIN_LATER = 1013
    UNAUTHORIZED = 4001
    FORBIDDEN = 4003
    SLOW_CONSUMER = 4008  # fell behind: reconnect and resume
    TOKEN_EXPIRED = 4011
    RATE_LIMITED = 4029
    BROKER_UNAVAILABLE = 4503


@dataclass(frozen=True, slots=True)
class Treatment:
    """How a code is answered: the HTTP status, the close code, and a retry hint in seconds."""

    status: int
    close: CloseCode = CloseCode.POLICY_VIOLATION
    retry_after: int | None = None


ERRORS: dict[ErrorCode, Treatment] = {
    ErrorCode.INVALID_JSON: Treatment(400),
    ErrorCode.INVALID_MESSAGE: Treatment(400),
    ErrorCode.UNKNOWN_TYPE: Treatment(400),
    ErrorCode.INVALID_CHANNEL: Treatment(400),
    ErrorCode.INVALID_EVENT_ID: Treatment(400),
    ErrorCode.INVALID_EVENT_TYPE: Treatment(400),
    ErrorCode.INVALID_DATA: Treatment(400),
    ErrorCode.MESSAGE_TOO_LARGE: Treatment(413, CloseCode.MESSAGE_TOO_BIG),
    ErrorCode.ALREADY_SUBSCRIBED: Treatment(400),
    ErrorCode.NOT_SUBSCRIBED: Treatment(400),
    ErrorCode.TOO_MANY_SUBSCRIPTIONS: Treatment(400),
    ErrorCode.PUBLISH_FORBIDDEN: Treatment(403),
    ErrorCode.SUBSCRIBE_FORBIDDEN: Treatment(403),
    ErrorCode.RATE_LIMITED: Treatment(429, CloseCode.RATE_LIMITED),
    ErrorCode.BROKER_UNAVAILABLE: Treatment(503, CloseCode.TRY_AGAIN_LATER, 1),
    ErrorCode.TOO_MANY_CONNECTIONS: Treatment(503, CloseCode.TRY_AGAIN_LATER, 5),
    ErrorCode.TOO_MANY_PENDING: Treatment(503, CloseCode.TRY_AGAIN_LATER, 2),
    ErrorCode.DRAINING: Treatment(503, CloseCode.TRY_AGAIN_LATER, 1),
    ErrorCode.INTERNAL: Treatment(500, CloseCode.INTERNAL_ERROR),
    ErrorCode.BAD_REQUEST: Treatment(400, CloseCode.PROTOCOL_ERROR),
    ErrorCode.HEADERS_TOO_LARGE: Treatment(431),
    ErrorCode.REQUEST_TIMEOUT: Treatment(408),
    ErrorCode.UNAUTHORIZED: Treatment(401, CloseCode.UNAUTHORIZED),
    ErrorCode.INVALID_TOKEN: Treatment(401, CloseCode.UNAUTHORIZED),
    ErrorCode.TOKEN_EXPIRED: Treatment(401, CloseCode.TOKEN_EXPIRED),
    ErrorCode.INVALID_TICKET: Treatment(401, CloseCode.UNAUTHORIZED),
    ErrorCode.INVALID_API_KEY: Treatment(401, CloseCode.UNAUTHORIZED),
    ErrorCode.ORIGIN_FORBIDDEN: Treatment(403, CloseCode.FORBIDDEN),
    ErrorCode.TICKETS_DISABLED: Treatment(404),
    ErrorCode.PRESENCE_DISABLED: Treatment(400),
    ErrorCode.FORBIDDEN: Treatment(403, CloseCode.FORBIDDEN),
    ErrorCode.BACKEND_UNAVAILABLE: Treatment(503, CloseCode.TRY_AGAIN_LATER, 1),
}


class ClientError(FanlineError):
    """A refusal, as the client will see it.

    A WebSocket message that cannot be acted on becomes an ``error`` message
    (with the request's ``rid`` and ``channel``); a refused HTTP request or
    handshake becomes a JSON error body with :attr:`status` and, where
    retrying makes sense, ``Retry-After``; a refused connection that was
    already accepted is closed with :attr:`close_code`.  ``extra`` adds
    fields to an HTTP error body (a batch's partial results).
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        rid: Any = None,
        channel: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        # Messages often carry a library's exception text: never a secret in it (node.redaction).
        message = redact(message)
        super().__init__(message)
        self.code = code
        self.message = message
        self.rid = rid
        self.channel = channel
        self.extra = extra

    @property
    def treatment(self) -> Treatment:
        return ERRORS[self.code]

    @property
    def status(self) -> int:
        return self.treatment.status

    @property
    def close_code(self) -> CloseCode:
        return self.treatment.close

    @property
    def retry_after(self) -> int | None:
        return self.treatment.retry_after

    def body(self) -> bytes:
        """The JSON body of an HTTP error response."""
        fields: dict[str, Any] = {"error": self.code.value, "message": self.message}
        if self.extra:
            fields.update(self.extra)
        return json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode()

    def headers(self) -> list[tuple[bytes, bytes]]:
        """Headers of an HTTP error response: the JSON type and the retry hint."""
        headers = [(b"content-type", b"application/json")]
        if self.retry_after is not None:
            headers.append((b"retry-after", str(self.retry_after).encode()))
        return headers

    def with_request(self, rid: Any = None, channel: str | None = None) -> ClientError:
        """The same refusal, answering the request ``rid`` about ``channel``."""
        return ClientError(
            self.code,
            self.message,
            rid=self.rid if rid is None else rid,
            channel=self.channel if channel is None else channel,
            extra=self.extra,
        )

    def __repr__(self) -> str:
        return f"ClientError({self.code.value!r}, {self.message!r})"
