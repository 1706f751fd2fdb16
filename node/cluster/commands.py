"""The ``fanline cluster`` commands: what they read, decide (node.cluster.plan,
.restart, .preflight) and do, printed as they go."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TextIO

from .kube import Cluster, ClusterError, Deployment
from .plan import Plan, PodLoad, imbalance, plan, returned
from .pods import Pod
from .preflight import Check, Requirement, judge, requirements
from .restart import can_start, ready_count, restart_order, step_done

Sleep = Callable[[float], None]


@dataclass(frozen=True)
class Row:
    """One pod and what its node said on /status (or why it said nothing)."""

    pod: Pod
    status: dict[str, Any] | None
    error: str | None = None

    @property
    def connections(self) -> int:
        return int(self.status["connections"]["total"]) if self.status else 0

    def load(self) -> PodLoad:
        ready = self.pod.serving and bool(self.status and self.status.get("ready"))
        draining = self.pod.deleting or bool(self.status and self.status.get("draining"))
        return PodLoad(self.pod.name, self.connections, ready=ready, draining=draining)


def gather(cluster: Cluster, selector: str) -> list[Row]:
    rows = []
    for pod in cluster.pods(selector):
        if pod.phase != "Running":
            rows.append(Row(pod, None, pod.phase.lower()))
            continue
        try:
            rows.append(Row(pod, cluster.node_call(pod, "GET", "status")))
        except ClusterError as exc:
            rows.append(Row(pod, None, str(exc)))
    return rows


def _age(seconds: float) -> str:
    s = int(seconds)
    if s >= 86400:
        return f"{s // 86400}d{s % 86400 // 3600}h"
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60}m"
    if s >= 60:
        return f"{s // 60}m{s % 60}s"
    return f"{s}s"


def _table(header: list[str], lines: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *lines, strict=True)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in [header, *lines])


# -- status ------------------------------------------------------------------------------------


def summary(rows: list[Row], tolerance: float) -> dict[str, Any]:
    loads = [r.load() for r in rows]
    counts = [p.connections for p in loads if p.eligible]
    by_transport: dict[str, int] = {}
    for row in rows:
        for transport, count in ((row.status or {}).get("connections") or {}).items():
            if transport != "total":
                by_transport[transport] = by_transport.get(transport, 0) + int(count)
    return {
        "pods": len(rows),
        "serving": len(counts),
        "connections": sum(r.connections for r in rows),
        "by_transport": by_transport,
        "mean": round(sum(counts) / len(counts), 1) if counts else 0.0,
        "imbalance": round(imbalance(counts), 4),
        "tolerance": tolerance,
        "balanced": plan(loads, tolerance).balanced,
    }


def status(cluster: Cluster, selector: str, tolerance: float, as_json: bool, out: TextIO) -> int:
    rows = gather(cluster, selector)
    if as_json:
        document = {
            "pods": [{"pod": r.pod.name, "phase": r.pod.phase, "status": r.status, "error": r.error} for r in rows],
            "summary": summary(rows, tolerance),
        }
        print(json.dumps(document, indent=2), file=out)
        return 0 if all(r.status for r in rows) else 1
    if not rows:
        print(f"no pods match {selector} in namespace {cluster.namespace}", file=out)
        return 1
    header = ["POD", "READY", "WS", "SSE", "TOTAL", "SUBS", "DRAINING", "SHEDDING", "BROKER", "VERSION", "AGE"]
    lines = []
    for r in rows:
        s = r.status
        if s is None:
            lines.append([r.pod.name, "no", "-", "-", "-", "-", "-", "-", f"unreachable: {r.error}", "-", "-"])
            continue
        broker = s["broker"]
        lines.append([
            r.pod.name, "yes" if s["ready"] and r.pod.ready else "no",
            str(s["connections"].get("ws", 0)), str(s["connections"].get("sse", 0)), str(s["connections"]["total"]),
            str(s["subscriptions"]), "yes" if s["draining"] else "no", str(s.get("shedding", 0)),
            f"{broker['kind']} {'ok' if broker['available'] else 'UNAVAILABLE'}", str(s["version"]),
            _age(float(s["age_seconds"])),
        ])  # fmt: skip
    print(_table(header, lines), file=out)
    total = summary(rows, tolerance)
    transports = ", ".join(f"{k} {v}" for k, v in sorted(total["by_transport"].items()))
    print(
        f"\n{total['pods']} pods ({total['serving']} serving), {total['connections']} connections ({transports}); "
        f"mean {total['mean']}, imbalance {total['imbalance']:.0%} "
        f"({'balanced' if total['balanced'] else 'not balanced'} within {tolerance:.0%})",
        file=out,
    )
    return 0 if all(r.status for r in rows) else 1


# -- rebalance --------------------------------------------------------------------------------


def print_plan(p: Plan, rows: list[Row], out: TextIO) -> None:
    sheds = {s.pod: s.count for s in p.sheds}
    lines = []
    for r in rows:
        name = r.pod.name
        if name in p.excluded or name not in p.expected:
            lines.append([name, str(r.connections), "-", "-", "left out (not ready or draining)"])
        else:
            lines.append([name, str(r.connections), str(sheds.get(name, 0)), str(p.expected[name]), ""])
    print(_table(["POD", "NOW", "SHED", "EXPECTED", ""], lines), file=out)
    print(f"mean {p.mean:.1f}, band {max(p.low, 0):.0f}..{p.high:.0f}: {p.moves} connections to move", file=out)


def _wait_for_sheds(cluster: Cluster, selector: str, before: int, window: float, settle: float, sleep: Sleep) -> None:
    """Wait out the shed window, then until no node is shedding and the shed clients have
    reconnected somewhere (the total is back), at most ``settle`` seconds more.

    Measuring before they are back would count them nowhere, and the next round would shed
    again from pods that are already balanced.
    """
    sleep(window)
    deadline = time.monotonic() + window + settle
    while time.monotonic() < deadline:
        rows = gather(cluster, selector)
        shedding = any((r.status or {}).get("shedding") for r in rows)
        if not shedding and returned(before, sum(r.connections for r in rows if r.load().eligible)):
            return
        sleep(0.5)


def rebalance(
    cluster: Cluster,
    selector: str,
    tolerance: float,
    window: float,
    apply: bool,
    max_rounds: int,
    settle: float,
    out: TextIO,
    sleep: Sleep = time.sleep,
) -> int:
    for round_number in range(1, max_rounds + 1):
        rows = gather(cluster, selector)
        unreachable = [r.pod.name for r in rows if r.pod.serving and r.status is None]
        if unreachable:
            print(f"cannot read /status of {', '.join(unreachable)}: not rebalancing on a partial view", file=out)
            return 1
        p = plan([r.load() for r in rows], tolerance)
        print(f"round {round_number}:", file=out)
        print_plan(p, rows, out)
        if p.balanced:
            print(f"balanced: every serving pod is within {tolerance:.0%} of the mean", file=out)
            return 0
        if not apply:
            print("dry run: nothing was changed; run with --apply to shed as planned", file=out)
            return 0
        by_name = {r.pod.name: r.pod for r in rows}
        before = sum(r.connections for r in rows if r.load().eligible)
        for shed in p.sheds:
            answer = cluster.node_call(
                by_name[shed.pod], "POST", "shed", [("count", str(shed.count)), ("window", f"{window:g}")]
            )
            print(f"{shed.pod}: shedding {answer['shedding']} over {window:g}s", file=out)
        _wait_for_sheds(cluster, selector, before, window, settle, sleep)
    rows = gather(cluster, selector)
    final = plan([r.load() for r in rows], tolerance)
    print("after the last round:", file=out)
    print_plan(final, rows, out)
    if final.balanced:
        print(f"balanced: every serving pod is within {tolerance:.0%} of the mean", file=out)
        return 0
    print(
        f"not balanced after {max_rounds} rounds: clients come back to the pods they left "
        "(sticky sessions pinned to a pod?); see docs/deploy.md#rebalancing",
        file=out,
    )
    return 1


# -- restart -----------------------------------------------------------------------------------


def _selector(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def find_deployment(cluster: Cluster, name: str | None, selector: str) -> Deployment:
    if name:
        return cluster.deployment(name)
    found = cluster.deployments(selector)
    if len(found) != 1:
        names = ", ".join(d.name for d in found) or "none"
        raise ClusterError(f"{len(found)} Deployments match {selector} ({names}): name one with --deployment")
    return found[0]


def restart(
    cluster: Cluster,
    deployment: str | None,
    selector: str,
    timeout: float,
    out: TextIO,
    sleep: Sleep = time.sleep,
) -> int:
    target = find_deployment(cluster, deployment, selector)
    pod_selector = _selector(target.selector)
    pods = cluster.pods(pod_selector)
    why = can_start(pods, target.replicas)
    if why:
        print(f"not restarting {target.name}: {why}", file=out)
        return 1
    order = restart_order(pods)
    if len(order) == 1:
        print("only one pod: its clients have nowhere to go until the replacement is Ready", file=out)
    print(f"restarting {target.name}: {len(order)} pods, one at a time", file=out)
    for index, name in enumerate(order, 1):
        deadline = time.monotonic() + timeout
        while not cluster.evict(name):
            if time.monotonic() > deadline:
                print(f"{name}: the PodDisruptionBudget kept refusing the eviction for {timeout:g}s", file=out)
                return 1
            sleep(1.0)
        print(f"[{index}/{len(order)}] {name}: evicted, draining", file=out)
        while True:
            pods = cluster.pods(pod_selector)
            desired = cluster.deployment(target.name).replicas
            if step_done(name, pods, desired):
                break
            if time.monotonic() > deadline:
                print(
                    f"{name}: not done after {timeout:g}s ({ready_count(pods)}/{desired} ready, "
                    f"{'still there' if any(p.name == name for p in pods) else 'gone'}); stopping here",
                    file=out,
                )
                return 1
            sleep(0.5)
        new = sorted(p.name for p in pods if p.name not in order)
        print(f"[{index}/{len(order)}] {name}: gone; {ready_count(pods)}/{desired} ready (new: {', '.join(new)})", file=out)
    print(f"restarted {target.name}", file=out)
    return 0


# -- preflight ---------------------------------------------------------------------------------


def observe(cluster: Cluster, requirement: Requirement, crds: dict[str, dict[str, str]] | None) -> Any:
    if requirement.check is Check.SECRET_KEY:
        return cluster.secret_keys(requirement.name)
    if requirement.check is Check.CRD:
        return (crds or {}).get(requirement.name)
    if requirement.check is Check.CUSTOM_METRIC:
        return cluster.custom_metrics()
    return cluster.ingress_class_controller(requirement.name)


def preflight(cluster: Cluster, values: Mapping[str, Any], out: TextIO) -> int:
    needs = requirements(values)
    if not needs:
        print("these values need nothing from the cluster beyond the chart itself", file=out)
        return 0
    crds = cluster.crds() if any(r.check is Check.CRD for r in needs) else None
    failed = 0
    for requirement in needs:
        result = judge(requirement, observe(cluster, requirement, crds))
        failed += not result.ok
        print(f"{'ok  ' if result.ok else 'FAIL'} {result.message}", file=out)
    print(f"\n{len(needs) - failed} of {len(needs)} checks passed in namespace {cluster.namespace}", file=out)
    return 1 if failed else 0
