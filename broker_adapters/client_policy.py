"""The Python client's decisions, as pure functions: no socket, no timer, no clock.

How long to wait before the next connection attempt, whether a lost
connection is worth another one, what an HTTP refusal means, when to
refresh a credential, where a handshake puts it.  The rules are
docs/protocol.md's "Reconnecting", "Close codes" and "Credentials", the same
as the JavaScript client's (clients/js/src/policy.ts), so that both clients
behave alike; tests/unit/test_client_policy.py checks every case.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit


class Close(enum.IntEnum):
    """The close codes the client tells apart (docs/protocol.md, "Close codes")."""

    NORMAL = 1000
    GOING_AWAY = 1001
    ABNORMAL = 1006  # no close frame: never on the wire, the library reports it
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    UNAUTHORIZED = 4001
    FORBIDDEN = 4003
    SLOW_CONSUMER = 4008
    TOKEN_EXPIRED = 4011
    RATE_LIMITED = 4029
    BROKER_UNAVAILABLE = 4503


# Refused by policy or credential: retrying the same thing cannot help.
PERMANENT = frozenset({Close.POLICY_VIOLATION, Close.UNAUTHORIZED, Close.FORBIDDEN})
# A subscribe refused with broker_unavailable is sent again after 0.5 s doubling to 5 s (protocol.md).
SUBSCRIBE_RETRY_BASE = 0.5
SUBSCRIBE_RETRY_CAP = 5.0
# Seconds without any frame, per second of the node's heartbeat, after which the connection is dead.
WATCHDOG_FACTOR = 2.0
# A credential is refreshed when this share of its remaining lifetime has passed.
REFRESH_AT = 0.8
# Never refresh sooner than this after the last attempt, however close the expiry.
REFRESH_MIN = 1.0
# A subscribe still unanswered this long after a rate_limited error may have been dropped: send it again.
RATE_LIMITED_RESEND = 1.0


def backoff(attempt: int, base: float, cap: float, uniform: Callable[[], float] = random.random) -> float:
    """Exponential backoff with full jitter: a random wait between 0 and min(cap, base * 2^attempt) seconds.

    The randomness spreads out the clients of a node that went away, which all
    reconnect at the same moment.
    """
    return uniform() * min(cap, base * 2.0 ** min(attempt, 64))


def retry_after_close(code: int, renewable: bool) -> int | None:
    """What to do after a connection ended with ``code``: None to stop for good, else how many extra backoff steps.

    - 1008, 4001, 4003: refused by policy or credential; surface, do not retry.
    - 4011: the credential expired; retry only if a callback can fetch a fresh one.
    - 4029: rate limited; retry after a backoff three steps longer (x8).
    - anything else, known or not (1000 not asked for, 1001, 1006, 1011, 1012,
      1013, 4008, 4503, ...): resume with backoff.
    """
    if code in PERMANENT:
        return None
    if code == Close.TOKEN_EXPIRED:
        return 0 if renewable else None
    return 3 if code == Close.RATE_LIMITED else 0


def close_code_of_status(status: int, error: str | None = None) -> int:
    """The close code that means the same as a refused handshake (HTTP ``status``, the body's ``error``).

    One table, :func:`retry_after_close`, then decides for both.  A 4xx other
    than 408 and 429 means a wrong request (a wrong path, a header too large):
    retrying it unchanged cannot help.
    """
    if status == 401:
        return Close.TOKEN_EXPIRED if error == "token_expired" else Close.UNAUTHORIZED
    if status == 403:
        return Close.FORBIDDEN
    if 400 <= status < 500 and status not in (408, 429):
        return Close.POLICY_VIOLATION
    return Close.TRY_AGAIN_LATER


@dataclass(frozen=True, slots=True)
class Retry:
    """Reconnect after ``delay`` seconds; ``attempt`` is the backoff counter from then on."""

    delay: float
    attempt: int


def after_close(
    code: int,
    *,
    renewable: bool,
    attempt: int,
    base: float,
    cap: float,
    hint: float | None = None,
    retry_after: float | None = None,
    uniform: Callable[[], float] = random.random,
) -> Retry | None:
    """The next step after a connection ended: None to stop, or when to try again.

    ``hint`` is the node's own delay (a ``drain`` message's ``reconnect_after``),
    which replaces the backoff.  ``retry_after`` is a refusal's ``Retry-After``:
    the client waits at least that long, plus its backoff, so that the clients
    a node refused do not all come back in the same second.
    """
    extra = retry_after_close(code, renewable)
    if extra is None:
        return None
    if hint is not None:
        return Retry(hint, attempt)
    delay = backoff(attempt + extra, base, cap, uniform)
    return Retry(delay + (retry_after or 0.0), attempt + 1)


def subscribe_retry_delay(tries: int, uniform: Callable[[], float] = random.random) -> float:
    """The wait before sending again a subscribe refused ``tries`` + 1 times in a row with broker_unavailable."""
    return backoff(tries, SUBSCRIBE_RETRY_BASE, SUBSCRIBE_RETRY_CAP, uniform)


def refresh_delay(exp: float, now: float) -> float:
    """Seconds until the next refresh of a credential expiring at ``exp``: at 80% of the time left.

    Called again after a failed refresh, it gives a shorter wait each time.
    """
    return max(REFRESH_MIN, (exp - now) * REFRESH_AT)


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` header in seconds (the node sends whole seconds; an HTTP date is ignored)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def token_expiry(token: str | None) -> float | None:
    """A JWT's ``exp`` claim, read without verifying it (the node verifies); None if there is none."""
    if not token or token.count(".") != 2:
        return None
    payload = token.split(".")[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None


def socket_url(base: str) -> str:
    """The WebSocket URL of a node: ``http(s)://`` becomes ``ws(s)://`` and ``/ws`` is added unless given.

    Raises ValueError for a URL that is not one of those schemes or has no host,
    so that a typo fails at once instead of being retried forever.
    """
    parts = urlsplit(base.strip())
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise ValueError(f"a node URL is http(s)://host[:port] or ws(s)://host[:port], not {base!r}")
    path = parts.path.rstrip("/")
    if not path.endswith("/ws"):
        path += "/ws"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


@dataclass(frozen=True, slots=True)
class Handshake:
    """Where a credential goes: the URL to open, the headers to send, and the first frame, if any."""

    url: str
    headers: tuple[tuple[str, str], ...] = ()
    first_frame: dict[str, str] | None = None


def handshake(url: str, *, token: str | None, ticket: str | None, auth_frame: bool) -> Handshake:
    """Place the credential: docs/security.md, "Where the token goes".

    A token goes in an ``Authorization: Bearer`` header (the best place for a
    program: no URL, no log), or in an ``auth`` first frame when asked.  A
    ticket goes in the query string (``?ticket=``), or in the ``auth`` frame.
    Without a credential, nothing.
    """
    if ticket:
        if auth_frame:
            return Handshake(url, first_frame={"type": "auth", "ticket": ticket})
        separator = "&" if "?" in url else "?"
        return Handshake(f"{url}{separator}ticket={quote(ticket, safe='')}")
    if token:
        if auth_frame:
            return Handshake(url, first_frame={"type": "auth", "token": token})
        return Handshake(url, headers=(("Authorization", f"Bearer {token}"),))
    return Handshake(url)
