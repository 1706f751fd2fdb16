"""Real clients for tests: a WebSocket client and an SSE client, as users have them."""

from __future__ import annotations

import asyncio
import functools
import json
import ssl
from dataclasses import dataclass, field
from typing import Any

import httpx
import websockets


@functools.cache
def tls() -> ssl.SSLContext:
    """One TLS context for every test HTTP client: httpx builds one per client otherwise, loading the CA
    bundle each time (about 0.15 s of blocked event loop per publish)."""
    return ssl.create_default_context()


class WSClient:
    """A protocol-level WebSocket client that splits batched frames into messages."""

    def __init__(self, connection: websockets.ClientConnection) -> None:
        self.connection = connection
        self.buffer: list[dict[str, Any]] = []
        self.rid = 0

    @classmethod
    async def connect(cls, url: str, **kwargs: Any) -> WSClient:
        connection = await websockets.connect(url, open_timeout=10, max_size=2**24, **kwargs)
        client = cls(connection)
        hello = await client.recv()
        assert hello["type"] == "connected", hello
        return client

    async def send(self, message: dict[str, Any]) -> None:
        await self.connection.send(json.dumps(message))

    async def send_raw(self, text: str | bytes) -> None:
        await self.connection.send(text)

    async def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        """The next message, skipping heartbeats, as every client does: one may come at any moment."""
        while True:
            while not self.buffer:
                frame = await asyncio.wait_for(self.connection.recv(), timeout)
                assert isinstance(frame, str)
                self.buffer.extend(json.loads(line) for line in frame.split("\n"))
            message = self.buffer.pop(0)
            if message.get("type") != "heartbeat":
                return message

    async def recv_type(self, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        """The next message of ``kind``, skipping heartbeats."""
        while True:
            message = await self.recv(timeout)
            if message["type"] == kind:
                return message
            if message["type"] != "heartbeat":
                raise AssertionError(f"expected {kind}, got {message}")

    async def subscribe(self, channel: str, since: str | None = None) -> dict[str, Any]:
        self.rid += 1
        message: dict[str, Any] = {"type": "subscribe", "channel": channel, "rid": self.rid}
        if since:
            message["since"] = since
        await self.send(message)
        return await self.recv_type("subscribed")

    async def events(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        out = []
        while len(out) < count:
            message = await self.recv(timeout)
            if message["type"] in ("event", "reset"):
                out.append(message)
        return out

    async def close(self) -> None:
        await self.connection.close()


@dataclass
class SSEEvent:
    event: str = "message"
    data: str = ""
    id: str | None = None
    retry: int | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        return json.loads(self.data)


class SSEClient:
    """An SSE reader that parses the stream exactly as the HTML spec says a browser does.

    A reader task owns the response; events are queued, so a caller's timeout
    never cancels the parser halfway through a line.
    """

    def __init__(self, response: httpx.Response, client: httpx.AsyncClient) -> None:
        self.response = response
        self.client = client
        self.last_event_id: str | None = None
        self.retry: int | None = None
        self.comments = 0
        self._queue: asyncio.Queue[SSEEvent | None] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(
        cls, base_url: str, channels: list[str], last_event_id: str | None = None, query_id: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> SSEClient:
        params = [("channel", c) for c in channels]
        if query_id:
            params.append(("last_event_id", query_id))
        all_headers = dict(headers or {})
        if last_event_id:
            all_headers["Last-Event-ID"] = last_event_id
        client = httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None), verify=tls())
        request = client.build_request("GET", base_url + "/sse", params=params, headers=all_headers)
        response = await client.send(request, stream=True)
        return cls(response, client)

    async def _read(self) -> None:
        event = SSEEvent()
        has_data = False
        data_lines: list[str] = []
        try:
            async for line in self.response.aiter_lines():
                if line == "":
                    if event.id is not None:
                        self.last_event_id = event.id
                    if has_data:
                        event.data = "\n".join(data_lines)
                        await self._queue.put(event)
                    event, has_data, data_lines = SSEEvent(), False, []
                    continue
                if line.startswith(":"):
                    self.comments += 1
                    continue
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "data":
                    has_data = True
                    data_lines.append(value)
                elif name == "event":
                    event.event = value
                elif name == "id":
                    event.id = value
                elif name == "retry" and value.isdigit():
                    self.retry = int(value)
        except httpx.HTTPError:
            pass
        finally:
            await self._queue.put(None)

    async def next_event(self, timeout: float = 10.0) -> SSEEvent:
        event = await asyncio.wait_for(self._queue.get(), timeout)
        if event is None:
            self._queue.put_nowait(None)
            raise EOFError("stream ended")
        return event

    async def events(self, count: int, timeout: float = 10.0) -> list[SSEEvent]:
        """The next ``count`` application events and resets (not fanline.subscribed)."""
        out = []
        while len(out) < count:
            event = await self.next_event(timeout)
            if event.event != "fanline.subscribed":
                out.append(event)
        return out

    async def close(self) -> None:
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        await self.response.aclose()
        await self.client.aclose()


async def publish(base_url: str, channel: str, data: Any, event: str | None = None) -> str:
    body: dict[str, Any] = {"channel": channel, "data": data}
    if event:
        body["event"] = event
    async with httpx.AsyncClient(timeout=10, verify=tls()) as client:
        response = await client.post(base_url + "/api/publish", json=body)
        response.raise_for_status()
        return str(response.json()["id"])
