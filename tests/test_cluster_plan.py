"""The decisions of ``fanline cluster``, without any server: rebalance plans,
restart steps, preflight requirements and the pod fields read from the API."""

from __future__ import annotations

from typing import Any

import pytest

from node.cluster.plan import PodLoad, Shed, expected_after, imbalance, plan, returned
from node.cluster.pods import Pod, parse_pod
from node.cluster.preflight import Check, judge, merge, requirements
from node.cluster.restart import can_start, restart_order, step_done


def loads(*counts: int) -> list[PodLoad]:
    return [PodLoad(f"p{i}", c) for i, c in enumerate(counts)]


# -- rebalance plans ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("counts", "sheds", "expected"),
    [
        # The scale-out: three full pods, three new empty ones.
        ((1000, 1000, 1000, 0, 0, 0), {"p0": 500, "p1": 500, "p2": 500}, [500] * 6),
        # Already within 10 % of the mean: nothing to do.
        ((1000, 950, 1050, 1090), {}, [1000, 950, 1050, 1090]),
        # One pod low, the others each a little high: shed the surplus above the mean.
        ((1090, 1090, 820), {"p0": 90, "p1": 90}, [1000, 1000, 1000]),
        # One hot pod.
        ((1300, 900, 900, 900), {"p0": 300}, [1000, 1000, 1000, 1000]),
        # A mean that is not whole: shed down to the ceiling, never more than the rest can take.
        ((10, 0, 0), {"p0": 6}, [4, 3, 3]),
        # Tiny numbers: one connection of slack, so 1/0 is balanced rather than chased.
        ((1, 0), {}, [1, 0]),
        ((3, 0), {"p0": 1}, [2, 1]),
        # Nobody connected, or one pod: nothing to move.
        ((0, 0, 0), {}, [0, 0, 0]),
        ((500,), {}, [500]),
    ],
)
def test_plan(counts: tuple[int, ...], sheds: dict[str, int], expected: list[int]) -> None:
    result = plan(loads(*counts), tolerance=0.10)
    assert {s.pod: s.count for s in result.sheds} == sheds
    assert list(result.expected.values()) == expected
    assert result.balanced == (not sheds)
    # What is shed is what the others take: nothing is planned to vanish.
    assert sum(result.expected.values()) == sum(counts)
    # Following the plan balances (with a least-connections balancer).
    assert plan([PodLoad(n, c) for n, c in result.expected.items()], 0.10).balanced


def test_plan_leaves_out_pods_that_are_not_ready_or_draining() -> None:
    pods = [PodLoad("a", 1000), PodLoad("b", 0), PodLoad("c", 800, draining=True), PodLoad("d", 0, ready=False)]
    result = plan(pods, 0.10)
    assert result.excluded == ("c", "d")
    assert result.sheds == (Shed("a", 500),)
    assert result.expected == {"a": 500, "b": 500}


def test_tolerance_decides_what_is_balanced() -> None:
    assert plan(loads(1150, 850), 0.20).balanced
    assert not plan(loads(1150, 850), 0.10).balanced
    with pytest.raises(ValueError):
        plan(loads(1, 2), 1.5)


def test_biggest_sheds_first_and_expected_fills_the_emptiest() -> None:
    result = plan(loads(900, 1500, 0, 600), 0.10)
    assert [s.pod for s in result.sheds] == ["p1", "p0"]
    assert expected_after({"a": 10, "b": 0, "c": 4}, [Shed("a", 6)]) == {"a": 5, "b": 5, "c": 4}
    assert imbalance([500, 500]) == 0 and imbalance([1000, 0]) == 1.0 and imbalance([]) == 0


@pytest.mark.parametrize(
    ("before", "now", "back"), [(3000, 3000, True), (3000, 2970, True), (3000, 2969, False), (10, 9, True), (10, 8, False), (0, 0, True)]
)
def test_a_round_is_measured_once_the_shed_clients_are_back(before: int, now: int, back: bool) -> None:
    assert returned(before, now) is back


# -- pods as read from the API ----------------------------------------------------------------


