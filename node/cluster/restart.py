"""A restart that replaces pods strictly one at a time (pure decisions).

``fanline cluster restart`` evicts one pod (the Eviction API honours the
PodDisruptionBudget), whose preStop hook drains it while the ReplicaSet
starts a replacement; the next pod is evicted only once the evicted one is
gone (fully drained) and the Deployment has all its pods Ready again.  A
Deployment's own rolling update cannot promise that: it does not count
terminating pods (KEP-3973), so several pods may drain at once.
"""

from __future__ import annotations

from collections.abc import Sequence

from .pods import Pod


def restart_order(pods: Sequence[Pod]) -> list[str]:
    """The pods to replace, oldest first (ISO timestamps sort as strings)."""
    return [p.name for p in sorted(pods, key=lambda p: (p.created, p.name)) if not p.deleting]


def ready_count(pods: Sequence[Pod]) -> int:
    return sum(1 for p in pods if p.ready and not p.deleting)


def can_start(pods: Sequence[Pod], desired: int) -> str | None:
    """Why a restart must not start now, or None when it may."""
    if any(p.deleting for p in pods):
        return "a pod is already terminating; wait until it is gone"
    if ready_count(pods) < desired:
        return f"only {ready_count(pods)} of {desired} pods are ready; a restart would take capacity from a degraded deployment"
    return None


def step_done(evicted: str, pods: Sequence[Pod], desired: int) -> bool:
    """The evicted pod is gone (its drain finished) and every desired pod is Ready again."""
    return all(p.name != evicted for p in pods) and ready_count(pods) >= desired
