"""Who may connect, subscribe and publish.

The transports ask an :class:`AccessPolicy` and act on its answer; they hold
no rules of their own.  A refusal is a :class:`~node.errors.ClientError`,
which carries everything each transport needs to say no in its own terms.

The model (docs/security.md is the user-facing version):

- *Connecting*: the Origin allow-list first (:meth:`AccessPolicy.check_origin`,
  run by ``Node.admit``), then a credential (:meth:`AccessPolicy.identify`):
  a JWT (header, cookie, ``token`` query parameter or the first WebSocket
  frame) or a single-use ticket.  With no JWT key configured, connections
  without a credential are anonymous.
- *Subscribing and publishing*, in this order: the ``fanline.`` prefix is
  reserved; a ``#`` user boundary admits only that user; then the channel's
  namespace rule decides: ``nobody``, ``anyone``, ``users`` (any
  authenticated user) or ``granted`` (a matching token grant, or the user's
  own ``#`` channel).
- *Server API*: an API key when ``api_keys`` is set.  :meth:`AccessPolicy.precheck_api`
  applies every check that needs no I/O to a request's head, so a request
  without a good credential is refused before its body is read.
- *Operator endpoints* (``POST /drain``, ``POST /shed``): a caller on
  loopback, or the ``internal_key`` (:meth:`AccessPolicy.check_operator`).
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from broker_adapters.base import Broker
from broker_adapters.types import RESERVED_CHANNEL_PREFIX

from . import protocol
from .auth import Claims, Credential, TokenError, TokenVerifier, bearer, claims_from, find_credential, grant_matches
from .errors import ClientError, ErrorCode
from .settings import INTERNAL_KEY_HEADER, Settings, SettingsError
from .tickets import TicketBook, TicketUnavailable, retention_problem


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is on the other end of a connection.  ``user`` is None when anonymous.

    ``expires`` is the Unix time the credential ends (None: never);
    ``channels`` and ``publish`` are the token's grant patterns.
    """

    user: str | None = None
    expires: float | None = None
    channels: tuple[str, ...] = ()
    publish: tuple[str, ...] = ()
    #: Compact JSON shown with the user in presence (token claim ``info``, or the connect hook's answer).
    info: str | None = None

    @classmethod
    def of(cls, claims: Claims) -> Identity:
        return cls(claims.user, claims.expires, claims.channels, claims.publish, claims.info)


ANONYMOUS = Identity()


# -- channel rules ---------------------------------------------------------------------------

ANYONE, USERS, GRANTED, NOBODY = "anyone", "users", "granted", "nobody"
MODES = (ANYONE, USERS, GRANTED, NOBODY)
DEFAULT_NAMESPACE = "*"


@dataclass(frozen=True, slots=True)
class Rule:
    subscribe: str
    publish: str


class ChannelRules:
    """One rule per namespace (the part of a channel name before its first ``:``).

    Written as ``ns=subscribe:MODE,publish:MODE;ns2=…`` (``channel_rules``) or
    as JSON ``{"ns": {"subscribe": MODE, "publish": MODE}}``
    (``channel_rules_file``).  ``*`` names the rule for every other namespace;
    what a rule leaves out comes from the built-in default.
    """

    def __init__(self, rules: Mapping[str, Rule], default: Rule) -> None:
        self._rules = dict(rules)
        self.default = self._rules.pop(DEFAULT_NAMESPACE, default)

    def rule_for(self, channel: str) -> Rule:
        namespace, colon, _ = channel.partition(":")
        return self._rules.get(namespace, self.default) if colon else self.default

    @staticmethod
    def parse_text(text: str) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        for entry in filter(None, (part.strip() for part in text.split(";"))):
            namespace, sep, body = entry.partition("=")
            if not sep or not namespace.strip():
                raise SettingsError(f"channel_rules: {entry!r} is not NAMESPACE=subscribe:MODE,publish:MODE")
            actions: dict[str, str] = {}
            for item in filter(None, (p.strip() for p in body.split(","))):
                action, sep, mode = item.partition(":")
                if not sep:
                    raise SettingsError(f"channel_rules: {item!r} is not ACTION:MODE")
                actions[action.strip()] = mode.strip()
            out[namespace.strip()] = actions
        return out

    @classmethod
    def build(cls, specs: Mapping[str, Mapping[str, str]], default: Rule) -> ChannelRules:
        wildcard = specs.get(DEFAULT_NAMESPACE, {})
        base = Rule(wildcard.get("subscribe", default.subscribe), wildcard.get("publish", default.publish))
        rules: dict[str, Rule] = {}
        for namespace, actions in specs.items():
            if not isinstance(actions, Mapping):
                raise SettingsError(f"channel rules: namespace {namespace!r} needs an object of actions")
            unknown = set(actions) - {"subscribe", "publish"}
            if unknown:
                raise SettingsError(f"channel rules: unknown action(s) {sorted(unknown)} for {namespace!r}")
            rule = Rule(actions.get("subscribe", base.subscribe), actions.get("publish", base.publish))
            for mode in (rule.subscribe, rule.publish):
                if mode not in MODES:
                    raise SettingsError(f"channel rules: mode {mode!r} for {namespace!r} is not one of {MODES}")
            rules[namespace] = rule
        return cls(rules, base)


