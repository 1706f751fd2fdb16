"""The WebSocket endpoint, ``/ws``, after its handshake: frames in, Fanline messages handled in order.

:class:`WebSocketConnection` is the socket's asyncio protocol.  Frames are
read by :class:`~node.websocket_frames.FrameReader`; each client message is
rate-limited, parsed (:mod:`node.protocol`) and handled one at a time, in
the order it arrived.  Messages that need no I/O (ping, unsubscribe) are
answered at once; those that do (subscribe, publish, auth) are handled by a
task that exists only while such messages wait, so an idle connection holds
no task.  While that task is busy, further messages wait in a small inbox,
and a client that keeps sending is paused at the TCP level.

Outgoing messages are queued and written by the node's flush
(:mod:`node.connection`): one text frame carries up to ``write_batch``
messages, one per line.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from broker_adapters.base import BrokerError
from broker_adapters.presence import users_of

from . import protocol
from .connection import Connection, Item, ResetItem
from .errors import ClientError, CloseCode, ErrorCode
from .hooks import Hook
from .hub import Delivery, Subscribed
from .presence import client_id
from .websocket_frames import (
    PING_FRAME,
    Close,
    FrameError,
    FrameReader,
    Message,
    Opcode,
    Ping,
    Pong,
    close_frame,
    frame,
    text_frame,
)

if TYPE_CHECKING:
    from .access import Identity
    from .runtime import Node

log = logging.getLogger("fanline.websocket")

# Messages waiting behind a busy handler before the node stops reading the socket.
_INBOX_LIMIT = 32
HEARTBEAT = protocol.HEARTBEAT_FRAME.encode()


class RawFrame(bytes):
    """Bytes that are a whole WebSocket frame already (ping, pong, close), not a message line."""

    __slots__ = ()


PING = RawFrame(PING_FRAME)


def _event_json(delivery: Delivery) -> bytes:
    return protocol.event_frame(delivery.publication).encode()


def _event_frame(delivery: Delivery) -> bytes:
    return text_frame(event_json(delivery))


def event_json(delivery: Delivery) -> bytes:
    """The event message of a delivery as JSON bytes, built once per node."""
    return delivery.encoded("json", _event_json)


def event_frame(delivery: Delivery) -> bytes:
    """The event as a whole text frame, built once per node."""
    return delivery.encoded("ws", _event_frame)


def encode_items(items: list[Item]) -> bytes:
    """Messages as text frames, one message per line; raw frames stay whole, in their place."""
    out: list[bytes] = []
    lines: list[bytes] = []
    for item in items:
        if isinstance(item, Delivery):
            lines.append(event_json(item))
        elif isinstance(item, RawFrame):
            if lines:
                out.append(text_frame(b"\n".join(lines)))
                lines = []
            out.append(item)
        elif isinstance(item, ResetItem):
            lines.append(protocol.reset_frame(item.subscription.channel, item.position, item.reason).encode())
        else:
            lines.append(item)
    if lines:
        out.append(text_frame(b"\n".join(lines)))
    return b"".join(out)


@functools.lru_cache(maxsize=4)
def _hello_frame(hello: bytes) -> bytes:
    """The node's ``connected`` message as a frame: the same bytes for every connection, framed once."""
    return text_frame(hello)


