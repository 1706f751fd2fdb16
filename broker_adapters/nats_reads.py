"""History reads on NATS: one channel's messages, read back from the shared stream.

1. **Top**: the subject's last message, from the stream leader, so it is
   never behind; offset 0 when the channel has none.
2. **Range**: one batched direct get; a replica may answer it from behind
   the leader, so a batch that stops short of the top is completed from the
   leader one message at a time.
3. **Complete?** The first message after ``since`` directly follows it when
   its sequence is ``since + 1``, or when its verified ``Fanline-Prev`` is at
   most ``since`` (0 only for a reader that saw the channel empty); without
   that header, when the message at ``since`` is still this channel's.  A
   message older than ``history_ttl`` is expired, so the range has a hole.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg

from .foreign import stored_publication
from .nats_stream import ERR_NO_MESSAGE, NATS, api_code
from .types import History, Position, Publication

log = logging.getLogger("fanline.broker.nats")

HEADER_EVENT = "Fanline-Event"
HEADER_PREV = "Fanline-Prev"


def timestamp_ms(value: str | None) -> int:
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


@dataclass(frozen=True, slots=True)
class Stored:
    """One message as read from the stream."""

    seq: int
    data: bytes
    headers: dict[str, str]
    time_ms: int


@dataclass(frozen=True, slots=True)
class StreamReader:
    """Reads of one stream over one connection; built per read, holds nothing."""

    nc: Client
    js: JetStreamContext
    stream: str
    timeout: float

    async def history(
        self, channel: str, subject: str, epoch: str, since: int | None, limit: int, *, size: int, ttl: float
    ) -> History:
        """``Broker.history`` for the channel stored under ``subject``."""
        last = await self.last(subject)
        top_seq = (last.seq or 0) if last is not None else 0
        top = Position(epoch, top_seq)
        if since is None or since >= top_seq:
            return History(top=top, publications=(), complete=since is None or since == top_seq)
        if size == 0:
            return History(top=top, publications=(), complete=False)
        # One read more than the limit: expired messages count against it.
        messages = await self.read(subject, since, top_seq, max(limit, 0) + 1)
        if not messages:
            # Everything after ``since`` is gone although the top is above it.
            return History(top=top, publications=(), complete=False)
        complete = await self.follows(subject, messages[0], since)
        horizon_ms = int((time.time() - ttl) * 1000)
        publications: list[Publication] = []
        for message in messages:
            if message.time_ms < horizon_ms:
                complete = False  # logically expired, so the range has a hole
            elif len(publications) < limit:
                publications.append(
                    stored_publication(
                        channel, epoch, message.seq, message.data, message.headers.get(HEADER_EVENT), message.time_ms
                    )
                )
        return History(top=top, publications=publications, complete=complete)

    async def get(self, subject: str, after: int) -> RawStreamMsg | None:
        """The first message of ``subject`` with a sequence above ``after``."""
        try:
            return await self.js.get_msg(self.stream, seq=after + 1, subject=subject, next=True)
        except nats.js.errors.NotFoundError as exc:
            if api_code(exc) == ERR_NO_MESSAGE:
                return None
            raise

    async def last(self, subject: str) -> RawStreamMsg | None:
        try:
            return await self.js.get_last_msg(self.stream, subject)
        except nats.js.errors.NotFoundError as exc:
            if api_code(exc) == ERR_NO_MESSAGE:
                return None
            raise

    async def read(self, subject: str, since: int, top_seq: int, count: int) -> list[Stored]:
        """Up to ``count`` messages of ``subject`` after ``since``, not beyond ``top_seq``."""
        messages = [m for m in await self.read_batch(subject, since, count) if m.seq <= top_seq]
        cursor = messages[-1].seq if messages else since
        while len(messages) < count and cursor < top_seq:
            raw = await self.get(subject, cursor)
            if raw is None or raw.seq is None or raw.seq > top_seq:
                break
            cursor = raw.seq
            time_ms = int(raw.time.timestamp() * 1000) if raw.time is not None else 0
            messages.append(Stored(raw.seq, raw.data or b"", dict(raw.headers or {}), time_ms))
        return messages

    async def read_batch(self, subject: str, since: int, count: int) -> list[Stored]:
        """One batched direct get: up to ``count`` messages after ``since``, from any replica."""
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox)
        messages: list[Stored] = []
        try:
            request = {"seq": since + 1, "next_by_subj": subject, "batch": count}
            await self.nc.publish(f"$JS.API.DIRECT.GET.{self.stream}", json.dumps(request).encode(), reply=inbox)
            # ``count`` messages, then an end-of-batch status; bounded both ways.
            for _ in range(count + 1):
                msg = await sub.next_msg(timeout=self.timeout)
                headers = msg.headers or {}
                status = headers.get("Status")
                if status is not None:
                    if status not in ("204", "404"):
                        log.info("NATS batched read refused", extra={"status": status})
                    break
                seq = int(headers["Nats-Sequence"])
                messages.append(Stored(seq, msg.data, headers, timestamp_ms(headers.get("Nats-Time-Stamp"))))
        finally:
            with NATS.ignored():
                await sub.unsubscribe()
        return messages

    async def follows(self, subject: str, message: Stored, since: int) -> bool:
        """Whether ``message``, the first retained one after ``since``, directly follows it."""
        if message.seq == since + 1:
            return True
        raw_prev = message.headers.get(HEADER_PREV)
        prev = int(raw_prev) if raw_prev is not None and raw_prev.isdigit() else None
        if prev is None:
            # No verified previous sequence: if the message at ``since`` is
            # still this channel's, nothing after it was removed (every limit
            # removes oldest first).
            return since > 0 and await self.is_retained(subject, since)
        if prev == 0:
            # Nothing of this channel was retained when it was published:
            # a reader at 0 saw an empty channel, any other reader's message
            # is gone and so may be others after it.
            return since == 0
        return prev <= since

    async def is_retained(self, subject: str, seq: int) -> bool:
        message = await self.get(subject, seq - 1)
        return message is not None and message.seq == seq
