"""NATS JetStream adapter: one stream holds every channel's history.

Layout (docs/brokers/nats.md has the full contract for other languages):

- ONE stream (``stream``, default ``FANLINE``) with subjects ``<prefix>.>``;
  channel ``news.eu`` is subject ``fanline.news.eu``.  Per-subject limits
  (``max_msgs_per_subject``) bound each channel's history.  The stream's
  settings, identity and epochs are in broker_adapters/nats_stream.py.
- A position's offset is the stream sequence, shared by all channels, so
  offsets skip (``contiguous_offsets = False``).  The epoch is a hash of the
  stream's creation time and the channel: a deleted and recreated stream
  gives every channel a new epoch, and a position is only valid in its own
  channel.
- The stream *republishes* every stored message to ``<prefix>-live.<channel>``
  with the server headers ``Nats-Sequence`` and ``Nats-Last-Sequence`` (the
  previous sequence of the same subject).  A node holds one plain core-NATS
  subscription per channel it serves, never a JetStream consumer per client;
  a live message whose ``Nats-Last-Sequence`` is not the last one delivered
  proves a gap.
- A publication normally carries ``Fanline-Prev``: the previous sequence of
  its subject, made exact by publishing with
  ``Nats-Expected-Last-Subject-Sequence`` (the server rejects a stale value).
  History reads (broker_adapters/nats_reads.py) use it to prove a range
  complete.
- ``history_ttl`` is applied when reading (messages older than it count as
  expired), while the stream keeps messages physically for ``meta_ttl``, so
  the ``Fanline-Prev`` chain still proves what an expired range contained.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import nats.errors
import nats.js.errors
from nats.aio.client import Client, Server
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import PubAck

from .base import Broker, BrokerError, BrokerListener, BrokerUnavailable, NullListener
from .foreign import stored_publication
from .keyed_locks import KeyedLocks
from .nats_presence import NatsPresence
from .nats_reads import HEADER_EVENT, HEADER_PREV, StreamReader, timestamp_ms
from .nats_stream import (
    ERR_LAST_SUBJECT_SEQ_NOT_READY,
    ERR_STREAM_NOT_FOUND,
    ERR_WRONG_LAST_SEQUENCE,
    ERR_WRONG_LAST_SEQUENCE_CONSTANT,
    NATS,
    StreamSettings,
    api_code,
    channel_epoch,
    ensure_stream,
    stream_identity,
)
from .options import parse_options
from .presence import PresenceSettings
from .tasks import TaskSet
from .types import History, Publication

log = logging.getLogger("fanline.broker.nats")

HEADER_EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"

_WRONG_LAST = re.compile(r"wrong last sequence:\s*(\d+)")
_STREAM_NAME = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
_PREFIX = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")

# A publish retries when another publisher of the same channel got in first
# (each failure tells us the new last sequence); the last attempt is
# unconditional.  Few attempts: under contention the winner of one round has
# the right sequence at once for its next publish, so losers rarely catch up.
_PUBLISH_ATTEMPTS = 4
# How many channels' last sequences a node remembers to publish without a
# first failed attempt.
_LAST_SEQ_CACHE = 65536
# While NATS is down, the client reports a failed attempt every
# reconnect_wait: log the first one of each kind, then one line per interval
# with the number held back.
_ERROR_LOG_INTERVAL = 30.0


def _describe(exc: BaseException) -> str:
    """``ConnectionRefusedError: [Errno 111] Connection refused``; the type alone when there is no text."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _ErrorLogThrottle:
    """At most one line per kind of error per interval; counts what it held back."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def allow(self, kind: str) -> int | None:
        """None to stay quiet; otherwise log, with the number of lines held back since the last one."""
        now = self.clock()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval:
            self._held[kind] = self._held.get(kind, 0) + 1
            return None
        self._last[kind] = now
        return self._held.pop(kind, 0)


@dataclass(frozen=True, slots=True)
class NatsOptions:
    """The URL's query options; docs/brokers/nats.md has a row for each."""

    stream: str = "FANLINE"
    subject_prefix: str = "fanline"
    live_prefix: str = ""  # default: "<subject_prefix>-live"
    history_size: int = 1000
    history_ttl: float = 600.0
    meta_ttl: float = 86400.0
    replicas: int = 1
    storage: str = "file"
    timeout: float = 3.0
    connect_timeout: float = 3.0
    reconnect_wait: float = 1.0

    def __post_init__(self) -> None:
        if not _STREAM_NAME.fullmatch(self.stream):
            raise ValueError("stream must be letters, digits, _ or -")
        for name in ("subject_prefix", "live_prefix"):
            value = getattr(self, name)
            if value and not _PREFIX.fullmatch(value):
                raise ValueError(f"{name} must be dot-separated tokens of letters, digits, _ or -")
        if self.live_prefix == self.subject_prefix or self.live_prefix.startswith(self.subject_prefix + "."):
            raise ValueError("live_prefix must not overlap subject_prefix")
        if self.history_size < 0 or self.history_ttl <= 0 or self.replicas < 1:
            raise ValueError("history_size must be >= 0, history_ttl > 0 and replicas >= 1")
        if self.storage not in ("file", "memory"):
            raise ValueError("storage must be 'file' or 'memory'")
        if self.timeout <= 0 or self.connect_timeout <= 0 or self.reconnect_wait < 0:
            raise ValueError("timeouts must be positive")

    @property
    def live(self) -> str:
        return self.live_prefix or f"{self.subject_prefix}-live"

    @property
    def stream_settings(self) -> StreamSettings:
        return StreamSettings(
            name=self.stream,
            subject_prefix=self.subject_prefix + ".",
            live_prefix=self.live + ".",
            history_size=self.history_size,
            # Physical retention: at least the logical history_ttl.
            retention=max(self.meta_ttl, self.history_ttl),
            replicas=self.replicas,
            storage=self.storage,
        )


