"""One chaos run: start the cluster, publish, connect clients, inject the seeded faults, check, report."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import report
from .checker import Ack, ChannelLog, Refusal, Verdict, check, parse_id
from .clients import Client, Death, Env, SSEClient, Stats, WSClient
from .cluster import PERSISTENCE, Cluster
from .publishing import Publishing
from .schedule import Action, Fault, plan

PERSISTENT_DEATHS = {
    Death.NONE: 0.60,
    Death.AFTER_CONNECT: 0.06,
    Death.AFTER_SUBSCRIBED: 0.16,
    Death.MID_REPLAY: 0.12,
    Death.PAUSE: 0.06,
}
STORM_DEATHS = {Death.NONE: 0.8, Death.AFTER_SUBSCRIBED: 0.1, Death.MID_REPLAY: 0.1}
STORM_LOOKBACK = 350  # a storm client resumes from one of the channel's last N acknowledged ids (replay_limit is 300)


@dataclass
class Options:
    broker: str
    seconds: float
    seed: int
    report_dir: Path
    channels: int = 12
    rate: float = 300.0
    ws_clients: int = 36
    sse_clients: int = 18
    settle: float = 40.0
    fault_gap: tuple[float, float] = (5.0, 12.0)
    first_fault: float = 4.0
    quiet: bool = False


@dataclass
class RunResult:
    verdict: Verdict
    run: dict[str, Any]
    paths: tuple[Path, Path]
    client_stats: Stats = field(default_factory=Stats)


def command_line(options: Options) -> str:
    return shlex.join(
        [
            "python", "-m", "loadtest.chaos", "--broker", options.broker, "--seconds", f"{options.seconds:g}",
            "--seed", str(options.seed), "--report-dir", str(options.report_dir),
            "--fault-gap", f"{options.fault_gap[0]:g}", f"{options.fault_gap[1]:g}", "--first-fault", f"{options.first_fault:g}",
            "--ws-clients", str(options.ws_clients), "--sse-clients", str(options.sse_clients),
            "--rate", f"{options.rate:g}", "--channels", str(options.channels),
        ]
    )


class Run:
    def __init__(self, options: Options) -> None:
        self.options = options
        self.rng = random.Random(options.seed)
        self.cluster = Cluster(options.broker)
        self.channels = [f"chaos:c{i}" for i in range(options.channels)]
        self.refusals: list[Refusal] = []
        self.outages: list[tuple[float, float]] = []
        self.clients: list[Client] = []
        self.storm_clients: list[Client] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.fault_counts: dict[str, int] = {}
        self.fault_errors: list[str] = []
        self.stop = asyncio.Event()
        self.settling = asyncio.Event()
        self.started = time.monotonic()

    def say(self, text: str) -> None:
        if not self.options.quiet:
            print(f"[chaos {self.options.broker} {time.monotonic() - self.started:7.1f}s] {text}", flush=True)

    def env(self) -> Env:
        return Env(self.cluster.addresses, self.started, self.refusals, 5.0, self.stop, self.settling)

    def spawn(self, coro: Any) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def execute(self) -> RunResult:
        options = self.options
        self.say(f"seed {options.seed}; starting {options.broker} and {self.cluster.count} node(s)")
        await asyncio.to_thread(self.cluster.start)
        try:
            return await self._run()
        finally:
            await asyncio.to_thread(self.cluster.stop)

    async def _run(self) -> RunResult:
        options = self.options
        self.started = time.monotonic()
        env = self.env()
        for i in range(options.ws_clients + options.sse_clients):
            cls: type[Client] = WSClient if i < options.ws_clients else SSEClient
            count = self.rng.randint(3, 6) if cls is WSClient else self.rng.randint(1, 4)
            client = cls(
                f"{cls.transport}{i}", self.rng.sample(self.channels, count), env, random.Random(self.rng.random()),
                PERSISTENT_DEATHS, lifetime=(10, 60),
            )
            self.clients.append(client)
            self.spawn(client.run())
        publishing = Publishing(
            self.channels, self.cluster.addresses, self.cluster.broker_url() if self.cluster.networked else None,
            options.rate, self.rng.randrange(2**32),
        )
        publisher_task = asyncio.create_task(publishing.run())
        faults = plan(
            options.seed, options.seconds, self.cluster.count, self.cluster.networked, first=options.first_fault,
            gap=options.fault_gap,
        )
        fault_task = asyncio.create_task(self._faults(faults, publishing))
        deadline = self.started + options.seconds
        while time.monotonic() < deadline:
            await asyncio.sleep(min(10.0, max(0.0, deadline - time.monotonic())))
            self.say(
                f"{publishing.stats.acknowledged:,} acknowledged, {self._delivered():,} delivered, "
                f"faults {self.fault_counts}"
            )
        await fault_task
        publishing.stop.set()
        await asyncio.wait_for(publisher_task, 30)
        self.settling.set()
        for client in self.clients:
            client.pause_requested = None
        settle_start = time.monotonic()
        await self._settle(publishing.by_channel)
        settle = time.monotonic() - settle_start
        self.say(f"settled in {settle:.1f} s; stopping clients")
        self.stop.set()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=20)
        for task in list(self.tasks):
            task.cancel()
        logs: list[ChannelLog] = [log for c in self.clients + self.storm_clients for log in c.logs.values()]
        verdict = check(publishing.acks, logs, self.refusals, self.outages)
        stats = Stats()
        for client in self.clients + self.storm_clients:
            stats.add(client.stats)
        run = {
            "broker": options.broker,
            "seed": options.seed,
            "seconds": options.seconds,
            "settle_seconds": settle,
            "channels": options.channels,
            "publish_rate": publishing.stats.acknowledged / options.seconds,
            "publishing": dataclasses.asdict(publishing.stats),
            "clients": f"{options.ws_clients} WebSocket + {options.sse_clients} SSE persistent, "
            f"{len(self.storm_clients)} storm",
            "nodes": self.cluster.count,
            "broker_persistence": PERSISTENCE[options.broker],
            "fault_counts": self.fault_counts,
            "fault_errors": self.fault_errors,
            "client_stats": dataclasses.asdict(stats),
            "refusals": _count_by(f"{r.transport} {r.stage.value}" for r in self.refusals),
            "outages": self.outages,
            "command": command_line(options),
        }
        paths = report.write(options.report_dir, verdict, run)
        if verdict.findings:
            report.write_evidence(options.report_dir, run, verdict, logs, publishing.acks)
        return RunResult(verdict, run, paths, stats)

    def _delivered(self) -> int:
        return sum(len(log.entries) for c in self.clients + self.storm_clients for log in c.logs.values())

    async def _settle(self, by_channel: dict[str, list[Ack]]) -> None:
        """Wait (bounded) until every persistent client stands at or past the last acknowledged publication."""
        last = {channel: parse_id(acks[-1].id) for channel, acks in by_channel.items() if acks}

        def caught_up(client: Client) -> bool:
            for channel in client.channels:
                if channel not in last:
                    continue
                stored = client.stored.get(channel)
                if stored is None:
                    return False
                epoch, offset = parse_id(stored)
                if epoch != last[channel][0] or offset < last[channel][1]:
                    return False
            return True

        deadline = time.monotonic() + self.options.settle
        while time.monotonic() < deadline:
            behind = [c for c in self.clients if not caught_up(c)]
            if not behind:
                return
            await asyncio.sleep(0.5)
        self.say(f"{len([c for c in self.clients if not caught_up(c)])} client(s) still behind after settling")

    async def _faults(self, faults: list[Fault], publishing: Publishing) -> None:
        for fault in faults:
            delay = self.started + fault.at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self.fault_counts[fault.action.value] = self.fault_counts.get(fault.action.value, 0) + 1
            try:
                await self._fault(fault, publishing)
            except Exception as exc:  # noqa: BLE001 - a fault that failed to inject is reported, not fatal
                self.say(f"fault {fault.action.value} failed: {exc!r}")
                self.fault_errors.append(f"{fault.at:.1f}s {fault.action.value}: {exc!r}"[:500])
                self.fault_counts["failed"] = self.fault_counts.get("failed", 0) + 1

    async def _fault(self, fault: Fault, publishing: Publishing) -> None:
        index = fault.target % self.cluster.count
        if fault.action is Action.NODE_KILL:
            await asyncio.to_thread(self.cluster.kill_node, index, fault.down)
        elif fault.action is Action.NODE_DRAIN:
            await asyncio.to_thread(self.cluster.drain_node, index, fault.down)
        elif fault.action is Action.BROKER_RESTART:
            start = time.monotonic() - self.started
            try:
                await asyncio.to_thread(self.cluster.restart_broker, fault.down)
            finally:
                self.outages.append((start, time.monotonic() - self.started))
        elif fault.action is Action.PAUSE:
            for client in self.rng.sample(self.clients, min(fault.count, len(self.clients))):
                client.pause_requested = fault.seconds
        elif fault.action is Action.STORM:
            self._storm(fault.count, index, publishing)

    def _storm(self, count: int, index: int, publishing: Publishing) -> None:
        """Clients resuming at once, from random past positions, on one node already delivering the channels live."""
        node = ("127.0.0.1", self.cluster.nodes[index].port)
        env = dataclasses.replace(self.env(), nodes=lambda: [node])
        for _ in range(count):
            sse = self.rng.random() < 0.3
            channels = self.rng.sample(self.channels, self.rng.randint(1, 3))
            start: dict[str, str] = {}
            for channel in channels:
                acks = publishing.by_channel[channel][-STORM_LOOKBACK:]
                if acks:
                    start[channel] = self.rng.choice(acks).id
            if len(start) != len(channels):
                continue
            cls: type[Client] = SSEClient if sse else WSClient
            client = cls(
                f"storm{len(self.storm_clients)}-{cls.transport}", channels, env, random.Random(self.rng.random()),
                STORM_DEATHS, persistent=False, start=start, lifetime=(3, 8),
            )
            self.storm_clients.append(client)
            self.spawn(client.run(once=True))


def _count_by(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for value in values:
        out[value] = out.get(value, 0) + 1
    return out


def run(options: Options) -> RunResult:
    # The runner's own native publisher reports every broker restart it rides out; the report says enough.
    logging.getLogger("fanline.broker").setLevel(logging.CRITICAL)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        runner = asyncio.run
    return runner(Run(options).execute())  # type: ignore[no-any-return]


def main_result(result: RunResult) -> int:
    verdict = result.verdict
    print(report.to_markdown(verdict, result.run))
    print(f"reports: {result.paths[0]} {result.paths[1]}")
    print(f"seed {result.run['seed']}: {'FAILED' if verdict.failed() else 'passed'}", file=sys.stderr)
    return 1 if verdict.failed() else 0
