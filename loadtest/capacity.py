"""``python -m loadtest.capacity``: how many edge nodes, broker shards and how much memory a load needs.

    python -m loadtest.capacity --connections 1000000 --channels 100000 --rate 5000 --fanout 200 --history 300

Every constant comes from a results file of this repository's benchmarks
(the newest ``loadtest/results/bench-*.json`` from ``make bench`` and
``cluster-*.json`` from ``make bench-cluster``, or the files named with
``--bench`` / ``--cluster``), and the output says which.  Quantities the
benchmarks cannot measure on one small machine are printed as such, with the
way to measure them.  docs/scaling.md explains the model.

The model, per second of steady load:

- deliveries = rate x fanout; a node's CPU = its deliveries x (node CPU per
  delivery) + the publications it receives from the broker x (node CPU per
  publication received); a node serves a channel when at least one of the
  channel's subscribers is on it: with subscribers spread at random over N
  nodes, a share 1 - (1 - 1/N)^fanout of the publications reaches every node;
- a node's memory = its connections x (RSS per idle connection) + headroom for
  slow consumers (``--slow-share`` of connections holding ``--outbox`` bytes);
- nodes = the fewest that keep every node under ``--cpu-target`` of one core
  and ``--max-per-node`` connections;
- broker CPU = rate x (broker CPU per publication, replication included) +
  rate x nodes serving the channel x (broker CPU per publication sent to one
  more node); a Redis Cluster shard is one core, so shards = broker CPU /
  ``--cpu-target``; broker memory = channels x (meta + history x bytes per entry).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Constants:
    """Measured costs, with where each came from."""

    node_us_per_delivery: float
    node_us_per_publication: float
    node_kib_per_connection: float
    broker_us_per_publication: dict[str, float]
    broker_us_per_node_sent: dict[str, float]
    bytes_per_entry_overhead: float
    meta_bytes: float
    sources: dict[str, str]


def newest(pattern: str) -> Path | None:
    files = sorted(RESULTS.glob(pattern))
    return files[-1] if files else None


def load_constants(bench: Path, cluster: Path) -> Constants:
    b = json.loads(bench.read_text())["results"]
    c = json.loads(cluster.read_text())["results"]
    # Node side, from make bench: WS fan-out through the Redis adapter if measured, else the memory broker.
    fanout = b.get("redis_ws_fanout_1000") or b["ws_fanout_1000"]
    us_delivery = float(fanout["node_us_per_delivery"])
    kib = float(b["ws_memory"]["kib_per_connection"])
    # From make bench-cluster: the durable runs (appendfsync always).
    runs = {r["kind"]: r for r in c.values() if r.get("appendfsync", "always") == "always"}
    broker_pub: dict[str, float] = {}
    broker_sent: dict[str, float] = {}
    node_pub = []
    for kind, r in runs.items():
        p, e = r["publish"], r["end_to_end"]
        broker_pub[kind] = float(p["broker_us_per_publication"])
        # The broker's extra CPU when each publication also goes to e['nodes'] subscribed nodes.
        e2e_us = 1e6 * (e["broker_cpu_pct"] / 100) / max(e["publications_per_s"], 1)
        broker_sent[kind] = max(0.0, (e2e_us - broker_pub[kind]) / e["nodes"])
        # Node CPU per publication received, less the deliveries it made for it.
        per_node = e["delivered"] / max(1, e["published"] * e["nodes"])
        node_pub.append(max(0.0, float(e["node_us_per_publication"]) - per_node * us_delivery))
    memory = next((r["memory"] for r in c.values() if "memory" in r), None)
    return Constants(
        node_us_per_delivery=us_delivery,
        node_us_per_publication=min(node_pub) if node_pub else float("nan"),
        node_kib_per_connection=kib,
        broker_us_per_publication=broker_pub,
        broker_us_per_node_sent=broker_sent,
        bytes_per_entry_overhead=float(memory["overhead_per_entry"]) if memory else float("nan"),
        meta_bytes=float(memory["meta_bytes"]) if memory else float("nan"),
        sources={"bench": bench.name, "cluster": cluster.name},
    )


@dataclass(frozen=True)
class Load:
    connections: int
    channels: int
    rate: float  # publications/s, all channels
    fanout: float  # subscribers per publication (deliveries per publication)
    history: int  # entries kept per channel
    payload: int  # bytes per publication
    cpu_target: float  # share of one core a node or shard may use
    max_per_node: int
    slow_share: float
    outbox_kib: float


def share_served(nodes: int, fanout: float) -> float:
    """The share of publications a node receives: it serves a channel if one of its subscribers is there."""
    return 1 - (1 - 1 / nodes) ** fanout if nodes > 1 else 1.0


def plan(load: Load, k: Constants) -> dict[str, Any]:
    deliveries = load.rate * load.fanout
    nodes = max(1, math.ceil(load.connections / load.max_per_node))
    for _ in range(100_000):
        received = load.rate * share_served(nodes, load.fanout)
        node_cpu = (deliveries / nodes * k.node_us_per_delivery + received * k.node_us_per_publication) / 1e6
        if node_cpu <= load.cpu_target:
            break
        nodes += max(1, nodes // 20)
    else:
        raise ValueError("no node count up to the search bound fits; check the inputs")
    per_node_conns = load.connections / nodes
    node_mib = per_node_conns * (k.node_kib_per_connection + load.slow_share * load.outbox_kib) / 1024
    serving = nodes * share_served(nodes, load.fanout)  # nodes that receive each publication
    brokers = {}
    for kind, us in k.broker_us_per_publication.items():
        cpu = load.rate * (us + serving * k.broker_us_per_node_sent.get(kind, 0.0)) / 1e6
        brokers[kind] = {
            "cpu_cores": cpu,
            "shards": max(1, math.ceil(cpu / load.cpu_target)),
            "live_connections_per_node": "one" if kind == "redis" else "one per shard",
        }
    history_mib = load.channels * (k.meta_bytes + load.history * (load.payload + k.bytes_per_entry_overhead)) / 2**20
    return {
        "deliveries_per_s": deliveries,
        "nodes": nodes,
        "connections_per_node": per_node_conns,
        "node_cpu_share": node_cpu,
        "node_memory_mib": node_mib,
        "publications_received_per_node_per_s": received,
        "nodes_receiving_each_publication": serving,
        "brokers": brokers,
        "broker_memory_mib": history_mib,
        "broker_egress_publications_per_s": load.rate * serving,
    }


def render(load: Load, k: Constants, p: dict[str, Any]) -> str:
    lines = [
        f"Load: {load.connections:,} connections, {load.channels:,} channels, {load.rate:,.0f} publications/s,"
        f" fan-out {load.fanout:,.0f}, history {load.history} x {load.payload} B",
        f"Constants (from loadtest/results/{k.sources['bench']} and {k.sources['cluster']}):",
        f"  node: {k.node_us_per_delivery:.2f} µs CPU per delivery, {k.node_us_per_publication:.0f} µs per publication"
        f" received from the broker, {k.node_kib_per_connection:.1f} KiB per idle connection",
    ]
    for kind, us in k.broker_us_per_publication.items():
        lines.append(
            f"  {kind}: {us:.0f} µs CPU per publication (appendfsync always, replicas included),"
            f" +{k.broker_us_per_node_sent.get(kind, 0):.0f} µs per node it is sent to"
        )
    lines.append(
        f"  redis memory: {k.meta_bytes:.0f} B meta per channel, {k.bytes_per_entry_overhead:.0f} B per history entry"
        " beyond its payload"
    )
    lines += [
        "",
        f"Deliveries: {p['deliveries_per_s']:,.0f}/s",
        f"Edge nodes (one core each, at most {load.cpu_target:.0%} busy): {p['nodes']:,}"
        f" with {p['connections_per_node']:,.0f} connections, {p['node_cpu_share']:.0%} of a core,"
        f" {p['node_memory_mib']:,.0f} MiB each (incl. {load.slow_share:.0%} slow consumers x {load.outbox_kib:.0f} KiB);"
        f" each node receives {p['publications_received_per_node_per_s']:,.0f} publications/s",
        f"Broker fan-out: each publication goes to {p['nodes_receiving_each_publication']:,.1f} nodes"
        f" ({p['broker_egress_publications_per_s']:,.0f} messages/s leave the broker)",
    ]
    for kind, b in p["brokers"].items():
        if kind == "redis":
            fits = "fits" if b["shards"] == 1 else "does NOT fit: one Redis serves commands on one core"
            lines.append(f"  one Redis: {b['cpu_cores']:.2f} cores needed at this rate ({fits})")
        else:
            lines.append(
                f"  {kind}: {b['cpu_cores']:.2f} cores -> {b['shards']} primaries (+ replicas),"
                f" one live connection per primary per node"
            )
    lines += [
        f"Broker memory for history: {p['broker_memory_mib']:,.0f} MiB (before replicas; x2 with one replica per shard)",
        "",
        "Not measured here (see docs/scaling.md, 'What this machine cannot measure'): NATS and Kafka server CPU per",
        "publication, kernel TCP memory per connection, the proxy in front, networks slower than loopback.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.capacity", description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, required=True)
    parser.add_argument("--channels", type=int, required=True)
    parser.add_argument("--rate", type=float, required=True, help="publications per second, all channels together")
    parser.add_argument("--fanout", type=float, required=True, help="subscribers reached by one publication")
    parser.add_argument("--history", type=int, default=300, help="history entries kept per channel")
    parser.add_argument("--payload", type=int, default=200, help="bytes per publication")
    parser.add_argument("--cpu-target", type=float, default=0.6, help="share of a core a node or shard may use")
    parser.add_argument("--max-per-node", type=int, default=50_000, help="connections one node may hold")
    parser.add_argument("--slow-share", type=float, default=0.01, help="share of connections backlogged at once")
    parser.add_argument("--outbox-kib", type=float, default=1024, help="KiB a backlogged connection may hold")
    parser.add_argument("--bench", type=Path, help="a bench-*.json (default: the newest)")
    parser.add_argument("--cluster", type=Path, help="a cluster-*.json (default: the newest)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    args = parser.parse_args(argv)
    bench = args.bench or newest("bench-*.json")
    cluster = args.cluster or newest("cluster-*.json")
    if bench is None or cluster is None:
        print("needs loadtest/results/bench-*.json (make bench) and cluster-*.json (make bench-cluster)", file=sys.stderr)
        return 2
    constants = load_constants(bench, cluster)
    load = Load(
        args.connections, args.channels, args.rate, args.fanout, args.history, args.payload,
        args.cpu_target, args.max_per_node, args.slow_share, args.outbox_kib,
    )
    result = plan(load, constants)
    if args.json:
        print(json.dumps({"load": vars(args) | {"bench": str(bench), "cluster": str(cluster)}, "plan": result}, indent=2, default=str))
    else:
        print(render(load, constants, result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
