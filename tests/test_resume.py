"""Resume: exactly the missed events, in order, without duplicates, or an explicit reset.

The property test drives random schedules of publishes and disconnects, with
several concurrent publishers, against a real node; every client, the Python
client on WebSocket or an EventSource-like SSE client, must end with the same
sequence as an observer that never disconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker_adapters.client import Client, Publication

from .clients import SSEClient, WSClient, publish
from .processes import NodeProcess


@dataclass
class ResumingClient:
    """An SSE client that resumes from its last composite id after every drop, as EventSource does."""

    node: NodeProcess
    channel: str
    transport: str = "sse"
    received: list[tuple[str, object]] = field(default_factory=list)
    resets: list[str] = field(default_factory=list)
    last_id: str | None = None

    async def run(self, drops: list[tuple[int, float]], stop: asyncio.Event, total: list[int]) -> None:
        """Receive until ``total[0]`` events have arrived; drop after each count in ``drops``."""
        pending_drops = sorted(drops)
        while True:
            limit = pending_drops[0][0] if pending_drops else None
            await self._session(limit, stop, total)
            if pending_drops and len(self.received) >= pending_drops[0][0]:
                _, pause = pending_drops.pop(0)
                await asyncio.sleep(pause)
                continue
            if stop.is_set() and len(self.received) >= total[0]:
                return

    async def _session(self, drop_after: int | None, stop: asyncio.Event, total: list[int]) -> None:
        def done() -> bool:
            if drop_after is not None and len(self.received) >= drop_after:
                return True
            return stop.is_set() and len(self.received) >= total[0]

        sse = await SSEClient.connect(self.node.url, [self.channel], last_event_id=self.last_id)
        try:
            # Like a WebSocket client's subscribed reply, fanline.subscribed
            # gives the position; a client that drops before it has none.
            first = await sse.next_event(timeout=10)
            assert first.event == "fanline.subscribed", first
            self.last_id = first.id or self.last_id
            while not done():
                try:
                    event = await sse.next_event(timeout=0.2)
                except TimeoutError:
                    continue
                body = event.json()
                self.last_id = event.id or self.last_id
                if event.event == "message":
                    self.received.append((str(body["id"]), body["data"]))
                elif body["type"] == "reset":
                    self.resets.append(str(body["reason"]))
        finally:
            await sse.close()


@dataclass
class PythonClient:
    """The Python client (broker_adapters/client.py): its connection is dropped after each count in
    ``drops`` (and the application pauses), and it resumes by itself."""

    node: NodeProcess
    channel: str
    transport: str = "ws"
    received: list[tuple[str, object]] = field(default_factory=list)
    resets: list[str] = field(default_factory=list)

    async def run(self, drops: list[tuple[int, float]], stop: asyncio.Event, total: list[int]) -> None:
        pending_drops = sorted(drops)
        async with Client(self.node.url, backoff_base=0.02, backoff_max=0.1) as client:
            subscription = client.subscribe(self.channel)
            await subscription.wait_subscribed(10)

            async def drop_due() -> None:
                while pending_drops and len(self.received) >= pending_drops[0][0]:
                    _, pause = pending_drops.pop(0)
                    client.reconnect()
                    await asyncio.sleep(pause)

            await drop_due()
            if total[0] == 0:
                return
            async for item in subscription:
                if isinstance(item, Publication):
                    self.received.append((item.id, item.data))
                else:
                    self.resets.append(str(item.reason))
                await drop_due()
                if len(self.received) >= total[0]:
                    return


async def _scenario(node: NodeProcess, channel: str, publishers: int, per_publisher: int,
                    drops: dict[int, list[tuple[int, float]]]) -> None:
    clients: list[ResumingClient | PythonClient] = [PythonClient(node, channel), PythonClient(node, channel), ResumingClient(node, channel)]
    observer = await WSClient.connect(node.ws_url)
    await observer.subscribe(channel)
    stop = asyncio.Event()
    total = [publishers * per_publisher]
    # Clients subscribe before publishing starts, so all must see everything.
    starts = []
    for index, client in enumerate(clients):
        starts.append(asyncio.create_task(client.run(drops.get(index, []), stop, total)))
    await asyncio.sleep(0.3)

    async def publisher(tag: int) -> None:
        async with httpx.AsyncClient(timeout=10) as http:
            for i in range(per_publisher):
                response = await http.post(node.url + "/api/publish", json={"channel": channel, "data": [tag, i]})
                response.raise_for_status()
                if i % 7 == tag:
                    await asyncio.sleep(0.01)

    await asyncio.gather(*(publisher(tag) for tag in range(publishers)))
    truth = [(e["id"], e["data"]) for e in await observer.events(total[0])]
    stop.set()
    async with asyncio.timeout(30):
        await asyncio.gather(*starts)
    await observer.close()
    for client in clients:
        assert client.resets == [], (client.transport, client.resets)
        assert client.received == truth, (client.transport, len(client.received), len(truth))


drop_lists = st.lists(st.tuples(st.integers(0, 60), st.sampled_from([0.0, 0.05, 0.3])), max_size=3)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    publishers=st.integers(1, 3),
    per_publisher=st.integers(3, 20),
    drops=st.fixed_dictionaries({0: drop_lists, 1: drop_lists, 2: drop_lists}),
)
def test_random_disconnects_lose_nothing_and_duplicate_nothing(
    memory_node: NodeProcess, publishers: int, per_publisher: int, drops: dict[int, list[tuple[int, float]]]
) -> None:
    test_random_disconnects_lose_nothing_and_duplicate_nothing.counter += 1  # type: ignore[attr-defined]
    channel = f"prop.resume.{test_random_disconnects_lose_nothing_and_duplicate_nothing.counter}"  # type: ignore[attr-defined]
    asyncio.run(_scenario(memory_node, channel, publishers, per_publisher, drops))


test_random_disconnects_lose_nothing_and_duplicate_nothing.counter = 0  # type: ignore[attr-defined]


async def _missed_while_away(node: NodeProcess, channel: str, count: int) -> str:
    client = await WSClient.connect(node.ws_url)
    last = (await client.subscribe(channel))["id"]
    await client.close()
    for i in range(count):
        await publish(node.url, channel, i)
    return str(last)


async def test_reset_when_history_was_trimmed(channel: str) -> None:
    with NodeProcess("memory://?history_size=5") as node:
        last = await _missed_while_away(node, channel, 8)
        client = await WSClient.connect(node.ws_url)
        reply = await client.subscribe(channel, since=last)
        # The reply keeps the client where it was; only the reset moves it on,
        # so a cut between the two cannot hide the gap (issue 10).
        assert reply["recovered"] is False and reply["id"] == last
        reset = await client.recv_type("reset")
        assert reset["reason"] == "history_trimmed" and reset["id"] != last
        # From the reset on, the stream continues normally.
        await publish(node.url, channel, "next")
        (event,) = await client.events(1)
        assert event["data"] == "next"
        await client.close()


async def test_reset_when_too_far_behind_the_replay_limit(memory_node: NodeProcess, channel: str) -> None:
    last = await _missed_while_away(memory_node, channel, 101)  # the fixture's replay limit is 100
    client = await WSClient.connect(memory_node.ws_url)
    reply = await client.subscribe(channel, since=last)
    assert reply["recovered"] is False
    assert (await client.recv_type("reset"))["reason"] == "too_far_behind"
    await client.close()


async def test_replay_at_the_limit_is_still_recovered(memory_node: NodeProcess, channel: str) -> None:
    last = await _missed_while_away(memory_node, channel, 100)
    client = await WSClient.connect(memory_node.ws_url)
    reply = await client.subscribe(channel, since=last)
    assert reply["recovered"] is True and reply["replayed"] == 100
    assert [e["data"] for e in await client.events(100)] == list(range(100))
    await client.close()


async def test_forged_position_ahead_of_the_stream_is_reset(memory_node: NodeProcess, channel: str) -> None:
    client = await WSClient.connect(memory_node.ws_url)
    epoch = (await client.subscribe(channel))["id"].split("-")[0]
    await client.send({"type": "unsubscribe", "channel": channel})
    await client.recv_type("unsubscribed")
    reply = await client.subscribe(channel, since=f"{epoch}-999999")
    assert reply["recovered"] is False
    assert (await client.recv_type("reset"))["reason"] == "position_ahead"
    await client.close()


async def test_another_channels_id_is_never_continued(memory_node: NodeProcess, channel: str) -> None:
    other_id = await publish(memory_node.url, channel + ".other", "secret")
    client = await WSClient.connect(memory_node.ws_url)
    reply = await client.subscribe(channel, since=other_id)
    assert reply["recovered"] is False
    assert (await client.recv_type("reset"))["reason"] == "epoch_changed"
    await client.close()


async def test_a_restarted_node_on_the_embedded_broker_resets_resuming_clients(channel: str) -> None:
    node = NodeProcess("memory://")
    node.start()
    try:
        ws_last = await _missed_while_away(node, channel, 1)
        sse = await SSEClient.connect(node.url, [channel])
        await sse.next_event()
        sse_last = sse.last_event_id
        await sse.close()
        node.kill()
        node.start()
        client = await WSClient.connect(node.ws_url)
        reply = await client.subscribe(channel, since=ws_last)
        assert reply["recovered"] is False
        assert (await client.recv_type("reset"))["reason"] == "epoch_changed"
        await client.close()
        again = await SSEClient.connect(node.url, [channel], last_event_id=sse_last)
        hello = await again.next_event()
        assert hello.json()["channels"][channel]["recovered"] is False
        assert hello.id == sse_last  # the composite moves only with the reset
        reset = await again.next_event()
        assert reset.event == "fanline.reset" and reset.json()["reason"] == "epoch_changed"
        assert again.last_event_id == reset.id != sse_last
        with contextlib.suppress(Exception):
            await again.close()
    finally:
        node.stop()
