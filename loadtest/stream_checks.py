"""Per-channel stream checks and raw latency histograms for the Locust users.

No gevent and no Locust here, so the logic is testable on its own and shared
by the WebSocket and SSE users.

A :class:`StreamTracker` follows one connection's position in each channel
(the ``epoch-offset`` event id) and classifies every event: in order, a gap
(an offset skipped on a broker whose offsets are contiguous), a duplicate (an
offset repeated or going backwards), or a reset (announced by the server).

A :class:`LatencyHistogram` keeps every publish-to-receive latency in fixed
buckets (0.1 ms below 100 ms, 1 ms below 10 s, 100 ms above), because Locust
rounds response times above 100 ms to two significant digits.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any


class StreamProblem(Exception):
    """Fired to Locust as the exception of a failed ``receive``."""


class Gap(StreamProblem):
    pass


class Duplicate(StreamProblem):
    pass


class Reset(StreamProblem):
    pass


def parse_id(event_id: str) -> tuple[str, int]:
    epoch, _, offset = event_id.rpartition("-")
    return epoch, int(offset)


@dataclass
class StreamTracker:
    """Last position per channel of one connection; ``contiguous`` is False for brokers whose offsets skip."""

    contiguous: bool = True
    last: dict[str, tuple[str, int]] = field(default_factory=dict)

    def start(self, channel: str, event_id: str | None) -> None:
        """The subscription starts after ``event_id`` (from the subscribed reply)."""
        if event_id:
            self.last[channel] = parse_id(event_id)

    def event(self, channel: str, event_id: str) -> StreamProblem | None:
        """Record an event; return the problem it reveals, if any."""
        epoch, offset = parse_id(event_id)
        previous = self.last.get(channel)
        if previous is not None and previous[0] == epoch and offset <= previous[1]:
            # Keep the higher position: a repeat must not rewind the check.
            return Duplicate(f"{channel}: {event_id} after {previous[0]}-{previous[1]}")
        self.last[channel] = (epoch, offset)
        if previous is None:
            return None
        if previous[0] != epoch:
            return Reset(f"{channel}: epoch changed from {previous[0]} to {epoch} without a reset")
        if self.contiguous and offset != previous[1] + 1:
            return Gap(f"{channel}: expected offset {previous[1] + 1}, got {offset}")
        return None

    def reset(self, channel: str, event_id: str, reason: str) -> StreamProblem:
        self.last[channel] = parse_id(event_id)
        return Reset(f"{channel}: reset to {event_id} ({reason})")

    def resume_ids(self) -> dict[str, str]:
        return {channel: f"{epoch}-{offset}" for channel, (epoch, offset) in self.last.items()}


def _bucket(ms: float) -> float:
    if ms < 100:
        return math.floor(ms * 10) / 10
    if ms < 10_000:
        return float(math.floor(ms))
    return math.floor(ms / 100) * 100.0


@dataclass
class LatencyHistogram:
    counts: dict[float, int] = field(default_factory=dict)
    total: int = 0
    sum_ms: float = 0.0
    max_ms: float = 0.0

    def add(self, ms: float) -> None:
        ms = max(ms, 0.0)
        key = _bucket(ms)
        self.counts[key] = self.counts.get(key, 0) + 1
        self.total += 1
        self.sum_ms += ms
        if ms > self.max_ms:
            self.max_ms = ms

    def merge(self, other: LatencyHistogram) -> None:
        for key, count in other.counts.items():
            self.counts[key] = self.counts.get(key, 0) + count
        self.total += other.total
        self.sum_ms += other.sum_ms
        self.max_ms = max(self.max_ms, other.max_ms)

    def percentile(self, q: float) -> float:
        """The lower edge of the bucket holding the q-th percentile (0 if empty)."""
        if not self.total:
            return 0.0
        rank = q / 100.0 * self.total
        seen = 0
        for key in sorted(self.counts):
            seen += self.counts[key]
            if seen >= rank:
                return key
        return self.max_ms

    def summary(self) -> dict[str, float]:
        return {
            "count": self.total,
            "mean_ms": self.sum_ms / self.total if self.total else 0.0,
            "p50_ms": self.percentile(50),
            "p90_ms": self.percentile(90),
            "p99_ms": self.percentile(99),
            "p999_ms": self.percentile(99.9),
            "max_ms": self.max_ms,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "summary": self.summary(),
            # JSON keys are strings; bucket lower edges in milliseconds.
            "buckets_ms": {f"{k:g}": v for k, v in sorted(self.counts.items())},
            "sum_ms": self.sum_ms,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> LatencyHistogram:
        histogram = cls()
        for key, count in raw.get("buckets_ms", {}).items():
            histogram.counts[float(key)] = int(count)
        histogram.total = sum(histogram.counts.values())
        histogram.sum_ms = float(raw.get("sum_ms", 0.0))
        histogram.max_ms = float(raw.get("summary", {}).get("max_ms", 0.0))
        return histogram


@dataclass
class Report:
    """Everything one Locust process measured: histograms per transport and problem counts."""

    histograms: dict[str, LatencyHistogram] = field(default_factory=dict)
    problems: dict[str, int] = field(default_factory=dict)
    received: dict[str, int] = field(default_factory=dict)
    published: int = 0

    def latency(self, transport: str, ms: float) -> None:
        self.histograms.setdefault(transport, LatencyHistogram()).add(ms)
        self.received[transport] = self.received.get(transport, 0) + 1

    def problem(self, transport: str, problem: StreamProblem | str) -> None:
        kind = problem if isinstance(problem, str) else type(problem).__name__.lower()
        key = f"{transport}:{kind}"
        self.problems[key] = self.problems.get(key, 0) + 1

    def merge(self, other: Report) -> None:
        for transport, histogram in other.histograms.items():
            self.histograms.setdefault(transport, LatencyHistogram()).merge(histogram)
        for key, count in other.problems.items():
            self.problems[key] = self.problems.get(key, 0) + count
        for key, count in other.received.items():
            self.received[key] = self.received.get(key, 0) + count
        self.published += other.published

    def to_json(self) -> dict[str, Any]:
        return {
            "published": self.published,
            "received": self.received,
            "problems": self.problems,
            "latency": {t: h.to_json() for t, h in self.histograms.items()},
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Report:
        return cls(
            histograms={t: LatencyHistogram.from_json(h) for t, h in raw.get("latency", {}).items()},
            problems=dict(raw.get("problems", {})),
            received=dict(raw.get("received", {})),
            published=int(raw.get("published", 0)),
        )

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2) + "\n"
