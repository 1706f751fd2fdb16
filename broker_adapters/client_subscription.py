"""One channel's subscription: an async iterator of its publications and resets.

The client's reader puts every item of the channel in the subscription's
queue as it arrives; the application takes them with ``async for``.  An item
counts as processed when the application asks for the next one (or leaves
``async with client`` without an exception), and only then is its id written
to the position store: a program that dies while handling an item gets it
again when it resumes.

The queue is bounded (``max_queue``).  An application that falls that far
behind gets a :class:`~broker_adapters.client_types.Reset` with reason
``slow_consumer`` in place of what was queued, exactly as the node's own
``reset`` slow-consumer policy does: never a silent gap, never unbounded memory.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from .client_positions import Positions
from .client_types import (
    ClientClosed,
    ClientFailure,
    Item,
    Publication,
    Reset,
    ResetReason,
    Subscribed,
    SubscribeError,
    SubscriptionFailed,
    SubscriptionState,
)

if TYPE_CHECKING:
    from .client import Client

Entry = Publication | Reset | Subscribed


class Subscription:
    """A channel's handle: ``async for item in subscription`` yields :class:`Publication` and :class:`Reset`.

    The iteration ends when the channel is unsubscribed or the client closed,
    and raises :class:`SubscriptionFailed` or :class:`ConnectionFailed` (after
    the items already received) when the node refused it for good.
    """

    __slots__ = (
        "_client",
        "_end",
        "_handed",
        "_items",
        "_max_queue",
        "_on_error",
        "_on_subscribed",
        "_positions",
        "_waiter",
        "_confirmed",
        "channel",
        "last_subscribed",
        "forgotten",
        "pending_rid",
        "state",
        "tries",
    )

    def __init__(
        self,
        client: Client,
        channel: str,
        positions: Positions,
        max_queue: int,
        on_subscribed: Callable[[Subscribed], object] | None = None,
        on_error: Callable[[SubscribeError], object] | None = None,
    ) -> None:
        self._client = client
        self.channel = channel
        self._positions = positions
        self._max_queue = max_queue
        self._on_subscribed = on_subscribed
        self._on_error = on_error
        self._items: deque[Entry] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._confirmed: asyncio.Event = asyncio.Event()
        # The id of the last item handed to the application, committed when it asks for the next.
        self._handed: str | None = None
        self._end: BaseException | None = None
        self.state = SubscriptionState.SUBSCRIBING
        self.last_subscribed: Subscribed | None = None
        # Subscribes refused with broker_unavailable in a row (the retry backoff).
        self.tries = 0
        # Unsubscribed by the application: its position is forgotten, and nothing may write it again.
        self.forgotten = False
        # The rid of the latest subscribe sent: only its reply counts (an older one may still be on its way).
        self.pending_rid: int | None = None

    def __repr__(self) -> str:
        return f"<Subscription {self.channel!r} {self.state} queued={len(self._items)}>"

    @property
    def position(self) -> str | None:
        """The id of the last item processed on this channel: give it as ``since`` to resume anywhere."""
        return self._positions.processed.get(self.channel)

    @property
    def queued(self) -> int:
        """Items received and not yet taken by the application."""
        return len(self._items)

    def unsubscribe(self) -> None:
        """Stop receiving this channel and forget its position.  The iteration ends."""
        self._client.unsubscribe(self.channel)

    async def wait_subscribed(self, timeout: float | None = None) -> Subscribed:
        """Wait until the node confirmed this subscription on the current connection; return its confirmation."""
        async with asyncio.timeout(timeout):
            while True:
                if self._end is not None and not isinstance(self._end, StopAsyncIteration):
                    raise self._end
                if self.state is SubscriptionState.UNSUBSCRIBED or self._end is not None:
                    raise ClientClosed(f"{self.channel} is no longer subscribed")
                if self.state is SubscriptionState.SUBSCRIBED and self.last_subscribed is not None:
                    return self.last_subscribed
                self._confirmed.clear()
                await self._confirmed.wait()

    # -- the application's side ------------------------------------------------------------------

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Item:
        if self._handed is not None:
            self._commit()
        items = self._items
        while True:
            while not items:
                if self._end is not None:
                    raise self._end
                loop = asyncio.get_running_loop()
                self._waiter = waiter = loop.create_future()
                try:
                    await waiter
                finally:
                    self._waiter = None
            entry = items.popleft()
            if isinstance(entry, Subscribed):
                # A confirmation is not an item, but it moves the position (unless a reset follows).
                if entry.recovered is not False:
                    self._positions.commit(self.channel, entry.id)
                continue
            self._handed = entry.id
            return entry

    def _commit(self) -> None:
        if self._handed is not None:
            if not self.forgotten:
                self._positions.commit(self.channel, self._handed)
            self._handed = None

    # -- the client's side -----------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _put(self, entry: Publication | Reset) -> None:
        """Queue an item; past ``max_queue``, replace the backlog by one slow_consumer reset.

        The reset goes from the last item handed to the application (which it
        is processing, or has processed) to this item, the newest dropped.
        """
        items = self._items
        if len(items) >= self._max_queue:
            items.clear()
            previous = self._handed or self._positions.processed.get(self.channel)
            entry = Reset(self.channel, entry.id, ResetReason.SLOW_CONSUMER, previous)
        items.append(entry)
        self._wake()

    def _subscribed(self, confirmation: Subscribed) -> None:
        self.state = SubscriptionState.SUBSCRIBED
        self.tries = 0
        self.last_subscribed = confirmation
        self._items.append(confirmation)
        self._wake()
        self._confirmed.set()
        if self._on_subscribed is not None:
            self._client._call(self._on_subscribed, confirmation)

    def _refused(self, error: SubscribeError) -> None:
        if error.retry_in is None:
            self.state = SubscriptionState.FAILED
            self._finish(SubscriptionFailed(self.channel, error.code, error.message), keep=True)
        if self._on_error is not None:
            self._client._call(self._on_error, error)

    def _finish(self, end: BaseException, keep: bool) -> None:
        """End the iteration: at once (``keep=False``), or after the items already queued."""
        if self._end is None:
            if not keep:
                self._items.clear()
            self._end = end
            self._wake()
            self._confirmed.set()

    def _close(self, failure: ClientFailure | None, keep: bool = False) -> None:
        """End the iteration: with ``failure`` after the items queued; else at once, or after them (``keep``)."""
        self._finish(failure if failure is not None else StopAsyncIteration(), keep=keep or failure is not None)
