"""Pods as ``fanline cluster`` sees them, parsed from the Kubernetes API's JSON (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# The chart names the container port that carries /status, /shed and /drain "internal".
INTERNAL_PORT_NAME = "internal"
DEFAULT_INTERNAL_PORT = 9000


@dataclass(frozen=True)
class Pod:
    name: str
    phase: str
    ready: bool
    # Set once the pod is being deleted (draining in its preStop hook, then stopping).
    deleting: bool
    created: str
    internal_port: int
    ip: str | None = None

    @property
    def serving(self) -> bool:
        """Running, ready and not on its way out: can take part in a rebalance."""
        return self.phase == "Running" and self.ready and not self.deleting


def _internal_port(spec: Mapping[str, Any]) -> int:
    for container in spec.get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == INTERNAL_PORT_NAME:
                return int(port["containerPort"])
    return DEFAULT_INTERNAL_PORT


def parse_pod(obj: Mapping[str, Any]) -> Pod:
    metadata = obj.get("metadata") or {}
    status = obj.get("status") or {}
    conditions = status.get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    return Pod(
        name=str(metadata["name"]),
        phase=str(status.get("phase", "Unknown")),
        ready=ready,
        deleting=metadata.get("deletionTimestamp") is not None,
        created=str(metadata.get("creationTimestamp", "")),
        internal_port=_internal_port(obj.get("spec") or {}),
        ip=status.get("podIP"),
    )
