"""The Python client's id bookkeeping (broker_adapters/client_positions.py) and a subscription's queue
(broker_adapters/client_subscription.py): which message moves a position, what is resumed from, what the
store holds, and what an application that falls behind is told.  In process, no node: the client is
never connected."""

from __future__ import annotations

import asyncio
import shelve
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker_adapters.client import (
    Client,
    ClientClosed,
    ConnectionFailed,
    Publication,
    Reset,
    ResetReason,
    Subscribed,
    SubscribeError,
    SubscriptionFailed,
    SubscriptionState,
)
from broker_adapters.client_positions import Positions, Since, moves_position, starting_position


def test_every_message_moves_the_position_except_a_subscribed_that_could_not_recover() -> None:
    assert moves_position("event")
    assert moves_position("reset")
    assert moves_position("subscribed")  # without since
    assert moves_position("subscribed", recovered=True)
    assert not moves_position("subscribed", recovered=False)  # its id is the since sent: the reset moves it


def test_a_subscription_starts_from_since_else_from_what_is_known() -> None:
    assert starting_position(Since.KNOWN, "e-4") == "e-4"
    assert starting_position(Since.KNOWN, None) is None
    assert starting_position("e-9", "e-4") == "e-9"
    assert starting_position(None, "e-4") is None  # from now on
    assert starting_position("", "e-4") is None


def test_the_store_holds_processed_positions_under_a_prefix() -> None:
    store: dict[str, str] = {"app:news": "e-4"}
    positions = Positions(store, "app:")
    assert positions.start("news", Since.KNOWN) == "e-4"
    positions.receive("news", "e-5")
    assert store == {"app:news": "e-4"}, "received is not processed"
    positions.commit("news", "e-5")
    assert store == {"app:news": "e-5"}
    assert positions.start("other", "x-1") == "x-1"
    assert store["app:other"] == "x-1"
    positions.forget("news")
    assert "app:news" not in store
    assert positions.start("other2", None) is None and "app:other2" not in store


def test_since_none_forgets_a_stored_position() -> None:
    store = {"fanline:news": "e-4"}
    assert Positions(store).start("news", None) is None
    assert store == {}


class BrokenStore(dict[str, str]):
    def __getitem__(self, key: str) -> str:
        raise OSError("disk gone")

    def get(self, key: str, default: object = None) -> str:  # type: ignore[override]
        raise OSError("disk gone")

    def __setitem__(self, key: str, value: str) -> None:
        raise OSError("disk full")


def test_a_failing_store_is_ignored_and_memory_stays_right(caplog: pytest.LogCaptureFixture) -> None:
    positions = Positions(BrokenStore())
    assert positions.start("news", Since.KNOWN) is None
    positions.receive("news", "e-1")
    positions.commit("news", "e-1")
    positions.commit("news", "e-2")
    assert positions.processed["news"] == "e-2"
    assert sum("position store failed" in r.message for r in caplog.records) == 1, "logged once"


def test_a_shelve_file_is_a_store(tmp_path: Path) -> None:
    with shelve.open(str(tmp_path / "positions")) as shelf:
        positions = Positions(shelf)  # type: ignore[arg-type]
        positions.start("news", "e-1")
        positions.commit("news", "e-2")
    with shelve.open(str(tmp_path / "positions")) as shelf:
        assert Positions(shelf).start("news", Since.KNOWN) == "e-2"  # type: ignore[arg-type]


# -- a subscription's queue, driven the way the client's reader drives it ----------------------------


@pytest.fixture
def store() -> dict[str, str]:
    return {}


@pytest.fixture
def client(store: dict[str, str]) -> Iterator[Client]:
    yield Client("http://127.0.0.1:9", store=store, max_queue=3)


async def take(sub: object, count: int) -> list[object]:
    out = []
    async with asyncio.timeout(2):
        async for item in sub:  # type: ignore[attr-defined]
            out.append(item)
            if len(out) == count:
                break
    return out


def deliver(client: Client, channel: str, *messages: dict[str, object]) -> None:
    """As the reader does: every message of a frame, in order."""
    for message in messages:
        client._message({"channel": channel, **message})


