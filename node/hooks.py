"""Backend hooks: the application decides who connects, subscribes, publishes and stays.

Each hook is an optional URL (``hook_connect_url``, ``hook_subscribe_url``,
``hook_publish_url``, ``hook_refresh_url``) that the node POSTs a small JSON
object to, and whose JSON answer it follows (docs/hooks.md is the contract).
A hook runs only where a client asks for something (a handshake, a
subscribe, a publish, an expiry), never on the path of delivery.

Bounded everywhere:

- one call, waiting for a free slot included, takes at most ``hook_timeout``
  seconds; an answer is at most 64 KiB;
- at most ``hook_max_concurrency`` calls are in flight per node; more wait
  for a slot within their timeout;
- a call that fails (timeout, a status other than 2xx, an unreachable
  backend, an answer that is not a JSON object) is decided by
  ``hook_failure``: ``deny`` (the default: the client is refused with
  ``backend_unavailable`` and retries) or ``allow`` (the node goes on as if
  there were no hook).  A refresh that fails keeps the connection and asks
  again a minute later, as Centrifugo does, so a backend outage does not
  close every connection at once.

A connect hook runs inside the handshake, where the credential check runs:
a task of the handshake's own protocol, under ``handshake_timeout``, so a
slow backend holds only the sockets that wait for it.

Counted per hook and outcome (``fanline_hook_calls_total``), timed per hook
(``fanline_hook_seconds``).  :class:`Gate` also checks the control
channel's bans at connect time (node.commands).
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from broker_adapters.types import InvalidChannel, InvalidEventId, Position, validate_channel

from .auth import is_unix_time
from .errors import ClientError, CloseCode, ErrorCode

if TYPE_CHECKING:
    import httpx

    from .access import Identity
    from .connection import Connection
    from .runtime import Node

log = logging.getLogger("fanline.hooks")

#: Largest answer a hook may send, in bytes.
MAX_ANSWER = 65536
#: Most channels a connect hook may subscribe a connection to.
MAX_SERVER_CHANNELS = 64
#: Seconds a failed refresh call keeps the connection before asking again.
REFRESH_RETRY = 60.0


class Hook(enum.StrEnum):
    CONNECT = "connect"
    SUBSCRIBE = "subscribe"
    PUBLISH = "publish"
    REFRESH = "refresh"


class Outcome(enum.StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    ERROR = "error"
    TIMEOUT = "timeout"


@dataclass(frozen=True, slots=True)
class Answer:
    """What a backend said (``ok`` False: the call failed, nothing was said)."""

    ok: bool
    allow: bool = True
    reason: str = ""
    user: str | None = None
    info: str | None = None
    channels: tuple[str, ...] = ()
    expire_at: float | None = None


FAILED = Answer(ok=False)


def parse_answer(status: int, body: bytes, max_channel_length: int = 255) -> Answer:
    """The answer a hook's response means; :data:`FAILED` for anything outside the contract (pure)."""
    if not 200 <= status < 300:
        return FAILED
    try:
        value = json.loads(body) if body.strip() else {}
    except (ValueError, UnicodeDecodeError, RecursionError):
        return FAILED
    if not isinstance(value, dict):
        return FAILED
    allow = value.get("allow", True)
    reason = value.get("reason", "")
    user = value.get("user")
    expire_at = value.get("expire_at")
    channels = value.get("channels", [])
    if (
        not isinstance(allow, bool)
        or not isinstance(reason, str)
        or not (user is None or isinstance(user, str) and 0 < len(user) <= 255)
        or not (expire_at is None or is_unix_time(expire_at))
        or not isinstance(channels, list)
        or len(channels) > MAX_SERVER_CHANNELS
    ):
        return FAILED
    try:
        checked = tuple(validate_channel(c, max_channel_length) for c in channels)
    except InvalidChannel:
        return FAILED
    info = value.get("info")
    return Answer(
        ok=True,
        allow=allow,
        reason=reason[:100],
        user=user,
        info=None if info is None else json.dumps(info, separators=(",", ":"), ensure_ascii=False),
        channels=checked,
        expire_at=None if expire_at is None else float(expire_at),
    )


