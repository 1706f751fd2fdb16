"""The chaos checker: every client's stream against the acknowledged publications.

Pure functions only: no sockets, no clock, no randomness. The runner records
two things while the system is under fire, and this module judges them
afterwards:

- every **acknowledged publication**: its channel, the event id the node or
  the broker answered, and the unique sequence number the publisher put in
  its payload;
- for every client and channel, the **log** of what the client processed, in
  order: the ``subscribed`` answer (with the ``since`` it sent), every
  ``event`` (its id and the payload's sequence), every ``reset``, and the end
  of each connection.

The checker replays each log with the client's stored position, exactly as
docs/protocol.md tells a client to keep it ("the id of the latest
``subscribed``, ``event`` or ``reset``"), and classifies every move of that
position:

- a move by an ``event`` over acknowledged publications the client never got
  is a **silent loss** (also across epochs: an event of another epoch with no
  reset before it is a splice);
- a move by a ``reset`` is a **gap covered by a reset** (the client knows);
- a move by a ``subscribed`` with ``recovered: false`` is covered only once
  the ``reset`` arrives; a connection that ends in between leaves the client
  past a gap it does not know of: the **reset window**, counted as silent;
- an event whose payload the client already processed is a **duplicate**; an
  event older than the stored position of the same epoch is a **reorder**;
- one event id naming two different payloads is **id reuse**.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Kind(StrEnum):
    """What a client processed, one log entry each."""

    START = "start"  # the client's stored position before its first subscribe (a resume from the past)
    SUBSCRIBED = "subscribed"
    EVENT = "event"
    RESET = "reset"
    END = "end"  # the connection ended (closed, cut, or the client died)


@dataclass(frozen=True, slots=True)
class Entry:
    kind: Kind
    # The client's stored position for this channel after processing the entry
    # (subscribed, reset, start); for an event, the event's own id.
    id: str | None = None
    seq: int | None = None  # events: the payload's sequence number (None if the payload carried none)
    recovered: bool | None = None  # subscribed: as answered; None when the subscribe had no since
    since: str | None = None  # subscribed: the since the client sent
    replayed: int | None = None  # subscribed: how many missed events it announced
    reason: str | None = None  # reset: the reason
    node: str | None = None  # subscribed: which node answered (for reading a report, not for the checks)


@dataclass(frozen=True, slots=True)
class Ack:
    """A publication whose publish call returned an id."""

    channel: str
    id: str
    seq: int


@dataclass
class ChannelLog:
    client: str
    transport: str  # "ws" or "sse"
    channel: str
    entries: list[Entry] = field(default_factory=list)
    # A persistent client stays to the end of the run, so it must end caught up.
    persistent: bool = True


def parse_id(event_id: str) -> tuple[str, int]:
    epoch, _, offset = event_id.rpartition("-")
    return epoch, int(offset)


class AckIndex:
    """Acknowledged offsets per (channel, epoch), sorted, for counting what lies between two positions."""

    def __init__(self, acks: Iterable[Ack]) -> None:
        offsets: dict[tuple[str, str], list[int]] = defaultdict(list)
        last_epoch: dict[str, tuple[int, str]] = {}
        for order, ack in enumerate(acks):
            epoch, offset = parse_id(ack.id)
            offsets[(ack.channel, epoch)].append(offset)
            last_epoch[ack.channel] = (order, epoch)
        self._offsets = {key: sorted(set(values)) for key, values in offsets.items()}
        self.final_epoch = {channel: epoch for channel, (_, epoch) in last_epoch.items()}

    def count(self, channel: str, epoch: str, low: int, high: int | None) -> int:
        """Acknowledged offsets in (low, high) of one epoch; ``high=None`` means no upper bound."""
        values = self._offsets.get((channel, epoch), [])
        start = bisect.bisect_right(values, low)
        end = len(values) if high is None else bisect.bisect_left(values, high)
        return max(0, end - start)

    def between(self, channel: str, origin: str | None, target: str, *, include_target: bool) -> int:
        """Acknowledged publications a client skips when its position moves from ``origin`` to ``target``."""
        if origin is None:
            return 0
        from_epoch, from_offset = parse_id(origin)
        to_epoch, to_offset = parse_id(target)
        upper = to_offset + 1 if include_target else to_offset
        if from_epoch == to_epoch:
            return self.count(channel, to_epoch, from_offset, upper)
        # Another epoch: everything after the origin in the old stream, and
        # everything up to the target in the new one.
        return self.count(channel, from_epoch, from_offset, None) + self.count(channel, to_epoch, -1, upper)


@dataclass
class Counts:
    """Figures of one or more logs; the first five are failures."""

    silent_losses: int = 0  # acknowledged publications skipped without a reset
    duplicates: int = 0
    reorders: int = 0
    id_reuse: int = 0
    undelivered_at_end: int = 0  # a persistent client that ended behind the last acknowledged publication
    silent_gaps: int = 0  # events that arrived after a silent gap (each skipping one or more publications)
    reset_window_cuts: int = 0  # connections that ended between a position-moving subscribed and its reset
    events_before_reset: int = 0  # events delivered after a recovered:false subscribed, before its reset
    unannounced_epoch_changes: int = 0  # an event of another epoch with no reset before it
    subscribed_id_mismatch: int = 0  # recovered:true whose id is not the since sent
    delivered: int = 0  # events processed
    resumes: int = 0  # subscribes with since
    recovered: int = 0
    replayed: int = 0
    gaps_covered_by_reset: int = 0  # resets that skipped at least one acknowledged publication
    publications_covered_by_reset: int = 0
    resets: dict[str, int] = field(default_factory=dict)
    connections: int = 0

    FAILURES = ("silent_losses", "duplicates", "reorders", "id_reuse", "undelivered_at_end")

    def add(self, other: Counts) -> None:
        for name, value in vars(other).items():
            if isinstance(value, int):
                setattr(self, name, getattr(self, name) + value)
        for reason, count in other.resets.items():
            self.resets[reason] = self.resets.get(reason, 0) + count

    def failed(self) -> bool:
        return any(getattr(self, name) for name in self.FAILURES)

    def to_json(self) -> dict[str, Any]:
        return {name: value for name, value in vars(self).items()}


@dataclass(frozen=True)
class Finding:
    """One violation, with enough context to find it in the run's logs."""

    kind: str
    client: str
    transport: str
    channel: str
    detail: str


