"""Measure presence writes and reads on real brokers, and the latency a connect hook adds.

    .venv/bin/python -m loadtest.presence_bench

Prints one line per figure; docs/presence.md and docs/hooks.md quote them.
Everything runs on 127.0.0.1: real redis-server and nats-server (tests/servers),
real node processes and a real Starlette backend (tests/hook_backend.py).
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time

from broker_adapters import open_broker
from broker_adapters.base import NullListener
from broker_adapters.presence import ChannelPresence, PresenceEntry, PresenceSettings
from tests.clients import WSClient
from tests.processes import ROOT, NodeProcess, free_port, http_status, wait_for
from tests.servers import running


async def store_figures(url: str, kind: str) -> None:
    broker = open_broker(url)
    await broker.start(NullListener())
    store = broker.presence(PresenceSettings(ttl=60, max_clients=5000))
    assert store is not None
    try:
        for channels, per_channel in ((1, 1000), (1000, 10), (100, 100)):
            changes = [
                ChannelPresence(
                    f"bench.{kind}.{channels}.{c}",
                    present=[PresenceEntry(f"node.{c}.{i}", f"user{i}", '{"plan":"pro"}') for i in range(per_channel)],
                    refresh=True,
                )
                for c in range(channels)
            ]
            times = []
            for _ in range(5):
                started = time.perf_counter()
                await store.write("bench-node", changes)
                times.append(time.perf_counter() - started)
            best = statistics.median(times)
            entries = channels * per_channel
            print(f"{kind}: refresh of {entries} entries in {channels} channels: {best * 1000:.1f} ms per write "
                  f"({best / entries * 1e6:.1f} us per entry)")
        channel = f"bench.{kind}.1.0"
        join_times, list_times, count_times = [], [], []
        present = [PresenceEntry(f"node.0.{i}", f"user{i}") for i in range(1000)]
        for i in range(50):
            added = [PresenceEntry(f"join.{i}", "joiner")]
            started = time.perf_counter()
            await store.write("bench-node", [ChannelPresence(channel, present=present + added, added=added)])
            join_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            await store.list(channel)
            list_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            await store.count(channel)
            count_times.append(time.perf_counter() - started)
        print(f"{kind}: one join in a channel of 1000: {statistics.median(join_times) * 1000:.2f} ms; "
              f"list of ~1000: {statistics.median(list_times) * 1000:.2f} ms; "
              f"count: {statistics.median(count_times) * 1000:.2f} ms (medians)")
    finally:
        await broker.close()


async def connect_times(node: NodeProcess, count: int, headers: dict[str, str]) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        client = await WSClient.connect(node.ws_url, additional_headers=headers)
        times.append(time.perf_counter() - started)
        await client.close()
    return times


async def hook_figures() -> None:
    port = free_port()
    backend = await asyncio.to_thread(
        subprocess.Popen, [sys.executable, "-m", "tests.hook_backend", str(port)], cwd=ROOT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: http_status(url + "/healthz") == 200, what="backend")
        headers = {"Cookie": "session=1"}
        with NodeProcess("memory://") as plain:
            base = await connect_times(plain, 200, headers)
        with NodeProcess("memory://", "--hook-connect-url", f"{url}/connect", "--hook-cookies", "session") as hooked:
            hooked_times = await connect_times(hooked, 200, headers)
            metrics = hooked.metrics()
        calls = metrics['fanline_hook_seconds_count{hook="connect"}']
        mean = metrics['fanline_hook_seconds_sum{hook="connect"}'] / calls

        def q(values: list[float], p: float) -> float:
            return sorted(values)[int(p * (len(values) - 1))] * 1000

        print(f"connect without hook: p50 {q(base, 0.5):.2f} ms, p99 {q(base, 0.99):.2f} ms")
        print(f"connect with connect hook: p50 {q(hooked_times, 0.5):.2f} ms, p99 {q(hooked_times, 0.99):.2f} ms; "
              f"hook call mean {mean * 1000:.2f} ms over {calls:.0f} calls")
    finally:
        backend.kill()
        backend.wait(10)


async def main() -> None:
    for kind in ("redis", "nats"):
        with running(kind) as server:
            await store_figures(server.url(), kind)
    await hook_figures()


if __name__ == "__main__":
    asyncio.run(main())