def server_positions(query: bytes) -> dict[str, Position]:
    """Positions a client gives for its server-side channels: ``?since=<channel>:<event id>`` (repeated).

    An event id holds no ``:``, so the last one separates it from the
    channel.  Malformed ones are ignored: the channel then starts fresh.
    """
    out: dict[str, Position] = {}
    for key, value in parse_qsl(query.decode("latin-1"), keep_blank_values=False):
        if key != "since":
            continue
        channel, sep, event_id = value.rpartition(":")
        if not sep:
            continue
        try:
            out[channel] = Position.parse(event_id)
        except InvalidEventId:
            continue
    return out


def _pick(scope: Mapping[str, Any], headers: frozenset[str], cookies: frozenset[str]) -> tuple[dict[str, str], dict[str, str]]:
    """The request headers and cookies the operator listed, and only those."""
    picked_headers: dict[str, str] = {}
    picked_cookies: dict[str, str] = {}
    for key, value in scope.get("headers", []):
        name = key.decode("latin-1").lower()
        text = value.decode("latin-1")
        if name in headers:
            picked_headers[name] = text
        if name == "cookie" and cookies:
            for part in text.split(";"):
                cookie, sep, cookie_value = part.strip().partition("=")
                if sep and cookie in cookies:
                    picked_cookies[cookie] = cookie_value
    return picked_headers, picked_cookies


