"""Publish to a broker from any Python program, without running a node.

    async with Publisher("redis://127.0.0.1:6379/0") as publisher:
        position = await publisher.publish("news", {"title": "hello"})
        print(position.event_id)

Publications go through the same adapter code a node uses, so they get
positions and history exactly as if a node had published them.
"""

from __future__ import annotations

from types import TracebackType

from .base import Broker, NullListener
from .registry import open_broker
from .types import Position, encode_data, validate_channel, validate_event_type


class Publisher:
    def __init__(self, url: str) -> None:
        self.url = url
        self._broker: Broker = open_broker(url)
        self._started = False

    async def start(self) -> None:
        if not self._started:
            await self._broker.start(NullListener())
            self._started = True

    async def close(self) -> None:
        await self._broker.close()
        self._started = False

    async def __aenter__(self) -> Publisher:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def publish(self, channel: str, data: object, *, event: str | None = None) -> Position:
        """Publish a JSON-serialisable value; return its position in the channel."""
        await self.start()
        publication = await self._broker.publish(
            validate_channel(channel), encode_data(data), event=validate_event_type(event)
        )
        return publication.position
