"""What the Python client (broker_adapters/client.py) costs on the receiving side, next to loadtest/fastclient.py.

    python -m loadtest.client_overhead [--subscribers 200] [--seconds 5] [--idle 1000]

One node (embedded broker) runs pinned to CPU 0; this process pins itself to
CPU 1 and opens, in turn, ``--subscribers`` connections of each kind on one
channel, publishes batches through the HTTP API for ``--seconds`` (with a
window that keeps every outbox far from its bound), and counts deliveries.
The figure is deliveries per second of *this process's CPU time*: how many
deliveries one client core can consume, whatever the node's speed.  Then
``--idle`` idle, subscribed connections of each kind give the memory per
connection (this process's RSS growth).

- ``client``: :class:`broker_adapters.client.Client`, one per connection, each
  subscription read by an ``async for`` task, as an application reads it;
- ``fastclient``: :mod:`loadtest.fastclient`'s raw protocol (counts events by
  a substring, parses nothing), the benchmark's load generator.

Both run on the default asyncio loop and again on uvloop.  Results are
printed as a table and written to loadtest/results/client-overhead-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from broker_adapters.client import Client, Subscription

from .bench import client_cpu_seconds
from .fastclient import HTTPPublisher, Totals, open_clients
from .local import LocalNode, raise_open_files

RESULTS = Path(__file__).resolve().parent / "results"
CHANNEL = "overhead"
BATCH = 50
WINDOW = 200  # publications not yet delivered everywhere: far below the outbox bound (1000)


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class Counter:
    """Deliveries so far, and a wake-up when they reach a mark (the publisher's flow control)."""

    def __init__(self) -> None:
        self.count = 0
        self.mark = -1
        self.waiter: asyncio.Future[None] | None = None

    def add(self, n: int = 1) -> None:
        self.count += n
        if self.waiter is not None and self.count >= self.mark and not self.waiter.done():
            self.waiter.set_result(None)

    async def reach(self, mark: int, timeout: float) -> bool:
        if self.count >= mark:
            return True
        self.mark = mark
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(self.waiter, timeout)
        except TimeoutError:
            return False
        finally:
            self.waiter = None
        return True


# -- the two kinds of subscriber --------------------------------------------------------------------


async def open_python_clients(port: int, count: int, counter: Counter) -> tuple[list[Client], list[asyncio.Task[None]]]:
    clients = [Client(f"http://127.0.0.1:{port}", max_queue=100_000) for _ in range(count)]
    readers = []

    async def read(subscription: Subscription) -> None:
        async for _ in subscription:
            counter.add()

    subscriptions = []
    for client in clients:
        subscriptions.append(client.subscribe(CHANNEL))
        readers.append(asyncio.create_task(read(subscriptions[-1])))
        client.connect()
    async with asyncio.timeout(120):
        for subscription in subscriptions:
            await subscription.wait_subscribed()
    return clients, readers


async def close_python_clients(clients: list[Client], readers: list[asyncio.Task[None]]) -> None:
    await asyncio.gather(*(client.close() for client in clients))
    await asyncio.gather(*readers, return_exceptions=True)


class FastCounter(Totals):
    """fastclient's totals, feeding the same counter."""

    def __init__(self, counter: Counter) -> None:
        super().__init__()
        self.counter = counter

    def add(self, payload: bytes) -> int:
        n = super().add(payload)
        if n:
            self.counter.add(n)
        return n


# -- the measurements ------------------------------------------------------------------------------------


async def consume(port: int, subscribers: int, counter: Counter, seconds: float) -> dict[str, Any]:
    """Publish for ``seconds`` under flow control; deliveries per second of wall time and of client CPU."""
    publisher = HTTPPublisher("127.0.0.1", port)
    await publisher.connect()
    base = counter.count
    await publisher.publish_batch(CHANNEL, 5)  # warm-up, end to end
    if not await counter.reach(base + 5 * subscribers, 30):
        raise RuntimeError("warm-up deliveries did not arrive")
    base = counter.count
    published = 0
    cpu, wall = client_cpu_seconds(), time.perf_counter()
    until = wall + seconds
    while time.perf_counter() < until:
        allowed = base + (published + BATCH - WINDOW) * subscribers
        if not await counter.reach(allowed, 30):
            break
        await publisher.publish_batch(CHANNEL, BATCH)
        published += BATCH
    expected = published * subscribers
    complete = await counter.reach(base + expected, 60)
    cpu, wall = client_cpu_seconds() - cpu, time.perf_counter() - wall
    await publisher.close()
    delivered = counter.count - base
    return {
        "subscribers": subscribers,
        "published": published,
        "delivered": delivered,
        "complete": complete,
        "seconds": wall,
        "client_cpu_seconds": cpu,
        "client_cpu_share": cpu / wall,
        "deliveries_per_s": delivered / wall,
        "deliveries_per_client_cpu_s": delivered / cpu if cpu else float("nan"),
        "client_us_per_delivery": 1e6 * cpu / max(delivered, 1),
    }


async def measure(kind: str, port: int, args: argparse.Namespace) -> dict[str, Any]:
    """Memory first (in a fresh process, so the baseline is clean), then consumption."""
    result: dict[str, Any] = {"kind": kind, "loop": type(asyncio.get_running_loop()).__module__.split(".")[0]}
    counter = Counter()

    async def opened(count: int) -> Callable[[], Awaitable[None]]:
        if kind == "client":
            clients, readers = await open_python_clients(port, count, counter)
            return lambda: close_python_clients(clients, readers)
        fast = await open_clients("ws", "127.0.0.1", port, count, [CHANNEL], FastCounter(counter))

        async def close() -> None:
            for connection in fast:
                connection.close()
            await asyncio.sleep(0.2)

        return close

    close = await opened(10)  # warm the code paths before the baseline
    await close()
    gc.collect()
    before = rss_kib()
    close = await opened(args.idle)
    await asyncio.sleep(1.0)
    gc.collect()
    after = rss_kib()
    await close()
    result["memory"] = {"connections": args.idle, "kib_per_connection": (after - before) / args.idle}
    close = await opened(args.subscribers)
    try:
        result["consume"] = await consume(port, args.subscribers, counter, args.seconds)
    finally:
        await close()
    return result


def one(args: argparse.Namespace) -> int:
    """A child process: one kind on one loop, its result as JSON on stdout."""
    if args.loop == "uvloop":
        import uvloop

        result = uvloop.run(measure(args.kind, args.port, args))
    else:
        result = asyncio.run(measure(args.kind, args.port, args))
    print(json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--idle", type=int, default=1000)
    # Internal: run one measurement in this (child) process.
    parser.add_argument("--kind", choices=("client", "fastclient"), help=argparse.SUPPRESS)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    raise_open_files(2 * (args.subscribers + args.idle) + 1000)
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {1})
    if args.kind:
        return one(args)
    flags = ["--no-demo", "--max-connections", str(args.idle + args.subscribers + 1000)]
    results: list[dict[str, Any]] = []
    with LocalNode("memory://", flags, cpu=0) as node:
        for loop in ("asyncio", "uvloop"):
            for kind in ("client", "fastclient"):
                command = [sys.executable, "-m", "loadtest.client_overhead", *(argv if argv is not None else sys.argv[1:])]
                command += ["--kind", kind, "--loop", loop, "--port", str(node.port)]
                done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=True)
                results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"{'kind':<11} {'loop':<8} {'deliveries/s per client CPU s':>30} {'us/delivery':>12} {'KiB/connection':>15}")
    for r in results:
        c = r["consume"]
        print(
            f"{r['kind']:<11} {r['loop']:<8} {c['deliveries_per_client_cpu_s']:>30,.0f}"
            f" {c['client_us_per_delivery']:>12.1f} {r['memory']['kib_per_connection']:>15.1f}"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    path = RESULTS / f"client-overhead-{stamp}.json"
    path.write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