class Gate:
    """The node's hooks, and the connect-time ban check; see the module docstring."""

    def __init__(self, node: Node) -> None:
        self.node = node
        settings = node.settings
        self.urls: dict[Hook, str] = {
            hook: url
            for hook, url in (
                (Hook.CONNECT, settings.hook_connect_url),
                (Hook.SUBSCRIBE, settings.hook_subscribe_url),
                (Hook.PUBLISH, settings.hook_publish_url),
                (Hook.REFRESH, settings.hook_refresh_url),
            )
            if url
        }
        self.timeout = settings.hook_timeout
        self.allow_on_failure = settings.hook_failure == "allow"
        self.headers = frozenset(h.strip().lower() for h in settings.hook_headers.split(",") if h.strip())
        self.cookies = frozenset(c.strip() for c in settings.hook_cookies.split(",") if c.strip())
        self._slots = asyncio.Semaphore(settings.hook_max_concurrency)
        self._client: httpx.AsyncClient | None = None
        self._refreshing: set[asyncio.Task[None]] = set()

    def has(self, hook: Hook) -> bool:
        return hook in self.urls

    async def close(self) -> None:
        for task in list(self._refreshing):
            task.cancel()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            import httpx  # only nodes with hooks need it

            size = self.node.settings.hook_max_concurrency
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout),
                limits=httpx.Limits(max_connections=size, max_keepalive_connections=size),
                follow_redirects=False,
                trust_env=False,
            )
        return self._client

    # -- one call ----------------------------------------------------------------------------------

    async def call(self, hook: Hook, body: dict[str, Any]) -> Answer:
        """POST ``body`` to the hook and read its answer, within ``hook_timeout`` all told."""
        metrics = self.node.metrics
        started = time.perf_counter()
        outcome = Outcome.ERROR
        answer = FAILED
        try:
            async with asyncio.timeout(self.timeout):
                async with self._slots:
                    answer = await self._post(self.urls[hook], body)
            outcome = Outcome.ERROR if not answer.ok else Outcome.ALLOW if answer.allow else Outcome.DENY
        except TimeoutError:
            outcome = Outcome.TIMEOUT
        except Exception as exc:  # httpx's errors and anything a broken backend provokes
            self.node.log_throttled(log, "hook call failed", hook=hook.value, error=f"{type(exc).__name__}: {exc}")
        metrics.hook_seconds.labels(hook.value).observe(time.perf_counter() - started)
        metrics.hook_calls.labels(hook.value, outcome.value).inc()
        return answer

    async def _post(self, url: str, body: dict[str, Any]) -> Answer:
        payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        async with self._http().stream(
            "POST", url, content=payload, headers={"content-type": "application/json"}
        ) as response:
            data = bytearray()
            async for chunk in response.aiter_bytes():
                data += chunk
                if len(data) > MAX_ANSWER:
                    return FAILED
            return parse_answer(response.status_code, bytes(data), self.node.settings.max_channel_length)

    def _failed(self, hook: Hook) -> ClientError | None:
        """What a failed call means: None (go on) or the refusal."""
        if self.allow_on_failure:
            return None
        return ClientError(ErrorCode.BACKEND_UNAVAILABLE, f"the {hook.value} hook did not answer; try again")

    # -- the hooks -----------------------------------------------------------------------------------

    async def connect(
        self, identity: Identity, scope: Mapping[str, Any], transport: str
    ) -> tuple[Identity, tuple[str, ...]]:
        """Check a new connection's identity; the identity to use and the channels to subscribe it to.

        Raises ClientError: ``forbidden`` (banned, or the backend said no),
        ``backend_unavailable`` (the hook failed and ``hook_failure`` is deny).
        """
        self.node.control.check_banned(identity)
        if Hook.CONNECT not in self.urls:
            return identity, ()
        headers, cookies = _pick(scope, self.headers, self.cookies)
        answer = await self.call(
            Hook.CONNECT,
            {"transport": transport, "user": identity.user, "headers": headers, "cookies": cookies,
             "node": self.node.name},
        )
        if not answer.ok:
            failure = self._failed(Hook.CONNECT)
            if failure is not None:
                raise failure
            return identity, ()
        if not answer.allow:
            raise ClientError(ErrorCode.FORBIDDEN, answer.reason or "the application refused this connection")
        renewed = replace(
            identity,
            user=answer.user if answer.user is not None else identity.user,
            info=answer.info if answer.info is not None else identity.info,
            expires=answer.expire_at if answer.expire_at is not None else identity.expires,
        )
        self.node.control.check_banned(renewed)
        return renewed, answer.channels

    async def subscribe(self, identity: Identity, channel: str, client: str | None) -> None:
        """Raises ClientError(subscribe_forbidden) if the backend says no (or backend_unavailable)."""
        if Hook.SUBSCRIBE not in self.urls:
            return
        answer = await self.call(Hook.SUBSCRIBE, {"client": client, "user": identity.user, "channel": channel})
        self._decide(Hook.SUBSCRIBE, answer, ErrorCode.SUBSCRIBE_FORBIDDEN, channel)

    async def publish(self, identity: Identity, channel: str, data: str, client: str | None) -> None:
        """Raises ClientError(publish_forbidden) if the backend says no (or backend_unavailable)."""
        if Hook.PUBLISH not in self.urls:
            return
        answer = await self.call(
            Hook.PUBLISH, {"client": client, "user": identity.user, "channel": channel, "data": json.loads(data)}
        )
        self._decide(Hook.PUBLISH, answer, ErrorCode.PUBLISH_FORBIDDEN, channel)

    def _decide(self, hook: Hook, answer: Answer, refusal: ErrorCode, channel: str) -> None:
        if not answer.ok:
            failure = self._failed(hook)
            if failure is not None:
                raise failure.with_request(channel=channel)
            return
        if not answer.allow:
            raise ClientError(refusal, answer.reason or f"the application refused {channel}", channel=channel)

    # -- expiry and the refresh hook ------------------------------------------------------------------

    def arm_expiry(self, connection: Connection) -> None:
        """Set the connection's expiry from its identity: with a refresh hook, it is asked first."""
        identity = connection.identity
        expires = identity.expires if identity is not None else None
        if expires is None:
            connection.expire_at(None, _nothing)
        else:
            self.set_expiry(connection, expires)

    def set_expiry(self, connection: Connection, expire_at: float) -> None:
        """At Unix time ``expire_at`` the connection is refreshed by the hook, or closed as expired."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (expire_at - time.time())
        connection.expire_at(deadline, lambda: self._expired(connection))

    def _expired(self, connection: Connection) -> None:
        if Hook.REFRESH not in self.urls:
            connection.close(CloseCode.TOKEN_EXPIRED, ErrorCode.TOKEN_EXPIRED.value)
            return
        task = asyncio.get_running_loop().create_task(self._refresh(connection))
        self._refreshing.add(task)
        task.add_done_callback(self._refreshing.discard)

    async def _refresh(self, connection: Connection) -> None:
        from .presence import client_id

        identity = connection.identity
        if connection.closing is not None or identity is None:
            return
        answer = await self.call(
            Hook.REFRESH, {"client": client_id(self.node.name, connection), "user": identity.user}
        )
        if connection.closing is not None:
            return
        if not answer.ok:
            # Kept: a backend outage must not close every connection at once.
            self.set_expiry(connection, time.time() + REFRESH_RETRY)
        elif not answer.allow or answer.expire_at is None or answer.expire_at <= time.time():
            connection.close(CloseCode.TOKEN_EXPIRED, ErrorCode.TOKEN_EXPIRED.value)
        else:
            connection.identity = replace(identity, expires=answer.expire_at)
            self.set_expiry(connection, answer.expire_at)


def _nothing() -> None:
    pass
