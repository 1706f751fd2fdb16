"""NATS JetStream adapter: one stream holds every channel's history.

Layout (docs/brokers/nats.md has the full contract for other languages):

- ONE stream (``stream``, default ``FANLINE``) with subjects ``<prefix>.>``;
  channel ``news.eu`` is subject ``fanline.news.eu``.  Per-subject limits
  (``max_msgs_per_subject``) bound each channel's history.
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
  History since S is complete when the first message after S has
  ``Fanline-Prev <= S``: nothing of this channel was between them.  A
  message without it (a foreign publisher, or one that lost the race to
  concurrent publishers several times) falls back to a rule that needs no
  header: the range is complete if the message at S is still retained.
- ``history_ttl`` is applied when reading (messages older than it count as
  expired), while the stream keeps messages physically for ``meta_ttl``, so
  the ``Fanline-Prev`` chain still proves what an expired range contained.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import random
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Coroutine, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client, Server
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RawStreamMsg, RePublish, StorageType, StreamConfig, StreamInfo

from .base import Broker, BrokerError, BrokerListener, BrokerUnavailable, NullListener
from .tasks import TaskSet
from .types import (
    History,
    InvalidEventType,
    Position,
    Publication,
    normalize_data,
    validate_event_type,
)

log = logging.getLogger("fanline.broker.nats")

HEADER_EVENT = "Fanline-Event"
HEADER_PREV = "Fanline-Prev"
HEADER_EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"

# JetStream API error codes (nats-server errors.json).
ERR_NO_MESSAGE = 10037
ERR_STREAM_NAME_IN_USE = 10058
ERR_STREAM_NOT_FOUND = 10059
ERR_WRONG_LAST_SEQUENCE = 10071
# Replicated streams: a conditional publish of the same subject in flight.
ERR_LAST_SUBJECT_SEQ_NOT_READY = 10163
ERR_WRONG_LAST_SEQUENCE_CONSTANT = 10164

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


# Broker URL query options and their types; docs/brokers/nats.md has a row for each.
URL_OPTIONS: Mapping[str, type] = MappingProxyType(
    {
        "stream": str,
        "subject_prefix": str,
        "live_prefix": str,
        "history_size": int,
        "history_ttl": float,
        "meta_ttl": float,
        "replicas": int,
        "storage": str,
        "timeout": float,
        "connect_timeout": float,
        "reconnect_wait": float,
    }
)


@dataclass(frozen=True, slots=True)
class NatsOptions:
    servers: list[str]
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
        if not _STREAM_NAME.match(self.stream):
            raise ValueError("stream must be letters, digits, _ or -")
        for name in ("subject_prefix", "live_prefix"):
            value = getattr(self, name)
            if value and not _PREFIX.match(value):
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
    def retention(self) -> float:
        # Physical retention: at least the logical history_ttl.
        return max(self.meta_ttl, self.history_ttl)


@contextmanager
def _unavailable(what: str) -> Iterator[None]:
    """Every client-library failure surfaces as BrokerUnavailable."""
    try:
        yield
    except BrokerError:
        raise
    except (nats.errors.Error, TimeoutError, OSError) as exc:
        raise BrokerUnavailable(f"NATS {what} failed: {type(exc).__name__}: {exc}") from exc


def _api_code(exc: BaseException) -> int | None:
    if isinstance(exc, nats.js.errors.APIError):
        return exc.err_code
    return None


def _timestamp_ms(value: str | None) -> int:
    """``Nats-Time-Stamp`` ("2026-01-02T03:04:05.123456789Z") in ms since the Unix epoch."""
    if not value:
        return 0
    try:
        # fromisoformat in 3.11 rejects nanoseconds, so split them off.
        head, _, fraction = value.rstrip("Z").partition(".")
        seconds = datetime.fromisoformat(head).replace(tzinfo=UTC).timestamp()
        return int(seconds) * 1000 + int((fraction + "000")[:3])
    except ValueError:
        return 0


def _event(headers: dict[str, str]) -> str | None:
    # A foreign publisher's bad event type must not become a frame the
    # transports cannot carry or a reserved control event; the data still
    # goes through so the stream has no hole.
    try:
        return validate_event_type(headers.get(HEADER_EVENT))
    except InvalidEventType:
        return None


@dataclass(frozen=True, slots=True)
class _Stored:
    """One message as read from the stream."""

    seq: int
    data: bytes
    headers: dict[str, str]
    time_ms: int


@dataclass(slots=True)
class _LockEntry:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class _KeyedLocks:
    """One asyncio.Lock per key, forgotten when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._entries: dict[str, _LockEntry] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _LockEntry()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._entries[key]


