"""The node's safety net: a live message lost without a trace still arrives.

A Redis publication whose broadcast went nowhere (here: a native publisher
that PUBLISHes to the wrong pub/sub channel) is in history but never reaches
the node live.  The periodic stream check notices the stream top moved past
what was delivered and repairs the gap from history.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from .clients import WSClient, publish
from .processes import NodeProcess
from .servers import running


@pytest.fixture(scope="module")
def redis_server() -> Iterator[Any]:
    with running("redis") as server:
        yield server


async def test_a_publication_whose_broadcast_was_lost_is_delivered_by_the_stream_check(
    redis_server: Any, channel: str
) -> None:
    from .servers.redis_server import documented_publish_script

    with NodeProcess(redis_server.url(), "--stream-check-interval", "1") as node:
        client = await WSClient.connect(node.ws_url)
        await client.subscribe(channel)
        await publish(node.url, channel, "first")
        assert (await client.events(1))[0]["data"] == "first"
        keys = [f"fanline:{{{channel}}}:meta", f"fanline:{{{channel}}}:stream"]
        args = ["nobody-listens-here", b'"lost in transit"', "", 1000, 600_000, 86_400_000, secrets.token_hex(4)]
        with redis_server._client() as raw:
            raw.eval(documented_publish_script(), 2, *keys, *args)
        (event,) = await client.events(1, timeout=10)
        assert event["data"] == "lost in transit"
        assert node.metrics()['fanline_resyncs_total{outcome="stream_check"}'] >= 1
        await client.close()