async def test_items_are_committed_when_the_application_asks_for_the_next(client: Client, store: dict[str, str]) -> None:
    sub = client.subscribe("news")
    sub.pending_rid = 1
    deliver(client, "news", {"type": "subscribed", "id": "e-0", "rid": 1}, {"type": "event", "id": "e-1", "data": 1})
    deliver(client, "news", {"type": "event", "id": "e-2", "data": 2})
    (first,) = await take(sub, 1)
    assert first == Publication("news", "e-1", 1)
    assert store == {"fanline:news": "e-0"}, "the confirmation is processed, the event not yet"
    (second,) = await take(sub, 1)
    assert second == Publication("news", "e-2", 2)
    assert store == {"fanline:news": "e-1"} and sub.position == "e-1"
    assert client._positions.received["news"] == "e-2", "the next subscribe resumes after what arrived"


async def test_a_failed_resume_moves_only_with_its_reset(client: Client, store: dict[str, str]) -> None:
    store["fanline:news"] = "a-7"
    sub = client.subscribe("news")
    sub.pending_rid = 1
    deliver(client, "news", {"type": "subscribed", "id": "a-7", "recovered": False, "rid": 1})
    assert client._positions.received["news"] == "a-7"
    deliver(client, "news", {"type": "reset", "id": "b-3", "reason": "epoch_changed"})
    assert client._positions.received["news"] == "b-3"
    deliver(client, "news", {"type": "event", "id": "b-4", "data": "x"})
    reset, event = await take(sub, 2)
    assert reset == Reset("news", "b-3", ResetReason.EPOCH_CHANGED, previous="a-7")
    assert "rebuild" in reset.advice
    assert store == {"fanline:news": "b-3"}
    assert event == Publication("news", "b-4", "x")


async def test_an_unknown_reset_reason_is_kept_as_text(client: Client) -> None:
    sub = client.subscribe("news")
    sub.pending_rid = 1
    deliver(client, "news", {"type": "subscribed", "id": "a-1", "rid": 1}, {"type": "reset", "id": "a-9", "reason": "new_reason"})
    (reset,) = await take(sub, 1)
    assert isinstance(reset, Reset) and reset.reason == "new_reason" and "new_reason" in reset.advice


async def test_events_before_the_confirmation_or_of_an_older_subscribe_are_not_delivered(client: Client) -> None:
    sub = client.subscribe("news")
    sub.pending_rid = 2
    deliver(client, "news", {"type": "event", "id": "e-1", "data": "stale"})  # not confirmed yet
    deliver(client, "news", {"type": "subscribed", "id": "e-0", "rid": 1})  # an older subscribe's reply
    deliver(client, "news", {"type": "event", "id": "e-1", "data": "stale"})
    assert sub.queued == 0
    deliver(client, "news", {"type": "subscribed", "id": "e-1", "rid": 2}, {"type": "event", "id": "e-2", "data": "live"})
    assert [item.id for item in await take(sub, 1)] == ["e-2"]  # type: ignore[attr-defined]


async def test_an_application_that_falls_behind_gets_a_slow_consumer_reset(client: Client, store: dict[str, str]) -> None:
    sub = client.subscribe("news")
    sub.pending_rid = 1
    deliver(client, "news", {"type": "subscribed", "id": "e-0", "rid": 1}, {"type": "event", "id": "e-1", "data": 1})
    (first,) = await take(sub, 1)  # handed, being processed
    for n in range(2, 8):  # max_queue is 3: e-5 finds e-2..e-4 queued
        deliver(client, "news", {"type": "event", "id": f"e-{n}", "data": n})
    items = await take(sub, 3)
    # e-2..e-5 are gone, and the application is told where from and up to where.
    assert items[0] == Reset("news", "e-5", ResetReason.SLOW_CONSUMER, previous="e-1")
    assert [i.id for i in items[1:]] == ["e-6", "e-7"]  # type: ignore[attr-defined]
    assert sub.queued == 0 and store == {"fanline:news": "e-6"}


async def test_callbacks_see_confirmations_and_refusals_and_a_final_refusal_ends_the_iteration(client: Client) -> None:
    seen: list[object] = []
    sub = client.subscribe("news", on_subscribed=seen.append, on_error=seen.append)
    sub.pending_rid = 1
    client._pending[1] = "news"
    client._message({"type": "error", "code": "subscribe_forbidden", "message": "no", "channel": "news", "rid": 1})
    assert seen == [SubscribeError("news", "subscribe_forbidden", "no")]
    assert client.subscription("news") is None
    with pytest.raises(SubscriptionFailed) as failed:
        await take(sub, 1)
    assert failed.value.code == "subscribe_forbidden"
    with pytest.raises(SubscriptionFailed):
        await sub.wait_subscribed(1)


