"""Process metrics, read at scrape time through prometheus-client collectors.

CPU time, resident memory and open file descriptors come from
prometheus-client's ``ProcessCollector`` (``/proc``, Linux), under the
standard ``process_*`` names dashboards already know.  Event-loop lag comes
from a sampler: a timer that should fire every ``interval`` seconds records
how late it fired; the collector turns its counts into a histogram when
scraped.  Nothing here runs per event: the node's hot-path counters
(node/metrics.py) stay its own, 5-10 times cheaper than prometheus-client's.

Each node has its own registry (no process-global state), rendered after
the node's own metrics on ``/metrics``.
"""

from __future__ import annotations

import asyncio
import math
import platform
from bisect import bisect_left
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import HistogramMetricFamily, InfoMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

# From well under a millisecond (an idle loop) to seconds (a blocked one).
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class LoopLag:
    """How late the event loop runs a timer: the delay every callback, every client write, is waiting behind."""

    def __init__(self, interval: float = 0.5, buckets: tuple[float, ...] = LAG_BUCKETS) -> None:
        self.interval = interval
        self.bounds = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0

    def record(self, lag: float) -> None:
        lag = max(lag, 0.0)
        self.counts[bisect_left(self.bounds, lag)] += 1
        self.sum += lag

    async def sample_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            self.record(loop.time() - due)

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative ``(le, count)`` pairs, as the exposition format wants them."""
        out: list[tuple[str, float]] = []
        cumulative = 0
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            cumulative += count
            out.append(("+Inf" if bound == math.inf else repr(bound), float(cumulative)))
        return out


class NodeCollector(Collector):
    """``fanline_event_loop_lag_seconds`` and ``fanline_build_info``, built at scrape time."""

    def __init__(self, lag: LoopLag, version: str) -> None:
        self.lag = lag
        self.version = version

    def collect(self) -> Iterable[Metric]:
        lag = HistogramMetricFamily(
            "fanline_event_loop_lag_seconds",
            f"How late a timer due every {self.lag.interval:g} s ran: the wait every callback on the loop shares.",
        )
        lag.add_metric([], self.lag.buckets(), self.lag.sum)
        yield lag
        info = {
            "version": self.version,
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "loop": _loop_name(),
        }
        yield InfoMetricFamily("fanline_build", "Fanline version, Python and event loop of this node.", value=info)


def _loop_name() -> str:
    """The event loop scraping us: uvloop is optional (node/server.py)."""
    try:
        module = type(asyncio.get_running_loop()).__module__
    except RuntimeError:
        return "none"
    return "uvloop" if module.startswith("uvloop") else "asyncio"


class ProcessMetrics:
    """One node's process metrics: a private registry and the loop-lag sampler its node runs."""

    def __init__(self, version: str) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.loop_lag = LoopLag()
        ProcessCollector(registry=self.registry)
        self.registry.register(NodeCollector(self.loop_lag, version))

    def render(self) -> str:
        return generate_latest(self.registry).decode()
