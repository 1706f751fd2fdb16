"""Redis-specific behaviour of the adapter, against a real redis-server.

The shared contract is in test_conformance.py; this checks what only Redis
has: its Lua scripts derive the epoch of a channel without a stream exactly
as broker_adapters/empty.py documents it, from the data set's generation key.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from broker_adapters.empty import empty_epoch, period_index
from broker_adapters.types import encode_data

from .listener import open_started
from .servers import running
from .servers.redis_server import Server


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with running("redis") as instance:
        yield instance


async def test_the_scripts_derive_an_empty_channels_epoch_as_documented(server: Server) -> None:
    broker = await open_started(server.url(meta_ttl=3600))
    try:
        period = 3_600_000
        for _attempt in range(3):  # a period may end between the read and the clock; then read again
            before = time.time() * 1000
            empty = (await broker.history("redis.empty", None, 0)).top
            after = time.time() * 1000
            if period_index("fanline:{redis.empty}:meta", before, period) == period_index(
                "fanline:{redis.empty}:meta", after, period
            ):
                break
        with server._client() as client:
            generation = client.get("fanline:generation").decode()
            assert client.exists("fanline:{redis.empty}:meta") == 0
        assert empty.offset == 0
        assert empty.epoch == empty_epoch(generation, "fanline:{redis.empty}:meta", before, period)
        first = await broker.publish("redis.empty", encode_data(1))
        assert first.epoch == empty.epoch and first.offset == 1
    finally:
        await broker.close()


async def test_losing_the_generation_gives_empty_channels_new_epochs(server: Server) -> None:
    broker = await open_started(server.url())
    try:
        before = (await broker.history("redis.gen", None, 0)).top
        with server._client() as client:
            client.delete("fanline:generation")
        after = (await broker.history("redis.gen", None, 0)).top
        assert after.epoch != before.epoch and after.offset == 0
    finally:
        await broker.close()
