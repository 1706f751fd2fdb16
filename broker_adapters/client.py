"""The asyncio client for Fanline: backends, scripts and tests.

    from broker_adapters.client import Client, Publication, Reset

    async with Client("http://127.0.0.1:8000", credential=fetch_ticket) as client:
        async for item in client.subscribe("news"):
            match item:
                case Publication(data=data):
                    handle(data)
                case Reset():
                    reload_news()          # the events in between are gone: rebuild from your source of truth

One WebSocket connection to one node at a time, which the client keeps up:
it reconnects with exponential backoff and full jitter (or the node's own
hint: a ``drain``'s ``reconnect_after``, a refusal's ``Retry-After``), moves
to the next node URL after every lost connection, resumes every channel from
its last position, sends again a subscribe the node could not serve yet
(``broker_unavailable``), treats ``2 x heartbeat`` seconds of silence as a
dead connection, refreshes its credential before it expires, and stops on
failures that retrying cannot fix (close 1008, 4001, 4003).  So the
application sees every event of a channel once, in order, or a
:class:`Reset` where something was lost.

The same behaviour as the JavaScript client (clients/js), with a Pythonic
surface; docs/clients.md describes both, docs/protocol.md the wire.  The
decisions are pure functions in :mod:`.client_policy` and
:mod:`.client_positions`; this module does the I/O around them.  Every task
and timer the client starts is owned by it and ends with :meth:`Client.close`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from .client_policy import (
    RATE_LIMITED_RESEND,
    WATCHDOG_FACTOR,
    Close,
    Handshake,
    after_close,
    close_code_of_status,
    handshake,
    refresh_delay,
    retry_after_seconds,
    socket_url,
    subscribe_retry_delay,
    token_expiry,
)
from .client_positions import Positions, Since, moves_position
from .client_subscription import Subscription
from .client_types import (
    ClientClosed,
    ClientEvent,
    ClientFailure,
    Connected,
    ConnectionFailed,
    Credential,
    CredentialSource,
    Disconnected,
    Draining,
    ErrorNotice,
    Failed,
    Item,
    Publication,
    Refreshed,
    RequestFailed,
    Reset,
    ResetReason,
    State,
    StateChanged,
    Subscribed,
    SubscribeError,
    SubscriptionFailed,
    SubscriptionState,
    reset_reason,
)
from .tasks import TaskSet

__all__ = [
    "Client",
    "ClientClosed",
    "ClientEvent",
    "ClientFailure",
    "Connected",
    "ConnectionFailed",
    "Credential",
    "Disconnected",
    "Draining",
    "ErrorNotice",
    "Failed",
    "Item",
    "Publication",
    "Refreshed",
    "RequestFailed",
    "Reset",
    "ResetReason",
    "Since",
    "State",
    "StateChanged",
    "SubscribeError",
    "Subscribed",
    "Subscription",
    "SubscriptionFailed",
    "SubscriptionState",
]

log = logging.getLogger("fanline.client")

T = TypeVar("T")
Message = dict[str, Any]

_decode = json.JSONDecoder().decode

# Subscribe refusals the client answers by sending the subscribe again after a backoff
# (docs/protocol.md: broker_unavailable; docs/hooks.md: a failed subscribe hook).
RETRIED_SUBSCRIBE_ERRORS = frozenset({"broker_unavailable", "backend_unavailable"})

# Inbound frames: the node batches up to write_batch (64) messages of up to
# max_message_bytes (64 KiB) each into one frame.
DEFAULT_MAX_FRAME = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class _Ending:
    """How a connection attempt ended: the close code (or the one a refusal means), why, and hints."""

    code: int
    reason: str
    url: str = ""
    retry_after: float | None = None


class Client:
    """A Fanline client: subscriptions that survive reconnects, publish and ping.

    ``url`` is a node's base URL (``http://host:8000``, ``wss://rt.example.com``;
    ``/ws`` is added), a list of them, tried in turn from a random one
    (``shuffle=False``: from the first), or a callable returning one for every
    attempt (service discovery).  Credentials: a fixed ``token`` or ``ticket``,
    or ``credential``, a (possibly async) callback giving a fresh token or
    :class:`Credential` for every connection, also used to ``refresh`` unless
    that is given.  docs/clients.md describes every option.
    """

    def __init__(
        self,
        url: str | Sequence[str] | Callable[[], str],
        *,
        token: str | None = None,
        ticket: str | None = None,
        credential: CredentialSource | None = None,
        refresh: CredentialSource | None = None,
        auth_frame: bool = False,
        store: MutableMapping[str, str] | None = None,
        store_prefix: str = "fanline:",
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        heartbeat: float = 25.0,
        timeout: float = 10.0,
        max_queue: int = 10_000,
        shuffle: bool = True,
        connect_options: Mapping[str, Any] | None = None,
        on_event: Callable[[ClientEvent], object] | None = None,
    ) -> None:
        if isinstance(url, str):
            url = [url]
        if callable(url):
            self._urls: list[str] = []
            self._discover: Callable[[], str] | None = url
        else:
            self._urls = [socket_url(u) for u in url]
            self._discover = None
            if not self._urls:
                raise ValueError("give at least one node URL")
        if token is not None and ticket is not None:
            raise ValueError("give a token or a ticket, not both")
        if not (0 < backoff_base <= backoff_max) or heartbeat <= 0 or timeout <= 0 or max_queue < 1:
            raise ValueError("backoff_base, backoff_max, heartbeat, timeout and max_queue must be positive")
        self._fixed = Credential(token=token, ticket=ticket, exp=token_expiry(token))
        self._credential = credential
        self._refresh = refresh if refresh is not None else credential
        self._auth_frame = auth_frame
        self._backoff = (backoff_base, backoff_max)
        self._heartbeat_default = heartbeat
        self._heartbeat = heartbeat
        self._timeout = timeout
        self._max_queue = max_queue
        self._connect_options: dict[str, Any] = {
            "open_timeout": timeout,
            "ping_interval": None,  # the node's heartbeat messages and our watchdog do this job
            "compression": None,  # the node does not negotiate permessage-deflate
            "max_size": DEFAULT_MAX_FRAME,
            "close_timeout": timeout,
            **(connect_options or {}),
        }
        self._listeners: list[Callable[[ClientEvent], object]] = [on_event] if on_event is not None else []

        self.state = State.DISCONNECTED
        self.url: str | None = None  # the node URL of the current (or last) connection
        self.node: str | None = None  # the node's name, from its connected message
        self.failure: ConnectionFailed | None = None
        self._positions = Positions(store, store_prefix)
        self._subs: dict[str, Subscription] = {}
        self._next_url = random.randrange(len(self._urls)) if shuffle and self._urls else 0
        self._attempt = 0
        self._running = False
        self._tasks = TaskSet()  # the connection loop
        self._session = TaskSet()  # one connection's sends and refresher
        self._timers: set[asyncio.TimerHandle] = set()
        self._pending: dict[int, asyncio.Future[Message] | str] = {}
        self._rid = 0
        self._gen = 0  # one per connection: timers of an older one do nothing
        self._ws: ClientConnection | None = None
        self._outbox: deque[str] | None = None  # the connection's messages not yet written
        self._flushing = False  # a task is writing the outbox
        self._credentials = self._fixed
        self._hint: float | None = None  # the node's reconnect hint (drain)
        self._drop: _Ending | None = None  # why the client itself ended the connection
        self._last_frame = 0.0
        self._watch: asyncio.TimerHandle | None = None
        self._changed = asyncio.Event()  # set whenever the state changes: requests wait on it

    # -- the application's side ------------------------------------------------------------------

    def connect(self) -> Client:
        """Start connecting, and keep reconnecting until :meth:`close` or a permanent failure.

        Needs a running event loop.  After a failure it starts again (subscribe
        again: a failure ended every subscription).
        """
        if self.state is State.CLOSED:
            raise ClientClosed("the client was closed; create another one")
        if not self._running:
            self._running = True
            self.failure = None
            self._attempt = 0
            self._tasks.spawn(self._run(), name="fanline-client")
        return self

    async def close(self) -> None:
        """Stop everything: the connection (closed with 1000), every task and timer, the subscriptions.

        Subscriptions end their iteration at once; requests waiting for a
        connection raise :class:`ClientClosed`, those already sent
        ``RequestFailed("disconnected")``.  Positions in the store stay where
        the application left them.
        """
        if self.state is State.CLOSED:
            return
        self._running = False
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await ws.close()
        self._set_state(State.CLOSED)
        await self._tasks.cancel_all()
        await self._end_session()
        for sub in self._subs.values():
            sub.state = SubscriptionState.UNSUBSCRIBED
            sub._close(None)
        self._subs.clear()

    async def __aenter__(self) -> Client:
        return self.connect()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            # A clean exit: the items handed out were processed.
            for sub in self._subs.values():
                sub._commit()
        await self.close()

    def subscribe(
        self,
        channel: str,
        *,
        since: str | None | Since = Since.KNOWN,
        on_subscribed: Callable[[Subscribed], object] | None = None,
        on_error: Callable[[SubscribeError], object] | None = None,
    ) -> Subscription:
        """The channel's subscription (the same one if already subscribed), connected or not.

        ``since``: an event id to resume after; ``None`` for "from now on"
        (forgetting any stored position); by default the position the store
        holds, if any.  ``on_subscribed`` is called on every confirmation (every
        connection), ``on_error`` when the node refuses the subscribe.
        """
        if self.state is State.CLOSED:
            raise ClientClosed("the client was closed")
        sub = self._subs.get(channel)
        if sub is None:
            self._positions.start(channel, since)
            sub = Subscription(self, channel, self._positions, self._max_queue, on_subscribed, on_error)
            self._subs[channel] = sub
            if self._outbox is not None:
                self._send_subscribe(sub)
        return sub

    def unsubscribe(self, channel: str) -> None:
        """Stop receiving a channel and forget its position (here and in the store)."""
        sub = self._subs.pop(channel, None)
        if sub is None:
            return
        self._positions.forget(channel)
        sub.forgotten = True
        sub.state = SubscriptionState.UNSUBSCRIBED
        sub._close(None)
        if self._outbox is not None:
            self._send({"type": "unsubscribe", "channel": channel})

    def subscription(self, channel: str) -> Subscription | None:
        return self._subs.get(channel)

    def position(self, channel: str) -> str | None:
        """The id of the last item the application processed on a channel."""
        return self._positions.processed.get(channel)

    async def publish(self, channel: str, data: object, *, event: str | None = None) -> str:
        """Publish through the connection (nodes started with ``--client-publish``); the new event's id.

        Waits for a connection, all within ``timeout``.  Never retried: after
        ``timeout``, ``disconnected`` or ``broker_unavailable`` the publication
        may or may not have happened.  Backends usually publish through the
        HTTP API or :class:`broker_adapters.publisher.Publisher` instead.
        """
        message: Message = {"type": "publish", "channel": channel, "data": data}
        if event is not None:
            message["event"] = event
        reply = await self._request(message)
        return str(reply["id"])

    async def ping(self) -> float:
        """The round trip to the node, in seconds."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        await self._request({"type": "ping"})
        return loop.time() - started

    def reconnect(self) -> None:
        """Drop the connection now and resume, as after any loss (after a backoff, on the next URL)."""
        ws = self._ws
        if ws is not None and self._drop is None:
            self._drop = _Ending(Close.NORMAL, "reconnect() called", self.url or "")
            ws.transport.abort()

    def listen(self, callback: Callable[[ClientEvent], object]) -> Callable[[], None]:
        """Call ``callback`` with every :data:`ClientEvent`; returns the function that stops it."""
        self._listeners.append(callback)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(callback)

        return remove

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until the client is connected (raises :class:`ConnectionFailed` or :class:`ClientClosed`)."""
        async with asyncio.timeout(timeout):
            await self._until_connected()

    # -- the connection loop ---------------------------------------------------------------------

    async def _run(self) -> None:
        while self._running:
            ending = await self._connection()
            if not self._running:
                return
            step = after_close(
                ending.code,
                renewable=self._credential is not None,
                attempt=self._attempt,
                base=self._backoff[0],
                cap=self._backoff[1],
                hint=self._hint,
                retry_after=ending.retry_after,
            )
            self._hint = None
            if step is None:
                self._fail(int(ending.code), ending.reason)
                return
            self._attempt = step.attempt
            self._next_url += 1
            self._set_state(State.DISCONNECTED)
            self._emit(Disconnected(int(ending.code), ending.reason, step.delay, ending.url))
            await asyncio.sleep(step.delay)

    async def _connection(self) -> _Ending:
        """One attempt: a credential, a handshake, then the session until it ends."""
        self._set_state(State.CONNECTING)
        self._heartbeat = self._heartbeat_default
        try:
            url = self._pick_url()
        except Exception as exc:  # the application's URL callback
            return _Ending(Close.TRY_AGAIN_LATER, f"url: {exc!r}")
        try:
            async with asyncio.timeout(self._timeout):
                self._credentials = await self._fetch(self._credential) if self._credential else self._fixed
        except Exception as exc:  # the application's callback, or its timeout
            return _Ending(Close.TRY_AGAIN_LATER, f"credential: {exc!r}", url)
        shake = handshake(url, token=self._credentials.token, ticket=self._credentials.ticket, auth_frame=self._auth_frame)
        try:
            ws = await connect(shake.url, additional_headers=list(shake.headers), **self._connect_options)
        except InvalidStatus as exc:
            return self._refusal(exc, url)
        except (OSError, TimeoutError, EOFError, WebSocketException) as exc:
            return _Ending(Close.ABNORMAL, f"could not connect: {exc}", url)
        try:
            return await self._serve(ws, url, shake)
        finally:
            await self._end_session()

    def _pick_url(self) -> str:
        if self._discover is not None:
            return socket_url(self._discover())
        return self._urls[self._next_url % len(self._urls)]

    @staticmethod
    def _refusal(exc: InvalidStatus, url: str) -> _Ending:
        """A refused handshake: the HTTP status and body's ``error`` mean a close code; honour Retry-After."""
        response = exc.response
        error: str | None = None
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            body = json.loads(response.body or b"{}")
            if isinstance(body, dict) and isinstance(body.get("error"), str):
                error = body["error"]
        retry_after = retry_after_seconds(response.headers.get("Retry-After"))
        code = close_code_of_status(response.status_code, error)
        return _Ending(code, error or f"HTTP {response.status_code}", url, retry_after)

    async def _serve(self, ws: ClientConnection, url: str, shake: Handshake) -> _Ending:
        """Read one connection until it ends; return how it ended."""
        loop = asyncio.get_running_loop()
        self._gen += 1
        self._ws = ws
        self.url = url
        self._drop = None
        self._outbox = deque()
        self._flushing = False
        self._last_frame = loop.time()
        self._arm_watchdog(ws)
        if shake.first_frame is not None:
            self._send(shake.first_frame)
        for sub in self._subs.values():
            self._send_subscribe(sub)
        handle = self._message
        decode = _decode
        try:
            while True:
                frame = await ws.recv()
                self._last_frame = loop.time()
                text = frame if isinstance(frame, str) else frame.decode()
                # A frame holds one or more messages, one JSON object per line; no
                # message contains a raw newline, so the frame is one JSON array
                # away from a single decode.
                messages = decode(f"[{text.replace(chr(10), ',')}]") if "\n" in text else [decode(text)]
                for message in messages:
                    handle(message)
        except ConnectionClosed as closed:
            if self._drop is not None:
                return self._drop
            received = closed.rcvd
            if received is None:
                return _Ending(Close.ABNORMAL, "connection lost", url)
            return _Ending(received.code, received.reason, url)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # Not the protocol: a node bug or something else on this port.  Drop it and try again.
            ws.transport.abort()
            return _Ending(Close.INVALID_DATA, f"unreadable message: {exc!r}", url)

    async def _end_session(self) -> None:
        """After a connection: stop its tasks and timers, fail its requests, mark subscriptions to resume."""
        self._ws = None
        self._outbox = None
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        await self._session.cancel_all()
        pending, self._pending = self._pending, {}
        for waiting in pending.values():
            if isinstance(waiting, asyncio.Future) and not waiting.done():
                waiting.set_exception(
                    RequestFailed("disconnected", "the connection closed before the reply: it may or may not have happened")
                )
        for sub in self._subs.values():
            if sub.state is SubscriptionState.SUBSCRIBED:
                sub.state = SubscriptionState.SUBSCRIBING
            sub.pending_rid = None

    async def _flush(self, ws: ClientConnection, outbox: deque[str]) -> None:
        """Write the outbox in order; a task exists only while there is something to write."""
        try:
            while outbox:
                await ws.send(outbox.popleft())
        except ConnectionClosed:
            pass  # the reader sees the close
        finally:
            if self._outbox is outbox:
                self._flushing = False

    def _arm_watchdog(self, ws: ClientConnection) -> None:
        """No frame for 2 x heartbeat seconds: the connection is dead (docs/protocol.md, "Heartbeats").

        A timer, not a task, re-armed only when it fires: the reader just notes
        the time of every frame.
        """
        if self._watch is not None:
            self._watch.cancel()
        loop = asyncio.get_running_loop()

        def check() -> None:
            if ws is not self._ws:
                return
            limit = self._heartbeat * WATCHDOG_FACTOR
            if loop.time() - self._last_frame < limit:
                self._watch = loop.call_at(self._last_frame + limit, check)
                return
            self._watch = None
            if self._drop is None:
                self._drop = _Ending(Close.ABNORMAL, "no heartbeat", self.url or "")
            ws.transport.abort()

        self._watch = loop.call_at(self._last_frame + self._heartbeat * WATCHDOG_FACTOR, check)

    async def _refresher(self, gen: int) -> None:
        """Refresh the credential at 80% of its remaining lifetime, and again (sooner) after a failure."""
        source = self._refresh
        while source is not None and gen == self._gen:
            exp = self._credentials.exp
            if exp is None:
                return
            await asyncio.sleep(refresh_delay(exp, time.time()))
            try:
                async with asyncio.timeout(self._timeout):
                    fresh = await self._fetch(source)
                message: Message = {"type": "refresh"}
                if fresh.ticket:
                    message["ticket"] = fresh.ticket
                else:
                    message["token"] = fresh.token
                reply = await self._request(message)
            except RequestFailed as exc:
                self._emit(ErrorNotice(exc.code, f"refresh failed: {exc.message or exc.code}"))
                continue
            except Exception as exc:  # the application's callback
                self._emit(ErrorNotice("refresh_failed", f"refresh failed: {exc!r}"))
                continue
            exp_reply = reply.get("exp")
            new_exp = float(exp_reply) if isinstance(exp_reply, (int, float)) else fresh.exp
            self._credentials = Credential(fresh.token, fresh.ticket, new_exp)
            self._emit(Refreshed(reply.get("user"), new_exp))

    @staticmethod
    async def _fetch(source: CredentialSource) -> Credential:
        value = source()
        if inspect.isawaitable(value):
            value = await value
        if isinstance(value, str):
            return Credential(token=value, exp=token_expiry(value))
        if isinstance(value, Credential):
            if value.exp is None and value.token:
                return Credential(value.token, value.ticket, token_expiry(value.token))
            return value
        raise TypeError(f"a credential callback returns a token (str) or a Credential, not {type(value).__name__}")

    def _fail(self, code: int, reason: str) -> None:
        """A permanent failure: stop, and end every subscription with it (after what they already received)."""
        self._running = False
        self.failure = failure = ConnectionFailed(code, reason)
        self._set_state(State.FAILED)
        self._emit(Failed(code, reason))
        for sub in self._subs.values():
            sub._close(failure)
        self._subs.clear()

    # -- messages ----------------------------------------------------------------------------------

    def _send(self, message: Message) -> None:
        outbox, ws = self._outbox, self._ws
        if outbox is None or ws is None:
            return
        outbox.append(json.dumps(message, separators=(",", ":"), ensure_ascii=False))
        if not self._flushing:
            self._flushing = True
            self._session.spawn(self._flush(ws, outbox), name="fanline-client-send")

    def _next_rid(self) -> int:
        self._rid += 1
        return self._rid

    def _send_subscribe(self, sub: Subscription) -> None:
        rid = self._next_rid()
        sub.pending_rid = rid
        sub.state = SubscriptionState.SUBSCRIBING
        self._pending[rid] = sub.channel
        message: Message = {"type": "subscribe", "channel": sub.channel, "rid": rid}
        since = self._positions.received.get(sub.channel)
        if since:
            message["since"] = since
        self._send(message)

    def _later(self, delay: float, action: Callable[[], None]) -> None:
        """Run ``action`` after ``delay`` seconds, on this connection only."""
        gen = self._gen

        def fire() -> None:
            self._timers.discard(timer)
            if gen == self._gen and self._outbox is not None:
                action()

        timer = asyncio.get_running_loop().call_later(delay, fire)
        self._timers.add(timer)

    async def _request(self, message: Message) -> Message:
        try:
            async with asyncio.timeout(self._timeout):
                await self._until_connected()
                rid = self._next_rid()
                future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
                self._pending[rid] = future
                self._send({**message, "rid": rid})
                try:
                    return await future
                finally:
                    self._pending.pop(rid, None)
        except TimeoutError:
            raise RequestFailed("timeout", f"no reply within {self._timeout} s") from None

    async def _until_connected(self) -> None:
        while self.state is not State.CONNECTED:
            if self.state is State.CLOSED:
                raise ClientClosed("the client was closed")
            if self.failure is not None:
                raise self.failure
            if not self._running:
                raise ClientClosed("the client is not running: call connect()")
            self._changed.clear()
            await self._changed.wait()

    def _message(self, message: Message) -> None:
        kind = message.get("type")
        if kind == "event":
            # The hot path: one dict lookup, one queue append.
            channel = message["channel"]
            sub = self._subs.get(channel)
            if sub is not None and sub.state is SubscriptionState.SUBSCRIBED:
                event_id = message["id"]
                self._positions.received[channel] = event_id
                sub._put(Publication(channel, event_id, message.get("data"), message.get("event")))
            return
        if kind == "heartbeat":
            return
        rid = message.get("rid")
        waiting = self._pending.pop(rid, None) if rid is not None else None
        if kind == "subscribed":
            self._subscribed(message, rid)
        elif kind == "reset":
            self._reset(message)
        elif kind == "connected":
            self._connected(message)
        elif kind == "error":
            self._error(message, rid, waiting)
        elif kind == "unsubscribed":
            if message.get("reason") == "server":
                self._unsubscribed_by_server(message["channel"])
        elif kind == "drain":
            after = message.get("reconnect_after")
            if isinstance(after, (int, float)):
                self._hint = max(0.0, after / 1000)
                self._emit(Draining(self._hint))
        elif isinstance(waiting, asyncio.Future) and not waiting.done():
            waiting.set_result(message)  # published, pong, refreshed

    def _connected(self, message: Message) -> None:
        heartbeat = message.get("heartbeat")
        if isinstance(heartbeat, (int, float)) and heartbeat > 0 and heartbeat != self._heartbeat:
            self._heartbeat = float(heartbeat)
            # The watchdog is set for 2 x the old heartbeat: set it again with the node's.
            if self._ws is not None:
                self._arm_watchdog(self._ws)
        node = message.get("node")
        self.node = node if isinstance(node, str) else None
        if not self._subs:
            self._attempt = 0
        self._set_state(State.CONNECTED)
        self._emit(Connected(self.url or "", self.node))
        if self._refresh is not None and self._credentials.exp is not None:
            self._session.spawn(self._refresher(self._gen), name="fanline-client-refresh")

    def _subscribed(self, message: Message, rid: Any) -> None:
        channel = message["channel"]
        sub = self._subs.get(channel)
        if sub is None or sub.pending_rid != rid:
            return  # the reply to an older subscribe of this channel
        sub.pending_rid = None
        recovered = message.get("recovered")
        event_id = message["id"]
        if moves_position("subscribed", recovered):
            self._positions.received[channel] = event_id
        replayed = message.get("replayed")
        self._attempt = 0
        sub._subscribed(Subscribed(channel, event_id, recovered, replayed))

    def _reset(self, message: Message) -> None:
        channel = message["channel"]
        sub = self._subs.get(channel)
        if sub is None or sub.state is not SubscriptionState.SUBSCRIBED:
            return
        event_id = message["id"]
        previous = self._positions.receive(channel, event_id)
        sub._put(Reset(channel, event_id, reset_reason(str(message.get("reason", ""))), previous))

    def _error(self, message: Message, rid: Any, waiting: asyncio.Future[Message] | str | None) -> None:
        code = str(message.get("code", ""))
        text = str(message.get("message", ""))
        if isinstance(waiting, asyncio.Future):
            if not waiting.done():
                waiting.set_exception(RequestFailed(code, text))
            return
        if isinstance(waiting, str):
            sub = self._subs.get(waiting)
            if sub is not None and sub.pending_rid == rid:
                self._subscribe_refused(sub, code, text)
                return
        if code == "rate_limited":
            # The node dropped a message without a reply: subscribes still unanswered
            # a second later may be it; send them again.
            self._later(RATE_LIMITED_RESEND, self._resend_unanswered)
        if code != "not_subscribed":
            channel = message.get("channel")
            self._emit(ErrorNotice(code, f"{channel}: {text}" if channel else text))

    def _subscribe_refused(self, sub: Subscription, code: str, text: str) -> None:
        if code == "already_subscribed":
            return  # a subscribe sent twice (see rate_limited): the first one counts
        sub.pending_rid = None
        if code in RETRIED_SUBSCRIBE_ERRORS:
            # The node cannot reach its broker (or the application's subscribe hook) yet:
            # the same subscribe, same since, after a backoff.
            delay = subscribe_retry_delay(sub.tries)
            sub.tries += 1
            self._later(delay, lambda: self._retry_subscribe(sub))
            sub._refused(SubscribeError(sub.channel, code, text, delay))
            return
        self._subs.pop(sub.channel, None)
        sub._refused(SubscribeError(sub.channel, code, text))

    def _unsubscribed_by_server(self, channel: str) -> None:
        """The application unsubscribed this connection (server API): the subscription ends, after what it
        received, and is not sent again; its position stays where the application left it."""
        sub = self._subs.pop(channel, None)
        if sub is not None:
            sub.state = SubscriptionState.UNSUBSCRIBED
            sub._close(None, keep=True)

    def _retry_subscribe(self, sub: Subscription) -> None:
        if self._subs.get(sub.channel) is sub and sub.state is SubscriptionState.SUBSCRIBING and sub.pending_rid is None:
            self._send_subscribe(sub)

    def _resend_unanswered(self) -> None:
        for rid, waiting in list(self._pending.items()):
            sub = self._subs.get(waiting) if isinstance(waiting, str) else None
            if sub is not None and sub.pending_rid == rid and sub.state is SubscriptionState.SUBSCRIBING:
                del self._pending[rid]
                self._send_subscribe(sub)

    # -- events ------------------------------------------------------------------------------------

    def _set_state(self, state: State) -> None:
        if state is not self.state and self.state is not State.CLOSED:
            self.state = state
            self._changed.set()
            self._emit(StateChanged(state))

    def _emit(self, event: ClientEvent) -> None:
        for listener in list(self._listeners):
            self._call(listener, event)

    def _call(self, callback: Callable[[T], object], value: T) -> None:
        """Run an application callback; what it raises is logged, and never stops the client."""
        try:
            callback(value)
        except Exception:
            log.exception("fanline client: a callback raised")
