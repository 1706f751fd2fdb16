"""HTTP/1.1 requests read from bytes, within limits, without I/O.

A :class:`RequestReader` is fed what arrives on a connection and collects
whole request heads (and bodies) as :class:`Request` objects.  Every size is
bounded before it is buffered: the request line, each header line, the
number of headers, the whole head, the body.  A request beyond a bound is
refused with a :class:`~node.errors.ClientError` (400, 413 or 431), and the
caller answers it and closes the connection.  Time bounds (a head that never
completes) are the caller's: this module has no clock.

Parsing is httptools' (llhttp), as uvicorn's; the limits are ours, because
neither httptools nor uvicorn bounds a head's size or header count.
"""

from __future__ import annotations

import urllib.parse
from collections import deque
from dataclasses import dataclass, field

import httptools

from .errors import ClientError, ErrorCode


@dataclass(frozen=True, slots=True)
class Limits:
    max_head: int = 16384  # the request line and every header, in bytes
    max_line: int = 8192  # one header line, or the request line
    max_headers: int = 100
    max_body: int = 1 << 20


@dataclass(slots=True)
class Request:
    method: str
    target: bytes
    path: str
    query: bytes
    headers: list[tuple[bytes, bytes]]
    http_version: str
    keep_alive: bool
    upgrade: bool
    body: bytearray = field(default_factory=bytearray)
    complete: bool = False

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lower case), if present."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def header_str(self, name: bytes) -> str | None:
        value = self.header(name)
        return None if value is None else value.decode("latin-1")

    @property
    def expects_continue(self) -> bool:
        value = self.header(b"expect")
        return value is not None and value.lower() == b"100-continue"


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing; the reader holds the ClientError."""


class RequestReader:
    """Reads requests from the bytes of one connection, one head at a time."""

    __slots__ = (
        "limits", "requests", "upgrade_data", "_parser", "_error", "_url", "_headers",
        "_head_bytes", "_head_size", "_current", "_in_head",
    )

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        #: Requests whose head is complete, oldest first (the last one's body may still grow).
        self.requests: deque[Request] = deque()
        #: After an upgrade request's head: the bytes that followed it.
        self.upgrade_data: bytes | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._error: ClientError | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0  # raw bytes of the head so far
        self._head_size = 0  # its request target and header lines, as parsed
        self._current: Request | None = None
        self._in_head = False

    @property
    def in_head(self) -> bool:
        """True while a request head has started and is not complete."""
        return self._in_head

    def feed(self, data: bytes) -> None:
        """Parse ``data``.  Raises ClientError for a request the node refuses."""
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            offset = int(upgrade.args[0]) if upgrade.args else len(data)
            self.upgrade_data = data[offset:]
        except httptools.HttpParserCallbackError:
            assert self._error is not None
            raise self._error from None
        except httptools.HttpParserError as exc:
            if self._error is not None:
                raise self._error from None
            raise self._refuse(ErrorCode.BAD_REQUEST, f"malformed HTTP request: {exc}") from None
        if self._in_head:
            # Bound the raw bytes too: a head made of one endless header line
            # reaches no callback until it ends, while the parser buffers it.
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_head + self.limits.max_line:
                raise self._refuse(ErrorCode.HEADERS_TOO_LARGE, "request head too large")

    def _refuse(self, code: ErrorCode, message: str) -> ClientError:
        self._error = ClientError(code, message)
        return self._error

    # -- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_head = True
        self._url = b""
        self._headers = []
        self._head_bytes = 0
        self._head_size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_size += len(url)
        if len(self._url) > self.limits.max_line:
            self._refuse(ErrorCode.BAD_REQUEST, f"request line longer than {self.limits.max_line} bytes")
            raise _Refused

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value) + 4
        if size > self.limits.max_line:
            self._refuse(ErrorCode.HEADERS_TOO_LARGE, f"a header line is longer than {self.limits.max_line} bytes")
            raise _Refused
        if len(self._headers) >= self.limits.max_headers:
            self._refuse(ErrorCode.HEADERS_TOO_LARGE, f"more than {self.limits.max_headers} headers")
            raise _Refused
        self._head_size += size
        if self._head_size > self.limits.max_head:
            self._refuse(ErrorCode.HEADERS_TOO_LARGE, f"request head larger than {self.limits.max_head} bytes")
            raise _Refused
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        try:
            parsed = httptools.parse_url(self._url)
        except httptools.HttpParserInvalidURLError:
            self._refuse(ErrorCode.BAD_REQUEST, "malformed request target")
            raise _Refused from None
        raw_path = parsed.path or b"/"
        path = raw_path.decode("latin-1")
        if "%" in path:
            path = urllib.parse.unquote(path)
        request = Request(
            method=parser.get_method().decode("ascii", errors="replace"),
            target=self._url,
            path=path,
            query=parsed.query or b"",
            headers=self._headers,
            http_version=parser.get_http_version(),
            keep_alive=parser.should_keep_alive(),
            upgrade=parser.should_upgrade(),
        )
        self._in_head = False
        self._head_bytes = 0
        self._current = request
        self.requests.append(request)

    def on_body(self, body: bytes) -> None:
        request = self._current
        if request is None:
            return
        if len(request.body) + len(body) > self.limits.max_body:
            self._refuse(ErrorCode.MESSAGE_TOO_LARGE, f"bodies are limited to {self.limits.max_body} bytes")
            raise _Refused
        request.body += body

    def on_message_complete(self) -> None:
        if self._current is not None:
            self._current.complete = True
            self._current = None