def _load_rules(settings: Settings, default: Rule) -> ChannelRules:
    specs: dict[str, dict[str, str]] = {}
    if settings.channel_rules_file:
        with open(settings.channel_rules_file, encoding="utf-8") as handle:
            loaded = json.load(handle)
        if not isinstance(loaded, dict):
            raise SettingsError("channel_rules_file must hold a JSON object")
        specs.update(loaded)
    # The compact setting is applied last, so a flag can override the file.
    specs.update(ChannelRules.parse_text(settings.channel_rules))
    return ChannelRules.build(specs, default)


# -- origins -------------------------------------------------------------------------------------


#: (scheme, host, port): what "same origin" compares (RFC 6454).
Origin = tuple[str, str, int]

_DEFAULT_PORTS = {"http": 80, "https": 443}


def parse_origin(value: str) -> Origin | None:
    """An ``Origin`` header (or an ``allowed_origins`` entry) as (scheme, host, port).

    None for anything that is not an http(s) origin: ``null``, ``ftp://…``, a
    value with a path, a query or credentials.  Browsers send only
    ``scheme://host[:port]``; names and schemes compare case-insensitively.
    """
    try:
        parts = urlsplit(value.strip().lower())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or "@" in parts.netloc:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return None
    return parts.scheme, parts.hostname, port or _DEFAULT_PORTS[parts.scheme]


def host_name(host: str | None) -> str | None:
    """The name in a ``Host`` header, without its port (``[::1]:8000`` gives ``::1``)."""
    if not host:
        return None
    try:
        return urlsplit("//" + host.strip()).hostname
    except ValueError:
        return None


def request_origin(host: str | None, forwarded_proto: str | None) -> Origin | None:
    """The origin a request was made to: its ``Host``, and the scheme the client used.

    Nodes speak plain HTTP behind a proxy that terminates TLS, so the scheme
    is the proxy's ``X-Forwarded-Proto`` (its first value) when there is one,
    else http.  A page cannot set that header on a WebSocket or EventSource
    request, and a non-browser client sends no Origin to compare anyway.
    """
    scheme = (forwarded_proto or "http").split(",")[0].strip().lower()
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    try:
        parts = urlsplit("//" + host.strip().lower())
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    return scheme, parts.hostname, port or _DEFAULT_PORTS[scheme]


class OriginPolicy:
    """Which browser origins may open a WebSocket or an SSE stream.

    Empty (the default): same-origin only, i.e. the Origin's scheme, host and
    port must be those of the request (:func:`request_origin`).  ``*``: any
    origin.  Otherwise a comma-separated list of exact origins
    (``https://app.example.com``).  A request without an Origin header is not
    from a browser page and is let through: the allow-list protects browsers'
    ambient credentials (cookies), which such clients lack.
    """

    def __init__(self, allowed: str) -> None:
        entries = [o.strip() for o in allowed.split(",") if o.strip()]
        self.any = "*" in entries
        self.null = any(e.lower() == "null" for e in entries)
        origins = set()
        for entry in entries:
            if entry in ("*",) or entry.lower() == "null":
                continue
            parsed = parse_origin(entry)
            if parsed is None:
                raise SettingsError(f"allowed_origins: {entry!r} is not an origin like https://app.example.com")
            origins.add(parsed)
        self.allowed = frozenset(origins)
        self.listed = bool(entries) and not self.any

    def permits(self, origin: str | None, host: str | None, forwarded_proto: str | None = None) -> bool:
        if origin is None or self.any:
            return True
        if origin.strip().lower() == "null":
            return self.null
        parsed = parse_origin(origin)
        if parsed is None:
            return False
        if self.listed:
            return parsed in self.allowed
        return parsed == request_origin(host, forwarded_proto)


