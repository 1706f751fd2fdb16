"""Distributed brokers lose a member mid-stream: clients get every event once, in order, or an explicit reset.

Real clusters on loopback (tests/servers/redis_cluster_server.py: 3 Valkey
primaries + 3 replicas; tests/servers/nats_cluster_server.py: 3 nats-servers
with an R3 stream), two real nodes: clients on node A, publications through
node B's API while a member of the cluster is killed (or a slot moves).
The publisher retries a ``503 broker_unavailable`` as an application would,
so it may publish a value twice; what is checked is what clients receive:

- within one epoch, Redis offsets are consecutive, so every received event
  must follow the previous position exactly (no skipped offset);
- a position moves to another epoch only through an explicit ``reset``;
- each client ends at the broker's final top, and every event whose id the
  publisher was given carries the data it published.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from broker_adapters import Position, open_broker
from broker_adapters.base import NullListener

from .clients import WSClient
from .processes import NodeProcess
from .servers import running

pytestmark = pytest.mark.slow

CHANNELS = 6


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[Any]:
    with running("redis_cluster") as server:
        yield server


@pytest.fixture(scope="module")
def nats_cluster() -> Iterator[Any]:
    with running("nats_cluster") as server:
        yield server


class Publisher:
    """Publishes 0, 1, 2, ... to each channel through a node's API, retrying 503s."""

    def __init__(self, url: str, channels: list[str]) -> None:
        self.url = url
        self.channels = channels
        self.acked: dict[str, Any] = {}  # event id -> data
        self.ids: dict[str, list[str]] = {c: [] for c in channels}
        self.retries = 0
        self.rounds = 0
        self._round_done = asyncio.Event()

    async def run(self, rounds: int, pause: float = 0.02) -> None:
        async with httpx.AsyncClient(timeout=15) as http:
            for round_ in range(rounds):
                for channel in self.channels:
                    await self._publish(http, channel, round_)
                self.rounds = round_ + 1
                self._round_done.set()
                await asyncio.sleep(pause)

    async def _publish(self, http: httpx.AsyncClient, channel: str, value: int) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            response = await http.post(self.url + "/api/publish", json={"channel": channel, "data": value})
            if response.status_code == 200:
                self.acked[response.json()["id"]] = value
                self.ids[channel].append(response.json()["id"])
                return
            assert response.status_code == 503, response.text
            self.retries += 1
            await asyncio.sleep(0.1)
        raise AssertionError(f"publishing to {channel} failed for 60 s")

    async def wait_rounds(self, count: int) -> None:
        async with asyncio.timeout(60):
            while self.rounds < count:
                self._round_done.clear()
                await self._round_done.wait()


async def _tops(url: str, channels: list[str]) -> dict[str, Position]:
    broker = open_broker(url)
    await broker.start(NullListener())
    try:
        return {c: (await broker.history(c, None, 0)).top for c in channels}
    finally:
        await broker.close()


async def _collect(client: WSClient, channels: list[str], until: dict[str, Position]) -> dict[str, list[dict[str, Any]]]:
    """Every event and reset per channel, until each channel's last message is at ``until``."""
    out: dict[str, list[dict[str, Any]]] = {c: [] for c in channels}

    def done() -> bool:
        return all(out[c] and Position.parse(out[c][-1]["id"]) == until[c] for c in channels)

    async with asyncio.timeout(60):
        while not done():
            message = await client.recv(timeout=30)
            if message["type"] in ("event", "reset"):
                out[message["channel"]].append(message)
    return out


def _check(start: str, messages: list[dict[str, Any]], acked: dict[str, Any], contiguous: bool) -> list[str]:
    """The guarantee, for one channel's messages; returns the reset reasons seen."""
    position = Position.parse(start)
    resets = []
    for message in messages:
        at = Position.parse(message["id"])
        if message["type"] == "reset":
            resets.append(message["reason"])
            position = at
            continue
        assert at.epoch == position.epoch, f"epoch changed without a reset: {position} -> {at}"
        if contiguous:
            assert at.offset == position.offset + 1, f"silent gap: {position} -> {at}"
        else:
            assert at.offset > position.offset, f"out of order: {position} -> {at}"
        if message["id"] in acked:
            assert message["data"] == acked[message["id"]]
        position = at
    return resets


async def _subscribe_all(node: NodeProcess, channels: list[str]) -> tuple[WSClient, dict[str, str]]:
    client = await WSClient.connect(node.ws_url)
    starts = {c: (await client.subscribe(c))["id"] for c in channels}
    return client, starts


# -- Redis Cluster ------------------------------------------------------------------------------------