class WebSocketConnection(Connection):
    kind = "ws"

    __slots__ = (
        "reader", "inbox", "worker", "_tokens", "_refilled", "_refused_in_a_row", "ping_sent", "_close_received",
        "_linger", "_auth_timer", "server_channels", "handshake",
    )

    def __init__(self, node: Node, transport: asyncio.Transport, number: int, identity: Identity | None) -> None:
        super().__init__(node, transport, number, identity)
        settings = node.settings
        self.reader = FrameReader(settings.max_message_bytes)
        # Client messages waiting for the handler task (text until the
        # connection is authenticated, parsed after), and that task.
        self.inbox: deque[str | protocol.ClientMessage] | None = None
        self.worker: asyncio.Task[None] | None = None
        # Token bucket for inbound messages.
        self._tokens = float(settings.rate_burst)
        self._refilled = node.loop_time()
        self._refused_in_a_row = 0
        # Loop time of the ping still unanswered (None: none is).
        self.ping_sent: float | None = None
        self._close_received = False
        self._linger: asyncio.TimerHandle | None = None
        self._auth_timer: asyncio.TimerHandle | None = None
        # The connect hook's channels and the positions the client gave for them (node.hooks).
        self.server_channels: tuple[tuple[str, ...], dict[str, Any]] | None = None
        # The handshake, kept only when the connect hook must run after the auth frame.
        self.handshake: dict[str, Any] | None = None

    # -- start --------------------------------------------------------------------------------

    def start(self, head: bytes, early: bytes) -> None:
        """Answer the handshake with ``head`` (the 101); ``early`` are frames that came with it."""
        if self.identity is None:
            self.transport.write(head)
            self._auth_timer = asyncio.get_running_loop().call_later(self.node.settings.auth_timeout, self._no_auth)
        else:
            self.say_hello(head)
        if early:
            self.data_received(early)

    def say_hello(self, head: bytes = b"") -> None:
        """The connection is authenticated: say hello, and start counting it.

        With the handshake's ``head`` still to write, both go in one write:
        a system call less for every connect of a reconnect wave (issue 11).
        """
        assert self.identity is not None
        if self._auth_timer is not None:
            self._auth_timer.cancel()
            self._auth_timer = None
        if head:
            frame = _hello_frame(self.node.hello)
            self.transport.write(head + frame)
            self.node.count_written(self.kind, [self.node.hello], len(frame))  # bytes_out counts frames only
        else:
            self.send(self.node.hello)
        self.node.gate.arm_expiry(self)
        if self.server_channels is not None:
            # Server-side subscriptions: answered with `subscribed` messages
            # (no rid, "server": true) before any message of the client.
            channels, positions = self.server_channels
            self.server_channels = None
            for channel in channels:
                self._enqueue(protocol.Subscribe(channel, since=positions.get(channel), server=True))

    def _no_auth(self) -> None:
        self._auth_timer = None
        self.refuse(ClientError(ErrorCode.UNAUTHORIZED, f"no auth frame within {self.node.settings.auth_timeout:g}s"))

    def _expired(self) -> None:
        self.close(CloseCode.TOKEN_EXPIRED, ErrorCode.TOKEN_EXPIRED.value)

    def refuse(self, error: ClientError) -> None:
        """Close with the error's close code, its error code as the reason (what a browser can read)."""
        self.node.metrics.client_errors.labels(error.code.value).inc()
        self.close(error.close_code, error.code.value, flush=False)

    # -- reading ----------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._close_received:
            return
        try:
            events = self.reader.feed(data)
        except FrameError as exc:
            self.fail(exc.code, exc.reason)
            return
        for event in events:
            if isinstance(event, Message):
                self.on_message(event)
            elif isinstance(event, Ping):
                self.send_frame(RawFrame(frame(Opcode.PONG, event.payload)))
            elif isinstance(event, Pong):
                self.ping_sent = None
            elif isinstance(event, Close):
                self.on_close(event)
                return

    def on_message(self, message: Message) -> None:
        if self.closing is not None:
            return
        if self._auth_timer is not None:
            # The auth frame came in time; verifying it is bounded on its own (jwks_timeout,
            # the broker's timeouts for a ticket), so a slow JWKS does not read as "no auth frame".
            self._auth_timer.cancel()
            self._auth_timer = None
        # Every frame counts against the rate limit, whatever it holds.
        if not self.admit_message():
            return
        if message.text:
            text = message.payload.decode("utf-8")
        else:
            try:
                text = message.payload.decode("utf-8")
            except UnicodeDecodeError:
                self.error(ClientError(ErrorCode.INVALID_JSON, "binary frame is not UTF-8 text"))
                return
        if self.worker is not None or self.identity is None:
            self._enqueue(text)
            return
        try:
            parsed = protocol.parse_client_message(text, max_channel_length=self.node.settings.max_channel_length)
        except ClientError as exc:
            self.error(exc)
            return
        if isinstance(parsed, protocol.Ping):
            self.send(protocol.pong_frame(parsed.rid).encode())
        elif isinstance(parsed, protocol.Unsubscribe):
            self.unsubscribe(parsed)
        elif (
            isinstance(parsed, protocol.Subscribe)
            and not self.node.gate.has(Hook.SUBSCRIBE)
            and (not parsed.join_leave or self.node.presence.relay_ready(parsed.channel))
        ):
            # Most subscribes need no I/O (a live channel, a resume inside the
            # node's recent window): answered here, with no task at all.
            try:
                self.check_subscribe(parsed)
                subscribed = self.node.hub.subscribe_now(self, parsed.channel, parsed.since)
            except ClientError as exc:
                self.error(exc.with_request(parsed.rid, parsed.channel))
                return
            if subscribed is None:
                self._enqueue(parsed)
            else:
                self.subscribed(subscribed, parsed)
        else:
            self._enqueue(parsed)

    def _enqueue(self, text: str | protocol.ClientMessage) -> None:
        inbox = self.inbox
        if inbox is None:
            inbox = self.inbox = deque()
        inbox.append(text)
        if len(inbox) >= _INBOX_LIMIT:
            # Backpressure on a client that sends faster than it is answered.
            self.transport.pause_reading()
        if self.worker is None:
            self.worker = asyncio.get_running_loop().create_task(self._work())

    async def _work(self) -> None:
        """Handle waiting messages in order; the task ends when none is left."""
        try:
            while self.inbox and self.closing is None:
                message = self.inbox.popleft()
                if len(self.inbox) == _INBOX_LIMIT - 1 and not self.transport.is_closing():
                    self.transport.resume_reading()
                await self.handle(message)
        except Exception:
            log.exception("unexpected error handling a client message", extra={"connection": self.number})
            self.close(CloseCode.INTERNAL_ERROR, ErrorCode.INTERNAL.value, flush=False)
        finally:
            self.worker = None
            self.inbox = None

    def admit_message(self) -> bool:
        """Rate-limit inbound messages; close a client that keeps flooding."""
        settings = self.node.settings
        now = self.node.loop_time()
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
            self.error(ClientError(ErrorCode.RATE_LIMITED, f"more than {settings.rate_limit:g} messages/s; message dropped"))
        elif self._refused_in_a_row > settings.rate_burst:
            self.close(CloseCode.RATE_LIMITED, "message rate limit")
        return False

    # -- the messages -----------------------------------------------------------------------------

    async def handle(self, text: str | protocol.ClientMessage) -> None:
        node = self.node
        if isinstance(text, str):
            try:
                message = protocol.parse_client_message(text, max_channel_length=node.settings.max_channel_length)
            except ClientError as exc:
                if self.identity is None:
                    self.refuse(ClientError(ErrorCode.UNAUTHORIZED, "the first frame must be auth"))
                else:
                    self.error(exc)
                return
        else:
            message = text
        try:
            if self.identity is None:
                await self.authenticate(message)
            elif isinstance(message, protocol.Ping):
                self.send(protocol.pong_frame(message.rid).encode())
            elif isinstance(message, protocol.Subscribe):
                await self.subscribe(message)
            elif isinstance(message, protocol.Unsubscribe):
                self.unsubscribe(message)
            elif isinstance(message, protocol.Publish):
                await self.publish(message)
            elif isinstance(message, protocol.Auth):
                await self.refresh(message)
            elif isinstance(message, protocol.PresenceQuery):
                await self.presence_query(message)
        except ClientError as exc:
            self.error(exc.with_request(getattr(message, "rid", None), getattr(message, "channel", None)))

    async def authenticate(self, message: protocol.ClientMessage) -> None:
        try:
            identity = await self.node.access.first_frame(message, self.node.broker)
            if self.handshake is not None:
                identity, channels = await self.node.gate.connect(identity, self.handshake, "websocket")
                self.handshake = None
                if channels:
                    self.server_channels = (channels, {})
            else:
                self.node.control.check_banned(identity)
        except ClientError as exc:
            self.refuse(exc)
            return
        if self.closing is not None:
            return
        if not self.node.promote(self):
            return
        self.identity = identity
        self.say_hello()

    async def refresh(self, message: protocol.Auth) -> None:
        """A fresh credential extends the connection; existing subscriptions stay."""
        assert self.identity is not None
        renewed = await self.node.access.refresh(self.identity, message, self.node.broker)
        self.identity = renewed
        self.expire_at(self.node.access.deadline(renewed), self._expired)
        self.send(protocol.refreshed_frame(renewed.user, renewed.expires, message.rid).encode())

    def check_subscribe(self, message: protocol.Subscribe) -> None:
        """May this connection subscribe to the channel now?  Raises ClientError."""
        node = self.node
        channel = message.channel
        subscriptions = self.subscriptions
        if subscriptions is not None and channel in subscriptions:
            raise ClientError(ErrorCode.ALREADY_SUBSCRIBED, f"already subscribed to {channel}")
        if subscriptions is not None and len(subscriptions) >= node.settings.max_subscriptions:
            node.limit_rejected("subscriptions", max_subscriptions=node.settings.max_subscriptions)
            raise ClientError(
                ErrorCode.TOO_MANY_SUBSCRIPTIONS, f"at most {node.settings.max_subscriptions} subscriptions per connection"
            )
        assert self.identity is not None
        if not message.server:  # the backend granted server-side channels itself
            node.access.check_subscribe(self.identity, channel)

    async def subscribe(self, message: protocol.Subscribe) -> None:
        node = self.node
        self.check_subscribe(message)
        if not message.server:
            assert self.identity is not None
            await node.gate.subscribe(self.identity, message.channel, client_id(node.name, self))
        try:
            if message.join_leave:
                # Before the reply: the joins after ``subscribed`` must reach it.
                await node.presence.listen(self, message.channel)
            subscribed = node.hub.subscribe_now(self, message.channel, message.since)
            if subscribed is None:
                try:
                    subscribed = await node.hub.subscribe(self, message.channel, message.since)
                except BrokerError as exc:
                    raise ClientError(ErrorCode.BROKER_UNAVAILABLE, f"cannot subscribe now: {exc}") from None
        except BaseException:
            # Failed, or cancelled with the connection: no listener may outlive it.
            self._stop_listening(message)
            raise
        self.subscribed(subscribed, message)

    def _stop_listening(self, message: protocol.Subscribe) -> None:
        if message.join_leave and message.channel not in (self.subscriptions or {}):
            self.node.presence.unlisten(self, message.channel)

    def subscribed(self, subscribed: Subscribed, message: protocol.Subscribe) -> None:
        """Reply to a subscribe that succeeded, then let its events flow."""
        node = self.node
        channel = message.channel
        if self.closing is not None or self._released:
            node.hub.unsubscribe(subscribed.subscription)
            self._stop_listening(message)
            return
        if self.subscriptions is None:
            self.subscriptions = {}
        self.subscriptions[channel] = subscribed.subscription
        plan = subscribed.plan
        # An unrecoverable resume keeps ``since`` here; the reset that the
        # plan's first step carries is what moves the client's position.
        self.send(
            protocol.subscribed_frame(
                channel, plan.start, recovered=plan.recovered, replayed=plan.replayed, rid=message.rid,
                server=message.server,
            ).encode()
        )
        node.hub.start_delivery(subscribed)
        node.presence.joined(self, channel, message.join_leave)

    def unsubscribe(self, message: protocol.Unsubscribe) -> None:
        subscription = self.subscriptions.pop(message.channel, None) if self.subscriptions else None
        if subscription is None:
            self.error(
                ClientError(
                    ErrorCode.NOT_SUBSCRIBED, f"not subscribed to {message.channel}", rid=message.rid,
                    channel=message.channel,
                )
            )
            return
        self.node.presence.left(self, message.channel)
        self.node.hub.unsubscribe(subscription)
        self.send(protocol.unsubscribed_frame(message.channel, message.rid).encode())

    async def publish(self, message: protocol.Publish) -> None:
        node = self.node
        assert self.identity is not None
        node.access.check_client_publish(self.identity, message.channel)
        await node.gate.publish(self.identity, message.channel, message.data, client_id(node.name, self))
        try:
            publication = await node.hub.publish(message.channel, message.data, message.event, source="ws")
        except BrokerError as exc:
            raise ClientError(ErrorCode.BROKER_UNAVAILABLE, f"publish failed: {exc}") from None
        self.send(protocol.published_frame(message.channel, publication.position, message.rid).encode())

    async def presence_query(self, message: protocol.PresenceQuery) -> None:
        """``presence`` and ``presence_stats``: for whoever may subscribe to the channel."""
        node = self.node
        assert self.identity is not None
        node.access.check_subscribe(self.identity, message.channel)
        if message.stats:
            count = await node.presence.count(message.channel)
            self.send(protocol.presence_stats_frame(message.channel, count, message.rid).encode())
            return
        entries = await node.presence.list(message.channel)
        clients = [entry.as_dict() for entry in entries]
        self.send(protocol.presence_frame(message.channel, clients, users_of(entries), message.rid).encode())

    def error(self, error: ClientError) -> None:
        self.node.metrics.client_errors.labels(error.code.value).inc()
        self.send(protocol.error_frame(error).encode())

    # -- writing ------------------------------------------------------------------------------------

    def encode(self, items: list[Item], shared: dict[Any, bytes]) -> bytes:
        first = items[0]
        if len(items) == 1 and isinstance(first, Delivery):
            return event_frame(first)
        if all(isinstance(item, Delivery) for item in items):
            # The same publications for many connections: one encoding.
            key = ("ws", *items)
            data = shared.get(key)
            if data is None:
                data = shared[key] = encode_items(items)
            return data
        return encode_items(items)

    def send_frame(self, raw: RawFrame) -> None:
        """A control frame: written in order with the messages, even while the connection closes."""
        if self._released:
            return
        self.outbox.force(raw, len(raw))
        self._mark_dirty()

    def send_heartbeat(self) -> None:
        """A protocol ping (for the dead-peer check) and a heartbeat message (the one browsers see)."""
        if self.identity is None:
            return
        if self.ping_sent is None:
            self.ping_sent = self.node.loop_time()
        self.send(HEARTBEAT)
        self.send(PING)

    def say_draining(self, reconnect_after_ms: int) -> None:
        self.send(protocol.drain_frame(reconnect_after_ms).encode())

    def say_goodbye(self) -> None:
        assert self.closing is not None
        code, reason = self.closing
        if code == 1006:
            self.transport.abort()
            return
        self.transport.write(close_frame(code, reason))
        if self._close_received:
            self.transport.close()
        else:
            # Wait (briefly) for the client's close frame, as RFC 6455 asks.
            self._linger = asyncio.get_running_loop().call_later(
                self.node.settings.heartbeat_timeout, self.transport.abort
            )

    def on_close(self, event: Close) -> None:
        self._close_received = True
        if self.closing is not None:
            if self._goodbye_sent:
                self.transport.close()
            return
        # Echo the client's code (1005, "no code", is answered with 1000).
        self.close(event.code if event.code is not None else CloseCode.NORMAL, "", flush=False)

    def fail(self, code: int, reason: str) -> None:
        """The client broke the protocol: close at once, with the RFC's code."""
        self.node.metrics.client_errors.labels("protocol_error").inc()
        self._close_received = True  # read nothing more
        self.close(code, reason, flush=False)

    def eof_received(self) -> bool | None:
        return False  # the client is gone: close our side too

    def released(self) -> None:
        for timer in (self._linger, self._auth_timer):
            if timer is not None:
                timer.cancel()
        self._linger = self._auth_timer = None
        if self.worker is not None:
            self.worker.cancel()
            self.worker = None
        self.inbox = None
