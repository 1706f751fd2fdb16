"""HTTP/1.1 response heads and error responses, as bytes."""

from __future__ import annotations

import http
from collections.abc import Iterable

from .errors import ClientError


def _status_line(status: int) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {status} {phrase}\r\n".encode("latin-1")


_STATUS_LINES = {status: _status_line(status) for status in range(100, 600)}


def response_head(status: int, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    parts = [_STATUS_LINES.get(status) or _status_line(status)]
    for name, value in headers:
        parts.append(name + b": " + value + b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def error_response(error: ClientError, extra: Iterable[tuple[bytes, bytes]] = (), *, close: bool) -> bytes:
    """A whole JSON error response for ``error``: its status, body and retry hint."""
    body = error.body()
    headers = [*error.headers(), *extra, (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    return response_head(error.status, headers) + body


CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
