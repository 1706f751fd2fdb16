"""The presence capability, every broker: the same tests against each real broker.

Kafka has no structure for presence (docs/presence.md): its adapter says so
by returning no store, and a node on Kafka keeps presence in a Redis beside
it (``presence_store``), which the Redis case here covers.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from broker_adapters import Broker
from broker_adapters.presence import ChannelPresence, PresenceEntry, PresenceSettings, PresenceStore, users_of

from .listener import open_started
from .servers import available_kinds, running

_names = itertools.count()


@pytest.fixture(scope="module", params=available_kinds())
def server(request: pytest.FixtureRequest) -> Iterator[Any]:
    with running(request.param) as instance:
        yield instance


@pytest.fixture
def name() -> str:
    return f"pres.c{next(_names)}"


@pytest.fixture
async def brokers(server: Any) -> AsyncIterator[list[Broker]]:
    """Two adapters, as two nodes have them (one, twice, for the embedded broker)."""
    first = await open_started(server.url())
    second = first if server.kind == "memory" else await open_started(server.url())
    yield [first, second]
    await first.close()
    if second is not first:
        await second.close()


def stores(brokers: list[Broker], **settings: Any) -> list[PresenceStore]:
    found = [b.presence(PresenceSettings(**settings)) for b in brokers]
    if found[0] is None:
        if brokers[0].kind == "redis_cluster":
            pytest.skip("presence on a Redis Cluster is not built yet (docs/brokers/redis-cluster.md, known limits)")
        assert brokers[0].kind == "kafka", "only Kafka may lack a presence structure"
        pytest.skip("Kafka keeps presence in a separate store (presence_store); see docs/presence.md")
    if brokers[0] is brokers[1]:
        return [found[0], found[0]]  # type: ignore[list-item]
    return found  # type: ignore[return-value]


def entry(client: str, user: str = "", info: str | None = None) -> PresenceEntry:
    return PresenceEntry(client, user, info)


async def test_two_nodes_entries_make_one_list(brokers: list[Broker], name: str) -> None:
    a, b = stores(brokers)
    on_a = [entry("a.1", "ada", '{"role":"admin"}'), entry("a.2", "bob")]
    on_b = [entry("b.1", "ada"), entry("b.2")]
    await a.write("node-a", [ChannelPresence(name, present=on_a, added=on_a)])
    await b.write("node-b", [ChannelPresence(name, present=on_b, added=on_b)])
    listed = await a.list(name)
    assert sorted(listed, key=lambda e: e.client) == sorted(on_a + on_b, key=lambda e: e.client)
    assert await b.count(name) == 4
    assert users_of(listed) == 3  # ada, bob, one anonymous
    assert await a.list(name + ".other") == [] and await a.count(name + ".other") == 0


async def test_a_leave_removes_only_that_client(brokers: list[Broker], name: str) -> None:
    a, b = stores(brokers)
    clients = [entry("a.1", "u1"), entry("a.2", "u2")]
    await a.write("node-a", [ChannelPresence(name, present=clients, added=clients)])
    await a.write("node-a", [ChannelPresence(name, present=clients[1:], removed=["a.1"])])
    assert [e.client for e in await b.list(name)] == ["a.2"]
    await a.write("node-a", [ChannelPresence(name, present=[], removed=["a.2"])])
    assert await b.count(name) == 0


async def test_entries_expire_unless_their_node_refreshes_them(brokers: list[Broker], name: str) -> None:
    a, b = stores(brokers, ttl=1.0)
    kept, dropped = [entry("a.1", "kept")], [entry("b.1", "dropped")]
    await a.write("node-a", [ChannelPresence(name, present=kept, added=kept)])
    await b.write("node-b", [ChannelPresence(name, present=dropped, added=dropped)])
    # node-b "dies"; node-a refreshes until node-b's entry is gone (bounded).
    for _ in range(40):
        await a.write("node-a", [ChannelPresence(name, present=kept, refresh=True)])
        if [e.user for e in await a.list(name)] == ["kept"]:
            break
        await asyncio.sleep(0.25)
    assert [e.user for e in await b.list(name)] == ["kept"]
    assert await a.count(name) == 1


async def test_a_channel_holds_at_most_max_clients(brokers: list[Broker], name: str) -> None:
    (a, _) = stores(brokers, max_clients=3)
    clients = [entry(f"a.{i}", f"u{i}") for i in range(5)]
    change = ChannelPresence(name, present=clients, added=clients)
    await a.write("node-a", [change])
    assert change.refused == 2
    assert await a.count(name) == 3 and len(await a.list(name)) == 3


async def test_one_write_carries_many_channels(brokers: list[Broker], name: str) -> None:
    a, b = stores(brokers)
    changes = [ChannelPresence(f"{name}.{i}", present=[entry(f"a.{i}")], added=[entry(f"a.{i}")]) for i in range(20)]
    await a.write("node-a", changes)
    counts = await asyncio.gather(*(b.count(f"{name}.{i}") for i in range(20)))
    assert counts == [1] * 20