async def test_redis_cluster_primary_killed_mid_stream_fails_over_without_silent_loss(
    redis_cluster: Any, channel: str
) -> None:
    channels = [f"{channel}.{i}" for i in range(CHANNELS)]
    victim = redis_cluster.primary_of(channels[0])
    on_victim = [c for c in channels if redis_cluster.primary_of(c) is victim]
    with NodeProcess(redis_cluster.url()) as node_a, NodeProcess(redis_cluster.url()) as node_b:
        client, starts = await _subscribe_all(node_a, channels)
        publisher = Publisher(node_b.url, channels)
        task = asyncio.create_task(publisher.run(rounds=60))
        try:
            await publisher.wait_rounds(10)
            killed = await asyncio.to_thread(redis_cluster.kill_primary_of, channels[0])
            await task
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        tops = await _tops(redis_cluster.url(), channels)
        received = await _collect(client, channels, tops)
        await client.close()
        # Live delivery works on the new primary, to a client subscribed there now.
        late, _ = await _subscribe_all(node_a, on_victim[:1])
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.post(node_b.url + "/api/publish", json={"channel": on_victim[0], "data": "late"})
            assert response.status_code == 200
        (event,) = await late.events(1)
        assert (event["id"], event["data"]) == (response.json()["id"], "late")
        await late.close()
    await asyncio.to_thread(redis_cluster.revive, killed)
    assert publisher.retries > 0  # the failover was seen by the publisher
    for c in channels:
        resets = _check(starts[c], received[c], publisher.acked, contiguous=True)
        # The promoted replica's channels start a new epoch (it may lack what
        # the old primary had published): one explicit reset each, at most.
        assert resets == (["epoch_changed"] if c in on_victim else []), (c, resets)
        if c not in on_victim:
            assert len([m for m in received[c] if m["type"] == "event"]) == 60


async def test_redis_cluster_slot_migration_mid_stream_keeps_the_guarantee(redis_cluster: Any, channel: str) -> None:
    channels = [f"{channel}.{i}" for i in range(3)]
    with NodeProcess(redis_cluster.url()) as node_a, NodeProcess(redis_cluster.url()) as node_b:
        client, starts = await _subscribe_all(node_a, channels)
        publisher = Publisher(node_b.url, channels)
        task = asyncio.create_task(publisher.run(rounds=40))
        try:
            await publisher.wait_rounds(10)
            source, target = await asyncio.to_thread(redis_cluster.migrate_slot_of, channels[0])
            await task
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        tops = await _tops(redis_cluster.url(), channels)
        received = await _collect(client, channels, tops)
        await client.close()
    assert redis_cluster.primary_of(channels[0]) is target
    for c in channels:
        resets = _check(starts[c], received[c], publisher.acked, contiguous=True)
        assert set(resets) <= {"epoch_changed"} and len(resets) <= 1, (c, resets)
        # Live delivery went on after the move: the last events came live or by resync.
        assert received[c][-1]["type"] == "event"


async def test_redis_cluster_uses_one_live_connection_per_shard(redis_cluster: Any, channel: str) -> None:
    broker = open_broker(redis_cluster.url())
    await broker.start(NullListener())
    try:
        names = [f"{channel}.{i}" for i in range(60)]
        for name in names:
            await broker.subscribe(name)
        shards = {redis_cluster.primary_of(n).port for n in names}
        assert broker.shard_connections == len(shards) == 3  # type: ignore[attr-defined]
        for name in names:
            await broker.unsubscribe(name)
        await asyncio.sleep(0.1)
        assert broker.shard_connections == 0  # type: ignore[attr-defined]
    finally:
        await broker.close()
    # Reads of channels nobody published created at most one key per slot.
    assert redis_cluster.generation_keys() <= 16384


# -- NATS cluster ---------------------------------------------------------------------------------------


async def test_nats_cluster_survives_a_killed_server_with_every_event_once(nats_cluster: Any, channel: str) -> None:
    channels = [f"{channel}.{i}" for i in range(3)]
    with NodeProcess(nats_cluster.url()) as node_a, NodeProcess(nats_cluster.url()) as node_b:
        client, starts = await _subscribe_all(node_a, channels)
        publisher = Publisher(node_b.url, channels)
        task = asyncio.create_task(publisher.run(rounds=60))
        try:
            await publisher.wait_rounds(10)
            leader = await asyncio.to_thread(nats_cluster.stream_leader)
            await asyncio.to_thread(nats_cluster.kill_one, leader)
            await publisher.wait_rounds(40)
            await asyncio.to_thread(nats_cluster.revive, leader)
            await task
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        tops = await _tops(nats_cluster.url(), channels)
        received = await _collect(client, channels, tops)
        await client.close()
    broker = open_broker(nats_cluster.url())
    await broker.start(NullListener())
    try:
        for c in channels:
            assert _check(starts[c], received[c], publisher.acked, contiguous=False) == []
            # R3: the stream kept every acknowledged publication, and clients got exactly the stream.
            history = await broker.history(c, Position.parse(starts[c]).offset, 1000)
            assert history.complete
            assert [m["id"] for m in received[c]] == [p.position.event_id for p in history.publications]
            # Every acknowledged publication reached the client.
            assert set(publisher.ids[c]) <= {m["id"] for m in received[c]}
    finally:
        await broker.close()
