"""A broker listener for adapter tests: it remembers what the broker told it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from broker_adapters import Broker, Publication, open_broker


class Recorder:
    """A BrokerListener that remembers what it was told."""

    def __init__(self) -> None:
        self.publications: list[Publication] = []
        self.resyncs: list[list[str] | None] = []
        self.availability: list[bool] = []
        self.arrived = asyncio.Event()

    def on_publication(self, publication: Publication) -> None:
        self.publications.append(publication)
        self.arrived.set()

    def on_resync(self, channels: Iterable[str] | None) -> None:
        self.resyncs.append(None if channels is None else list(channels))

    def on_availability(self, available: bool) -> None:
        self.availability.append(available)

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Publication]:
        async with asyncio.timeout(timeout):
            while len(self.publications) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.publications


async def open_started(url: str, listener: Recorder | None = None) -> Broker:
    """An adapter for ``url``, started with ``listener`` (a fresh Recorder by default)."""
    broker = open_broker(url)
    await broker.start(listener or Recorder())
    return broker
