"""The node's safety net: a live message lost without a trace still arrives.

A Redis publication whose broadcast went nowhere (here: a native publisher
that PUBLISHes to the wrong pub/sub channel) is in history but never reaches
the node live.  The periodic stream check notices the stream top moved past
what was delivered and repairs the gap from history.
"""

from __future__ import annotations

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
    with NodeProcess(redis_server.url(), "--stream-check-interval", "1") as node:
        client = await WSClient.connect(node.ws_url)
        await client.subscribe(channel)
        await publish(node.url, channel, "first")
        assert (await client.events(1))[0]["data"] == "first"
        redis_server.raw_publish(channel, b'"lost in transit"', live="nobody-listens-here")
        (event,) = await client.events(1, timeout=10)
        assert event["data"] == "lost in transit"
        assert node.metrics()['fanline_resyncs_total{outcome="stream_check"}'] >= 1
        await client.close()