async def test_a_callback_that_raises_is_logged_and_delivery_goes_on(client: Client, caplog: pytest.LogCaptureFixture) -> None:
    def broken(confirmation: Subscribed) -> None:
        raise RuntimeError("application bug")

    sub = client.subscribe("news", on_subscribed=broken)
    sub.pending_rid = 1
    deliver(client, "news", {"type": "subscribed", "id": "e-0", "rid": 1}, {"type": "event", "id": "e-1", "data": 1})
    assert [i.id for i in await take(sub, 1)] == ["e-1"]  # type: ignore[attr-defined]
    assert any("callback raised" in r.message for r in caplog.records)


async def test_a_permanent_failure_ends_every_subscription_after_what_it_received(client: Client) -> None:
    sub = client.subscribe("news")
    sub.pending_rid = 1
    deliver(client, "news", {"type": "subscribed", "id": "e-0", "rid": 1}, {"type": "event", "id": "e-1", "data": 1})
    client._fail(4001, "invalid_token")
    assert [i.id for i in await take(sub, 1)] == ["e-1"]  # type: ignore[attr-defined]
    with pytest.raises(ConnectionFailed) as failed:
        await take(sub, 1)
    assert (failed.value.code, failed.value.reason) == (4001, "invalid_token")
    with pytest.raises(ConnectionFailed):
        await client.publish("news", 1)


async def test_unsubscribe_and_close_end_the_iteration_at_once(client: Client, store: dict[str, str]) -> None:
    news, other = client.subscribe("news", since="e-3"), client.subscribe("other", since="o-1")
    assert client.subscribe("news") is news, "one handle per channel"
    news.pending_rid = other.pending_rid = 1
    deliver(client, "news", {"type": "subscribed", "id": "e-3", "recovered": True, "replayed": 1, "rid": 1})
    deliver(client, "news", {"type": "event", "id": "e-4", "data": 1})
    news.unsubscribe()
    assert await take(news, 1) == [] and "fanline:news" not in store
    await client.close()
    assert await take(other, 1) == []
    assert store == {"fanline:other": "o-1"}, "close keeps what was processed"
    with pytest.raises(ClientClosed):
        client.subscribe("news")
    with pytest.raises(ClientClosed):
        await client.publish("news", 1)


def test_options_are_checked_at_once() -> None:
    with pytest.raises(ValueError):
        Client("127.0.0.1:8000")
    with pytest.raises(ValueError):
        Client([])
    with pytest.raises(ValueError):
        Client("http://h", token="t", ticket="k")
    with pytest.raises(ValueError):
        Client("http://h", heartbeat=0)


async def test_a_server_unsubscribe_ends_the_subscription_after_what_it_received(client: Client, store: dict[str, str]) -> None:
    sub = client.subscribe("news")
    sub.pending_rid = 1
    deliver(client, "news", {"type": "subscribed", "id": "e-0", "rid": 1}, {"type": "event", "id": "e-1", "data": 1})
    deliver(client, "news", {"type": "unsubscribed", "reason": "server"})
    assert client.subscription("news") is None, "never subscribed again on its own (docs/protocol.md)"
    assert [i.id for i in await take(sub, 2)] == ["e-1"]  # type: ignore[attr-defined]
    assert store == {"fanline:news": "e-1"}, "the position stays where the application left it"


@pytest.mark.parametrize("code", ["broker_unavailable", "backend_unavailable"])
async def test_a_subscribe_the_node_cannot_serve_yet_is_retried(client: Client, code: str) -> None:
    errors: list[SubscribeError] = []
    sub = client.subscribe("news", on_error=errors.append)
    sub.pending_rid = 1
    client._pending[1] = "news"
    client._message({"type": "error", "code": code, "message": "later", "channel": "news", "rid": 1})
    (error,) = errors
    assert error.code == code and error.retry_in is not None and 0 <= error.retry_in <= 0.5
    assert client.subscription("news") is sub and sub.state is SubscriptionState.SUBSCRIBING
