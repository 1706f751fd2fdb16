"""The Python client through the browser tests' cluster scenario (tests/test_browser_client.py).

Clients of broker_adapters/client.py watch a Redis-backed cluster of two nodes
while a publisher sends about 100 events/s, and the cluster goes through a
node SIGKILL and restart, a drain and restart, a broker outage under live
connections, and both nodes restarting while the broker is down (every client
reconnects into a start-up window, where nodes refuse with 503 and
Retry-After until their first broker connection).  One of the clients is a
program that stops and starts again from its position store in the middle.
Every channel's stream as each client's application saw it is compared with
the publications the publisher got acknowledged: 0 lost, 0 duplicated, 0
reordered, and every gap reported as a reset.
"""

from __future__ import annotations

import asyncio
import json
import random
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from broker_adapters.client import Client, ClientEvent, Disconnected, Draining, Failed, Publication, Reset

from .processes import NodeProcess, http_status, wait_for
from .servers import running
from .test_browser_client import Publisher, Verdict, check

pytestmark = pytest.mark.slow

CHANNELS = ["pychaos:a", "pychaos:b", "pychaos:c"]


@dataclass
class Stream:
    """One channel as an application saw it: (seq, id) of every publication, and where resets came."""

    events: list[tuple[int, str]] = field(default_factory=list)
    resets: list[int] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)


@dataclass
class Program:
    """An application: one Client at a time (a restart replaces it, on the same store), its streams."""

    name: str
    make: Callable[[], Client]
    streams: dict[str, Stream] = field(default_factory=lambda: {c: Stream() for c in CHANNELS})
    events: list[ClientEvent] = field(default_factory=list)
    client: Client | None = None
    readers: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        self.client = self.make()
        self.client.listen(self.events.append)
        self.client.connect()
        self.readers = [asyncio.create_task(self._read(channel)) for channel in CHANNELS]

    async def _read(self, channel: str) -> None:
        assert self.client is not None
        stream = self.streams[channel]
        async for item in self.client.subscribe(channel):
            if isinstance(item, Publication):
                stream.events.append((item.data["seq"], item.id))
            elif isinstance(item, Reset):
                stream.resets.append(len(stream.events))
                stream.reasons.append(str(item.reason))

    async def restart(self) -> None:
        """Stop as a program does (positions stay in the store), and start again."""
        assert self.client is not None
        await self.client.close()
        await asyncio.gather(*self.readers)
        self.start()

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.close()
        await asyncio.gather(*self.readers, return_exceptions=True)

    def of(self, kind: type[Any]) -> list[Any]:
        return [event for event in self.events if isinstance(event, kind)]


async def until(predicate: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    for _ in range(int(timeout / 0.05) + 1):
        if predicate():
            return
        if asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _connections(node: NodeProcess) -> int:
    with urllib.request.urlopen(node.internal_url + "/drain", timeout=5) as response:
        return int(json.loads(response.read())["connections"])


def _drain(node: NodeProcess) -> None:
    urllib.request.urlopen(urllib.request.Request(node.internal_url + "/drain", method="POST"), timeout=5).close()


async def test_python_clients_keep_every_event_through_kills_drains_restarts_and_a_broker_outage() -> None:
    with running("redis") as redis:
        a, b = nodes = [NodeProcess(redis.url(), "--drain-window", "2") for _ in range(2)]
        for node in nodes:
            node.start()
        store: dict[str, str] = {}
        options: dict[str, Any] = {"shuffle": False, "backoff_max": 5.0}
        programs = [
            Program("on A, B", lambda: Client([a.url, b.url], **options)),
            Program("on B, A", lambda: Client([b.url, a.url], **options)),
            # Service discovery: a callable gives the URL for every attempt.
            Program("discovery", lambda: Client(lambda: random.choice([a.url, b.url]), **options)),
            Program("restarts", lambda: Client([b.url, a.url], store=store, **options)),
        ]
        try:
            for program in programs:
                program.start()
            for program in programs:
                assert program.client is not None
                for channel in CHANNELS:
                    await program.client.subscribe(channel).wait_subscribed(20)
            await _chaos(a, b, redis, programs)
        finally:
            for program in programs:
                await program.stop()
            for node in nodes:
                node.stop()


async def _chaos(a: NodeProcess, b: NodeProcess, redis: Any, programs: list[Program]) -> None:
    with Publisher([a, b], CHANNELS) as publisher:
        await asyncio.sleep(1)
        await asyncio.to_thread(a.restart)  # SIGKILL: a crash, then the same port again
        await asyncio.sleep(1)
        await asyncio.to_thread(_drain, b)
        await asyncio.to_thread(wait_for, lambda: _connections(b) == 0, 10, 0.1, "node B drained")
        await programs[3].restart()  # a program restart in the middle of it all
        await asyncio.to_thread(b.stop)
        await asyncio.to_thread(b.restart)
        await asyncio.sleep(1)
        await asyncio.to_thread(redis.kill)  # a broker outage under live connections
        await asyncio.sleep(1.5)
        await asyncio.to_thread(redis.restart)
        await asyncio.sleep(1.5)
        # The start-up window: both nodes restart while the broker is down, so every
        # client reconnects to nodes that have no broker connection yet.
        await asyncio.to_thread(redis.kill)
        for node in (a, b):
            await asyncio.to_thread(node.kill)
            await asyncio.to_thread(node.start, False)
        await asyncio.sleep(1)
        await asyncio.to_thread(redis.restart)
        for node in (a, b):
            await asyncio.to_thread(
                wait_for, lambda node=node: http_status(node.url + "/readyz") == 200, 30, 0.1, "nodes ready"
            )
        await asyncio.sleep(1.5)
    assert not publisher.thread.is_alive()

    def caught_up() -> bool:
        return all(
            program.streams[channel].events and program.streams[channel].events[-1][0] >= publisher.acked[channel][-1][0]
            for program in programs
            for channel in CHANNELS
        )

    await until(caught_up, "every client to catch up", 60)

    verdicts: dict[str, Verdict] = {}
    for program in programs:
        for channel in CHANNELS:
            stream = program.streams[channel]
            verdicts[f"{program.name} {channel}"] = check(publisher.acked[channel], stream.events, stream.resets)
    checked = sum(v.checked for v in verdicts.values())
    disconnects = {p.name: [d.code for d in p.of(Disconnected)] for p in programs}
    print(
        f"\npython client chaos: {checked} acknowledged deliveries checked on {len(verdicts)} streams;"
        f" publisher: {sum(map(len, publisher.acked.values()))} acked, {publisher.ambiguous} ambiguous,"
        f" {publisher.refused} refused; close codes seen: {disconnects}"
    )
    for name, verdict in verdicts.items():
        print(f"  {name}: {verdict}")
    assert all(not p.of(Failed) for p in programs)
    assert all(v.lost == 0 and v.duplicated == 0 and v.reordered == 0 for v in verdicts.values()), verdicts
    assert checked > 1500
    # The clients on B when it drained took its hint: 1012, after exactly reconnect_after.
    drained = [p for p in programs if p.of(Draining)]
    assert drained, "some client was on node B when it drained"
    for program in drained:
        hint = program.of(Draining)[0].reconnect_after
        assert any(d.code == 1012 and d.delay == hint for d in program.of(Disconnected)), program.events
