"""One plain HTTP request served by an ASGI application (Starlette) over a socket Fanline owns.

The node's HTTP API, health probes, metrics and demo page are Starlette
routes; the edge protocol (:mod:`node.edge`) reads their requests, body
included and bounded, then hands each to an :class:`Exchange`, which speaks
ASGI to the application and writes its response.  Small and explicit, since
these requests are small: the body is read whole before the application
runs, and the response is written as the application sends it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.types import ASGIApp, Message

from .http_requests import Request
from .http_responses import response_head

log = logging.getLogger("fanline.http")

_SERVER_ERROR = (
    b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 21\r\nconnection: close\r\n\r\nInternal Server Error"
)


class Exchange:
    """One request, one response.  :meth:`run` returns whether the connection may be kept alive."""

    __slots__ = ("transport", "request", "scope", "keep_alive", "_started", "_chunked", "_done", "_read", "_gone")

    def __init__(
        self,
        transport: asyncio.Transport,
        request: Request,
        server: tuple[str, int] | None,
        client: tuple[str, int] | None,
    ) -> None:
        self.transport = transport
        self.request = request
        self.keep_alive = request.keep_alive
        self.scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": request.http_version,
            "method": request.method,
            "scheme": "http",
            "path": request.path,
            "raw_path": request.target.split(b"?", 1)[0],
            "query_string": request.query,
            "root_path": "",
            "headers": request.headers,
            "client": client,
            "server": server,
            "state": {},
        }
        self._started = False
        self._chunked = False
        self._done = False
        self._read = False
        self._gone: asyncio.Future[None] | None = None

    def disconnected(self) -> None:
        """The client went away: a waiting ``receive`` returns ``http.disconnect``."""
        self.keep_alive = False
        if self._gone is None:
            self._gone = asyncio.get_running_loop().create_future()
        if not self._gone.done():
            self._gone.set_result(None)

    async def run(self, app: ASGIApp) -> bool:
        try:
            await app(self.scope, self.receive, self.send)
        except Exception:
            log.exception("the HTTP application failed", extra={"path": self.request.path})
            if not self._started:
                self.transport.write(_SERVER_ERROR)
            return False
        if not self._started:
            self.transport.write(_SERVER_ERROR)
            return False
        if not self._done:
            # The application ended the response without saying so.
            if self._chunked:
                self.transport.write(b"0\r\n\r\n")
            return False
        return self.keep_alive

    async def receive(self) -> Message:
        if not self._read:
            self._read = True
            return {"type": "http.request", "body": bytes(self.request.body), "more_body": False}
        if self._gone is None:
            self._gone = asyncio.get_running_loop().create_future()
        await self._gone
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self._started = True
            headers: list[tuple[bytes, bytes]] = [(bytes(k).lower(), bytes(v)) for k, v in message.get("headers", [])]
            names = {name for name, _ in headers}
            if b"content-length" not in names:
                self._chunked = True
                headers.append((b"transfer-encoding", b"chunked"))
            if not self.keep_alive:
                headers.append((b"connection", b"close"))
            self.transport.write(response_head(int(message["status"]), headers))
        elif kind == "http.response.body":
            if not self._started or self._done:
                return
            body = bytes(message.get("body", b""))
            more = bool(message.get("more_body", False))
            if self.request.method != "HEAD" and body:
                self.transport.write(b"%x\r\n%b\r\n" % (len(body), body) if self._chunked else body)
            if not more:
                self._done = True
                if self._chunked and self.request.method != "HEAD":
                    self.transport.write(b"0\r\n\r\n")
