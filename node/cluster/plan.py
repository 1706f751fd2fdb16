"""Rebalancing plans: which pods shed how many connections (pure).

Long-lived connections never move by themselves: after a scale-out the new
pods are empty.  A plan asks every pod above the mean to shed down to it; the
shed clients reconnect through the load balancer, which sends them to where
capacity is.  A pod counts as balanced within ``tolerance`` of the mean (10 %
by default), with a slack of at least one connection so that tiny
deployments are not chased forever over rounding.

Pods that are not ready or are draining take no part: a draining pod's
connections are leaving anyway, and a pod that is not ready receives none.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

DEFAULT_TOLERANCE = 0.10
# Below this many connections of slack, a pod is balanced whatever the percentage says.
MIN_SLACK = 1.0


@dataclass(frozen=True)
class PodLoad:
    name: str
    connections: int
    ready: bool = True
    draining: bool = False

    @property
    def eligible(self) -> bool:
        return self.ready and not self.draining


@dataclass(frozen=True)
class Shed:
    pod: str
    count: int


@dataclass(frozen=True)
class Plan:
    mean: float
    low: float
    high: float
    sheds: tuple[Shed, ...]
    # Expected connections per pod once the shed clients reconnected to the
    # least-loaded pods (what a least-connections balancer does).
    expected: Mapping[str, int] = field(default_factory=dict)
    excluded: tuple[str, ...] = ()

    @property
    def balanced(self) -> bool:
        return not self.sheds

    @property
    def moves(self) -> int:
        return sum(s.count for s in self.sheds)


def bounds(mean: float, tolerance: float) -> tuple[float, float]:
    slack = max(tolerance * mean, MIN_SLACK)
    return mean - slack, mean + slack


def imbalance(counts: Sequence[int]) -> float:
    """The largest deviation from the mean, as a fraction of it (0 for an even spread)."""
    if not counts:
        return 0.0
    mean = sum(counts) / len(counts)
    if mean == 0:
        return 0.0
    return max(abs(c - mean) for c in counts) / mean


def is_balanced(loads: Sequence[PodLoad], tolerance: float = DEFAULT_TOLERANCE) -> bool:
    return plan(loads, tolerance).balanced


def plan(loads: Sequence[PodLoad], tolerance: float = DEFAULT_TOLERANCE) -> Plan:
    if not 0 <= tolerance < 1:
        raise ValueError("tolerance is a fraction of the mean, between 0 and 1")
    eligible = [p for p in loads if p.eligible]
    excluded = tuple(p.name for p in loads if not p.eligible)
    if not eligible:
        return Plan(0.0, 0.0, 0.0, (), {}, excluded)
    mean = sum(p.connections for p in eligible) / len(eligible)
    low, high = bounds(mean, tolerance)
    current = {p.name: p.connections for p in eligible}
    if len(eligible) < 2 or all(low <= p.connections <= high for p in eligible):
        return Plan(mean, low, high, (), current, excluded)
    # Shed every pod above the mean down to it (rounded up, so the sheds never
    # exceed what the pods below the mean can take).
    target = math.ceil(mean)
    sheds = tuple(
        sorted(
            (Shed(p.name, p.connections - target) for p in eligible if p.connections > target),
            key=lambda s: (-s.count, s.pod),
        )
    )
    return Plan(mean, low, high, sheds, expected_after(current, sheds), excluded)


def expected_after(current: Mapping[str, int], sheds: Sequence[Shed]) -> dict[str, int]:
    """Counts after the sheds, each shed client landing on the least-loaded pod at that moment."""
    after = dict(current)
    for shed in sheds:
        after[shed.pod] -= shed.count
    heap = [(count, name) for name, count in after.items()]
    heapq.heapify(heap)
    for _ in range(sum(s.count for s in sheds)):
        count, name = heapq.heappop(heap)
        heapq.heappush(heap, (count + 1, name))
    final = {name: count for count, name in heap}
    return {name: final[name] for name in current}


def returned(before: int, now: int) -> bool:
    """Have the shed clients reconnected? The total is back to all but 1 % (natural churn),
    or all but one for small counts: only then does a new measurement mean anything."""
    return now >= before - max(1, before // 100)
