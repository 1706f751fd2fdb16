"""Publish to a broker from any Python program, without running a node.

    async with Publisher("redis://127.0.0.1:6379/0") as publisher:
        position = await publisher.publish("news", {"title": "hello"})
        print(position.event_id)

Publications go through the same adapter code a node uses, so they get
positions and history exactly as if a node had published them.

It also has the server API's calls (docs/server-api.md), without a node:
history, presence, and the commands that reach every node through the
control channel (disconnect, unsubscribe, refresh, revoke).  A subscriber
count needs the nodes' answers: :meth:`Publisher.subscribers` listens on the
control channel for them.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterable
from types import TracebackType

from .base import Broker, NullListener
from .control import CONTROL_CHANNEL, Command, decode, encode
from .presence import PresenceEntry, PresenceSettings, PresenceStore
from .registry import open_broker
from .types import History, Position, Publication, encode_data, validate_channel, validate_event_type


class _Replies(NullListener):
    """Collects the nodes' answers to an ``info`` command."""

    def __init__(self) -> None:
        self.waiting: dict[str, dict[str, int]] = {}

    def on_publication(self, publication: Publication) -> None:
        message = decode(publication.data)
        if message is None or message.command is not Command.INFO_REPLY:
            return
        answers = self.waiting.get(message.get_str("reply") or "")
        node = message.get_str("node")
        if answers is not None and node is not None:
            answers[node] = int(message.get_number("subscribers") or 0)

    def on_resync(self, channels: Iterable[str] | None) -> None:
        pass


class Publisher:
    def __init__(self, url: str, presence: PresenceSettings | None = None) -> None:
        self.url = url
        self._broker: Broker = open_broker(url)
        self._started = False
        # Concurrent first publishes share one start (each starting the broker
        # on its own left the Kafka adapter half-started for good).
        self._starting = asyncio.Lock()
        self._replies = _Replies()
        self._listening = False
        # Reads only: the ttl and cap matter to writers (nodes), not here.
        self._presence: PresenceStore | None = self._broker.presence(presence or PresenceSettings())

    async def start(self) -> None:
        if self._started:
            return
        async with self._starting:
            if not self._started:
                await self._broker.start(self._replies)
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

    # -- the server API's calls, without a node ---------------------------------------------

    async def history(self, channel: str, since: Position | None = None, limit: int = 100) -> History:
        """Publications after ``since`` (or the oldest retained), oldest first, with the channel's top."""
        await self.start()
        validate_channel(channel)
        if since is not None:
            top = (await self._broker.history(channel, None, 0)).top
            if top.epoch != since.epoch:
                return History(top=top, publications=(), complete=False)
        return await self._broker.history(channel, 0 if since is None else since.offset, limit)

    def _store(self) -> PresenceStore:
        if self._presence is None:
            raise NotImplementedError(f"the {self._broker.kind} broker keeps no presence; open its presence_store")
        return self._presence

    async def presence(self, channel: str) -> list[PresenceEntry]:
        await self.start()
        return await self._store().list(validate_channel(channel))

    async def presence_count(self, channel: str) -> int:
        await self.start()
        return await self._store().count(validate_channel(channel))

    async def _command(self, command: Command, **fields: object) -> None:
        await self.start()
        await self._broker.publish(CONTROL_CHANNEL, encode(command, **fields))

    async def disconnect(
        self, user: str, *, client: str | None = None, code: int = 4009, reason: str = "disconnected",
        ban: float | None = None,
    ) -> None:
        """Close every connection of ``user`` on every node (or one ``client``); ``ban`` seconds refuse it again."""
        if not 4000 <= code <= 4999:
            raise ValueError("code must be 4000 to 4999")
        await self._command(Command.DISCONNECT, user=user, client=client, code=code, reason=reason[:100], ban=ban)

    async def unsubscribe(self, user: str, channel: str, *, client: str | None = None) -> None:
        await self._command(Command.UNSUBSCRIBE, user=user, channel=validate_channel(channel), client=client)

    async def refresh(self, user: str, expire_at: float, *, client: str | None = None) -> None:
        """Set when the connections of ``user`` expire (Unix time): later extends, earlier shortens."""
        await self._command(Command.REFRESH, user=user, expire_at=expire_at, client=client)

    async def revoke(self, user: str, *, ban: float | None = None) -> None:
        """Close the connections of ``user`` as expired (4011): they must come back with a fresh token."""
        await self._command(Command.REVOKE, user=user, ban=ban)

    async def subscribers(self, channel: str, wait: float = 1.0) -> int:
        """Subscribers of ``channel`` on every node that answers within ``wait`` seconds."""
        await self.start()
        if not self._listening:
            await self._broker.subscribe(CONTROL_CHANNEL)
            self._listening = True
        reply = secrets.token_hex(8)
        answers = self._replies.waiting[reply] = {}
        try:
            await self._command(Command.INFO, channel=validate_channel(channel), reply=reply, node="publisher")
            await asyncio.sleep(wait)  # the nodes are not known here: every answer within the wait counts
        finally:
            del self._replies.waiting[reply]
        return sum(answers.values())
