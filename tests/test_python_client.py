"""The Python client (broker_adapters/client.py) against real nodes: delivery, resume, positions and
their store, resets, drain hints, Retry-After, the watchdog, credentials and refresh, permanent
failures, a subscribe retried through a broker outage, and close().  The same scenarios as the
JavaScript client's tests (clients/js/test); tests/test_python_client_chaos.py runs the cluster
scenario of the browser tests."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import jwt
import pytest

from broker_adapters.client import (
    Client,
    ClientClosed,
    ClientEvent,
    Connected,
    ConnectionFailed,
    Credential,
    Disconnected,
    Draining,
    ErrorNotice,
    Failed,
    Publication,
    Refreshed,
    RequestFailed,
    Reset,
    State,
    Subscribed,
    SubscribeError,
    SubscriptionFailed,
    SubscriptionState,
)
from broker_adapters.client_subscription import Subscription

from .clients import publish
from .processes import NodeProcess
from .rawws import RawWebSocket
from .servers import running

SECRET = "test-secret-with-enough-length-for-hs256"


# -- helpers ----------------------------------------------------------------------------------------


async def until(predicate: Callable[[], object], what: str, timeout: float = 15.0) -> None:
    """Wait (bounded) until ``predicate`` holds, looking every 20 ms."""
    deadline = asyncio.get_running_loop().time() + timeout
    for _ in range(int(timeout / 0.02) + 1):
        if predicate():
            return
        if asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Log:
    """A subscription read in the background, as an application reads it; every notification kept."""

    def __init__(self, client: Client, channel: str, **options: Any) -> None:
        self.items: list[Publication | Reset] = []
        self.subscribed: list[Subscribed] = []
        self.errors: list[SubscribeError] = []
        self.order: list[str] = []  # what the application saw, in order
        self.end: BaseException | None = None
        self.sub: Subscription = client.subscribe(channel, on_subscribed=self._confirmed, on_error=self.errors.append, **options)
        self.task = asyncio.create_task(self._read())

    def _confirmed(self, confirmation: Subscribed) -> None:
        self.subscribed.append(confirmation)
        self.order.append("subscribed")

    async def _read(self) -> None:
        try:
            async for item in self.sub:
                self.items.append(item)
                self.order.append(type(item).__name__.lower())
        except Exception as exc:
            self.end = exc

    @property
    def publications(self) -> list[Publication]:
        return [item for item in self.items if isinstance(item, Publication)]

    @property
    def resets(self) -> list[Reset]:
        return [item for item in self.items if isinstance(item, Reset)]


class Events:
    """A client's events, by type."""

    def __init__(self, client: Client) -> None:
        self.all: list[ClientEvent] = []
        client.listen(self.all.append)

    def of(self, kind: type[Any]) -> list[Any]:
        return [event for event in self.all if isinstance(event, kind)]


@pytest.fixture
async def client_of(memory_node: NodeProcess) -> AsyncIterator[Callable[..., Client]]:
    """Clients on the shared memory node (or other URLs), each closed at the end of the test."""
    made: list[Client] = []

    def make(url: Any = None, **options: Any) -> Client:
        made.append(Client(url if url is not None else memory_node.url, **options))
        return made[-1]

    yield make
    for client in made:
        await client.close()


def client_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("fanline-client") and not t.done()]


# -- delivery, resume, positions ---------------------------------------------------------------------


async def test_publications_arrive_in_order_and_publish_returns_the_events_id(
    client_of: Callable[..., Client], channel: str
) -> None:
    client = client_of().connect()
    log = Log(client, channel)
    await log.sub.wait_subscribed(10)
    assert client.state is State.CONNECTED
    ids = [await client.publish(channel, {"i": i}, event="odd" if i % 2 else None) for i in range(20)]
    await until(lambda: len(log.items) == 20, "20 publications")
    assert [p.id for p in log.publications] == ids
    assert [p.data["i"] for p in log.publications] == list(range(20))
    assert (log.publications[1].event, log.publications[0].event) == ("odd", None)
    assert await client.ping() >= 0


