"""What a set of chart values needs from the cluster, and whether it is there (pure).

``fanline cluster preflight -f values.yaml`` runs before ``helm install`` or
``helm upgrade`` with the same values: every feature the values turn on that
depends on something outside the chart is checked, so that it fails here
with a reason instead of half-working in the cluster (pods in
CreateContainerConfigError, an HPA that never scales down, sticky-session
annotations an ingress controller ignores).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# IngressClass spec.controller of the controllers whose sticky sessions the chart configures.
INGRESS_CONTROLLERS = {"nginx": "k8s.io/ingress-nginx", "traefik": "traefik.io/ingress-controller"}
GATEWAY_CHANNEL_ANNOTATION = "gateway.networking.k8s.io/channel"


class Check(enum.StrEnum):
    SECRET_KEY = "secret-key"
    CRD = "crd"
    CUSTOM_METRIC = "custom-metric"
    INGRESS_CLASS = "ingress-class"


@dataclass(frozen=True)
class Requirement:
    check: Check
    name: str  # the Secret, CRD, metric or IngressClass
    detail: str  # the key, the CRD channel, the metric's resource, the controller
    why: str


@dataclass(frozen=True)
class Result:
    requirement: Requirement
    ok: bool
    message: str


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Helm's merge of values files: maps merge key by key, anything else is replaced."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _get(values: Mapping[str, Any], path: str, default: Any = None) -> Any:
    node: Any = values
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def ingress_controller(values: Mapping[str, Any]) -> str:
    """Which annotations the chart writes: the same rule as fanline.ingressController."""
    if _get(values, "ingress.className", "nginx") == "traefik":
        return "traefik"
    return str(_get(values, "ingress.controller", "nginx"))


def requirements(values: Mapping[str, Any]) -> list[Requirement]:
    needs: list[Requirement] = []
    secret = _get(values, "existingSecret", "")
    if secret:
        needs.append(
            Requirement(
                Check.SECRET_KEY, secret, "FANLINE_BROKER",
                "existingSecret must carry the broker URL; pods cannot start without it",
            )
        )
    key_secret = _get(values, "auth.jwtPublicKey.existingSecret", "")
    if key_secret:
        needs.append(
            Requirement(
                Check.SECRET_KEY, key_secret, str(_get(values, "auth.jwtPublicKey.key", "public.pem")),
                "auth.jwtPublicKey is mounted from this Secret",
            )
        )
    if _get(values, "serviceMonitor.enabled", False):
        needs.append(Requirement(Check.CRD, "servicemonitors.monitoring.coreos.com", "", "serviceMonitor.enabled"))
    if _get(values, "prometheusRule.enabled", False):
        needs.append(Requirement(Check.CRD, "prometheusrules.monitoring.coreos.com", "", "prometheusRule.enabled"))
    if _get(values, "httpRoute.enabled", False):
        persistence = bool(_get(values, "httpRoute.sessionPersistence.enabled", False))
        needs.append(
            Requirement(
                Check.CRD, "httproutes.gateway.networking.k8s.io", "experimental" if persistence else "",
                "httpRoute.sessionPersistence needs the experimental channel CRDs" if persistence else "httpRoute.enabled",
            )
        )
    if _get(values, "autoscaling.enabled", False) and _get(values, "autoscaling.connections.enabled", True):
        if _get(values, "autoscaling.engine", "hpa") == "keda":
            needs.append(Requirement(Check.CRD, "scaledobjects.keda.sh", "", "autoscaling.engine: keda"))
        else:
            metric = str(_get(values, "autoscaling.connections.metricName", "fanline_connections"))
            needs.append(
                Requirement(
                    Check.CUSTOM_METRIC, metric, f"pods/{metric}",
                    "the HPA's Pods metric comes from custom.metrics.k8s.io (prometheus-adapter); without it the HPA never scales down",
                )
            )
    if _get(values, "ingress.enabled", False) and _get(values, "ingress.sticky.enabled", True):
        controller = ingress_controller(values)
        class_name = str(_get(values, "ingress.className", "nginx"))
        needs.append(
            Requirement(
                Check.INGRESS_CLASS, class_name, INGRESS_CONTROLLERS.get(controller, ""),
                f"ingress.sticky writes {controller} annotations",
            )
        )
    return needs


# Checks of a collection that must exist and hold the requirement's detail:
# what to say when it is absent, when it lacks the detail, and when all is well.
_COLLECTIONS = {
    Check.SECRET_KEY: (
        "Secret {name} not found ({why})",
        "Secret {name} has no key {detail} ({why})",
        "Secret {name} has {detail}",
    ),
    Check.CUSTOM_METRIC: (
        "custom.metrics.k8s.io is not served: {why}",
        "custom.metrics.k8s.io does not serve {detail}: {why}",
        "custom.metrics.k8s.io serves {detail}",
    ),
}


def _holds(r: Requirement, observed: Any, *, absent: str, lacking: str, present: str) -> Result:
    """A collection that must exist and contain ``r.detail``."""
    if observed is None:
        return Result(r, False, absent)
    if r.detail not in observed:
        return Result(r, False, lacking)
    return Result(r, True, present)


def judge(requirement: Requirement, observed: Any) -> Result:
    """Whether what the cluster has (``observed``, None when absent) meets ``requirement``.

    ``observed`` is, per check: the Secret's keys; the CRD's annotations; the
    resource names custom.metrics.k8s.io serves; the IngressClass's controller.
    """
    r = requirement
    if r.check in _COLLECTIONS:
        absent, lacking, present = (m.format(name=r.name, detail=r.detail, why=r.why) for m in _COLLECTIONS[r.check])
        return _holds(r, observed, absent=absent, lacking=lacking, present=present)
    if r.check is Check.CRD:
        if observed is None:
            return Result(r, False, f"CRD {r.name} is not installed ({r.why})")
        if r.detail and observed.get(GATEWAY_CHANNEL_ANNOTATION) != r.detail:
            channel = observed.get(GATEWAY_CHANNEL_ANNOTATION, "unknown")
            return Result(r, False, f"CRD {r.name} is from the {channel} channel ({r.why})")
        return Result(r, True, f"CRD {r.name} is installed")
    if observed is None:
        return Result(r, False, f"IngressClass {r.name} not found")
    if not r.detail:
        return Result(r, False, f"IngressClass {r.name}: the chart writes no sticky-session annotations for it")
    if observed != r.detail:
        return Result(
            r, False, f"IngressClass {r.name} is run by {observed}, but {r.why} (for {r.detail}): sessions would not be sticky"
        )
    return Result(r, True, f"IngressClass {r.name} is {observed}, which honours the sticky annotations")