class NatsBroker(Broker):
    kind = "nats"
    contiguous_offsets = False

    def __init__(self, options: NatsOptions) -> None:
        self.options = options
        self._prefix = options.subject_prefix + "."
        self._live_prefix = options.live + "."
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
        self._publish_locks = _KeyedLocks()
        self._tasks = TaskSet()
        self._refreshing: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------

    async def start(self, listener: BrokerListener) -> None:
        if self._nc is not None:
            return
        self._listener = listener
        nc = Client()
        options = self.options
        try:
            async with asyncio.timeout(options.connect_timeout * 2):
                await nc.connect(
                    servers=options.servers,
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
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            await self._close_client(nc)
            raise BrokerUnavailable(f"cannot connect to NATS at {self._where()}: {type(exc).__name__}") from exc
        self._nc = nc
        self._js = nc.jetstream(timeout=options.timeout)
        try:
            with _unavailable("stream setup"):
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
        try:
            await nc.close()
        except (TimeoutError, nats.errors.Error, OSError):
            pass

    def _where(self) -> str:
        return ", ".join(urlsplit(s).hostname or "?" for s in self.options.servers)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        return self._tasks.spawn(coro, name)

    def _client(self) -> tuple[Client, JetStreamContext]:
        if self._nc is None or self._js is None:
            raise BrokerUnavailable("NATS broker is not started")
        if not self._nc.is_connected:
            # Fail now rather than let the client buffer the request until it
            # times out: the caller learns at once, and a buffered publish
            # would be sent later with an outcome nobody hears about.
            raise BrokerUnavailable("NATS connection lost; reconnecting")
        return self._nc, self._js

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
        log.warning("NATS connection error", extra={"error": f"{type(exc).__name__}: {exc}"})

    async def _on_disconnected(self) -> None:
        log.warning("NATS disconnected")
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
            self._refreshing = self._spawn(self._refresh_quietly(), "nats-stream-refresh")

    async def _refresh_quietly(self) -> None:
        try:
            with _unavailable("stream check"):
                await self._ensure_stream()
        except BrokerError as exc:
            # The next ping, publish or read tries again.
            log.warning("NATS stream check failed", extra={"error": str(exc)})

    # -- the stream --------------------------------------------------------------------

    def _stream_config(self) -> StreamConfig:
        options = self.options
        return StreamConfig(
            name=options.stream,
            description="Fanline channel history (managed by the Fanline NATS adapter)",
            subjects=[self._prefix + ">"],
            # A history of 0 still keeps the last message, which carries the
            # channel's top; reads then return no publications.
            max_msgs_per_subject=max(1, options.history_size),
            max_age=options.retention,
            discard=DiscardPolicy.OLD,
            storage=StorageType.FILE if options.storage == "file" else StorageType.MEMORY,
            num_replicas=options.replicas,
            republish=RePublish(src=self._prefix + ">", dest=self._live_prefix + ">"),
            # Batched history reads (DIRECT.GET with "batch").
            allow_direct=True,
        )

    @staticmethod
    def _drift(have: StreamConfig, want: StreamConfig) -> list[str]:
        differences = []
        if sorted(have.subjects or []) != sorted(want.subjects or []):
            differences.append("subjects")
        if have.max_msgs_per_subject != want.max_msgs_per_subject:
            differences.append("max_msgs_per_subject")
        if abs((have.max_age or 0.0) - (want.max_age or 0.0)) > 0.001:
            differences.append("max_age")
        if have.num_replicas != want.num_replicas:
            differences.append("num_replicas")
        republish = have.republish
        assert want.republish is not None
        if republish is None or (republish.src, republish.dest) != (want.republish.src, want.republish.dest):
            differences.append("republish")
        if bool(have.allow_direct) != bool(want.allow_direct):
            differences.append("allow_direct")
        if have.discard != want.discard:
            differences.append("discard")
        return differences

    async def _ensure_stream(self) -> StreamInfo:
        """Create the stream or bring its limits to ours; note its identity."""
        _, js = self._client()
        want = self._stream_config()
        name = self.options.stream
        try:
            info = await js.stream_info(name)
        except nats.js.errors.NotFoundError as exc:
            if _api_code(exc) not in (ERR_STREAM_NOT_FOUND, None):
                raise
            try:
                info = await js.add_stream(want)
                log.info("NATS stream created", extra={"stream": name})
            except nats.js.errors.BadRequestError as exc2:
                if _api_code(exc2) != ERR_STREAM_NAME_IN_USE:
                    raise
                info = await js.stream_info(name)  # another node created it first
        drift = self._drift(info.config, want)
        if drift:
            log.info("NATS stream config updated", extra={"stream": name, "fields": drift})
            try:
                info = await js.update_stream(want)
            except nats.js.errors.APIError as exc:
                raise BrokerError(f"cannot update NATS stream {name} ({', '.join(drift)}): {exc.description}") from exc
        self._note_identity(info)
        return info

    def _note_identity(self, info: StreamInfo) -> None:
        created = info.created.isoformat() if info.created is not None else ""
        identity = f"{info.config.name}:{created}"
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
        digest = hashlib.blake2b(f"{self._identity}\n{channel}".encode(), digest_size=8)
        return digest.hexdigest()

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
                # The last attempt goes without Fanline-Prev, so a publisher
                # that keeps losing the race to others still gets through;
                # readers then fall back to the retained-message rule.
                verified = attempt < _PUBLISH_ATTEMPTS - 1
                prev = self._last_seq.get(channel, 0)
                floor = self._max_seq
                headers = {HEADER_PREV: str(prev), HEADER_EXPECTED_LAST: str(prev)} if verified else {}
                if event is not None:
                    headers[HEADER_EVENT] = event
                try:
                    with _unavailable("publish"):
                        try:
                            ack = await js.publish(subject, payload, headers=headers or None)
                        except nats.js.errors.NoStreamResponseError:
                            # No stream listens on the subject: it was deleted.
                            await self._ensure_stream()
                            continue
                        except nats.js.errors.APIError as exc:
                            if exc.err_code == ERR_LAST_SUBJECT_SEQ_NOT_READY:
                                # A replicated stream is still settling an
                                # earlier conditional publish of this subject.
                                await asyncio.sleep(0.01 * (attempt + 1))
                                continue
                            if exc.err_code not in (ERR_WRONG_LAST_SEQUENCE, ERR_WRONG_LAST_SEQUENCE_CONSTANT):
                                raise
                            actual = self._wrong_last(exc)
                            if actual is None:
                                last = await self._last(subject)
                                actual = (last.seq or 0) if last is not None else 0
                            if actual < prev:
                                # The channel went backwards: expired, purged,
                                # or the stream was recreated.  Find out which.
                                await self._ensure_stream()
                            self._remember_last(channel, actual)
                            continue
                        if ack.seq <= floor:
                            # Acked below a sequence seen before we sent it.
                            await self._ensure_stream()
                except BrokerUnavailable:
                    # The outcome is unknown; learn the real last sequence next time.
                    self._last_seq.pop(channel, None)
                    raise
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

    @staticmethod
    def _wrong_last(exc: nats.js.errors.APIError) -> int | None:
        """The subject's actual last sequence, when the error says it (10071 does, 10164 does not)."""
        match = _WRONG_LAST.search(exc.description or "")
        return int(match.group(1)) if match else None

    # -- history -----------------------------------------------------------------------

    async def history(self, channel: str, since: int | None, limit: int) -> History:
        with _unavailable("history read"):
            try:
                return await self._history(channel, since, limit)
            except nats.js.errors.NotFoundError as exc:
                if _api_code(exc) != ERR_STREAM_NOT_FOUND:
                    raise
            await self._ensure_stream()
            return await self._history(channel, since, limit)

    async def _get(self, subject: str, after: int) -> RawStreamMsg | None:
        """The first message of ``subject`` with a sequence above ``after``."""
        _, js = self._client()
        try:
            return await js.get_msg(self.options.stream, seq=after + 1, subject=subject, next=True)
        except nats.js.errors.NotFoundError as exc:
            if _api_code(exc) == ERR_NO_MESSAGE:
                return None
            raise

    async def _last(self, subject: str) -> RawStreamMsg | None:
        _, js = self._client()
        try:
            return await js.get_last_msg(self.options.stream, subject)
        except nats.js.errors.NotFoundError as exc:
            if _api_code(exc) == ERR_NO_MESSAGE:
                return None
            raise

    async def _history(self, channel: str, since: int | None, limit: int) -> History:
        subject = self._subject(channel)
        # The top comes from the stream leader, so it is never behind.
        last = await self._last(subject)
        top_seq = (last.seq or 0) if last is not None else 0
        top = Position(self._epoch(channel), top_seq)
        if since is None or since >= top_seq:
            return History(top=top, publications=(), complete=since is None or since == top_seq)
        if self.options.history_size == 0:
            return History(top=top, publications=(), complete=False)
        # One read more than the limit: expired messages count against it.
        messages = await self._read(subject, since, top_seq, max(limit, 0) + 1)
        if not messages:
            # Everything after ``since`` is gone although the top is above it.
            return History(top=top, publications=(), complete=False)
        complete = await self._follows(subject, messages[0], since)
        horizon_ms = int((time.time() - self.options.history_ttl) * 1000)
        publications: list[Publication] = []
        for message in messages:
            if message.time_ms < horizon_ms:
                complete = False  # logically expired, so the range has a hole
            elif len(publications) < limit:
                publications.append(
                    Publication(
                        channel=channel,
                        epoch=top.epoch,
                        offset=message.seq,
                        data=normalize_data(message.data),
                        event=_event(message.headers),
                        time_ms=message.time_ms,
                    )
                )
        return History(top=top, publications=publications, complete=complete)

    async def _read(self, subject: str, since: int, top_seq: int, count: int) -> list[_Stored]:
        """Up to ``count`` messages of ``subject`` after ``since``, not beyond ``top_seq``.

        One batched direct get does the bulk.  A replica may answer it from
        behind the leader; a batch that stops short of the leader's top is
        then completed from the leader, one message at a time.
        """
        messages = await self._read_batch(subject, since, count)
        messages = [m for m in messages if m.seq <= top_seq]
        cursor = messages[-1].seq if messages else since
        while len(messages) < count and cursor < top_seq:
            raw = await self._get(subject, cursor)
            if raw is None or raw.seq is None or raw.seq > top_seq:
                break
            cursor = raw.seq
            time_ms = int(raw.time.timestamp() * 1000) if raw.time is not None else 0
            messages.append(_Stored(raw.seq, raw.data or b"", dict(raw.headers or {}), time_ms))
        return messages

    async def _read_batch(self, subject: str, since: int, count: int) -> list[_Stored]:
        nc, _ = self._client()
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        messages: list[_Stored] = []
        try:
            request = {"seq": since + 1, "next_by_subj": subject, "batch": count}
            await nc.publish(
                f"$JS.API.DIRECT.GET.{self.options.stream}", json.dumps(request).encode(), reply=inbox
            )
            # ``count`` messages, then an end-of-batch status; bounded both ways.
            for _ in range(count + 1):
                msg = await sub.next_msg(timeout=self.options.timeout)
                headers = msg.headers or {}
                status = headers.get("Status")
                if status is not None:
                    if status not in ("204", "404"):
                        log.info("NATS batched read refused", extra={"status": status})
                    break
                messages.append(
                    _Stored(
                        seq=int(headers["Nats-Sequence"]),
                        data=msg.data,
                        headers=headers,
                        time_ms=_timestamp_ms(headers.get("Nats-Time-Stamp")),
                    )
                )
        finally:
            await self._quiet_unsubscribe(sub)
        return messages

    async def _follows(self, subject: str, message: _Stored, since: int) -> bool:
        """Whether ``message``, the first retained one after ``since``, directly follows it."""
        if message.seq == since + 1:
            return True
        raw_prev = message.headers.get(HEADER_PREV)
        prev = int(raw_prev) if raw_prev is not None and raw_prev.isdigit() else None
        if prev is None:
            # No verified previous sequence: if the message at ``since`` is
            # still this channel's, nothing after it was removed (every limit
            # removes oldest first).
            return since > 0 and await self._is_retained(subject, since)
        if prev == 0:
            # Nothing of this channel was retained when it was published:
            # a reader at 0 saw an empty channel, any other reader's message
            # is gone and so may be others after it.
            return since == 0
        return prev <= since

    async def _is_retained(self, subject: str, seq: int) -> bool:
        message = await self._get(subject, seq - 1)
        return message is not None and message.seq == seq

    # -- live --------------------------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        nc, _ = self._client()
        if channel in self._subs:
            return
        with _unavailable("subscribe"):
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
                await self._quiet_unsubscribe(sub)
                raise
        self._subs[channel] = sub

    async def unsubscribe(self, channel: str) -> None:
        sub = self._subs.pop(channel, None)
        self._live_last.pop(channel, None)
        if sub is not None:
            with _unavailable("unsubscribe"):
                await sub.unsubscribe()

    @staticmethod
    async def _quiet_unsubscribe(sub: Subscription) -> None:
        try:
            await sub.unsubscribe()
        except (nats.errors.Error, OSError):
            pass

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
        self._listener.on_publication(
            Publication(
                channel=channel,
                epoch=self._epoch(channel),
                offset=seq,
                data=normalize_data(msg.data),
                event=_event(headers),
                time_ms=_timestamp_ms(headers.get("Nats-Time-Stamp")),
            )
        )

    # -- health ------------------------------------------------------------------------

    async def ping(self) -> None:
        """A JetStream round trip that also notices a deleted or altered stream."""
        with _unavailable("ping"):
            await self._ensure_stream()


def from_url(url: str) -> NatsBroker:
    """``nats://host:4222?stream=FANLINE&subject_prefix=fanline&history_size=1000&history_ttl=600``.

    Also ``meta_ttl``, ``replicas``, ``storage`` (file|memory), ``live_prefix``,
    ``timeout``, ``connect_timeout``, ``reconnect_wait``.  Several servers:
    ``nats://a:4222,b:4222``.  ``tls://`` connects with TLS.
    """
    from . import UnknownBrokerURL, url_options

    options = url_options(url, dict(URL_OPTIONS))
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    servers = [
        urlunsplit((parts.scheme, f"{userinfo}@{host}" if userinfo else host, "", "", ""))
        for host in (hosts or "127.0.0.1:4222").split(",")
    ]
    try:
        return NatsBroker(NatsOptions(servers=servers, **options))  # type: ignore[arg-type]
    except ValueError as exc:
        raise UnknownBrokerURL(f"bad NATS broker URL: {exc}") from None