def pod_json(name: str, ready: bool = True, deleting: bool = False, created: str = "2026-12-01T10:00:00Z") -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": "realtime", "creationTimestamp": created}
    if deleting:
        metadata["deletionTimestamp"] = "2026-12-01T11:00:00Z"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "containers": [
                {
                    "name": "node",
                    "image": "ghcr.io/fanline/fanline:0.1.0",
                    "ports": [{"name": "client", "containerPort": 8000}, {"name": "internal", "containerPort": 9100}],
                }
            ]
        },
        "status": {
            "phase": "Running",
            "podIP": "10.0.0.7",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def test_parse_pod_reads_readiness_deletion_and_the_internal_port() -> None:
    pod = parse_pod(pod_json("a"))
    assert pod == Pod("a", "Running", True, False, "2026-12-01T10:00:00Z", 9100, "10.0.0.7")
    assert pod.serving
    assert not parse_pod(pod_json("b", ready=False)).serving
    assert parse_pod(pod_json("c", deleting=True)).deleting
    bare = pod_json("d")
    del bare["spec"]["containers"][0]["ports"]
    assert parse_pod(bare).internal_port == 9000


# -- restart steps ------------------------------------------------------------------------------


def test_restart_goes_oldest_first_and_only_from_a_healthy_deployment() -> None:
    pods = [
        parse_pod(pod_json("new", created="2026-12-01T12:00:00Z")),
        parse_pod(pod_json("old", created="2026-12-01T09:00:00Z")),
    ]
    assert restart_order(pods) == ["old", "new"]
    assert can_start(pods, desired=2) is None
    assert "1 of 2 pods are ready" in str(can_start([pods[0], parse_pod(pod_json("x", ready=False))], desired=2))
    assert "terminating" in str(can_start([*pods, parse_pod(pod_json("t", deleting=True))], desired=2))


@pytest.mark.parametrize(
    ("pods", "done"),
    [
        ([pod_json("old", deleting=True), pod_json("b"), pod_json("new")], False),  # still draining
        ([pod_json("b"), pod_json("new", ready=False)], False),  # gone, but the replacement is not Ready
        ([pod_json("b"), pod_json("new")], True),
    ],
)
def test_a_restart_step_is_done_when_the_old_pod_is_gone_and_all_are_ready(pods: list[dict[str, Any]], done: bool) -> None:
    assert step_done("old", [parse_pod(p) for p in pods], desired=2) is done


# -- preflight ------------------------------------------------------------------------------------


def test_preflight_requirements_follow_the_values() -> None:
    assert requirements({}) == []
    values = merge(
        {"ingress": {"enabled": True, "className": "nginx"}},
        {
            "existingSecret": "creds",
            "serviceMonitor": {"enabled": True},
            "autoscaling": {"enabled": True},
            "httpRoute": {"enabled": True, "sessionPersistence": {"enabled": True}},
        },
    )
    needs = {(r.check, r.name, r.detail) for r in requirements(values)}
    assert needs == {
        (Check.SECRET_KEY, "creds", "FANLINE_BROKER"),
        (Check.CRD, "servicemonitors.monitoring.coreos.com", ""),
        (Check.CRD, "httproutes.gateway.networking.k8s.io", "experimental"),
        (Check.CUSTOM_METRIC, "fanline_connections", "pods/fanline_connections"),
        (Check.INGRESS_CLASS, "nginx", "k8s.io/ingress-nginx"),
    }
    keda = requirements({"autoscaling": {"enabled": True, "engine": "keda"}})
    assert [(r.check, r.name) for r in keda] == [(Check.CRD, "scaledobjects.keda.sh")]
    traefik = requirements({"ingress": {"enabled": True, "className": "traefik"}})
    assert traefik[0].detail == "traefik.io/ingress-controller"


@pytest.mark.parametrize(
    ("values", "observed", "ok", "says"),
    [
        ({"existingSecret": "creds"}, {"FANLINE_BROKER", "FANLINE_API_KEYS"}, True, "has FANLINE_BROKER"),
        ({"existingSecret": "creds"}, {"FANLINE_API_KEYS"}, False, "no key FANLINE_BROKER"),
        ({"existingSecret": "creds"}, None, False, "not found"),
        ({"serviceMonitor": {"enabled": True}}, None, False, "not installed"),
        ({"serviceMonitor": {"enabled": True}}, {}, True, "installed"),
        (
            {"httpRoute": {"enabled": True, "sessionPersistence": {"enabled": True}}},
            {"gateway.networking.k8s.io/channel": "standard"},
            False,
            "standard channel",
        ),
        ({"autoscaling": {"enabled": True}}, {"pods/fanline_connections"}, True, "serves"),
        ({"autoscaling": {"enabled": True}}, {"pods/other"}, False, "does not serve"),
        ({"autoscaling": {"enabled": True}}, None, False, "not served"),
        ({"ingress": {"enabled": True, "className": "nginx"}}, "k8s.io/ingress-nginx", True, "honours"),
        ({"ingress": {"enabled": True, "className": "nginx"}}, "haproxy.org/ingress-controller", False, "not be sticky"),
        ({"ingress": {"enabled": True, "className": "public", "controller": "none"}}, "x", False, "no sticky"),
    ],
)
def test_preflight_judgements(values: dict[str, Any], observed: Any, ok: bool, says: str) -> None:
    (requirement,) = requirements(values)
    result = judge(requirement, observed)
    assert result.ok is ok and says in result.message, result.message