class NatsBroker(Broker):
    """One JetStream stream for every channel, fan-out by republish; see the module docstring."""

    kind = "nats"
    contiguous_offsets = False

    def __init__(self, servers: list[str], options: NatsOptions | None = None) -> None:
        super().__init__()
        self.servers = servers
        self.options = options or NatsOptions()
        self._stream = self.options.stream_settings
        self._prefix = self._stream.subject_prefix
        self._live_prefix = self._stream.live_prefix
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._listener: BrokerListener = NullListener()
        # "<stream>:<created>": names one incarnation of the stream.
        self._identity: str | None = None
        # Highest stream sequence seen in this incarnation; a publish acked
        # below it proves the stream was recreated under us.
        self._max_seq = 0
        self._subs: dict[str, Subscription] = {}
        # Last live sequence delivered per subscribed channel, for gap checks.
        self._live_last: dict[str, int] = {}
        # Last known sequence per channel, to publish with the right
        # expected-last-sequence at the first attempt.
        self._last_seq: OrderedDict[str, int] = OrderedDict()
        self._publish_locks = KeyedLocks()
        self._tasks = TaskSet()
        self._refreshing: asyncio.Task[None] | None = None
        # The client's latest connection error: the real cause when a connect times out.
        self._last_error: BaseException | None = None
        self._error_log = _ErrorLogThrottle(_ERROR_LOG_INTERVAL)

    # -- lifecycle -------------------------------------------------------------------

    async def start(self, listener: BrokerListener) -> None:
        if self._nc is not None:
            return
        self._listener = listener
        self._last_error = None
        nc = Client()
        options = self.options
        try:
            with NATS.unavailable(f"connection to {self._where()}"):
                async with asyncio.timeout(options.connect_timeout * 2):
                    await nc.connect(
                        servers=self.servers,
                        name="fanline",
                        connect_timeout=max(1, round(options.connect_timeout)),
                        reconnect_time_wait=max(0, round(options.reconnect_wait)),
                        max_reconnect_attempts=-1,
                        allow_reconnect=True,
                        ping_interval=10,
                        max_outstanding_pings=2,
                        error_cb=self._on_error,
                        disconnected_cb=self._on_disconnected,
                        reconnected_cb=self._on_reconnected,
                        reconnect_to_server_handler=self._pick_server,
                    )
        except BrokerUnavailable as exc:
            await self._close_client(nc)
            if self._last_error is None:
                raise
            # The client retries inside connect() until our timeout; the
            # error it last reported says why (e.g. connection refused).
            raise BrokerUnavailable(
                f"NATS connection to {self._where()} failed: {_describe(self._last_error)}"
            ) from exc
        self._nc = nc
        self._js = nc.jetstream(timeout=options.timeout)
        try:
            with NATS.unavailable("stream setup"):
                await self._ensure_stream()
        except BaseException:
            await self.close()
            raise
        listener.on_availability(True)

    async def close(self) -> None:
        await self._tasks.cancel_all()
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None:
            await self._close_client(nc)
        self._subs.clear()
        self._live_last.clear()
        self._listener = NullListener()

    @staticmethod
    async def _close_client(nc: Client) -> None:
        with NATS.ignored():
            await nc.close()

    def _where(self) -> str:
        """``host:port`` of every configured server."""
        where = []
        for server in self.servers:
            parts = urlsplit(server)
            host = parts.hostname or "127.0.0.1"
            where.append(f"{f'[{host}]' if ':' in host else host}:{parts.port or 4222}")
        return ", ".join(where)

    def _client(self) -> tuple[Client, JetStreamContext]:
        if self._nc is None or self._js is None:
            raise BrokerUnavailable("NATS broker is not started")
        if not self._nc.is_connected:
            # Fail now rather than let the client buffer the request until it
            # times out: the caller learns at once, and a buffered publish
            # would be sent later with an outcome nobody hears about.
            raise BrokerUnavailable("NATS connection lost; reconnecting")
        return self._nc, self._js

    def _reader(self) -> StreamReader:
        nc, js = self._client()
        return StreamReader(nc, js, self.options.stream, self.options.timeout)

    # -- connection events -------------------------------------------------------------

    def _pick_server(self, servers: list[Server], info: dict[str, Any]) -> tuple[Server | None, float]:
        # Jittered waits, so a fleet of nodes does not reconnect in lockstep
        # after a NATS restart.
        wait = self.options.reconnect_wait
        return random.choice(servers) if servers else None, wait * random.uniform(0.5, 1.5)

    async def _on_error(self, exc: Exception) -> None:
        if isinstance(exc, nats.errors.SlowConsumerError):
            # The client dropped messages of this subscription: a gap.
            channel = self._channel_of(exc.subject)
            log.warning("NATS slow consumer, messages dropped", extra={"channel": channel})
            if channel is not None:
                self._listener.on_resync([channel])
            return
        self._last_error = exc
        if self._nc is None:
            return  # still in start(): its exception carries the cause
        held = self._error_log.allow(type(exc).__name__)
        if held is not None:
            log.warning(
                "NATS connection error",
                extra={"error": _describe(exc), "servers": self._where(), "suppressed_since_last": held},
            )

    async def _on_disconnected(self) -> None:
        if self._nc is not None:  # not a failed first connect, which start() reports
            log.warning("NATS disconnected", extra={"servers": self._where()})
        self._listener.on_availability(False)

    async def _on_reconnected(self) -> None:
        # Core subscriptions were re-sent before this callback, so a history
        # read now overlaps live delivery: anything published while we were
        # away is recovered from history.
        log.info("NATS reconnected")
        self._listener.on_availability(True)
        self._listener.on_resync(None)
        self._spawn_refresh()

    def _spawn_refresh(self) -> None:
        """Check, in the background, whether the stream was recreated."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = self._tasks.spawn(self._refresh_quietly(), "nats-stream-refresh")

    async def _refresh_quietly(self) -> None:
        try:
            with NATS.unavailable("stream check"):
                await self._ensure_stream()
        except BrokerError as exc:
            # The next ping, publish or read tries again.
            log.warning("NATS stream check failed", extra={"error": str(exc)})

    # -- the stream --------------------------------------------------------------------

    async def _ensure_stream(self) -> None:
        """Create the stream or bring its settings to ours; note its identity."""
        _, js = self._client()
        self._note_identity(stream_identity(await ensure_stream(js, self._stream)))

    def _note_identity(self, identity: str) -> None:
        if identity == self._identity:
            return
        previous, self._identity = self._identity, identity
        if previous is None:
            return
        # A new incarnation: every cached sequence belongs to the old one.
        log.warning("NATS stream was recreated; channels start a new epoch", extra={"stream": self.options.stream})
        self._max_seq = 0
        self._last_seq.clear()
        self._live_last.clear()
        self._listener.on_resync(None)

    def _epoch(self, channel: str) -> str:
        if self._identity is None:
            raise BrokerUnavailable("NATS stream identity unknown")
        return channel_epoch(self._identity, channel)

    def _subject(self, channel: str) -> str:
        return self._prefix + channel

    def _channel_of(self, live_subject: str) -> str | None:
        if live_subject.startswith(self._live_prefix):
            return live_subject[len(self._live_prefix):]
        return None

    def _remember_last(self, channel: str, seq: int) -> None:
        cache = self._last_seq
        cache[channel] = seq
        cache.move_to_end(channel)
        if len(cache) > _LAST_SEQ_CACHE:
            cache.popitem(last=False)

    def _see(self, seq: int) -> None:
        if seq > self._max_seq:
            self._max_seq = seq

    # -- publish -----------------------------------------------------------------------

    async def publish(self, channel: str, data: str, *, event: str | None = None) -> Publication:
        _, js = self._client()
        subject = self._subject(channel)
        payload = data.encode()
        # One publish per channel at a time from this node: concurrent ones
        # would only defeat each other's expected-last-sequence.
        async with self._publish_locks.hold(channel):
            for attempt in range(_PUBLISH_ATTEMPTS):
                try:
                    ack = await self._attempt(js, channel, subject, payload, event, attempt)
                except BrokerUnavailable:
                    # The outcome is unknown; learn the real last sequence next time.
                    self._last_seq.pop(channel, None)
                    raise
                if ack is None:
                    continue
                self._see(ack.seq)
                self._remember_last(channel, ack.seq)
                return Publication(
                    channel=channel,
                    epoch=self._epoch(channel),
                    offset=ack.seq,
                    data=data,
                    event=event,
                    time_ms=int(time.time() * 1000),
                )
        raise BrokerUnavailable(f"NATS publish to {channel!r} failed: the stream keeps disappearing")

    async def _attempt(
        self, js: JetStreamContext, channel: str, subject: str, payload: bytes, event: str | None, attempt: int
    ) -> PubAck | None:
        """One publish attempt: its acknowledgement, or None when it must be tried again.

        The last attempt goes without Fanline-Prev, so a publisher that keeps
        losing the race to others still gets through; readers then fall back
        to the retained-message rule.
        """
        verified = attempt < _PUBLISH_ATTEMPTS - 1
        prev = self._last_seq.get(channel, 0)
        floor = self._max_seq
        headers = {HEADER_PREV: str(prev), HEADER_EXPECTED_LAST: str(prev)} if verified else {}
        if event is not None:
            headers[HEADER_EVENT] = event
        with NATS.unavailable("publish"):
            try:
                ack = await js.publish(subject, payload, headers=headers or None)
            except nats.js.errors.NoStreamResponseError:
                # No stream listens on the subject: it was deleted.
                await self._ensure_stream()
                return None
            except nats.js.errors.APIError as exc:
                await self._lost_race(exc, channel, subject, prev, attempt)
                return None
            if ack.seq <= floor:
                # Acked below a sequence seen before we sent it.
                await self._ensure_stream()
            if verified and prev == 0:
                # The server checked that the subject had no message: this
                # publication started the channel's stream.
                self.stats.streams_created += 1
            return ack

    async def _lost_race(
        self, exc: nats.js.errors.APIError, channel: str, subject: str, prev: int, attempt: int
    ) -> None:
        """A conditional publish was refused: learn the subject's last sequence, or re-raise."""
        if exc.err_code == ERR_LAST_SUBJECT_SEQ_NOT_READY:
            # A replicated stream is still settling an earlier conditional
            # publish of this subject.
            await asyncio.sleep(0.01 * (attempt + 1))
            return
        if exc.err_code not in (ERR_WRONG_LAST_SEQUENCE, ERR_WRONG_LAST_SEQUENCE_CONSTANT):
            raise exc
        actual = _wrong_last(exc)
        if actual is None:
            last = await self._reader().last(subject)
            actual = (last.seq or 0) if last is not None else 0
        if actual < prev:
            # The channel went backwards: expired, purged, or the stream was
            # recreated.  Find out which.
            await self._ensure_stream()
        self._remember_last(channel, actual)

    # -- history -----------------------------------------------------------------------

    async def history(self, channel: str, since: int | None, limit: int) -> History:
        with NATS.unavailable("history read"):
            try:
                return await self._history(channel, since, limit)
            except nats.js.errors.NotFoundError as exc:
                if api_code(exc) != ERR_STREAM_NOT_FOUND:
                    raise
            await self._ensure_stream()
            return await self._history(channel, since, limit)

    async def _history(self, channel: str, since: int | None, limit: int) -> History:
        reader = self._reader()
        size, ttl = self.options.history_size, self.options.history_ttl
        subject, epoch = self._subject(channel), self._epoch(channel)
        history = await reader.history(channel, subject, epoch, since, limit, size=size, ttl=ttl)
        if history.top.offset == 0:
            self.stats.empty_reads += 1
        return history

    # -- live --------------------------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        nc, _ = self._client()
        if channel in self._subs:
            return
        with NATS.unavailable("subscribe"):
            sub = await nc.subscribe(
                self._live_prefix + channel,
                cb=self._on_live,
                pending_msgs_limit=65536,
                pending_bytes_limit=64 * 1024 * 1024,
            )
            try:
                # The server has the interest once the flush returns, so
                # every later publication is delivered.
                await nc.flush(timeout=max(1, math.ceil(self.options.timeout)))
            except BaseException:
                with NATS.ignored():
                    await sub.unsubscribe()
                raise
        self._subs[channel] = sub

    async def unsubscribe(self, channel: str) -> None:
        sub = self._subs.pop(channel, None)
        self._live_last.pop(channel, None)
        if sub is not None:
            with NATS.unavailable("unsubscribe"):
                await sub.unsubscribe()

    async def _on_live(self, msg: Msg) -> None:
        channel = self._channel_of(msg.subject)
        if channel is None or channel not in self._subs:
            return
        headers = msg.headers or {}
        if headers.get("Nats-Stream") != self.options.stream:
            return
        try:
            seq = int(headers["Nats-Sequence"])
            prev = int(headers["Nats-Last-Sequence"])
        except (KeyError, ValueError):
            log.warning("NATS live message without stream headers", extra={"channel": channel})
            self._listener.on_resync([channel])
            return
        last = self._live_last.get(channel)
        if last is not None:
            if seq <= last:
                # Sequences went backwards: the stream was recreated.  The
                # check resyncs every channel once it knows the new epoch.
                self._spawn_refresh()
                self._listener.on_resync([channel])
                return
            if prev != last:
                log.info("NATS live gap detected", extra={"channel": channel, "expected": last, "previous": prev})
                self._listener.on_resync([channel])
        self._live_last[channel] = seq
        self._see(seq)
        if seq > self._last_seq.get(channel, 0):
            self._remember_last(channel, seq)
        if self._identity is None:
            return
        time_ms = timestamp_ms(headers.get("Nats-Time-Stamp"))
        epoch = self._epoch(channel)
        self._listener.on_publication(
            stored_publication(channel, epoch, seq, msg.data, headers.get(HEADER_EVENT), time_ms)
        )

    # -- health ------------------------------------------------------------------------

    async def ping(self) -> None:
        """A JetStream round trip that also notices a deleted or altered stream."""
        with NATS.unavailable("ping"):
            await self._ensure_stream()

    def presence(self, settings: PresenceSettings) -> NatsPresence:
        return NatsPresence(
            settings,
            lambda: self._client()[1],
            stream=f"{self.options.stream}_PRESENCE",
            subject_prefix=f"{self.options.subject_prefix}-presence",
            replicas=self.options.replicas,
            storage=self.options.storage,
        )


def _wrong_last(exc: nats.js.errors.APIError) -> int | None:
    """The subject's actual last sequence, when the error says it (10071 does, 10164 does not)."""
    match = _WRONG_LAST.search(exc.description or "")
    return int(match.group(1)) if match else None


def from_url(url: str) -> NatsBroker:
    """``nats://host:4222?stream=FANLINE&subject_prefix=fanline&history_size=1000&history_ttl=600``.

    Also ``meta_ttl``, ``replicas``, ``storage`` (file|memory), ``live_prefix``,
    ``timeout``, ``connect_timeout``, ``reconnect_wait``.  Several servers:
    ``nats://a:4222,b:4222``.  ``tls://`` connects with TLS.
    """
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    servers = [
        urlunsplit((parts.scheme, f"{userinfo}@{host}" if userinfo else host, "", "", ""))
        for host in (hosts or "127.0.0.1:4222").split(",")
    ]
    return NatsBroker(servers, parse_options(url, NatsOptions))