async def test_reconnect_resumes_every_channel_without_loss_or_duplicates(
    client_of: Callable[..., Client], memory_node: NodeProcess, channel: str
) -> None:
    client = client_of(backoff_base=0.05).connect()
    events = Events(client)
    a, b = Log(client, channel + ".a"), Log(client, channel + ".b")
    await a.sub.wait_subscribed(10)
    await b.sub.wait_subscribed(10)
    published = []
    for i in range(30):
        published.append(await publish(memory_node.url, a.sub.channel, i))
        if i % 10 == 5:
            # Resumed from the last drop first: a reconnect() between two connections has nothing to drop.
            drops = i // 10
            await until(lambda: len(a.subscribed) == len(b.subscribed) == drops + 1, "resumed")  # noqa: B023
            client.reconnect()  # publishing goes on while the client is away
            await publish(memory_node.url, b.sub.channel, i)
    await until(lambda: len(a.items) == 30 and len(b.items) == 3, "every event")
    assert [p.id for p in a.publications] == published
    assert a.resets == b.resets == []
    assert len(events.of(Disconnected)) == 3 and all(d.code == 1000 for d in events.of(Disconnected))
    assert all(s.recovered for s in a.subscribed[1:]) and len(a.subscribed) == 4


async def test_a_new_client_on_the_same_store_resumes_after_what_the_last_one_processed(
    client_of: Callable[..., Client], memory_node: NodeProcess, channel: str
) -> None:
    store: dict[str, str] = {}
    first = client_of(store=store)
    async with first:
        sub = first.subscribe(channel)
        await sub.wait_subscribed(10)
        for i in range(3):
            await publish(memory_node.url, channel, i)
        async with asyncio.timeout(10):
            async for item in sub:
                if item.data == 1:  # type: ignore[union-attr]
                    break  # processed 0 and 1; 2 arrived, not processed
    assert store == {f"fanline:{channel}": first.position(channel)}
    await publish(memory_node.url, channel, 3)
    second = client_of(store=store).connect()
    log = Log(second, channel)
    await until(lambda: len(log.items) == 2, "the events after what was processed")
    assert [p.data for p in log.publications] == [2, 3]
    assert log.subscribed[0].recovered is True and log.subscribed[0].replayed == 2


async def test_since_given_wins_over_the_store_and_none_starts_afresh(
    client_of: Callable[..., Client], memory_node: NodeProcess, channel: str
) -> None:
    ids = [await publish(memory_node.url, channel, i) for i in range(3)]
    store = {f"fanline:{channel}": ids[0], f"fanline:{channel}.x": ids[0]}
    client = client_of(store=store).connect()
    given = Log(client, channel, since=ids[1])
    afresh = Log(client, channel + ".x", since=None)
    await until(lambda: given.items and afresh.subscribed, "both subscribed")
    assert [p.data for p in given.publications] == [2]
    assert afresh.subscribed[0].recovered is None
    await until(lambda: store.get(f"fanline:{channel}.x") == afresh.subscribed[0].id, "the fresh position stored")


async def test_a_refused_subscribe_fails_its_subscription_only(client_of: Callable[..., Client], channel: str) -> None:
    client = client_of().connect()
    good = Log(client, channel)
    bad = Log(client, "fanline.reserved")
    await until(lambda: bad.end is not None, "the refusal")
    assert isinstance(bad.end, SubscriptionFailed) and bad.end.code == "subscribe_forbidden"
    assert bad.errors == [SubscribeError("fanline.reserved", "subscribe_forbidden", bad.errors[0].message)]
    assert bad.sub.state is SubscriptionState.FAILED and client.subscription("fanline.reserved") is None
    await good.sub.wait_subscribed(10)
    await client.publish(channel, "still fine")
    await until(lambda: good.items, "an event on the other channel")
    with pytest.raises(RequestFailed) as refused:
        await client.publish("fanline.reserved", 1)
    assert refused.value.code == "publish_forbidden"