@dataclass
class StreamResult:
    counts: Counts
    findings: list[Finding]
    final_id: str | None


def check_log(log: ChannelLog, acks: AckIndex) -> StreamResult:
    """Replay one client's log of one channel with the stored position a client following the docs keeps."""
    counts = Counts()
    findings: list[Finding] = []

    def finding(kind: str, detail: str) -> None:
        findings.append(Finding(kind, log.client, log.transport, log.channel, detail))

    position: str | None = None
    # A subscribed with recovered:false that moved the position: (where it was, where it went).
    pending: tuple[str | None, str] | None = None
    seen: set[int] = set()
    for index, entry in enumerate(log.entries):
        if entry.kind is Kind.START:
            position = entry.id
        elif entry.kind is Kind.SUBSCRIBED:
            assert entry.id is not None
            if entry.recovered is None:
                position = entry.id
                continue
            counts.resumes += 1
            if entry.recovered:
                counts.recovered += 1
                counts.replayed += entry.replayed or 0
                if entry.id != entry.since:
                    counts.subscribed_id_mismatch += 1
                    finding("subscribed_id_mismatch", f"#{index}: recovered with id {entry.id}, since {entry.since}")
                position = entry.id
            else:
                if entry.id != position:
                    pending = (position, entry.id)
                position = entry.id
        elif entry.kind is Kind.RESET:
            assert entry.id is not None
            origin = pending[0] if pending is not None else position
            skipped = acks.between(log.channel, origin, entry.id, include_target=True)
            if skipped:
                counts.gaps_covered_by_reset += 1
                counts.publications_covered_by_reset += skipped
            reason = entry.reason or "?"
            counts.resets[reason] = counts.resets.get(reason, 0) + 1
            position = entry.id
            pending = None
        elif entry.kind is Kind.EVENT:
            assert entry.id is not None
            counts.delivered += 1
            if entry.seq is not None and entry.seq in seen:
                counts.duplicates += 1
                finding("duplicate", f"#{index}: {entry.id} (seq {entry.seq}) again, stored position {position}")
                position = entry.id
                continue
            if entry.seq is not None:
                seen.add(entry.seq)
            if pending is not None:
                counts.events_before_reset += 1
            if position is not None:
                old_epoch, old_offset = parse_id(position)
                epoch, offset = parse_id(entry.id)
                if epoch == old_epoch and offset <= old_offset:
                    counts.reorders += 1
                    finding("reorder", f"#{index}: {entry.id} after stored position {position}")
                else:
                    if epoch != old_epoch:
                        counts.unannounced_epoch_changes += 1
                    lost = acks.between(log.channel, position, entry.id, include_target=False)
                    if lost:
                        counts.silent_losses += lost
                        counts.silent_gaps += 1
                        finding("silent_loss", f"#{index}: {lost} acknowledged publication(s) between {position} and {entry.id}")
            position = entry.id
        elif entry.kind is Kind.END:
            counts.connections += 1
            if pending is not None:
                counts.reset_window_cuts += 1
                lost = acks.between(log.channel, pending[0], pending[1], include_target=True)
                counts.silent_losses += lost
                finding(
                    "reset_window",
                    f"#{index}: connection ended after subscribed moved {pending[0]} to {pending[1]} "
                    f"without its reset ({lost} acknowledged publication(s) skipped)",
                )
                pending = None
    if log.persistent and position is not None:
        final_epoch = acks.final_epoch.get(log.channel)
        if final_epoch is not None:
            epoch, offset = parse_id(position)
            behind = acks.count(log.channel, epoch, offset, None) if epoch == final_epoch else acks.count(
                log.channel, final_epoch, -1, None
            )
            if behind:
                counts.undelivered_at_end += behind
                finding("undelivered_at_end", f"ended at {position}, {behind} acknowledged publication(s) after it")
    return StreamResult(counts, findings, position)


