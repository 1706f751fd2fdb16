"""The WebSocket endpoint, ``/ws``: a raw ASGI handler around :mod:`node.protocol`.

The ASGI task reads client frames and acts on them one at a time.  Outgoing
messages go straight to the socket when it is idle (see :mod:`node.direct`);
otherwise the connection's on-demand writer sends what has queued up as one
text frame of newline-separated JSON objects.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from broker_adapters.base import BrokerError
from broker_adapters.types import Position

from . import protocol
from .access import Refusal
from .connection import Connection, Message, Receive, Send
from .direct import websocket_frame, websocket_writer
from .hub import Delivery, Subscription
from .protocol import CloseCode, ErrorCode, ProtocolError, ResetReason

if TYPE_CHECKING:
    from .runtime import Node

log = logging.getLogger("fanline.websocket")


def event_text(delivery: Delivery) -> str:
    """The event message of a delivery, built once per node."""
    memo = delivery.memo
    if memo is None:
        memo = delivery.memo = {}
    text: str | None = memo.get("ws")
    if text is None:
        text = memo["ws"] = protocol.event_frame(delivery.publication)
    return text


def event_wire(delivery: Delivery) -> bytes:
    """The event as WebSocket frame bytes, ready for the socket, built once per node."""
    memo = delivery.memo
    wire: bytes | None = memo.get("ws_wire") if memo is not None else None
    if wire is None:
        wire = websocket_frame(event_text(delivery).encode())
        assert delivery.memo is not None
        delivery.memo["ws_wire"] = wire
    return wire


class WebSocketSession(Connection[str]):
    transport_name = "ws"
    __slots__ = ("identity", "_tokens", "_refilled", "_refused_in_a_row")

    def __init__(self, node: Node, send: Send, identity: Any) -> None:
        super().__init__(node, send)
        self.identity = identity
        # Token bucket for inbound messages.
        self._tokens = float(node.settings.rate_burst)
        self._refilled = time.monotonic()
        self._refused_in_a_row = 0

    def admit_message(self) -> bool:
        """Rate-limit inbound messages; close a client that keeps flooding."""
        settings = self.node.settings
        now = time.monotonic()
        self._tokens = min(float(settings.rate_burst), self._tokens + (now - self._refilled) * settings.rate_limit)
        self._refilled = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            self._refused_in_a_row = 0
            return True
        self._refused_in_a_row += 1
        self.node.limit_rejected("message_rate", rate=settings.rate_limit, burst=settings.rate_burst)
        if self._refused_in_a_row == 1:
            # One error per streak: answering every dropped message would let
            # a flood fill our own outbox.
            self.error(ErrorCode.RATE_LIMITED, f"more than {settings.rate_limit:g} messages/s; message dropped")
        elif self._refused_in_a_row > settings.rate_burst:
            self.close(CloseCode.RATE_LIMITED, "message rate limit", flush=True)
        return False

    def encode_event(self, subscription: Subscription, delivery: Delivery) -> str:
        return event_text(delivery)

    def encode_reset(self, subscription: Subscription, position: Position, reason: ResetReason) -> str:
        return protocol.reset_frame(subscription.channel, position, reason)

    def wire(self, item: str) -> bytes:
        return websocket_frame(item.encode())

    def wire_event(self, subscription: Subscription, delivery: Delivery) -> bytes:
        return event_wire(delivery)

    async def write(self, batch: list[str]) -> None:
        text = batch[0] if len(batch) == 1 else "\n".join(batch)
        await self.send({"type": "websocket.send", "text": text})
        self.count_written(len(batch), len(text))

    def send_heartbeat(self) -> None:
        # Browsers cannot see protocol pings; this frame they can.
        self.queue(protocol.HEARTBEAT_FRAME)

    def say_draining(self, reconnect_after_ms: int) -> None:
        self.queue(protocol.drain_frame(reconnect_after_ms))

    async def say_goodbye(self, code: int, reason: str) -> None:
        await self.send({"type": "websocket.close", "code": code, "reason": reason})

    def error(self, code: str, message: str, rid: Any = None, channel: str | None = None) -> None:
        self.node.metrics.client_errors.labels(code).inc()
        self.queue(protocol.error_frame(code, message, rid, channel))

    # -- client messages -----------------------------------------------------------

    async def handle(self, text: str) -> None:
        node = self.node
        try:
            message = protocol.parse_client_message(text, max_channel_length=node.settings.max_channel_length)
        except ProtocolError as exc:
            self.error(exc.code, exc.message, exc.rid)
            return
        if isinstance(message, protocol.Ping):
            self.queue(protocol.pong_frame(message.rid))
        elif isinstance(message, protocol.Subscribe):
            await self.subscribe(message)
        elif isinstance(message, protocol.Unsubscribe):
            subscription = self.subscriptions.pop(message.channel, None)
            if subscription is None:
                self.error(
                    ErrorCode.NOT_SUBSCRIBED, f"not subscribed to {message.channel}", message.rid, message.channel
                )
                return
            node.hub.unsubscribe(subscription)
            self.queue(protocol.unsubscribed_frame(message.channel, message.rid))
        elif isinstance(message, protocol.Publish):
            await self.publish(message)
        elif isinstance(message, protocol.Auth):
            await self.refresh(message)

    async def refresh(self, message: protocol.Auth) -> None:
        """A fresh credential extends the connection; existing subscriptions stay."""
        renewed = await self.node.access.refresh(self.identity, message, self.node.broker)
        if isinstance(renewed, Refusal):
            self.error(renewed.code, renewed.message, message.rid)
            return
        self.identity = renewed
        self.queue(protocol.refreshed_frame(renewed.user, renewed.expires, message.rid))

    async def subscribe(self, message: protocol.Subscribe) -> None:
        node = self.node
        channel = message.channel
        if channel in self.subscriptions:
            self.error(ErrorCode.ALREADY_SUBSCRIBED, f"already subscribed to {channel}", message.rid, channel)
            return
        if len(self.subscriptions) >= node.settings.max_subscriptions:
            node.limit_rejected("subscriptions", max_subscriptions=node.settings.max_subscriptions)
            self.error(
                ErrorCode.TOO_MANY_SUBSCRIPTIONS,
                f"at most {node.settings.max_subscriptions} subscriptions per connection",
                message.rid,
                channel,
            )
            return
        refusal = node.access.check_subscribe(self.identity, channel)
        if refusal is not None:
            self.error(refusal.code, refusal.message, message.rid, channel)
            return
        try:
            subscribed = await node.hub.subscribe(self, channel, message.since)
        except BrokerError as exc:
            self.error(ErrorCode.BROKER_UNAVAILABLE, f"cannot subscribe now: {exc}", message.rid, channel)
            return
        subscription, plan = subscribed.subscription, subscribed.plan
        if self.closing is not None:
            node.hub.unsubscribe(subscription)
            return
        self.subscriptions[channel] = subscription
        # An unrecoverable resume keeps ``since`` here; the reset that the
        # plan's first step carries is what moves the client's position.
        self.queue(
            protocol.subscribed_frame(
                channel, plan.start, recovered=plan.recovered, replayed=plan.replayed, rid=message.rid
            )
        )
        node.hub.start_delivery(subscribed)

    async def publish(self, message: protocol.Publish) -> None:
        node = self.node
        refusal = node.access.check_client_publish(self.identity, message.channel)
        if refusal is not None:
            self.error(refusal.code, refusal.message, message.rid, message.channel)
            return
        try:
            publication = await node.hub.publish(message.channel, message.data, message.event, source="ws")
        except BrokerError as exc:
            self.error(ErrorCode.BROKER_UNAVAILABLE, f"publish failed: {exc}", message.rid, message.channel)
            return
        self.queue(protocol.published_frame(message.channel, publication.position, message.rid))


async def websocket_endpoint(node: Node, scope: Message, receive: Receive, send: Send) -> None:
    connect = await receive()
    if connect["type"] != "websocket.connect":
        return
    admission = node.admit(scope, "ws")
    if isinstance(admission, Refusal):
        await _refuse(scope, send, admission)
        return
    identity = await node.access.identify(scope, node.broker, deferred=True)
    await send({"type": "websocket.accept"})
    if isinstance(identity, Refusal):
        # Accepted first so a browser can read the close code (it never sees a refused handshake's status).
        node.metrics.client_errors.labels(identity.code).inc()
        await send({"type": "websocket.close", "code": identity.close_code, "reason": identity.code})
        return
    session = WebSocketSession(node, send, identity)
    if node.settings.direct_writes:
        session.direct = websocket_writer(send)
    node.register(session)
    max_bytes = node.settings.max_message_bytes
    try:
        if identity is None:
            first = await node.access.first_frame(receive, node.broker)
            if isinstance(first, Refusal):
                node.metrics.client_errors.labels(first.code).inc()
                session.close(first.close_code, first.code)
            else:
                session.identity = first
        if session.closing is None:
            session.queue(protocol.connected_frame(node.name, node.settings.heartbeat_interval))
        while session.closing is None:
            try:
                # The token's expiry is a timer on the loop, not a task per connection.
                async with asyncio.timeout_at(node.access.deadline(session.identity)):
                    message = await receive()
            except TimeoutError:
                session.close(CloseCode.TOKEN_EXPIRED, ErrorCode.TOKEN_EXPIRED)
                break
            kind = message["type"]
            if kind == "websocket.disconnect":
                session.close(CloseCode.NORMAL, "", goodbye=False)
                break
            if kind != "websocket.receive":
                continue
            text = message.get("text")
            if text is None:
                raw = message.get("bytes") or b""
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    session.error(ErrorCode.INVALID_JSON, "binary frame is not UTF-8 text")
                    continue
            if not session.admit_message():
                continue
            if len(text) > max_bytes:
                node.limit_rejected("message_size", max_message_bytes=max_bytes)
                session.error(ErrorCode.MESSAGE_TOO_LARGE, f"messages are limited to {max_bytes} bytes")
                continue
            await session.handle(text)
        # Let the writer flush and say goodbye, within its own timeouts.
        await session.finish()
    finally:
        session.release()
        await session.finish()
        node.unregister(session)


async def _refuse(scope: Message, send: Send, refusal: Refusal) -> None:
    """Refuse the handshake with an HTTP response when the server supports it."""
    if "websocket.http.response" in scope.get("extensions", {}):
        headers = [(b"content-type", b"application/json")]
        if refusal.retry_after is not None:
            headers.append((b"retry-after", str(refusal.retry_after).encode()))
        await send({"type": "websocket.http.response.start", "status": refusal.status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": refusal.body()})
    else:
        await send({"type": "websocket.close", "code": refusal.close_code, "reason": refusal.message[:120]})
