"""Connection credentials: where a client's token is found, and JWT verification.

A token is a JWT signed with HS256 (``jwt_secret``), RS256 or ES256 (a PEM
public key in ``jwt_public_key_file``, or a key from the JWKS at ``jwks_url``
chosen by the token's ``kid``).  The algorithm is never taken on trust from
the token: each key only verifies the algorithm its own type implies, so an
RSA public key can never be used as an HMAC secret.

PyJWT does the cryptography; this module only decides which key applies and
turns claims into an :class:`~node.access.Identity`.  See docs/security.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from . import jwks

log = logging.getLogger("fanline.auth")

COOKIE_NAME = "fanline_token"
# A JWT larger than this is not a token we issued; refuse before parsing it.
MAX_TOKEN_LENGTH = 8192
# Grant lists are copied into every ticket and kept per connection.
MAX_GRANTS = 256
MAX_GRANT_LENGTH = 256
# 9999-12-31T23:59:59Z: an expiry past it is not a time, and would never end a session.
MAX_EXPIRY = 253_402_300_799

ASYMMETRIC = ("RS256", "ES256")


class TokenError(Exception):
    """A credential that cannot be accepted.  ``expired`` tells the client to fetch a new one."""

    def __init__(self, message: str, *, expired: bool = False) -> None:
        super().__init__(message)
        self.expired = expired


@dataclass(frozen=True, slots=True)
class Claims:
    """What Fanline uses from a verified token or ticket."""

    user: str
    expires: float | None
    channels: tuple[str, ...]
    publish: tuple[str, ...]
    #: The token's ``info`` claim as compact JSON (shown in presence), or None.
    info: str | None = None


@dataclass(frozen=True, slots=True)
class Credential:
    """A credential found in a handshake.  ``kind`` is "token" or "ticket"."""

    kind: str
    value: str
    source: str  # header, cookie, query or frame: for docs and metrics, never logged with the value


# -- where credentials are found --------------------------------------------------------


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


def _cookie(header: str | None) -> str | None:
    # Parsed by hand: http.cookies rejects (or half-parses) hostile headers,
    # and only one cookie matters here.
    if not header:
        return None
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name == COOKIE_NAME:
            return value.strip().strip('"') or None
    return None


def find_credential(scope: Mapping[str, Any]) -> Credential | None:
    """The credential a handshake carries, in order of preference.

    The header and the query are explicit; the cookie is ambient (the browser
    sends it to any page's request), so it comes last and is only safe together
    with the Origin allow-list.
    """
    headers = scope.get("headers", [])
    token = bearer(_header(headers, b"authorization"))
    if token:
        return Credential("token", token, "header")
    query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    for key, kind in (("ticket", "ticket"), ("token", "token")):
        value = next((v for k, v in query if k == key), None)
        if value:
            return Credential(kind, value, "query")
    cookie = _cookie(_header(headers, b"cookie"))
    if cookie:
        return Credential("token", cookie, "cookie")
    return None


# -- claims -------------------------------------------------------------------------------


def grants(value: object, name: str) -> tuple[str, ...]:
    """Validate a grant list (``channels`` or ``publish``) from a token, ticket or request."""
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_GRANTS:
        raise TokenError(f"{name} must be a list of at most {MAX_GRANTS} channel patterns")
    for item in value:
        if not isinstance(item, str) or not item or len(item) > MAX_GRANT_LENGTH:
            raise TokenError(f"{name} must hold non-empty strings of at most {MAX_GRANT_LENGTH} characters")
    return tuple(value)


def grant_matches(patterns: tuple[str, ...], channel: str) -> bool:
    """Exact names, or a prefix ending in ``*``.  Deliberately not fnmatch: ``?`` and ``[``
    would be surprising in a security decision, and channel names cannot contain them."""
    for pattern in patterns:
        if pattern[-1] == "*":
            if channel.startswith(pattern[:-1]):
                return True
        elif pattern == channel:
            return True
    return False


def is_unix_time(value: object) -> bool:
    """Is ``value`` a usable expiry: a number of seconds after 1970, up to the end of year 9999?

    NaN fails the range check too (every comparison with it is false), and so does infinity;
    an integer too large for a float never reaches ``float()``.
    """
    return not isinstance(value, bool) and isinstance(value, (int, float)) and 0 < value <= MAX_EXPIRY


def claims_from(payload: Mapping[str, Any], *, channels_key: str = "channels", publish_key: str = "publish") -> Claims:
    sub = payload.get("sub")
    if not isinstance(sub, str) or not sub or len(sub) > 255:
        raise TokenError("sub must be a non-empty string of at most 255 characters")
    exp = payload.get("exp")
    if exp is not None and not is_unix_time(exp):
        raise TokenError(f"exp must be a Unix time in seconds, at most {MAX_EXPIRY}")
    return Claims(
        user=sub,
        expires=float(exp) if exp is not None else None,
        channels=grants(payload.get(channels_key), channels_key),
        publish=grants(payload.get(publish_key), publish_key),
        info=_info(payload.get("info")),
    )


def _info(value: object) -> str | None:
    # Presence shows it; node.presence drops one over presence_max_info_bytes.
    if value is None:
        return None
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# -- keys -----------------------------------------------------------------------------------


def load_public_key(path: str) -> tuple[Any, str]:
    """A PEM public key and the one algorithm it verifies."""
    with open(path, "rb") as handle:
        key = serialization.load_pem_public_key(handle.read())
    if isinstance(key, rsa.RSAPublicKey):
        return key, "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key, "ES256"
    raise ValueError(f"{path}: only RSA and P-256 EC public keys are supported")


class JWKSCache:
    """Keys from a JWKS URL, by ``kid``; fetched on demand, cached, never hammered.

    A fetch runs on the event loop (node.jwks) within ``timeout`` seconds in
    all, and is awaited by the handshake that needed it, so there is no
    background task to own and no handshake waits longer than that.  Unknown
    kids trigger a refetch (keys rotate) at most once per ``min_refetch``
    seconds, so a client cannot make the node fetch on every connect.
    """

    def __init__(self, url: str, *, timeout: float = 5.0, ttl: float = 300.0, min_refetch: float = 10.0) -> None:
        self.url = url
        self.timeout = timeout
        self.ttl = ttl
        self.min_refetch = min_refetch
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._fetched = -float("inf")  # monotonic time of the last attempt
        self._loaded = -float("inf")  # monotonic time of the last success
        self._lock = asyncio.Lock()

    async def key(self, kid: str | None) -> jwt.PyJWK | None:
        now = time.monotonic()
        stale = now - self._loaded > self.ttl
        unknown = kid not in self._keys
        if (stale or unknown) and now - self._fetched > self.min_refetch:
            await self._refresh(self._fetched)
        return self._keys.get(kid)

    async def _refresh(self, seen: float) -> None:
        # Handshakes that arrive during a fetch wait here, for at most what is left of it.
        async with self._lock:
            if self._fetched != seen:
                return  # someone else fetched while we waited
            self._fetched = time.monotonic()
            try:
                keys = jwks.parse(await jwks.fetch(self.url, self.timeout))
            except jwks.JWKSError as exc:
                # Keep serving with the keys we have.  The URL's password is masked by the log formatter.
                log.warning("JWKS fetch failed", extra={"url": self.url, "error": str(exc)[:200]})
                return
            self._keys = keys
            self._loaded = time.monotonic()


class TokenVerifier:
    """Verifies connection tokens with whichever keys are configured."""

    def __init__(
        self,
        *,
        secret: str = "",
        public_key_file: str = "",
        jwks_url: str = "",
        jwks_timeout: float = 5.0,
        audience: str = "",
        issuer: str = "",
    ) -> None:
        self.secret = secret.encode() if secret else None
        self.public_key = load_public_key(public_key_file) if public_key_file else None
        self.jwks = JWKSCache(jwks_url, timeout=jwks_timeout) if jwks_url else None
        self.audience = audience or None
        self.issuer = issuer or None

    @property
    def enabled(self) -> bool:
        return self.secret is not None or self.public_key is not None or self.jwks is not None

    def _key_now(self, header: Mapping[str, Any]) -> tuple[Any, str] | None:
        """The key and algorithm for a token's header, or None when the JWKS must say."""
        alg = header.get("alg")
        if alg == "HS256" and self.secret is not None:
            return self.secret, alg
        if alg in ASYMMETRIC:
            kid = header.get("kid")
            if kid is not None and not isinstance(kid, str):
                raise TokenError("kid must be a string")
            if self.jwks is not None and (kid is not None or self.public_key is None):
                return None
            if self.public_key is not None and self.public_key[1] == alg:
                return self.public_key[0], alg
        raise TokenError(f"tokens signed with {str(alg)[:16]!r} are not accepted here")

    async def _key_from_jwks(self, header: Mapping[str, Any]) -> tuple[Any, str]:
        assert self.jwks is not None
        alg = str(header.get("alg"))
        jwk = await self.jwks.key(header.get("kid"))
        if jwk is None:
            raise TokenError("no key with this kid in the JWKS")
        if jwk.algorithm_name != alg:
            raise TokenError(f"the key with this kid does not verify {alg}")
        return jwk.key, alg

    async def verify(self, token: str) -> Claims:
        """The claims of a valid token; raises :class:`TokenError` otherwise."""
        try:
            header = self._header(token)
            key = self._key_now(header) or await self._key_from_jwks(header)
            return self._decode(token, key)
        except _FAILURES as exc:
            raise _refusal(exc) from None

    def verify_now(self, token: str) -> Claims | None:
        """Like :meth:`verify` without I/O: None when the key would come from the JWKS.

        For refusing a request from its head, before its body is read (node.access).
        """
        try:
            key = self._key_now(self._header(token))
            return None if key is None else self._decode(token, key)
        except _FAILURES as exc:
            raise _refusal(exc) from None

    @staticmethod
    def _header(token: str) -> dict[str, Any]:
        if len(token) > MAX_TOKEN_LENGTH:
            raise TokenError("token is too long")
        return jwt.get_unverified_header(token)

    def _decode(self, token: str, key: tuple[Any, str]) -> Claims:
        payload = jwt.decode(
            token,
            key[0],
            algorithms=[key[1]],
            audience=self.audience,
            issuer=self.issuer,
            options={"require": ["exp", "sub"]},
        )
        if self.audience is None and "aud" in payload:
            # PyJWT lets an empty aud ("" or []) through; a node without an audience takes none.
            raise TokenError("invalid token: this node accepts only tokens without an aud claim")
        return claims_from(payload)


# What PyJWT and the key parsers raise for a token that is not acceptable.
_FAILURES = (jwt.InvalidTokenError, ValueError, TypeError, OverflowError)


def _refusal(exc: Exception) -> TokenError:
    if isinstance(exc, jwt.ExpiredSignatureError):
        return TokenError("token has expired", expired=True)
    if isinstance(exc, jwt.InvalidTokenError):
        # PyJWT's messages name the failed check, never the token or key.
        return TokenError(f"invalid token: {exc}")
    return TokenError(f"invalid token: {type(exc).__name__}")  # malformed keys or claims deep inside PyJWT