class HostPolicy:
    """The host names the client port answers to (``allowed_hosts``); empty: any.

    A page that rebinds its own name to a node's address (DNS rebinding)
    passes a same-origin check, because its Origin and Host agree; only a
    list of the node's real names tells it apart.
    """

    def __init__(self, allowed: str) -> None:
        self.names = frozenset(n.strip().lower().rstrip(".") for n in re.split(r"[,\s]+", allowed) if n.strip())

    def permits(self, host: str | None) -> bool:
        if not self.names:
            return True
        name = host_name(host)
        return name is not None and name.rstrip(".") in self.names


def _header(scope: Mapping[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


#: Who may POST /drain and /shed without the internal key: the node's own host, by its
#: loopback address exactly (not all of 127.0.0.0/8: some sidecar proxies connect from
#: 127.0.0.6, and a caller the node cannot tell apart from the network is not local).
LOOPBACK = frozenset(("127.0.0.1", "::1", "::ffff:127.0.0.1"))
# The one /api/* path with rules of its own; every other one takes the API key (node.api, node.server_api).
_TICKETS_PATH = "/api/tickets"


# -- the policy -------------------------------------------------------------------------------------


class Action(enum.Enum):
    SUBSCRIBE = "subscribe to"
    PUBLISH = "publish to"


class AccessPolicy:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        if settings.ticket_ttl <= 0 or settings.auth_timeout <= 0:
            raise SettingsError("ticket_ttl and auth_timeout must be greater than 0")
        self.tokens = TokenVerifier(
            secret=settings.jwt_secret,
            public_key_file=settings.jwt_public_key_file,
            jwks_url=settings.jwks_url,
            jwks_timeout=settings.jwks_timeout,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
        )
        ticket_secret = settings.ticket_secret or settings.jwt_secret
        self.tickets = TicketBook(ticket_secret, settings.ticket_ttl, settings.node_name) if ticket_secret else None
        if self.tickets is not None:
            # Single use rests on the claim outliving the ticket (node.tickets): refuse to start otherwise.
            problem = retention_problem(settings.broker_url, settings.ticket_ttl)
            if problem is not None:
                raise SettingsError(problem)
        required = self.tokens.enabled
        publish_default = (GRANTED if required else ANYONE) if settings.client_publish else NOBODY
        self.rules = _load_rules(settings, Rule(GRANTED if required else ANYONE, publish_default))
        self.origins = OriginPolicy(settings.allowed_origins)
        self.hosts = HostPolicy(settings.allowed_hosts)
        # Compared as digests: equal length, so compare_digest leaks nothing, not even length.
        # Commas or newlines between keys (an api_keys_file holds one per line).
        self._api_keys = [_digest(k.strip()) for k in re.split(r"[,\n]", settings.api_keys) if k.strip()]
        self._internal_key = _digest(settings.internal_key) if settings.internal_key else None

    @property
    def required(self) -> bool:
        """Must every connection present a credential?"""
        return self.tokens.enabled

    # -- connecting -----------------------------------------------------------------------------

    def check_origin(self, scope: Mapping[str, Any]) -> None:
        """The synchronous gate ``Node.admit`` runs: the Host names, then the Origin allow-list.

        Credentials may need the network (JWKS, the ticket's claim channel),
        so the transports verify them next, with :meth:`identify`.
        """
        host = _header(scope, b"host")
        self.check_host(host)
        if not self.origins.permits(_header(scope, b"origin"), host, _header(scope, b"x-forwarded-proto")):
            raise ClientError(ErrorCode.ORIGIN_FORBIDDEN, "this origin may not connect")

    @staticmethod
    def has_credential(scope: Mapping[str, Any]) -> bool:
        """Does the handshake carry a credential (one that may need I/O to check)?"""
        return find_credential(scope) is not None

    def identity_without_credential(self) -> Identity | None:
        """Who a handshake without a credential is: anonymous, or (None) not yet known."""
        return None if self.required else ANONYMOUS

    def check_host(self, host: str | None) -> None:
        """Raises ClientError(bad_request) for a Host the node does not answer to (``allowed_hosts``)."""
        if not self.hosts.permits(host):
            raise ClientError(ErrorCode.BAD_REQUEST, "this node does not serve that host name")

    async def identify(self, scope: Mapping[str, Any], broker: Broker, *, deferred: bool = False) -> Identity | None:
        """The identity a handshake's credential proves.  Raises ClientError.

        None means "no credential yet": allowed only with ``deferred`` (a
        WebSocket that will authenticate with its first frame).
        """
        credential = find_credential(scope)
        if credential is None:
            if not self.required:
                return ANONYMOUS
            if deferred:
                return None
            raise ClientError(ErrorCode.UNAUTHORIZED, "a token or ticket is required")
        if credential.kind == "token" and not self.required:
            # Anonymous nodes keep today's behaviour: a token they cannot verify is ignored.
            return ANONYMOUS
        return await self.verify(credential, broker)

    async def verify(self, credential: Credential, broker: Broker) -> Identity:
        """The identity a credential proves.  Raises ClientError."""
        try:
            if credential.kind == "ticket":
                if self.tickets is None:
                    raise ClientError(ErrorCode.INVALID_TICKET, "tickets are not enabled")
                return Identity.of(await self.tickets.redeem(broker, credential.value))
            if not self.required:
                raise ClientError(ErrorCode.INVALID_TOKEN, "this node has no JWT key")
            return Identity.of(await self.tokens.verify(credential.value))
        except TokenError as exc:
            raise self._token_refusal(credential.kind, exc) from None
        except TicketUnavailable as exc:
            raise ClientError(ErrorCode.BROKER_UNAVAILABLE, f"cannot redeem tickets now: {exc}") from None

    @staticmethod
    def _token_refusal(kind: str, exc: TokenError) -> ClientError:
        if exc.expired:
            return ClientError(ErrorCode.TOKEN_EXPIRED, str(exc))
        code = ErrorCode.INVALID_TICKET if kind == "ticket" else ErrorCode.INVALID_TOKEN
        return ClientError(code, str(exc))

    async def first_frame(self, message: protocol.ClientMessage, broker: Broker) -> Identity:
        """Authenticate a WebSocket by its first message, which must be ``auth``.  Raises ClientError."""
        if not isinstance(message, protocol.Auth):
            raise ClientError(ErrorCode.UNAUTHORIZED, "the first frame must be auth")
        return await self.verify(frame_credential(message), broker)

    async def refresh(self, identity: Identity, message: protocol.Auth, broker: Broker) -> Identity:
        """A later auth/refresh frame: extend the connection, same user only.  Raises ClientError."""
        renewed = await self.verify(frame_credential(message), broker)
        if identity.user is not None and renewed.user != identity.user:
            raise ClientError(ErrorCode.INVALID_TOKEN, "a refreshed token must name the same user")
        return renewed

    @staticmethod
    def deadline(identity: Identity | None) -> float | None:
        """When (event loop time) the connection's credential runs out."""
        if identity is None or identity.expires is None:
            return None
        return asyncio.get_running_loop().time() + (identity.expires - time.time())

    def cors_headers(self, scope: Mapping[str, Any]) -> tuple[tuple[bytes, bytes], ...]:
        """CORS headers for a response to a cross-origin EventSource that
        :meth:`check_origin` already let through (so the Origin is allowed)."""
        origin = _header(scope, b"origin")
        if origin is None:
            return ()
        if self.origins.any:
            # Any origin may read, but never with the browser's cookies: with '*', credentials
            # would let every site act as the user (docs/security.md).
            return ((b"access-control-allow-origin", b"*"),)
        return (
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-allow-credentials", b"true"),
            (b"vary", b"origin"),
        )

    # -- channels ---------------------------------------------------------------------------------

    def _decide(self, mode: str, identity: Identity, patterns: tuple[str, ...], channel: str) -> bool:
        if mode == ANYONE:
            return True
        if mode == USERS:
            return identity.user is not None
        if mode == GRANTED:
            # The user's own '#' channel counts as granted; the boundary itself is checked before.
            return "#" in channel or grant_matches(patterns, channel)
        return False

    def _check(self, identity: Identity, channel: str, action: Action) -> None:
        code = ErrorCode.SUBSCRIBE_FORBIDDEN if action is Action.SUBSCRIBE else ErrorCode.PUBLISH_FORBIDDEN
        verb = action.value
        if channel.startswith(RESERVED_CHANNEL_PREFIX):
            raise ClientError(code, f"channels starting with {RESERVED_CHANNEL_PREFIX!r} are reserved", channel=channel)
        if "#" in channel and channel.partition("#")[2] != identity.user:
            raise ClientError(code, f"only the user named after '#' may {verb} {channel}", channel=channel)
        rule = self.rules.rule_for(channel)
        if action is Action.SUBSCRIBE:
            mode, patterns = rule.subscribe, identity.channels
        else:
            mode, patterns = rule.publish, identity.publish
        if not self._decide(mode, identity, patterns, channel):
            raise ClientError(code, f"not allowed to {verb} {channel}", channel=channel)

    def check_subscribe(self, identity: Identity, channel: str) -> None:
        """Raises ClientError(subscribe_forbidden) unless ``identity`` may subscribe to ``channel``."""
        self._check(identity, channel, Action.SUBSCRIBE)

    def check_client_publish(self, identity: Identity, channel: str) -> None:
        """Raises ClientError(publish_forbidden) unless ``identity`` may publish to ``channel``."""
        self._check(identity, channel, Action.PUBLISH)

    # -- server API --------------------------------------------------------------------------------

    def _api_key_of(self, headers: Mapping[str, str]) -> str | None:
        authorization = headers.get("authorization", "")
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "apikey" and value.strip():
            return value.strip()
        return headers.get("x-api-key") or None

    def _check_key(self, headers: Mapping[str, str]) -> None:
        key = self._api_key_of(headers)
        if key is None:
            raise ClientError(ErrorCode.UNAUTHORIZED, "an API key is required (Authorization: apikey KEY)")
        digest = _digest(key)
        # Compare against every key, so timing does not reveal which one matched.
        matched = False
        for known in self._api_keys:
            matched |= hmac.compare_digest(digest, known)
        if not matched:
            raise ClientError(ErrorCode.INVALID_API_KEY, "the API key is not valid")

    def check_api(self, headers: Mapping[str, str]) -> None:
        """May a request with these headers use the server API (publish)?  Raises ClientError."""
        if self._api_keys:
            self._check_key(headers)

    def precheck_api(self, path: str, headers: Mapping[str, str]) -> None:
        """Refuse an ``/api/*`` request from its head, before its body is read.  Raises ClientError.

        The endpoint's own checks, minus what needs I/O: a token whose key is in
        a JWKS is verified by the endpoint, after the (bounded) body.
        """
        self.check_host(headers.get("host"))
        if path != _TICKETS_PATH:
            self.check_api(headers)
            return
        token = self._ticket_bearer(headers)
        if token is not None:
            try:
                self.tokens.verify_now(token)
            except TokenError as exc:
                raise self._token_refusal("token", exc) from None

    def _ticket_bearer(self, headers: Mapping[str, str]) -> str | None:
        """The Bearer token of a ticket request, or None for server-side issuance (its API key
        checked here).  Raises ClientError."""
        if self.tickets is None:
            raise ClientError(ErrorCode.TICKETS_DISABLED, "set ticket_secret or jwt_secret to enable tickets")
        token = bearer(headers.get("authorization"))
        if token is not None:
            if not self.required:
                raise ClientError(ErrorCode.INVALID_TOKEN, "this node has no JWT key")
            return token
        if not self._api_keys:
            raise ClientError(ErrorCode.UNAUTHORIZED, "send a Bearer token; server-side issuance needs api_keys")
        self._check_key(headers)
        return None

    def check_operator(self, peer: str | None, headers: Mapping[str, str]) -> None:
        """May this caller change the node's state (``POST /drain``, ``POST /shed``)?  Raises ClientError.

        A caller on the node's own loopback may (the preStop hook runs in the
        pod); anyone else needs ``internal_key`` in ``X-Fanline-Internal-Key``.
        Not ``Authorization``: the Kubernetes API server's pod proxy, which
        ``fanline cluster`` goes through, strips that header.
        """
        if peer in LOOPBACK:
            return
        key = headers.get(INTERNAL_KEY_HEADER)
        if not key:
            raise ClientError(
                ErrorCode.UNAUTHORIZED, "from beyond loopback, this needs the internal key (X-Fanline-Internal-Key)"
            )
        if self._internal_key is None or not hmac.compare_digest(_digest(key), self._internal_key):
            raise ClientError(ErrorCode.INVALID_API_KEY, "the internal key is not valid")

    async def issue_ticket(self, headers: Mapping[str, str], body: Any) -> dict[str, Any]:
        """``POST /api/tickets``: for the bearer of a JWT, or for a server with an API key."""
        token = self._ticket_bearer(headers)
        assert self.tickets is not None  # _ticket_bearer refused otherwise
        try:
            if token is not None:
                claims = await self.tokens.verify(token)
            else:
                if not isinstance(body, dict):
                    raise ClientError(ErrorCode.INVALID_MESSAGE, 'send {"sub": USER, "channels": [...]}')
                claims = claims_from(body)
        except TokenError as exc:
            if token is None:  # a bad request body, not a bad token
                raise ClientError(ErrorCode.INVALID_MESSAGE, str(exc)) from None
            raise self._token_refusal("token", exc) from None
        ticket = self.tickets.issue(claims)
        return {"ticket": ticket.value, "expires_in": ticket.expires_in}


def frame_credential(message: protocol.Auth) -> Credential:
    if message.ticket is not None:
        return Credential("ticket", message.ticket, "frame")
    return Credential("token", message.token or "", "frame")