async def test_close_stops_every_task_and_ends_every_subscription(client_of: Callable[..., Client], channel: str) -> None:
    client = client_of().connect()
    log = Log(client, channel)
    await log.sub.wait_subscribed(10)
    assert client_tasks(), "the connection loop and its writer and watchdog run"
    await client.close()
    await asyncio.wait_for(log.task, 5)
    assert log.end is None, "the iteration simply ended"
    assert client.state is State.CLOSED and client_tasks() == []
    with pytest.raises(ClientClosed):
        await client.publish(channel, 1)


async def test_a_restarted_embedded_broker_is_a_new_epoch_and_a_reset_says_so(channel: str) -> None:
    with NodeProcess("memory://") as node:
        async with Client(node.url, backoff_base=0.05) as client:
            log = Log(client, channel)
            await log.sub.wait_subscribed(10)
            await publish(node.url, channel, "before")
            await until(lambda: log.items, "an event")
            before = log.items[0].id
            await asyncio.to_thread(node.restart)
            await until(lambda: log.resets, "the reset", 30)
            reset = log.resets[0]
            assert (reset.reason, reset.previous) == ("epoch_changed", before)
            assert reset.id.split("-")[0] != before.split("-")[0]
            assert log.subscribed[-1] == Subscribed(channel, before, recovered=False)
            await publish(node.url, channel, "after")
            await until(lambda: len(log.publications) == 2, "a live event after the reset")
            assert log.order == ["subscribed", "publication", "subscribed", "reset", "publication"]


# -- reconnect hints and dead connections --------------------------------------------------------------


async def test_a_drain_hint_sets_the_delay_and_the_client_moves_to_the_next_node(
    client_of: Callable[..., Client], memory_node: NodeProcess, channel: str
) -> None:
    with NodeProcess("memory://", "--drain-window", "1") as draining:
        client = client_of([draining.url, memory_node.url], shuffle=False)
        events = Events(client)
        Log(client, channel)
        client.connect()
        await until(lambda: events.of(Connected), "connected")
        assert events.of(Connected)[0].url == draining.ws_url
        async with httpx.AsyncClient(timeout=5) as http:
            (await http.post(draining.internal_url + "/drain")).raise_for_status()
        await until(lambda: len(events.of(Connected)) == 2, "connected again")
        (drain,) = events.of(Draining)
        (gone,) = events.of(Disconnected)
        assert (gone.code, gone.delay) == (1012, drain.reconnect_after) and 0 < drain.reconnect_after <= 5
        assert events.of(Connected)[1].url == memory_node.ws_url


async def test_a_503_refusal_is_retried_after_its_retry_after(client_of: Callable[..., Client]) -> None:
    with NodeProcess("memory://", "--max-connections", "1") as full:
        holder = RawWebSocket("127.0.0.1", full.port)
        try:
            client = client_of(full.url).connect()
            events = Events(client)
            await until(lambda: events.of(Disconnected), "the refusal")
            refusal = events.of(Disconnected)[0]
            assert (refusal.code, refusal.reason) == (1013, "too_many_connections")
            assert refusal.delay >= 5, "Retry-After: 5, plus the jittered backoff"
        finally:
            holder.close()


async def test_two_heartbeats_of_silence_are_a_dead_connection(
    client_of: Callable[..., Client], memory_node: NodeProcess, channel: str
) -> None:
    with NodeProcess("memory://", "--heartbeat-interval", "0.5") as frozen:
        client = client_of([frozen.url, memory_node.url], shuffle=False, backoff_base=0.05)
        events = Events(client)
        log = Log(client, channel)
        client.connect()
        await log.sub.wait_subscribed(10)
        assert frozen.proc is not None
        frozen.proc.send_signal(signal.SIGSTOP)  # the socket stays open; nothing comes through it
        try:
            await until(lambda: any(d.reason == "no heartbeat" for d in events.of(Disconnected)), "the watchdog")
            await until(lambda: client.state is State.CONNECTED, "connected to the live node")
            assert client.url == memory_node.ws_url
        finally:
            frozen.proc.send_signal(signal.SIGCONT)


