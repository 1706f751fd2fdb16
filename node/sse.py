"""The Server-Sent Events endpoint, ``/sse?channel=A&channel=B``.

A browser's native ``EventSource`` is the whole client.  Every event carries
an ``id:`` that resumes *every* channel of the stream: it is the channels'
positions, in the order the URL names the channels, joined by ``.``.  On
reconnect the browser sends it back as ``Last-Event-ID``; after a page reload
the application passes it as ``last_event_id``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from broker_adapters.base import BrokerError
from broker_adapters.types import InvalidChannel, InvalidEventId, Position, validate_channel

from . import protocol
from .access import Identity, Refusal
from .connection import Connection, Message, Receive, Send
from .direct import sse_chunk, sse_writer
from .hub import Delivery, Subscribed, Subscription
from .protocol import CloseCode, ErrorCode, ResetReason

if TYPE_CHECKING:
    from .runtime import Node

log = logging.getLogger("fanline.sse")

KEEPALIVE = b": keepalive\n\n"


def event_body(delivery: Delivery) -> bytes:
    """The SSE event without its ``id:`` line (``event:`` and ``data:``), built once per node."""
    memo = delivery.memo
    if memo is None:
        memo = delivery.memo = {}
    body: bytes | None = memo.get("sse_body")
    if body is None:
        publication = delivery.publication
        head = f"event: {publication.event}\n" if publication.event else ""
        text = memo.get("ws") or protocol.event_frame(publication)
        body = memo["sse_body"] = f"{head}data: {text}\n\n".encode()
    return body


def event_frame(delivery: Delivery) -> bytes:
    """The whole SSE event for a one-channel stream, ``id:`` included, built once per node."""
    body = event_body(delivery)
    assert delivery.memo is not None
    frame: bytes | None = delivery.memo.get("sse")
    if frame is None:
        frame = delivery.memo["sse"] = b"id: " + delivery.publication.position.event_id.encode() + b"\n" + body
    return frame


def event_chunk(delivery: Delivery) -> bytes:
    """The one-channel SSE event as an HTTP/1.1 chunk, ready for the socket."""
    frame = event_frame(delivery)
    assert delivery.memo is not None
    chunk: bytes | None = delivery.memo.get("sse_chunk")
    if chunk is None:
        chunk = delivery.memo["sse_chunk"] = sse_chunk(frame)
    return chunk


class SSEStream(Connection[bytes]):
    transport_name = "sse"
    __slots__ = ("channels", "tokens", "chunked", "started")

    def __init__(self, node: Node, send: Send, channels: list[str]) -> None:
        super().__init__(node, send)
        self.channels = channels
        # One event id per channel, in URL order; joined they resume the stream.
        self.tokens: list[str] = [""] * len(channels)
        # Whether the response body goes out in HTTP/1.1 chunks.
        self.chunked = True
        # Whether the response has started: before that (still subscribing),
        # there is no stream to write to or to end.
        self.started = False

    def wire(self, item: bytes) -> bytes:
        return sse_chunk(item) if self.chunked else item

    def wire_event(self, subscription: Subscription, delivery: Delivery) -> bytes:
        if len(self.tokens) == 1:
            return event_chunk(delivery) if self.chunked else event_frame(delivery)
        return self.wire(self.encode_event(subscription, delivery))

    def composite_id(self) -> bytes:
        return ".".join(self.tokens).encode()

    def encode_event(self, subscription: Subscription, delivery: Delivery) -> bytes:
        if len(self.tokens) == 1:
            # The common case needs nothing per connection.
            return event_frame(delivery)
        self.tokens[subscription.index] = delivery.publication.position.event_id
        return b"id: " + self.composite_id() + b"\n" + event_body(delivery)

    def encode_reset(self, subscription: Subscription, position: Position, reason: ResetReason) -> bytes:
        self.tokens[subscription.index] = position.event_id
        data = json.dumps(
            {"type": "reset", "channel": subscription.channel, "id": position.event_id, "reason": reason},
            separators=(",", ":"),
        )
        return b"event: fanline.reset\nid: " + self.composite_id() + b"\ndata: " + data.encode() + b"\n\n"

    def send_heartbeat(self) -> None:
        self.queue(KEEPALIVE)

    async def write(self, batch: list[bytes]) -> None:
        if not self.started:
            return
        body = batch[0] if len(batch) == 1 else b"".join(batch)
        await self.send({"type": "http.response.body", "body": body, "more_body": True})
        self.count_written(len(batch), len(body))

    async def say_goodbye(self, code: int, reason: str) -> None:
        if not self.started:
            return  # closed while subscribing: the endpoint answers, or nobody is left
        # EventSource reconnects by itself after `retry` ms when the stream ends.
        tail = f"retry: {self.reconnect_after_ms}\n\n".encode()
        await self.send({"type": "http.response.body", "body": tail, "more_body": False})


def parse_last_event_id(raw: str, count: int) -> list[Position]:
    """Split a composite SSE id into one position per channel."""
    parts = raw.split(".")
    if len(parts) != count:
        raise InvalidEventId(
            f"the event id names {len(parts)} channel positions but the URL names {count} channels"
        )
    return [Position.parse(part) for part in parts]


async def _reply_error(send: Send, refusal: Refusal) -> None:
    headers = [(b"content-type", b"application/json")]
    if refusal.retry_after is not None:
        headers.append((b"retry-after", str(refusal.retry_after).encode()))
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": refusal.body()})


def _parse_request(node: Node, scope: Message) -> tuple[list[str], list[Position] | None] | Refusal:
    query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    settings = node.settings
    channels = [value for key, value in query if key == "channel"]
    if not channels:
        return Refusal(400, ErrorCode.INVALID_CHANNEL, "name at least one channel: /sse?channel=NAME")
    if len(channels) > settings.max_subscriptions:
        node.limit_rejected("subscriptions")
        return Refusal(
            400, ErrorCode.TOO_MANY_SUBSCRIPTIONS, f"at most {settings.max_subscriptions} channels per stream"
        )
    if len(set(channels)) != len(channels):
        return Refusal(400, ErrorCode.ALREADY_SUBSCRIBED, "a channel is named twice")
    try:
        for channel in channels:
            validate_channel(channel, settings.max_channel_length)
    except InvalidChannel as exc:
        return Refusal(400, ErrorCode.INVALID_CHANNEL, str(exc))
    header_id = next((v for k, v in scope.get("headers", []) if k == b"last-event-id"), None)
    # The browser's Last-Event-ID is newer than any id baked into the URL.
    raw = header_id.decode("latin-1") if header_id is not None else dict(query).get("last_event_id")
    if not raw:
        return channels, None
    try:
        return channels, parse_last_event_id(raw, len(channels))
    except InvalidEventId as exc:
        return Refusal(400, ErrorCode.INVALID_EVENT_ID, str(exc))


async def sse_endpoint(node: Node, scope: Message, receive: Receive, send: Send) -> None:
    parsed = _parse_request(node, scope)
    if isinstance(parsed, Refusal):
        node.metrics.client_errors.labels(parsed.code).inc()
        await _reply_error(send, parsed)
        return
    channels, positions = parsed
    admission = node.admit(scope, "sse")
    if isinstance(admission, Refusal):
        await _reply_error(send, admission)
        return
    identity = await node.access.identify(scope, node.broker)
    if isinstance(identity, Refusal):
        node.metrics.client_errors.labels(identity.code).inc()
        await _reply_error(send, identity)
        return
    for channel in channels:
        refusal = node.access.check_subscribe(identity, channel)
        if refusal is not None:
            await _reply_error(send, refusal)
            return
    stream = SSEStream(node, send, channels)
    node.register(stream)
    try:
        if await _serve(node, stream, identity, positions, cors=node.access.cors_headers(scope)):
            # The request task itself waits for the client to go away (or the
            # stream to end: a finished response makes receive() return too);
            # writing happens from the fan-out or an on-demand writer.
            await _watch_disconnect(stream, receive, node.access.deadline(identity))
        await stream.finish()
    finally:
        stream.release()
        await stream.finish()
        node.unregister(stream)


async def _serve(
    node: Node,
    stream: SSEStream,
    identity: Identity,
    positions: list[Position] | None,
    cors: tuple[tuple[bytes, bytes], ...] = (),
) -> bool:
    """Subscribe every channel and start the stream; False if it could not start."""
    answers: list[Subscribed] = []
    try:
        for index, channel in enumerate(stream.channels):
            since = positions[index] if positions else None
            subscribed = await node.hub.subscribe(stream, channel, since, index)
            stream.subscriptions[channel] = subscribed.subscription
            answers.append(subscribed)
    except BrokerError as exc:
        await _reply_error(
            stream.send,
            Refusal(503, ErrorCode.BROKER_UNAVAILABLE, f"cannot subscribe now: {exc}", retry_after=2),
        )
        stream.close(1011, "broker unavailable", goodbye=False)
        return False
    await stream.send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/event-stream; charset=utf-8"),
                (b"cache-control", b"no-cache, no-transform"),
                # Tell nginx-style proxies not to buffer the stream.
                (b"x-accel-buffering", b"no"),
                *cors,
            ],
        }
    )
    stream.started = True
    direct = sse_writer(stream.send) if node.settings.direct_writes else None
    if direct is not None:
        stream.direct, stream.chunked = direct
    summary = {}
    for index, subscribed in enumerate(answers):
        # A channel that cannot be recovered keeps its ``since`` in the
        # composite; only its own fanline.reset moves that part on.
        plan = subscribed.plan
        stream.tokens[index] = plan.start.event_id
        summary[subscribed.subscription.channel] = {
            "id": plan.start.event_id,
            "recovered": plan.recovered,
            "replayed": plan.replayed,
        }
    hello = (
        f"retry: {node.settings.sse_retry_ms}\n".encode()
        + b"event: fanline.subscribed\nid: "
        + stream.composite_id()
        + b"\ndata: "
        + json.dumps({"type": "subscribed", "channels": summary}, separators=(",", ":")).encode()
        + b"\n\n"
    )
    stream.queue(hello)
    for subscribed in answers:
        node.hub.start_delivery(subscribed)
    return True


async def _watch_disconnect(stream: SSEStream, receive: Receive, deadline: float | None = None) -> None:
    try:
        # The token's expiry is a timer on the loop; an SSE stream cannot refresh, so it ends.
        async with asyncio.timeout_at(deadline):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    stream.close(1006, "client disconnected", goodbye=False)
                    return
    except TimeoutError:
        stream.close(CloseCode.TOKEN_EXPIRED, ErrorCode.TOKEN_EXPIRED)
