"""The publisher: through the nodes' HTTP API and natively to the broker, recording every acknowledgement.

Every publication's payload carries a sequence number unique in the run, so
the checker can tell two publications apart even when they share an id.
A publish that failed or timed out is not acknowledged: it may or may not be
in the stream, and a client receiving it is fine.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx

from broker_adapters.publisher import Publisher

from .checker import Ack

IN_FLIGHT = 4  # concurrent publish calls per (channel, route) loop
BATCH = 5  # publications per HTTP call (POST /api/publish/batch): one request per publication cannot keep the rate


@dataclass
class PublishStats:
    attempts: int = 0
    acknowledged: int = 0
    failed: int = 0
    by_route: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)  # why native publishes failed, by message


class Publishing:
    def __init__(
        self, channels: Sequence[str], nodes: Callable[[], Sequence[tuple[str, int]]], broker_url: str | None,
        rate: float, seed: int,
    ) -> None:
        self.channels = list(channels)
        self.nodes = nodes
        self.broker_url = broker_url
        self.rate = rate
        self.rng = random.Random(seed)
        self.seq = itertools.count(1)
        self.acks: list[Ack] = []
        self.by_channel: dict[str, list[Ack]] = {c: [] for c in channels}
        self.stats = PublishStats()
        self.stop = asyncio.Event()

    def record(self, ack: Ack, route: str) -> None:
        self.acks.append(ack)
        self.by_channel[ack.channel].append(ack)
        self.stats.acknowledged += 1
        self.stats.by_route[route] = self.stats.by_route.get(route, 0) + 1

    async def run(self) -> None:
        routes = ["http", "native"] if self.broker_url else ["http"]
        per_route = self.rate / (len(self.channels) * len(routes))
        async with httpx.AsyncClient(timeout=5, limits=httpx.Limits(max_connections=64)) as http:
            publisher = Publisher(self.broker_url) if self.broker_url else None
            if publisher is not None:
                # Started once before the loops: concurrent first publishes would each start it (a lazy start
                # that raced left the Kafka adapter "not started" for the whole run on main b096a14).
                for _ in range(20):
                    try:
                        await asyncio.wait_for(publisher.start(), 10)
                        break
                    except Exception:  # noqa: BLE001 - the broker may still be coming up
                        await asyncio.sleep(0.5)
            try:
                await asyncio.gather(
                    *(
                        # An HTTP call carries a batch of BATCH publications; a native call one.
                        self._loop(channel, route, per_route / (BATCH if route == "http" else 1), http, publisher)
                        for channel in self.channels
                        for route in routes
                    )
                )
            finally:
                if publisher is not None:
                    try:
                        await asyncio.wait_for(publisher.close(), 10)
                    except Exception:  # noqa: BLE001 - closing a publisher whose broker is down
                        pass

    async def _loop(self, channel: str, route: str, rate: float, http: httpx.AsyncClient, publisher: Publisher | None) -> None:
        """Publish at ``rate`` per second, up to IN_FLIGHT calls at once, so a slow answer does not slow the rate."""
        interval = 1.0 / rate
        next_at = time.monotonic() + self.rng.uniform(0, interval)
        in_flight: set[asyncio.Task[None]] = set()
        while not self.stop.is_set():
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            next_at = max(next_at + interval, time.monotonic() - interval)
            if len(in_flight) >= IN_FLIGHT:
                await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            task = asyncio.create_task(self._one(channel, route, http, publisher))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.wait(in_flight, timeout=15)

    async def _one(self, channel: str, route: str, http: httpx.AsyncClient, publisher: Publisher | None) -> None:
        if route == "http":
            await self._http_batch(http, channel)
            return
        assert publisher is not None
        seq = next(self.seq)
        self.stats.attempts += 1
        try:
            async with asyncio.timeout(5):
                event_id: str | None = (await publisher.publish(channel, {"seq": seq, "ch": channel, "via": route})).event_id
        except Exception as exc:  # noqa: BLE001 - any failure means "not acknowledged"
            key = f"{type(exc).__name__}: {exc}"[:160]
            self.stats.errors[key] = self.stats.errors.get(key, 0) + 1
            event_id = None
        if event_id is None:
            self.stats.failed += 1
            await asyncio.sleep(0.05)
            return
        self.record(Ack(channel, event_id, seq), route)

    async def _http_batch(self, http: httpx.AsyncClient, channel: str) -> None:
        """POST /api/publish/batch: every item published before a failure is acknowledged (docs/protocol.md)."""
        seqs = [next(self.seq) for _ in range(BATCH)]
        self.stats.attempts += len(seqs)
        body = {"publications": [{"channel": channel, "data": {"seq": seq, "ch": channel, "via": "http"}} for seq in seqs]}
        host, port = self.rng.choice(list(self.nodes()))
        results: list[dict[str, object]] = []
        try:
            response = await http.post(f"http://{host}:{port}/api/publish/batch", json=body)
            answer = response.json()
            if response.status_code == 200:
                results = list(answer["results"])
            elif isinstance(answer, dict):
                results = list(answer.get("published") or [])
        except Exception:  # noqa: BLE001 - no answer: nothing acknowledged
            results = []
        for seq, result in zip(seqs, results, strict=False):
            self.record(Ack(channel, str(result["id"]), seq), "http")
        self.stats.failed += len(seqs) - len(results)
        if len(results) < len(seqs):
            await asyncio.sleep(0.05)