# -- credentials --------------------------------------------------------------------------------------


def token(seconds: float, sub: str = "ada", secret: str = SECRET) -> str:
    return jwt.encode({"sub": sub, "exp": time.time() + seconds, "channels": ["*"], "publish": ["*"]}, secret, "HS256")


@pytest.fixture(scope="module")
def secured() -> Iterator[NodeProcess]:
    with NodeProcess("memory://", "--client-publish", "--jwt-secret", SECRET, "--auth-timeout", "2") as node:
        yield node


async def ticket(node: NodeProcess) -> Credential:
    async with httpx.AsyncClient(timeout=5) as http:
        response = await http.post(node.url + "/api/tickets", headers={"authorization": f"Bearer {token(600)}"})
        response.raise_for_status()
        return Credential(ticket=response.json()["ticket"])


@pytest.mark.parametrize("auth_frame", [False, True], ids=["header", "auth-frame"])
async def test_a_token_in_a_header_or_the_auth_frame(
    client_of: Callable[..., Client], secured: NodeProcess, channel: str, auth_frame: bool
) -> None:
    client = client_of(secured.url, token=token(600), auth_frame=auth_frame).connect()
    log = Log(client, channel)
    await log.sub.wait_subscribed(10)
    await client.publish(channel, "hi")
    await until(lambda: log.items, "the event")


async def test_a_callback_gives_a_fresh_ticket_for_every_connect(
    client_of: Callable[..., Client], secured: NodeProcess, channel: str
) -> None:
    calls = 0

    async def fresh_ticket() -> Credential:
        nonlocal calls
        calls += 1
        return await ticket(secured)

    client = client_of(secured.url, credential=fresh_ticket).connect()
    log = Log(client, channel)
    await log.sub.wait_subscribed(10)
    client.reconnect()
    await until(lambda: len(log.subscribed) == 2, "resumed with a new ticket")
    assert calls == 2


async def test_refresh_keeps_the_connection_past_the_first_tokens_expiry(
    client_of: Callable[..., Client], secured: NodeProcess, channel: str
) -> None:
    issued = 0

    def short_token() -> str:
        nonlocal issued
        issued += 1
        return token(2)

    client = client_of(secured.url, credential=short_token).connect()
    events = Events(client)
    log = Log(client, channel)
    await log.sub.wait_subscribed(10)
    first_exp = time.time() + 2
    await until(lambda: len(events.of(Refreshed)) >= 2, "two refreshes")
    refreshed = events.of(Refreshed)
    assert refreshed[0].user == "ada" and refreshed[1].exp > first_exp
    assert events.of(Disconnected) == []
    await client.publish(channel, "still here")
    await until(lambda: log.items, "an event")
    assert issued == 3


async def test_an_expired_fixed_token_fails_and_a_callback_reconnects_after_4011(
    client_of: Callable[..., Client], secured: NodeProcess, channel: str
) -> None:
    fixed = client_of(secured.url, token=token(1))
    events = Events(fixed)
    log = Log(fixed, channel)
    fixed.connect()
    await until(lambda: events.of(Failed), "the failure")
    assert events.of(Failed) == [Failed(4011, "token_expired")] and fixed.state is State.FAILED
    await until(lambda: log.end is not None, "the iteration to end")
    assert isinstance(log.end, ConnectionFailed) and log.end.code == 4011

    def broken() -> str:
        raise RuntimeError("identity provider down")

    renewing = client_of(secured.url, credential=lambda: token(1.5), refresh=broken, backoff_base=0.05)
    events = Events(renewing)
    log = Log(renewing, channel + ".2")
    renewing.connect()
    await until(lambda: any(d.code == 4011 for d in events.of(Disconnected)) and len(log.subscribed) == 2, "a reconnect")
    assert any(e.code == "refresh_failed" for e in events.of(ErrorNotice))


