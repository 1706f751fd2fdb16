"""What a node knows of each Kafka partition it has read: the last offset of every key.

The top of a channel on Kafka is the last record with its key, so each node
keeps, per partition, an index "key -> last offset", built by one scan (at
most ``scan_limit`` records back from the end) and then extended: from the
tail on each history read, from the live consumer, and from the node's own
publishes.  Every record in ``[base, scanned_to)`` has been seen, so a key
missing from the index has no record there.  An index belongs to one
incarnation of one partition (its ``stream``) and is rebuilt when that
changes, when the log lost or trimmed records it relied on, or when it grew
past ``index_keys`` keys (bounded memory over speed).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class KeyIndex:
    stream: str
    base: int
    scanned_to: int
    last: dict[str, int] = field(default_factory=dict)

    def see(self, key: str, offset: int) -> None:
        if offset > self.last.get(key, -1):
            self.last[key] = offset

    def fits(self, stream: str, log_start: int, end: int, scan_limit: int) -> bool:
        """Whether this index still describes the log ``[log_start, end)`` of ``stream``."""
        return (
            self.stream == stream
            and self.scanned_to <= end  # else the log lost records: not the log we indexed
            and self.scanned_to >= log_start  # else records were trimmed before we saw them
            and end - self.scanned_to <= scan_limit
        )

    def follow(self, key: str | None, offset: int, expected: int) -> None:
        """A record at ``offset`` whose reader saw every offset from ``expected`` on.

        Nothing exists between ``expected`` and the record, so an index that
        knows everything before ``expected`` can take it.
        """
        if self.scanned_to >= expected and offset >= self.scanned_to:
            if key is not None:
                self.see(key, offset)
            self.scanned_to = offset + 1


class KeyIndexes:
    """One :class:`KeyIndex` per partition, for the layout they were built under."""

    def __init__(self, scan_limit: int, max_keys: int) -> None:
        self.scan_limit = scan_limit
        self.max_keys = max_keys
        self._by_partition: dict[int, KeyIndex] = {}
        self._live_reached: dict[int, tuple[str, int]] = {}

    def clear(self) -> None:
        self._by_partition.clear()
        self._live_reached.clear()

    def live_reached(self, partition: int, stream: str, offset: int) -> None:
        """The live consumer fetched every record of ``stream`` before ``offset``."""
        self._live_reached[partition] = (stream, offset)

    def read_end(self, partition: int, stream: str, listed_end: int) -> int:
        """Where a history read of ``stream`` must reach: ListOffsets' end, or further if live delivery did.

        Tansu's ListOffsets can lag what its fetches already served.  A read
        that stopped at the listed end would miss records the node has
        already delivered live (or, on a channel new to the node, passed
        over before anyone subscribed), and its top would be stale: a client
        reset to it would then go on live after the records in between
        (issue 10).  Those records can be fetched, so the read goes on to them.
        """
        reached = self._live_reached.get(partition)
        if reached is None or reached[0] != stream:
            return listed_end
        return max(listed_end, reached[1])

    def valid(self, partition: int, stream: str) -> KeyIndex | None:
        """The partition's index if it belongs to ``stream``."""
        index = self._by_partition.get(partition)
        return index if index is not None and index.stream == stream else None

    def for_read(self, partition: int, stream: str, log_start: int, end: int) -> KeyIndex:
        """The partition's index, new if the old one no longer fits the log; may need a scan to ``end``."""
        index = self._by_partition.get(partition)
        if index is None or not index.fits(stream, log_start, end, self.scan_limit):
            base = max(log_start, end - self.scan_limit)
            index = self._by_partition[partition] = KeyIndex(stream=stream, base=base, scanned_to=base)
        return index

    def scanned(self, partition: int, index: KeyIndex, end: int) -> None:
        """``index`` has seen everything up to ``end``; drop it if it grew too large."""
        index.scanned_to = max(index.scanned_to, end)
        if len(index.last) > self.max_keys and self._by_partition.get(partition) is index:
            # Bounded memory over speed: the next read rebuilds it.
            del self._by_partition[partition]
