"""The Server-Sent Events endpoint, ``/sse?channel=A&channel=B``, after its request head.

A browser's native ``EventSource`` is the whole client.  Every event carries
an ``id:`` that resumes *every* channel of the stream (the composite of
:mod:`node.sse_events`).  On reconnect the browser sends it back as
``Last-Event-ID``; after a page reload the application passes it as
``last_event_id``.

:class:`SSEConnection` is the socket's protocol once the request is read:
a short task subscribes every channel and starts the response; from then on
the stream is written by the node's flush like any other connection, and
the connection holds no task.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from broker_adapters.base import BrokerError
from broker_adapters.types import InvalidChannel, InvalidEventId, Position, validate_channel

from . import sse_events
from .connection import Connection, Item, ResetItem
from .errors import ClientError, CloseCode, ErrorCode
from .http_responses import error_response, response_head
from .hub import Delivery, Subscribed

if TYPE_CHECKING:
    from .access import Identity
    from .http_requests import Request
    from .runtime import Node

log = logging.getLogger("fanline.sse")


def _event_body(delivery: Delivery) -> bytes:
    return sse_events.event_body(delivery.publication)


def _event_block(delivery: Delivery) -> bytes:
    return sse_events.with_id(delivery.publication.position.event_id.encode(), event_body(delivery))


def event_body(delivery: Delivery) -> bytes:
    """The event without its ``id:`` line, built once per node."""
    return delivery.encoded("sse_body", _event_body)


def event_block(delivery: Delivery) -> bytes:
    """The event for a one-channel stream, ``id:`` included, built once per node."""
    return delivery.encoded("sse", _event_block)


def _event_chunk(delivery: Delivery) -> bytes:
    return sse_events.chunk(event_block(delivery))


def event_chunk(delivery: Delivery) -> bytes:
    """:func:`event_block` as one HTTP/1.1 chunk, built once per node."""
    return delivery.encoded("sse_chunk", _event_chunk)


def parse_request(node: Node, request: Request) -> tuple[list[str], list[Position] | None]:
    """The channels a stream names and the positions to resume them from.  Raises ClientError."""
    query = parse_qsl(request.query.decode("latin-1"), keep_blank_values=True)
    settings = node.settings
    channels = [value for key, value in query if key == "channel"]
    if not channels:
        raise ClientError(ErrorCode.INVALID_CHANNEL, "name at least one channel: /sse?channel=NAME")
    if len(channels) > settings.max_subscriptions:
        node.limit_rejected("subscriptions")
        raise ClientError(ErrorCode.TOO_MANY_SUBSCRIPTIONS, f"at most {settings.max_subscriptions} channels per stream")
    if len(set(channels)) != len(channels):
        raise ClientError(ErrorCode.ALREADY_SUBSCRIBED, "a channel is named twice")
    try:
        for channel in channels:
            validate_channel(channel, settings.max_channel_length)
    except InvalidChannel as exc:
        raise ClientError(ErrorCode.INVALID_CHANNEL, str(exc)) from None
    header_id = request.header_str(b"last-event-id")
    # The browser's Last-Event-ID is newer than any id baked into the URL.
    raw = header_id if header_id is not None else dict(query).get("last_event_id")
    if not raw:
        return channels, None
    try:
        return channels, sse_events.parse_composite(raw, len(channels))
    except InvalidEventId as exc:
        raise ClientError(ErrorCode.INVALID_EVENT_ID, str(exc)) from None


class SSEConnection(Connection):
    kind = "sse"
    __slots__ = ("channels", "tokens", "chunked", "started", "setup")

    def __init__(
        self, node: Node, transport: asyncio.Transport, number: int, identity: Identity, channels: list[str],
        chunked: bool,
    ) -> None:
        super().__init__(node, transport, number, identity)
        self.channels = channels
        # One event id per channel, in URL order; joined they resume the stream.
        self.tokens: list[str] = [""] * len(channels)
        # Whether the response body goes out in HTTP/1.1 chunks (not for HTTP/1.0).
        self.chunked = chunked
        # Whether the response has started: before that there is no stream to end.
        self.started = False
        self.setup: asyncio.Task[None] | None = None

    def start(self, positions: list[Position] | None, head: list[tuple[bytes, bytes]]) -> None:
        self.setup = asyncio.get_running_loop().create_task(self._subscribe_all(positions, head))

    async def _subscribe_all(self, positions: list[Position] | None, head: list[tuple[bytes, bytes]]) -> None:
        """Subscribe every channel, then start the stream; or answer with an error."""
        node = self.node
        answers: list[Subscribed] = []
        self.subscriptions = {}
        try:
            for index, channel in enumerate(self.channels):
                since = positions[index] if positions else None
                subscribed = node.hub.subscribe_now(self, channel, since, index) or await node.hub.subscribe(
                    self, channel, since, index
                )
                if self._released:
                    node.hub.unsubscribe(subscribed.subscription)
                    return
                self.subscriptions[channel] = subscribed.subscription
                answers.append(subscribed)
        except BrokerError as exc:
            self.refuse(ClientError(ErrorCode.BROKER_UNAVAILABLE, f"cannot subscribe now: {exc}"), head)
            return
        except Exception:
            log.exception("unexpected error starting a stream", extra={"connection": self.number})
            self.refuse(ClientError(ErrorCode.INTERNAL, "internal error"), head)
            return
        finally:
            self.setup = None
        self.transport.write(_response_head(200, [*head, *_STREAM_HEADERS], chunked=self.chunked))
        self.started = True
        summary: dict[str, dict[str, object]] = {}
        for index, subscribed in enumerate(answers):
            # A channel that cannot be recovered keeps its ``since`` in the
            # composite; only its own fanline.reset moves that part on.
            plan = subscribed.plan
            self.tokens[index] = plan.start.event_id
            summary[subscribed.subscription.channel] = {
                "id": plan.start.event_id,
                "recovered": plan.recovered,
                "replayed": plan.replayed,
            }
        self.send(sse_events.subscribed(sse_events.composite_id(self.tokens), node.settings.sse_retry_ms, summary))
        for channel in self.channels:
            node.presence.joined(self, channel)
        for subscribed in answers:
            node.hub.start_delivery(subscribed)
        self.expire_at(node.access.deadline(self.identity), self._expired)

    def refuse(self, error: ClientError, head: list[tuple[bytes, bytes]]) -> None:
        """Answer with an HTTP error instead of a stream, and close."""
        self.node.metrics.client_errors.labels(error.code.value).inc()
        write_error(self.transport, error, head)
        self.transport.close()
        self.release()

    def _expired(self) -> None:
        # An SSE stream cannot refresh its credential, so it ends.
        self.close(CloseCode.TOKEN_EXPIRED, ErrorCode.TOKEN_EXPIRED.value)

    def data_received(self, data: bytes) -> None:
        pass  # a client says nothing after its request; what it sends anyway is ignored

    def eof_received(self) -> bool | None:
        return False

    # -- writing ------------------------------------------------------------------------------------

    def encode(self, items: list[Item], shared: dict[Any, bytes]) -> bytes:
        if not self.started:
            return b""
        if len(self.tokens) == 1 and all(isinstance(item, Delivery) for item in items):
            if len(items) == 1:
                first: Delivery = items[0]  # type: ignore[assignment]
                return event_chunk(first) if self.chunked else event_block(first)
            key = ("sse", self.chunked, *items)
            data = shared.get(key)
            if data is None:
                data = shared[key] = self._chunk(b"".join(event_block(item) for item in items))  # type: ignore[arg-type]
            return data
        return self._chunk(b"".join(self._block(item) for item in items))

    def _block(self, item: Item) -> bytes:
        if isinstance(item, Delivery):
            if len(self.tokens) == 1:
                return event_block(item)
            subscription = self.subscriptions.get(item.publication.channel) if self.subscriptions else None
            if subscription is not None:
                self.tokens[subscription.index] = item.publication.position.event_id
            return sse_events.with_id(sse_events.composite_id(self.tokens), event_body(item))
        if isinstance(item, ResetItem):
            self.tokens[item.subscription.index] = item.position.event_id
            return sse_events.reset(
                sse_events.composite_id(self.tokens), item.subscription.channel, item.position, item.reason
            )
        return item

    def _chunk(self, body: bytes) -> bytes:
        return sse_events.chunk(body) if self.chunked else body

    def send_heartbeat(self) -> None:
        if self.started:
            self.send(sse_events.KEEPALIVE)

    def say_goodbye(self) -> None:
        if self.started:
            # EventSource reconnects by itself after `retry` ms when the stream ends.
            tail = self._chunk(sse_events.retry(self.reconnect_after_ms))
            self.transport.write(tail + (sse_events.END_OF_BODY if self.chunked else b""))
        self.transport.close()

    def released(self) -> None:
        if self.setup is not None:
            self.setup.cancel()
            self.setup = None


_STREAM_HEADERS = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache, no-transform"),
    # Tell nginx-style proxies not to buffer the stream.
    (b"x-accel-buffering", b"no"),
)


def _response_head(status: int, headers: list[tuple[bytes, bytes]], *, chunked: bool) -> bytes:
    extra = [(b"transfer-encoding", b"chunked")] if chunked else [(b"connection", b"close")]
    return response_head(status, [*headers, *extra])


def write_error(transport: asyncio.Transport, error: ClientError, head: list[tuple[bytes, bytes]]) -> None:
    transport.write(error_response(error, head, close=True))
