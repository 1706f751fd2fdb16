"""Fetching and reading a JWKS document, within one total deadline.

:func:`fetch` is one HTTP GET on the event loop (no worker thread), under
``asyncio.timeout``: connecting, TLS, the response head and the body
together get ``deadline`` seconds, so a server that drips one byte at a time
is hung up on at the deadline instead of holding a thread for as long as it
likes.  The body is bounded in size (:data:`MAX_BYTES`).  Credentials in the
URL (``https://user:password@idp/...``) are sent as HTTP Basic
authentication.  Redirects are not followed: a JWKS URL is configuration,
and a redirect is a change of trust the operator did not make.  The
connection is direct: ``HTTP(S)_PROXY`` variables are not used.

:func:`parse` turns a document into keys by ``kid``, or raises
:class:`JWKSError` for anything that is not a JSON object with a ``keys``
list of key objects: a list, a string, deeply nested JSON, keys of the wrong
type.  Both raise only :class:`JWKSError`, so a caller has one thing to catch.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from typing import Any
from urllib.parse import unquote, urlsplit

import httptools
import jwt

MAX_BYTES = 1 << 20
MAX_KEYS = 100


class JWKSError(Exception):
    """The JWKS could not be fetched or read; the message says why (never a credential)."""


class _Response:
    """httptools callbacks: the status, the body, and whether the response is complete."""

    def __init__(self) -> None:
        self.body = bytearray()
        self.complete = False
        # Without a length or chunks, the body ends with the connection.
        self.delimited = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() in (b"content-length", b"transfer-encoding"):
            self.delimited = True

    def on_body(self, body: bytes) -> None:
        if len(self.body) + len(body) > MAX_BYTES:
            raise JWKSError(f"the JWKS document is larger than {MAX_BYTES} bytes")
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True


def _request(url: str) -> tuple[str, int, bool, bytes]:
    """Host, port, TLS, and the bytes of the GET request for ``url``."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise JWKSError(f"the JWKS URL is not valid: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise JWKSError("the JWKS URL must be http:// or https:// with a host")
    tls = parts.scheme == "https"
    host = parts.hostname
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: {parts.netloc.rpartition('@')[2]}",
        "Accept: application/json",
        "Connection: close",
        "User-Agent: fanline",
    ]
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        lines.append("Authorization: Basic " + base64.b64encode(credentials.encode()).decode())
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return host, port or (443 if tls else 80), tls, request


async def fetch(url: str, deadline: float) -> bytes:
    """The body of a 200 answer to GET ``url``, within ``deadline`` seconds in all.  Raises JWKSError."""
    host, port, tls, request = _request(url)
    writer: asyncio.StreamWriter | None = None
    response = _Response()
    parser = httptools.HttpResponseParser(response)
    try:
        async with asyncio.timeout(deadline):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=ssl.create_default_context() if tls else None, limit=65536
            )
            writer.write(request)
            while not response.complete:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                parser.feed_data(chunk)
    except TimeoutError:
        raise JWKSError(f"no complete answer within {deadline:g}s") from None
    except (OSError, ssl.SSLError) as exc:
        raise JWKSError(f"cannot fetch: {exc.__class__.__name__}: {exc}") from None
    except httptools.HttpParserError as exc:
        # A callback's JWKSError arrives wrapped in the parser's error.
        cause = exc.__context__
        raise (cause if isinstance(cause, JWKSError) else JWKSError(f"not an HTTP answer: {exc}")) from None
    finally:
        if writer is not None:
            writer.close()
    status = parser.get_status_code()
    if status != 200:
        raise JWKSError(f"HTTP status {status}")
    if not response.complete and response.delimited:
        raise JWKSError("the connection ended before the document did")
    return bytes(response.body)


def parse(raw: bytes) -> dict[str | None, jwt.PyJWK]:
    """Keys by ``kid`` from a JWKS document (a lone key also serves tokens without a kid).  Raises JWKSError."""
    try:
        document: Any = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise JWKSError(f"not JSON: {exc}") from None
    except RecursionError:
        raise JWKSError("nested too deeply") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JWKSError('not a JWKS: expected an object with a "keys" list')
    entries = document["keys"]
    if len(entries) > MAX_KEYS or not all(isinstance(entry, dict) for entry in entries):
        raise JWKSError(f'"keys" must hold at most {MAX_KEYS} key objects')
    try:
        keyset = jwt.PyJWKSet(entries)
    except (jwt.PyJWKSetError, jwt.PyJWKError, jwt.InvalidKeyError) as exc:
        raise JWKSError(f"no usable key: {exc}") from None
    except (ValueError, TypeError, KeyError, AttributeError, NotImplementedError) as exc:
        # Key material of the wrong type deep inside a key (an "n" that is a list, ...), or an
        # algorithm PyJWT cannot build a key for ("alg": "none" raises NotImplementedError).
        raise JWKSError(f"a key is malformed: {exc.__class__.__name__}") from None
    keys: dict[str | None, jwt.PyJWK] = {k.key_id: k for k in keyset.keys if isinstance(k.key_id, str) and k.key_id}
    if len(keyset.keys) == 1:
        keys[None] = keyset.keys[0]
    return keys
