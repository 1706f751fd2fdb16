"""The WebSocket transport, end to end against a real node."""

from __future__ import annotations

import asyncio
import json

import httpx

from .clients import WSClient, publish
from .processes import NodeProcess


async def test_publish_and_receive_several_channels_on_one_connection(memory_node: NodeProcess, channel: str) -> None:
    client = await WSClient.connect(memory_node.ws_url)
    a, b = channel + ".a", channel + ".b"
    sub_a = await client.subscribe(a)
    sub_b = await client.subscribe(b)
    assert sub_a["channel"] == a and sub_b["channel"] == b
    assert "recovered" not in sub_a  # a fresh subscription resumes nothing
    ids = [await publish(memory_node.url, a, {"n": 1}), await publish(memory_node.url, b, "two")]
    ids.append(await publish(memory_node.url, a, [3], event="note"))
    events = await client.events(3)
    assert [(e["channel"], e["data"], e["id"]) for e in events] == [(a, {"n": 1}, ids[0]), (b, "two", ids[1]), (a, [3], ids[2])]
    assert events[2]["event"] == "note" and "event" not in events[0]
    await client.close()


async def test_client_publish_is_acknowledged_with_the_event_id(memory_node: NodeProcess, channel: str) -> None:
    client = await WSClient.connect(memory_node.ws_url)
    await client.subscribe(channel)
    await client.send({"type": "publish", "channel": channel, "data": {"hello": "world"}, "rid": 7})
    received = {}
    while len(received) < 2:
        message = await client.recv()
        received[message["type"]] = message
    assert received["published"]["rid"] == 7
    assert received["event"]["id"] == received["published"]["id"]
    assert received["event"]["data"] == {"hello": "world"}
    await client.close()


async def test_every_subscriber_sees_the_same_order(memory_node: NodeProcess, channel: str) -> None:
    clients = [await WSClient.connect(memory_node.ws_url) for _ in range(4)]
    for client in clients:
        await client.subscribe(channel)

    async def publisher(tag: str) -> None:
        async with httpx.AsyncClient() as http:
            for i in range(25):
                await http.post(memory_node.url + "/api/publish", json={"channel": channel, "data": f"{tag}{i}"})

    await asyncio.gather(*(publisher(tag) for tag in "xyz"))
    sequences = [[(e["id"], e["data"]) for e in await client.events(75)] for client in clients]
    assert all(seq == sequences[0] for seq in sequences)
    offsets = [int(event_id.split("-")[1]) for event_id, _ in sequences[0]]
    assert offsets == sorted(offsets) and len(set(offsets)) == 75
    for client in clients:
        await client.close()


async def test_bad_frames_get_error_frames_and_the_connection_keeps_working(memory_node: NodeProcess, channel: str) -> None:
    client = await WSClient.connect(memory_node.ws_url)
    bystander = await WSClient.connect(memory_node.ws_url)
    await bystander.subscribe(channel)
    cases = [
        ("{not json", "invalid_json"),
        ("[1, 2]", "invalid_message"),
        (json.dumps({"type": "dance"}), "unknown_type"),
        (json.dumps({"channel": "x"}), "invalid_message"),
        (json.dumps({"type": "subscribe"}), "invalid_channel"),
        (json.dumps({"type": "subscribe", "channel": "has space"}), "invalid_channel"),
        (json.dumps({"type": "subscribe", "channel": "x" * 300}), "invalid_channel"),
        (json.dumps({"type": "subscribe", "channel": "ok", "since": "garbage"}), "invalid_event_id"),
        (json.dumps({"type": "unsubscribe", "channel": "never"}), "not_subscribed"),
        (json.dumps({"type": "publish", "channel": "ok"}), "invalid_message"),
        (json.dumps({"type": "publish", "channel": "ok", "data": 1, "event": "fanline.reset"}), "invalid_event_type"),
        (b"\xff\xfe binary", "invalid_json"),
    ]
    for frame, code in cases:
        await client.send_raw(frame)
        error = await client.recv_type("error")
        assert error["code"] == code, (frame, error)
        assert error["message"]
    # Still serving, this client and everyone else.
    await client.subscribe(channel)
    await publish(memory_node.url, channel, "after")
    assert (await client.events(1))[0]["data"] == "after"
    assert (await bystander.events(1))[0]["data"] == "after"
    await client.send({"type": "ping", "rid": "p1"})
    assert (await client.recv_type("pong"))["rid"] == "p1"
    await client.close()
    await bystander.close()


async def test_oversized_message_is_refused_with_an_error(channel: str) -> None:
    with NodeProcess("memory://", "--max-message-bytes", "1024") as node:
        client = await WSClient.connect(node.ws_url)
        await client.send({"type": "ping", "pad": "x" * 900})
        await client.recv_type("pong")
        # uvicorn enforces the frame limit before we see the message: close 1009.
        await client.send({"type": "ping", "pad": "x" * 5000})
        try:
            message = await client.recv(timeout=5)
        except Exception as exc:  # the close surfaces as ConnectionClosed
            assert getattr(getattr(exc, "rcvd", None), "code", None) == 1009, exc
        else:
            raise AssertionError(f"expected a 1009 close, got {message}")
