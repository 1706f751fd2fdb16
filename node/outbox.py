"""A connection's bounded queue of outgoing messages.

The hub puts into it without awaiting; the connection's writer takes whole
batches out.  The bounds (messages and bytes) are what keeps one slow client
from growing the server's memory: when a put would cross them, the put is
refused and the connection applies its slow-consumer policy.

For the ``latest`` policy the outbox also holds at most one *conflated*
message per channel, outside the bounded queue: a newer one replaces it.
That side table is bounded by the connection's subscription limit.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T", str, bytes)


class Outbox(Generic[T]):
    __slots__ = ("_items", "_size", "max_messages", "max_bytes", "closed", "latest")

    def __init__(self, max_messages: int, max_bytes: int) -> None:
        # Allocated on first use: with direct writes most connections never
        # queue anything, and an empty deque still costs a block of memory.
        self._items: deque[T] | None = None
        self._size = 0
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.closed = False
        # Conflated messages by channel, written after the queue.
        self.latest: dict[str, T] = {}

    def __len__(self) -> int:
        return len(self._items) if self._items else 0

    def __bool__(self) -> bool:
        """True while anything waits to be written, conflated messages included."""
        return bool(self._items) or bool(self.latest)

    @property
    def size(self) -> int:
        """Queued length: bytes for SSE, characters for WebSocket text."""
        return self._size

    def put(self, item: T) -> bool:
        """Queue ``item``; False (and nothing queued) if a bound would be crossed."""
        if self.closed:
            return True  # the connection is going away; nothing to deliver to
        items = self._items
        if items is None:
            items = self._items = deque()
        size = len(item)
        if len(items) >= self.max_messages or self._size + size > self.max_bytes:
            return False
        items.append(item)
        self._size += size
        return True

    def put_latest(self, key: str, item: T) -> bool:
        """Hold ``item`` as the newest message for ``key``; True if it replaced one."""
        if self.closed:
            return False
        replaced = key in self.latest
        self.latest[key] = item
        return replaced

    def clear(self) -> int:
        """Drop everything queued; return how many messages were dropped."""
        dropped = len(self) + len(self.latest)
        self._items = None
        self.latest.clear()
        self._size = 0
        return dropped

    def close(self, discard: bool = True) -> None:
        """Accept nothing more.  ``discard=False`` keeps what is queued for a last flush."""
        self.closed = True
        if discard:
            self.clear()

    def take(self, limit: int) -> list[T]:
        """Up to ``limit`` queued messages, oldest first (empty when nothing waits)."""
        items = self._items
        if not items:
            batch: list[T] = []
        elif len(items) <= limit:
            batch = list(items)
            items.clear()
            self._size = 0
        else:
            batch = [items.popleft() for _ in range(limit)]
            self._size -= sum(len(item) for item in batch)
        # Conflated messages go only once the queue is empty, so that a
        # channel's older queued events are never written after its newest.
        if not items and self.latest and len(batch) < limit:
            batch.extend(self.latest.values())
            self.latest.clear()
        return batch
