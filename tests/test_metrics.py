"""What /metrics says about the process (read at scrape time) and what it counts on the wire."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import websockets

import node
from node.process_metrics import LoopLag

from .clients import WSClient
from .processes import NodeProcess, wait_for


def _publish(url: str, channel: str, data: object) -> None:
    body = json.dumps({"channel": channel, "data": data}).encode()
    request = urllib.request.Request(url + "/api/publish", data=body, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


async def test_process_metrics_are_read_at_scrape_time(memory_node: NodeProcess) -> None:
    before = memory_node.metrics()
    assert before["process_resident_memory_bytes"] > 0 and before["process_cpu_seconds_total"] > 0
    assert before["process_max_fds"] >= before["process_open_fds"] > 0
    # Each client connection is one more descriptor, seen at the next scrape.
    clients = [await WSClient.connect(memory_node.ws_url) for _ in range(5)]
    try:
        assert memory_node.metrics()["process_open_fds"] >= before["process_open_fds"] + 5
    finally:
        await asyncio.gather(*(client.close() for client in clients))


def test_event_loop_lag_is_sampled(memory_node: NodeProcess) -> None:
    wait_for(lambda: memory_node.metrics()["fanline_event_loop_lag_seconds_count"] >= 2, what="two lag samples")
    metrics = memory_node.metrics()
    count = metrics["fanline_event_loop_lag_seconds_count"]
    assert metrics['fanline_event_loop_lag_seconds_bucket{le="+Inf"}'] == count
    assert metrics["fanline_event_loop_lag_seconds_sum"] >= 0


def test_build_info_names_the_version(memory_node: NodeProcess) -> None:
    (name,) = [key for key in memory_node.metrics() if key.startswith("fanline_build_info{")]
    assert f'version="{node.__version__}"' in name and 'loop="uvloop"' in name
    assert memory_node.metrics()[name] == 1


def test_loop_lag_histogram_is_cumulative() -> None:
    lag = LoopLag(buckets=(0.01, 0.1))
    for value in (0.0, 0.005, 0.05, 3.0, -0.001):
        lag.record(value)
    assert lag.buckets() == [("0.01", 3.0), ("0.1", 4.0), ("+Inf", 5.0)]
    assert abs(lag.sum - 3.055) < 1e-9


async def test_bytes_out_counts_bytes_not_characters(channel: str) -> None:
    # A node of its own: nothing else writes while the event is counted.
    with NodeProcess("memory://") as plain:
        async with websockets.connect(plain.ws_url) as ws:
            await ws.recv()  # connected
            await ws.send(json.dumps({"type": "subscribe", "channel": channel}))
            await ws.recv()  # subscribed
            key = 'fanline_bytes_out_total{transport="ws"}'
            wait_for(lambda: plain.metrics()[key] > 0, what="the replies counted")
            before = plain.metrics()[key]
            _publish(plain.url, channel, "é" * 100 + "€" * 100)
            frame = await asyncio.wait_for(ws.recv(), 10)
            assert isinstance(frame, str) and json.loads(frame)["type"] == "event"
            payload = len(frame.encode())
            assert payload > len(frame)
            # On the wire: the UTF-8 payload and a 4-byte frame header (126 to 65535 bytes of payload).
            wait_for(lambda: plain.metrics()[key] - before >= payload + 4, what="the event counted")
            assert plain.metrics()[key] - before == payload + 4
