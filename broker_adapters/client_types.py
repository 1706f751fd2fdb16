"""What the Python client hands to an application: publications, resets, notifications, events, errors.

Every value is a small immutable record, so that an application can match on
it::

    async for item in client.subscribe("news"):
        match item:
            case Publication(data=data):
                render(data)
            case Reset(reason=reason):
                reload_news(reason)

The exceptions descend from :class:`~broker_adapters.errors.FanlineError`::

    FanlineError
    └── ClientFailure               the client could not do what was asked
        ├── RequestFailed           a publish, ping or refresh failed (code: the node's, or timeout/disconnected/closed)
        ├── SubscriptionFailed      the node refused a subscription for good (subscribe_forbidden, ...)
        ├── ConnectionFailed        a permanent failure (1008, 4001, 4003; 4011 without a credential callback)
        └── ClientClosed            the client was closed
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .errors import FanlineError


class State(enum.StrEnum):
    """The client's state (``client.state``)."""

    DISCONNECTED = "disconnected"  # before connect(), and between two connections
    CONNECTING = "connecting"
    CONNECTED = "connected"  # the node's ``connected`` message arrived
    FAILED = "failed"  # a permanent failure: the client stopped
    CLOSED = "closed"  # close() was called


class SubscriptionState(enum.StrEnum):
    SUBSCRIBING = "subscribing"  # sent, or waiting for a connection
    SUBSCRIBED = "subscribed"  # the node confirmed, on the current connection
    UNSUBSCRIBED = "unsubscribed"
    FAILED = "failed"  # the node refused it for good


class ResetReason(enum.StrEnum):
    """Why a reset happened (docs/protocol.md, "Reset reasons").  A reason this client does not know stays a str."""

    EPOCH_CHANGED = "epoch_changed"
    HISTORY_TRIMMED = "history_trimmed"
    TOO_FAR_BEHIND = "too_far_behind"
    POSITION_AHEAD = "position_ahead"
    SLOW_CONSUMER = "slow_consumer"


_ADVICE = {
    ResetReason.EPOCH_CHANGED: "the channel's stream was lost and started again",
    ResetReason.HISTORY_TRIMMED: "events after your position left the broker's history, or the node lost live events",
    ResetReason.TOO_FAR_BEHIND: "more events were missed than the node replays",
    ResetReason.POSITION_AHEAD: "your position was beyond the channel's top: it came from another stream",
    ResetReason.SLOW_CONSUMER: "events were dropped because they were not read fast enough",
}


def reset_reason(value: str) -> ResetReason | str:
    try:
        return ResetReason(value)
    except ValueError:
        return value


@dataclass(frozen=True, slots=True)
class Publication:
    """An event of a channel, in stream order, once.  ``event`` is the publisher's event type, if it gave one."""

    channel: str
    id: str
    data: Any
    event: str | None = None


@dataclass(frozen=True, slots=True)
class Reset:
    """The events after ``previous`` up to ``id`` cannot be delivered: they are gone for good.

    What to do: rebuild this channel's state from your application's source of
    truth (your backend's API, say), applying the publications that follow
    after that snapshot; or, if you cannot, tell the user that updates may be
    missing.  Do not unsubscribe and subscribe again: the client has already
    moved the channel's position to ``id`` and goes on from there.
    ``previous`` is the position the client had (None if it had none).
    """

    channel: str
    id: str
    reason: ResetReason | str
    previous: str | None = None

    @property
    def advice(self) -> str:
        """Why, in words, and what to do."""
        why = _ADVICE.get(self.reason, str(self.reason)) if isinstance(self.reason, ResetReason) else str(self.reason)
        return f"{self.channel}: {why}; rebuild its state from your source of truth, then apply what follows"


@dataclass(frozen=True, slots=True)
class Subscribed:
    """The node confirmed a subscription (on every connection).

    ``recovered`` is None for a subscription without a position, True when the
    ``replayed`` missed events follow, False when they could not be recovered
    and a :class:`Reset` follows.
    """

    channel: str
    id: str
    recovered: bool | None = None
    replayed: int | None = None


@dataclass(frozen=True, slots=True)
class SubscribeError:
    """The node refused a subscribe.  With ``retry_in`` (seconds) the client retries by itself
    (``broker_unavailable``); without it the subscription has failed and is dropped."""

    channel: str
    code: str
    message: str
    retry_in: float | None = None


Item = Publication | Reset
"""What a subscription yields."""


# -- the client's events (``client.listen(callback)``) ------------------------------------------------


@dataclass(frozen=True, slots=True)
class StateChanged:
    state: State


@dataclass(frozen=True, slots=True)
class Connected:
    """A connection is up: the node's ``connected`` message arrived."""

    url: str
    node: str | None = None


@dataclass(frozen=True, slots=True)
class Disconnected:
    """A connection ended (or could not be opened); the next attempt starts in ``delay`` seconds."""

    code: int
    reason: str
    delay: float
    url: str


@dataclass(frozen=True, slots=True)
class Failed:
    """A permanent failure: the client stopped.  ``code`` is the close code (or the one an HTTP refusal means)."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Draining:
    """The node is draining; the client reconnects after ``reconnect_after`` seconds, to the next URL."""

    reconnect_after: float


@dataclass(frozen=True, slots=True)
class Refreshed:
    user: str | None = None
    exp: float | None = None


@dataclass(frozen=True, slots=True)
class ErrorNotice:
    """An error not tied to a subscription or a request: ``rate_limited``, a failed refresh, a refused ``auth``."""

    code: str
    message: str


ClientEvent = StateChanged | Connected | Disconnected | Failed | Draining | Refreshed | ErrorNotice


# -- credentials ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Credential:
    """A token (a JWT) or a single-use ticket; ``exp`` (Unix seconds) when it cannot be read from a token."""

    token: str | None = None
    ticket: str | None = None
    exp: float | None = None


CredentialSource = Callable[[], "Awaitable[str | Credential] | str | Credential"]
"""A callback returning a fresh token (a str) or a :class:`Credential`; it may be async."""


# -- errors ----------------------------------------------------------------------------------------


class ClientFailure(FanlineError):
    """The client could not do what was asked."""


class RequestFailed(ClientFailure):
    """A publish, ping or refresh failed.

    ``code`` is the node's error code (``publish_forbidden``, ``broker_unavailable``, ...)
    or one of ``timeout`` and ``disconnected`` (the connection ended before the reply).  A publish that failed with
    ``timeout``, ``disconnected`` or ``broker_unavailable`` may or may not have happened.
    """

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message


class SubscriptionFailed(ClientFailure):
    """The node refused a subscription for good (``subscribe_forbidden``, ``invalid_channel``, ...)."""

    def __init__(self, channel: str, code: str, message: str) -> None:
        super().__init__(f"{channel}: {code}: {message}")
        self.channel = channel
        self.code = code
        self.message = message


class ConnectionFailed(ClientFailure):
    """The client stopped for good: retrying cannot help (close 1008, 4001, 4003, or 4011 without a callback)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"connection failed: {code} {reason}")
        self.code = code
        self.reason = reason


class ClientClosed(ClientFailure):
    """The client was closed."""
