"""Short-lived, single-use connection tickets.

A browser cannot put a header on an ``EventSource`` or WebSocket handshake,
and a long-lived token in a URL ends up in proxy and browser logs.  So a
client trades its credential for a ticket (``POST /api/tickets``) and opens
``/ws?ticket=…`` or ``/sse?…&ticket=…`` within ``ticket_ttl`` seconds.

*Any node can verify a ticket*: it is a JWT signed with a key derived from
``ticket_secret`` (or ``jwt_secret``), which every node of a cluster shares.
The key is derived (HMAC of a fixed label) so a ticket is never also a valid
connection token, even when both come from the same secret.

*A ticket works once, cluster-wide, with no new broker API*: the redeeming node
publishes a claim (its name and a random nonce) to the internal channel
``fanline.ticket.<ticket id>`` and reads that channel's history from the
start.  The ticket is valid only if the FIRST publication is this node's own
claim: the broker's log order decides between racing nodes, the same way on
every adapter.  This needs the channel's history to outlive the ticket
(``history_ttl`` and ``meta_ttl`` > ``ticket_ttl``): once the broker forgets
the claim, the channel starts afresh and the ticket would work again, so a
node with a shorter retention refuses to start (:func:`retention_problem`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import jwt

from broker_adapters.base import Broker, BrokerError
from broker_adapters.types import encode_data

from .auth import Claims, TokenError, claims_from

# Clients may never subscribe or publish to channels with this prefix.
TICKET_CHANNEL_PREFIX = "fanline.ticket."
_KEY_LABEL = b"fanline ticket signing key v1"
_TYPE = "fanline-ticket"
_ID = re.compile(r"[0-9a-f]{32}")
# The adapters' defaults (docs/brokers.md), for a broker URL that does not set them.
DEFAULT_HISTORY_TTL = 600.0
DEFAULT_META_TTL = 86400.0


def retention_problem(broker_url: str, ticket_ttl: float) -> str | None:
    """Why this broker would let a used ticket be redeemed again (or never at all); None if it would not.

    Reads ``history_size``, ``history_ttl`` and ``meta_ttl`` from the broker
    URL, where every adapter takes them.  A value the adapter cannot parse is
    the adapter's to refuse.
    """
    query = dict(parse_qsl(urlsplit(broker_url).query))
    try:
        size = int(query.get("history_size", "1"))
        kept = min(float(query.get("history_ttl", DEFAULT_HISTORY_TTL)), float(query.get("meta_ttl", DEFAULT_META_TTL)))
    except ValueError:
        return None
    if size == 0:
        return "tickets need the broker's history, and the broker URL sets history_size=0"
    if kept <= ticket_ttl:
        return (
            f"ticket_ttl ({ticket_ttl:g} s) must be shorter than the broker's history_ttl and meta_ttl ({kept:g} s): "
            "the claim that makes a ticket single-use would expire before the ticket, which could then be used again"
        )
    return None


class TicketUnavailable(Exception):
    """The broker could not be asked whether the ticket was used.  Retry later."""


@dataclass(frozen=True, slots=True)
class Ticket:
    value: str
    expires_in: float


class TicketBook:
    """Issues and redeems tickets for one node."""

    def __init__(self, secret: str, ttl: float, node_name: str) -> None:
        self._key = hmac.new(secret.encode(), _KEY_LABEL, hashlib.sha256).digest()
        self.ttl = ttl
        self.node_name = node_name

    def issue(self, claims: Claims) -> Ticket:
        payload: dict[str, Any] = {
            "typ": _TYPE,
            "jti": secrets.token_hex(16),
            "sub": claims.user,
            # The ticket's own life, not the session's.
            "exp": time.time() + self.ttl,
            "channels": list(claims.channels),
            "publish": list(claims.publish),
        }
        if claims.expires is not None:
            payload["session_exp"] = claims.expires
        return Ticket(jwt.encode(payload, self._key, algorithm="HS256"), self.ttl)

    def verify(self, ticket: str) -> tuple[str, Claims]:
        """The ticket's id and the claims it carries; raises :class:`TokenError`."""
        if len(ticket) > 8192:
            raise TokenError("ticket is too long")
        try:
            payload = jwt.decode(ticket, self._key, algorithms=["HS256"], options={"require": ["exp", "jti", "sub"]})
        except jwt.ExpiredSignatureError:
            raise TokenError("ticket has expired", expired=True) from None
        except jwt.InvalidTokenError as exc:
            raise TokenError(f"invalid ticket: {exc}") from None
        ticket_id = payload.get("jti")
        if payload.get("typ") != _TYPE or not isinstance(ticket_id, str) or _ID.fullmatch(ticket_id) is None:
            raise TokenError("invalid ticket: not a Fanline ticket")
        claims = claims_from({**payload, "exp": payload.get("session_exp")})
        if claims.expires is not None and claims.expires <= time.time():
            raise TokenError("the session this ticket was issued for has expired", expired=True)
        return ticket_id, claims

    async def redeem(self, broker: Broker, ticket: str) -> Claims:
        """Verify and use up ``ticket``: first claim in the broker's log wins."""
        ticket_id, claims = self.verify(ticket)
        channel = TICKET_CHANNEL_PREFIX + ticket_id
        # The nonce tells apart two redemptions by the same node.
        claim = encode_data({"node": self.node_name, "nonce": secrets.token_hex(8)})
        try:
            await broker.publish(channel, claim)
            history = await broker.history(channel, 0, 1)
        except BrokerError as exc:
            raise TicketUnavailable(str(exc)) from None
        first = history.publications[0] if history.publications and history.complete else None
        if first is None or first.data != claim:
            raise TokenError("ticket was already used")
        return claims
