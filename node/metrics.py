"""Prometheus metrics, owned by one node (no process-global registry).

A tiny subset of the Prometheus client: counters, gauges and histograms with
fixed label names, rendered in the text exposition format.  Hot paths hold a
reference to a labelled child and call ``inc``; nothing here allocates per
event.  Process metrics (CPU, memory, file descriptors, event-loop lag) and
``fanline_build_info`` are read at scrape time through prometheus-client
(node/process_metrics.py) and rendered after these.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Iterator

from broker_adapters.base import BrokerStats

from . import __version__
from .process_metrics import ProcessMetrics


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Value:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = value


class _Histogram:
    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1


class Metric:
    def __init__(self, name: str, help: str, kind: str, labels: tuple[str, ...] = ()) -> None:
        self.name = name
        self.help = help
        self.kind = kind
        self.label_names = labels
        self._children: dict[tuple[str, ...], object] = {}

    def _new_child(self) -> object:
        return _Value()

    def _child(self, values: tuple[str, ...]) -> object:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.label_names):
                raise ValueError(f"{self.name} takes labels {self.label_names}")
            child = self._children[values] = self._new_child()
        return child

    def render(self) -> Iterator[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"
        for values, child in sorted(self._children.items()):
            assert isinstance(child, _Value)
            yield f"{self.name}{_labels(self.label_names, values)} {_number(child.value)}"


class Counter(Metric):
    def __init__(
        self, name: str, help: str, labels: tuple[str, ...] = (), read: Callable[[], float] | None = None
    ) -> None:
        super().__init__(name, help, "counter", labels)
        if not labels:
            self._child(())
        # A value kept elsewhere (an adapter's stats), read when rendered.
        self._read = read

    def labels(self, *values: str) -> _Value:
        child = self._child(values)
        assert isinstance(child, _Value)
        return child

    def inc(self, amount: float = 1.0) -> None:
        self.labels().inc(amount)

    def render(self) -> Iterator[str]:
        if self._read is not None:
            self.labels().set(self._read())
        yield from super().render()


class Gauge(Counter):
    def __init__(
        self, name: str, help: str, labels: tuple[str, ...] = (), read: Callable[[], float] | None = None
    ) -> None:
        super().__init__(name, help, labels, read)
        self.kind = "gauge"

    def dec(self, amount: float = 1.0) -> None:
        self.labels().dec(amount)

    def set(self, value: float) -> None:
        self.labels().set(value)


class Histogram(Metric):
    def __init__(
        self, name: str, help: str, buckets: tuple[float, ...], labels: tuple[str, ...] = ()
    ) -> None:
        super().__init__(name, help, "histogram", labels)
        self.buckets = tuple(sorted(buckets))

    def _new_child(self) -> object:
        return _Histogram(self.buckets)

    def labels(self, *values: str) -> _Histogram:
        child = self._child(values)
        assert isinstance(child, _Histogram)
        return child

    def observe(self, value: float) -> None:
        self.labels().observe(value)

    def render(self) -> Iterator[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        for values, child in sorted(self._children.items()):
            assert isinstance(child, _Histogram)
            cumulative = 0
            for bound, count in zip((*child.bounds, math.inf), child.counts, strict=True):
                cumulative += count
                le = 'le="+Inf"' if bound == math.inf else f'le="{_number(bound)}"'
                yield f"{self.name}_bucket{_labels(self.label_names, values, le)} {cumulative}"
            yield f"{self.name}_sum{_labels(self.label_names, values)} {_number(child.sum)}"
            yield f"{self.name}_count{_labels(self.label_names, values)} {child.count}"


def _number(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
COUNT_BUCKETS = (0, 1, 5, 10, 50, 100, 300, 1000)


class Metrics:
    """Every metric a node exports.  One instance per node."""

    def __init__(self, broker: BrokerStats | None = None) -> None:
        p = "fanline_"
        stats = broker or BrokerStats()
        self.connections = Gauge(p + "connections", "Open client connections.", ("transport",))
        self.connections_total = Counter(
            p + "connections_total", "Client connections accepted.", ("transport",)
        )
        self.subscriptions = Gauge(p + "subscriptions", "Active subscriptions, all connections.")
        self.channels = Gauge(p + "channels", "Channels with at least one local subscriber.")
        self.events_in = Counter(p + "events_in_total", "Publications received from the broker.")
        self.events_out = Counter(
            p + "events_out_total", "Events written to clients.", ("transport",)
        )
        self.bytes_out = Counter(p + "bytes_out_total", "Bytes written to clients.", ("transport",))
        self.frames_out = Counter(
            p + "frames_out_total", "Frames (or SSE writes) sent to clients.", ("transport",)
        )
        self.published = Counter(p + "published_total", "Publications accepted by this node.", ("source",))
        self.slow_consumers = Counter(
            p + "slow_consumer_actions_total", "Slow-consumer policy actions.", ("policy",)
        )
        self.limit_rejections = Counter(
            p + "limit_rejections_total", "Requests refused by a limit.", ("limit",)
        )
        self.client_errors = Counter(
            p + "client_errors_total", "Error frames or responses sent for bad client input.", ("code",)
        )
        self.subscribes = Counter(
            p + "subscribes_total",
            "How subscribes learned their position: from the node's recent window (window), by reading "
            "the broker (read), or by sharing another subscribe's read (shared_read).",
            ("source",),
        )
        self.resumes = Counter(
            p + "resumes_total", "Resume attempts by outcome.", ("outcome",)
        )
        self.replayed = Histogram(
            p + "resume_replayed_publications", "Publications replayed per successful resume.", COUNT_BUCKETS
        )
        self.resyncs = Counter(
            p + "resyncs_total", "Channel re-reads of history after a possible live gap.", ("outcome",)
        )
        self.broker_publish_seconds = Histogram(
            p + "broker_publish_seconds", "Time to publish to the broker.", LATENCY_BUCKETS
        )
        self.broker_available = Gauge(p + "broker_available", "1 while the broker is reachable.")
        self.broker_streams_created = Counter(
            p + "broker_streams_created_total",
            "Channel streams this node's publications created on the broker.",
            read=lambda: stats.streams_created,
        )
        self.broker_empty_reads = Counter(
            p + "broker_empty_reads_total",
            "History reads of channels that were never published (nothing is stored for them).",
            read=lambda: stats.empty_reads,
        )
        self.lag_seconds = Histogram(
            p + "delivery_lag_seconds",
            "Publish time to arrival at this node (clock skew between hosts shows here).",
            LATENCY_BUCKETS,
        )
        self.draining = Gauge(p + "draining", "1 while the node is draining.")
        self.pending_connections = Gauge(
            p + "pending_connections",
            "Sockets in their handshake, WebSockets awaiting their auth frame, and plain HTTP "
            "connections, per port (bounded by max_pending each).",
            ("port",),
        )
        self.connection_lag = Histogram(
            p + "connection_lag_seconds",
            "How long events waited behind a connection's full socket: observed when the socket takes "
            "data again, and when the slow-consumer policy acts on a lagging client.",
            (*LATENCY_BUCKETS, 20.0, 30.0, 60.0),
        )
        self.process = ProcessMetrics(__version__)

        # Presence, the control channel and backend hooks (docs/presence.md, server-api.md, hooks.md).
        self.presence_writes = Counter(
            p + "presence_writes_total",
            "Batched presence writes to the store, by kind: changes (joins, leaves) or refresh.",
            ("kind",),
        )
        self.presence_write_seconds = Histogram(
            p + "presence_write_seconds", "Time of one batched presence write (all channels of the batch).",
            LATENCY_BUCKETS,
        )
        self.presence_entries = Gauge(p + "presence_entries", "Presence entries this node holds and refreshes.")
        self.presence_refused = Counter(
            p + "presence_refused_total", "Clients not listed because their channel was at presence_max_clients."
        )
        self.commands = Counter(
            p + "commands_total", "Control-channel commands received, by command and whether this node acted.",
            ("command", "acted"),
        )
        self.hook_calls = Counter(
            p + "hook_calls_total", "Backend hook calls by hook and outcome (allow, deny, error, timeout).",
            ("hook", "outcome"),
        )
        self.hook_seconds = Histogram(
            p + "hook_seconds", "Backend hook call latency, by hook.", LATENCY_BUCKETS, ("hook",)
        )

    def all(self) -> list[Metric]:
        return [m for m in vars(self).values() if isinstance(m, Metric)]

    def render(self) -> str:
        lines: list[str] = []
        for metric in self.all():
            lines.extend(metric.render())
        return "\n".join(lines) + "\n" + self.process.render()