@pytest.mark.parametrize(
    ("options", "reason"),
    [({}, "unauthorized"), ({"token": "not-a-jwt"}, "invalid_token"), ({"token": token(600, secret="x" * 32)}, "invalid_token")],
)
async def test_permanent_failures_stop_the_client_and_say_why(
    client_of: Callable[..., Client], secured: NodeProcess, channel: str, options: dict[str, str], reason: str
) -> None:
    client = client_of(secured.url, **options)
    events = Events(client)
    log = Log(client, channel)
    client.connect()
    await until(lambda: log.end is not None, "the failure")
    assert isinstance(log.end, ConnectionFailed) and (log.end.code, log.end.reason) == (4001, reason)
    assert events.of(Failed) == [Failed(4001, reason)] and events.of(Disconnected) == [], "no retry"
    with pytest.raises(ConnectionFailed):
        await client.wait_connected(1)
    assert client_tasks() == []


# -- a broker outage ----------------------------------------------------------------------------------


async def test_a_subscribe_refused_with_broker_unavailable_is_retried_until_the_broker_is_back(channel: str) -> None:
    with running("redis") as redis, NodeProcess(redis.url(), "--subscribe-wait", "0.5") as node:
        async with Client(node.url) as client:
            steady = Log(client, channel)
            await steady.sub.wait_subscribed(10)
            await publish(node.url, channel, "before")
            await until(lambda: steady.items, "the first event")
            since = steady.items[0].id
            await asyncio.to_thread(redis.kill)
            # Subscribed again, from its position, on the open connection while the broker is down.
            steady.sub.unsubscribe()
            log = Log(client, channel, since=since)
            await until(lambda: log.errors, "a refusal", 30)
            first = log.errors[0]
            assert first.code == "broker_unavailable" and first.retry_in is not None and 0 <= first.retry_in <= 0.5
            assert log.sub.state is SubscriptionState.SUBSCRIBING and client.state is State.CONNECTED
            await asyncio.to_thread(redis.restart)
            await until(lambda: log.subscribed, "subscribed after the outage", 30)
            assert log.subscribed[0] == Subscribed(channel, since, recovered=True, replayed=0)
            assert all(e.code == "broker_unavailable" and e.retry_in is not None and e.retry_in <= 5 for e in log.errors)
            async with asyncio.timeout(30):
                while True:  # the node's own publisher may still be reconnecting
                    try:
                        await publish(node.url, channel, "after")
                        break
                    except httpx.HTTPStatusError:
                        await asyncio.sleep(0.1)
            await until(lambda: log.items, "an event after the outage")
            assert log.publications[0].data == "after" and log.resets == []


async def test_a_server_unsubscribe_ends_the_subscription_and_it_is_not_sent_again(
    client_of: Callable[..., Client], secured: NodeProcess, channel: str
) -> None:
    client = client_of(secured.url, credential=lambda: token(600), backoff_base=0.05).connect()
    log = Log(client, channel)
    other = Log(client, channel + ".other")
    await log.sub.wait_subscribed(10)
    await other.sub.wait_subscribed(10)
    await client.publish(channel, "before")
    await until(lambda: log.items, "an event")
    async with httpx.AsyncClient(timeout=5) as http:
        response = await http.post(secured.url + "/api/unsubscribe", json={"user": "ada", "channel": channel})
        assert response.status_code == 200, response.text
    await until(lambda: log.task.done(), "the iteration to end")
    assert log.end is None and [p.data for p in log.publications] == ["before"]
    client.reconnect()
    await until(lambda: len(other.subscribed) == 2, "the other channel resumed")
    assert len(log.subscribed) == 1 and client.subscription(channel) is None