def id_reuse(acks: Iterable[Ack], logs: Iterable[ChannelLog]) -> list[tuple[str, str, list[int]]]:
    """Event ids that name more than one payload: (channel, id, sequences)."""
    named: dict[tuple[str, str], set[int]] = defaultdict(set)
    for ack in acks:
        named[(ack.channel, ack.id)].add(ack.seq)
    for log in logs:
        for entry in log.entries:
            if entry.kind is Kind.EVENT and entry.seq is not None and entry.id is not None:
                named[(log.channel, entry.id)].add(entry.seq)
    return [(channel, event_id, sorted(seqs)) for (channel, event_id), seqs in named.items() if len(seqs) > 1]


class Stage(StrEnum):
    SUBSCRIBE = "subscribe"  # an error answering a subscribe on a connection the node accepted
    HANDSHAKE = "handshake"  # a 503 instead of the WebSocket upgrade or the SSE stream


@dataclass(frozen=True)
class Refusal:
    """A subscribe the node refused with ``broker_unavailable``, at a run-relative time."""

    at: float
    client: str
    transport: str
    channel: str
    stage: Stage = Stage.SUBSCRIBE


def refused_while_healthy(refusals: Iterable[Refusal], outages: Sequence[tuple[float, float]], grace: float) -> int:
    """Subscribes refused on accepted connections outside every broker outage (widened by ``grace`` seconds).

    A handshake refused with 503 is the node saying "not now" before it takes
    the client on (at start-up, or while its broker is away), which a client
    retries after Retry-After; a subscribe refused on a connection it
    accepted is what left channels silently empty (issue 10, bug 3).
    """
    return sum(
        1
        for refusal in refusals
        if refusal.stage is Stage.SUBSCRIBE and not any(start <= refusal.at <= end + grace for start, end in outages)
    )


@dataclass
class Verdict:
    total: Counts
    by_transport: dict[str, Counts]
    findings: list[Finding]
    refused_while_healthy: int
    refused_total: int
    reused_ids: list[tuple[str, str, list[int]]]
    acknowledged: int

    def failed(self) -> bool:
        return self.total.failed()


def check(
    acks: Sequence[Ack],
    logs: Sequence[ChannelLog],
    refusals: Sequence[Refusal] = (),
    outages: Sequence[tuple[float, float]] = (),
    grace: float = 10.0,
) -> Verdict:
    """Judge a whole run."""
    index = AckIndex(acks)
    total = Counts()
    by_transport: dict[str, Counts] = {}
    findings: list[Finding] = []
    for log in logs:
        result = check_log(log, index)
        total.add(result.counts)
        by_transport.setdefault(log.transport, Counts()).add(result.counts)
        findings.extend(result.findings)
    reused = id_reuse(acks, logs)
    total.id_reuse = len(reused)
    for channel, event_id, seqs in reused:
        findings.append(Finding("id_reuse", "-", "-", channel, f"{event_id} names sequences {seqs}"))
    return Verdict(
        total=total,
        by_transport=by_transport,
        findings=findings,
        refused_while_healthy=refused_while_healthy(refusals, outages, grace),
        refused_total=len(refusals),
        reused_ids=reused,
        acknowledged=len(acks),
    )
