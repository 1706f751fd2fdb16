"""The SSE transport, parsed the way a browser's EventSource parses it."""

from __future__ import annotations

import httpx

from .clients import SSEClient, publish
from .processes import NodeProcess


async def test_events_on_several_channels_with_types_and_resumable_ids(memory_node: NodeProcess, channel: str) -> None:
    a, b = channel + ".a", channel + ".b"
    stream = await SSEClient.connect(memory_node.url, [a, b])
    assert stream.response.headers["content-type"].startswith("text/event-stream")
    hello = await stream.next_event()
    assert hello.event == "fanline.subscribed"
    assert set(hello.json()["channels"]) == {a, b}
    assert stream.retry == 2000
    await publish(memory_node.url, a, {"n": 1})
    await publish(memory_node.url, b, {"n": 2}, event="notification")
    first, second = await stream.events(2)
    assert first.event == "message" and first.json()["data"] == {"n": 1} and first.json()["channel"] == a
    assert second.event == "notification" and second.json()["channel"] == b
    # One id resumes both channels: a position per channel, in URL order.
    assert second.id is not None and len(second.id.split(".")) == 2
    await stream.close()


async def test_last_event_id_header_resumes_every_channel(memory_node: NodeProcess, channel: str) -> None:
    a, b = channel + ".a", channel + ".b"
    stream = await SSEClient.connect(memory_node.url, [a, b])
    await stream.next_event()
    await publish(memory_node.url, a, 1)
    await stream.events(1)
    resume_from = stream.last_event_id
    await stream.close()
    await publish(memory_node.url, b, 2)
    await publish(memory_node.url, a, 3)
    await publish(memory_node.url, b, 4)
    # As the browser reconnects: same URL, Last-Event-ID header.
    again = await SSEClient.connect(memory_node.url, [a, b], last_event_id=resume_from)
    hello = (await again.next_event()).json()["channels"]
    assert hello[a]["recovered"] and hello[b]["recovered"]
    events = await again.events(3)
    # Order is per channel; channels are independent streams.
    assert [e.json()["data"] for e in events if e.json()["channel"] == a] == [3]
    assert [e.json()["data"] for e in events if e.json()["channel"] == b] == [2, 4]
    await again.close()


async def test_last_event_id_query_parameter_after_a_page_reload(memory_node: NodeProcess, channel: str) -> None:
    stream = await SSEClient.connect(memory_node.url, [channel])
    await stream.next_event()
    resume_from = stream.last_event_id
    await stream.close()
    await publish(memory_node.url, channel, "missed")
    again = await SSEClient.connect(memory_node.url, [channel], query_id=resume_from)
    (event,) = await again.events(1)
    assert event.json()["data"] == "missed"
    await again.close()


async def test_header_wins_over_a_stale_query_parameter(memory_node: NodeProcess, channel: str) -> None:
    stream = await SSEClient.connect(memory_node.url, [channel])
    await stream.next_event()
    stale = stream.last_event_id
    await publish(memory_node.url, channel, "seen")
    await stream.events(1)
    fresh = stream.last_event_id
    await stream.close()
    await publish(memory_node.url, channel, "new")
    again = await SSEClient.connect(memory_node.url, [channel], last_event_id=fresh, query_id=stale)
    (event,) = await again.events(1)
    assert event.json()["data"] == "new"
    await again.close()


async def test_bad_requests_get_json_errors(memory_node: NodeProcess) -> None:
    async with httpx.AsyncClient() as http:
        cases = [
            ("/sse", "invalid_channel"),
            ("/sse?channel=bad%20name", "invalid_channel"),
            ("/sse?channel=a&channel=a", "already_subscribed"),
            ("/sse?channel=a&last_event_id=nonsense", "invalid_event_id"),
            ("/sse?channel=a&channel=b&last_event_id=abc-1", "invalid_event_id"),
        ]
        for path, code in cases:
            response = await http.get(memory_node.url + path)
            assert response.status_code == 400, path
            assert response.json()["error"] == code, path
        assert (await http.get(memory_node.url + "/healthz")).status_code == 200
