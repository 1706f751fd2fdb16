"""``fanline cluster status|rebalance|restart|preflight``: arguments, and the missing-extra error."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .plan import DEFAULT_TOLERANCE

DEFAULT_SELECTOR = "app.kubernetes.io/name=fanline"
MISSING_EXTRA = (
    "fanline cluster needs the official Kubernetes client, which is not installed: "
    "pip install 'fanline[kubernetes]'"
)


def _fraction(raw: str) -> float:
    value = float(raw.rstrip("%")) / (100 if raw.endswith("%") else 1)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError("a fraction of the mean: 0.1 or 10%")
    return value


def add_parser(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "cluster",
        help="operate a Fanline deployment on Kubernetes (needs fanline[kubernetes])",
        description="Operate a Fanline deployment through the Kubernetes API, from a kubeconfig or in-cluster.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--kubeconfig", help="kubeconfig file (default $KUBECONFIG or ~/.kube/config; in a pod, its service account)")
    common.add_argument("--context", help="kubeconfig context (default the current one)")
    common.add_argument("-n", "--namespace", help="namespace (default the context's, or the pod's)")
    common.add_argument("-l", "--selector", default=DEFAULT_SELECTOR, help="label selector of the Fanline pods (default %(default)s)")
    common.add_argument("--release", help="Helm release name: adds app.kubernetes.io/instance=RELEASE to the selector")
    sub = parser.add_subparsers(dest="cluster_command", required=True)

    status = sub.add_parser("status", parents=[common], help="per pod: connections, subscriptions, drain, broker, version, age")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.add_argument("--tolerance", type=_fraction, default=DEFAULT_TOLERANCE, help="balanced within this of the mean (default 10%%)")

    rebalance = sub.add_parser(
        "rebalance", parents=[common], help="move connections from the most loaded pods (dry run unless --apply)"
    )
    rebalance.add_argument("--apply", action="store_true", help="shed as planned (default: only print the plan)")
    rebalance.add_argument("--tolerance", type=_fraction, default=DEFAULT_TOLERANCE, help="balanced within this of the mean (default 10%%)")
    rebalance.add_argument("--window", type=float, default=30.0, help="seconds over which a pod sheds its share (default %(default)s)")
    rebalance.add_argument("--max-rounds", type=int, default=3, help="plan, shed and re-measure at most this often (default %(default)s)")
    rebalance.add_argument(
        "--settle", type=float, default=60.0,
        help="after a round, wait at most this many seconds for the shed clients to reconnect before re-measuring (default %(default)s)",
    )

    restart = sub.add_parser("restart", parents=[common], help="replace every pod strictly one at a time, each drained")
    restart.add_argument("--deployment", help="the Deployment (default: the one the selector matches)")
    restart.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per pod (default %(default)s)")

    preflight = sub.add_parser("preflight", parents=[common], help="check that the cluster has what the chart values need")
    preflight.add_argument("-f", "--values", action="append", default=[], type=Path, help="values file, as for helm (repeatable)")


def run(args: argparse.Namespace) -> int:
    try:
        from . import commands
        from .kube import Cluster, ClusterError, load
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in ("kubernetes", "urllib3", "yaml"):
            print(MISSING_EXTRA, file=sys.stderr)
            return 2
        raise
    selector = args.selector + (f",app.kubernetes.io/instance={args.release}" if args.release else "")
    out = sys.stdout
    try:
        api, namespace = load(args.kubeconfig, args.context)
        cluster = Cluster(api, args.namespace or namespace)
        if args.cluster_command == "status":
            return commands.status(cluster, selector, args.tolerance, args.json, out)
        if args.cluster_command == "rebalance":
            return commands.rebalance(
                cluster, selector, args.tolerance, args.window, args.apply, max(args.max_rounds, 1), args.settle, out
            )
        if args.cluster_command == "restart":
            return commands.restart(cluster, args.deployment, selector, args.timeout, out)
        return commands.preflight(cluster, _values(args.values), out)
    except ClusterError as exc:
        print(f"fanline cluster {args.cluster_command}: {exc}", file=sys.stderr)
        return 1


def _values(paths: list[Path]) -> dict[str, Any]:
    import yaml  # a dependency of the kubernetes client

    from .preflight import merge

    values: dict[str, Any] = {}
    for path in paths:
        loaded = yaml.safe_load(path.read_text()) or {}
        values = merge(values, loaded)
    return values
