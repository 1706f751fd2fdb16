"""A connection's bounded queue of outgoing messages.

The hub and the connection put into it without awaiting; the node's flush,
once per pass of the event loop, takes everything out and writes it as one
write.  While the socket cannot take more (the transport paused writing),
messages stay here, and the bounds (messages and bytes) are what keeps one
slow client from growing the server's memory: a put that would cross them is
refused, and the connection applies its slow-consumer policy.

The outbox also knows how long its oldest message has waited (*lag*), to
the precision of one loop pass: messages left behind by a flush are
*marked* with the time, a few marks per queue rather than a timestamp per
message, since the common case is a queue emptied in the pass it filled.

For the ``latest`` policy it holds at most one *conflated* message per
channel, outside the bounded queue: a newer one replaces it, and it is
written only after the queue, so a channel's events never go out of order.
That side table is bounded by the connection's subscription limit.

An idle connection's outbox holds no list at all.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class OutboxLimits:
    max_messages: int
    max_bytes: int


class Outbox(Generic[T]):
    __slots__ = ("_items", "_size", "_latest", "_marks", "_unmarked", "_latest_at")

    def __init__(self) -> None:
        # A list, not a deque: most passes queue one message and hand the
        # whole list to the flush, which needs neither a copy nor a deque's
        # 600-byte block per message (issue 11, one event per write).
        self._items: list[T] | None = None
        self._size = 0
        self._latest: dict[str, T] | None = None
        # (loop time, how many messages) for queued messages, oldest first;
        # the newest ``_unmarked`` messages have no mark yet.
        self._marks: deque[list[float]] | None = None
        self._unmarked = 0
        self._latest_at: float | None = None

    def __len__(self) -> int:
        return (len(self._items) if self._items else 0) + (len(self._latest) if self._latest else 0)

    def __bool__(self) -> bool:
        return bool(self._items) or bool(self._latest)

    @property
    def size(self) -> int:
        """Estimated bytes queued (conflated messages not counted: they replace each other)."""
        return self._size

    def put(self, item: T, size: int, limits: OutboxLimits) -> bool:
        """Queue ``item``; False (and nothing queued) if a bound would be crossed."""
        items = self._items
        if items is None:
            self._items = [item]
            self._size = size
            self._unmarked += 1
            return True
        if len(items) >= limits.max_messages or self._size + size > limits.max_bytes:
            return False
        items.append(item)
        self._size += size
        self._unmarked += 1
        return True

    def force(self, item: T, size: int) -> None:
        """Queue a small control message even past the bounds (a reset right after a clear)."""
        items = self._items
        if items is None:
            self._items = [item]
        else:
            items.append(item)
        self._size += size
        self._unmarked += 1

    def mark(self, now: float) -> None:
        """Everything queued and not yet marked has been waiting since ``now`` at the latest."""
        if not self._unmarked:
            return
        marks = self._marks
        if marks is None:
            marks = self._marks = deque()
        if marks and marks[-1][0] == now:
            marks[-1][1] += self._unmarked
        else:
            marks.append([now, float(self._unmarked)])
        self._unmarked = 0

    def waited_since(self) -> float | None:
        """Loop time of the oldest marked message (None: nothing has waited a pass)."""
        oldest = self._marks[0][0] if self._marks else None
        if self._latest_at is not None and (oldest is None or self._latest_at < oldest):
            return self._latest_at
        return oldest

    def conflated(self, key: str) -> bool:
        """Is ``key`` (a channel) being conflated right now?"""
        return self._latest is not None and key in self._latest

    def put_latest(self, key: str, item: T, now: float) -> bool:
        """Hold ``item`` as the newest message for ``key``; True if it replaced one."""
        latest = self._latest
        if latest is None:
            latest = self._latest = {}
            self._latest_at = now
        replaced = key in latest
        latest[key] = item
        return replaced

    def drop_latest(self, key: str) -> None:
        if self._latest is not None:
            self._latest.pop(key, None)
            if not self._latest:
                self._latest, self._latest_at = None, None

    def clear(self) -> int:
        """Drop everything queued; return how many messages were dropped."""
        dropped = len(self)
        self._items = None
        self._latest = None
        self._latest_at = None
        self._size = 0
        self._marks = None
        self._unmarked = 0
        return dropped

    def take(self, limit: int) -> list[T]:
        """Up to ``limit`` messages, oldest first; conflated ones only once the queue is empty."""
        items = self._items
        batch: list[T]
        if items is None:
            batch = []
        elif len(items) <= limit:
            batch = items
            self._items = None
            self._size = 0
            self._marks = None
            self._unmarked = 0
        else:
            batch = items[:limit]
            del items[:limit]
            # Sizes are estimates: keep the remainder's share proportional.
            self._size = self._size * len(items) // (len(items) + limit)
            self._consume_marks(limit)
        if self._items is None and self._latest and len(batch) < limit:
            batch.extend(self._latest.values())
            self._latest, self._latest_at = None, None
        return batch

    def _consume_marks(self, count: int) -> None:
        marks = self._marks
        while count and marks:
            first = marks[0]
            if first[1] > count:
                first[1] -= count
                return
            count -= int(first[1])
            marks.popleft()
        self._unmarked = max(0, self._unmarked - count)
