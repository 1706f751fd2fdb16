"""Reading the Kafka log back: partition bounds, bounded scans, and one channel's range.

History on Kafka is the log itself.  A read asks for the partition's log
start and end (ListOffsets, on the admin client's connections: a consumer
would queue the request behind its own long-polling fetch), then scans the
partition with a dedicated reader consumer, one assignment at a time, under
a lock.  Every scan is bounded by ``scan_limit`` records and a deadline.
``history_size`` and ``history_ttl`` are enforced here, on read: only the
last ``history_size`` records of a key, younger than the TTL, count as
retained.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.offset import OffsetRequest

from .errors import BrokerUnavailable
from .foreign import stored_publication
from .kafka_holes import Holes
from .kafka_topic import KAFKA
from .types import History, Position, Publication

if TYPE_CHECKING:
    from .kafka import KafkaOptions

EVENT_HEADER = "fanline-event"

# ListOffsets timestamps meaning "log start" and "log end".
EARLIEST = -2
LATEST = -1


def record_publication(record: Any, epoch: str, channel: str) -> Publication:
    """A Kafka record of ``channel`` as a publication; its offset is the record's + 1."""
    events = [value for name, value in record.headers or () if name == EVENT_HEADER and value]
    event = events[-1] if events else None
    time_ms = int(record.timestamp) if record.timestamp and record.timestamp > 0 else 0
    return stored_publication(channel, epoch, int(record.offset) + 1, record.value, event, time_ms)


async def list_offsets(
    client: AIOKafkaClient, topic: str, partitions: list[int], which: int, timeout: float
) -> dict[int, int]:
    """The log start (:data:`EARLIEST`) or end (:data:`LATEST`) offsets of ``partitions``."""
    by_leader: dict[int, list[int]] = {}
    for partition in partitions:
        leader = client.cluster.leader_for_partition(TopicPartition(topic, partition))
        if leader is None or leader < 0:
            client.force_metadata_update()
            raise BrokerUnavailable(f"no leader known for kafka partition {partition}")
        by_leader.setdefault(leader, []).append(partition)
    offsets: dict[int, int] = {}
    with KAFKA.unavailable("offsets request"):
        async with asyncio.timeout(timeout):
            for leader, wanted in by_leader.items():
                request = OffsetRequest(-1, 0, [(topic, [(p, which) for p in wanted])])
                response = await client.send(leader, request)
                for _topic, answers in response.topics:
                    for partition, error_code, *info in answers:
                        if error_code != 0:
                            client.force_metadata_update()
                            raise BrokerUnavailable(f"kafka ListOffsets error {error_code}")
                        offsets[int(partition)] = int(info[-1] if response.API_VERSION else info[0][0])
    if set(offsets) != set(partitions):
        raise BrokerUnavailable("kafka ListOffsets answered for other partitions")
    return offsets


class LogReader:
    """Scans of the topic's partitions with one reader consumer; callers hold :attr:`lock`."""

    def __init__(self, client: AIOKafkaClient, reader: AIOKafkaConsumer, options: KafkaOptions, holes: Holes) -> None:
        self.client = client
        self.reader = reader
        self.options = options
        self.holes = holes
        # The reader has one assignment at a time.
        self.lock = asyncio.Lock()

    async def bounds(self, tp: TopicPartition) -> tuple[int, int]:
        """The partition's log start and end."""
        start, end = await asyncio.gather(self.offsets([tp.partition], EARLIEST), self.offsets([tp.partition], LATEST))
        return start[tp.partition], end[tp.partition]

    async def offsets(self, partitions: list[int], which: int) -> dict[int, int]:
        return await list_offsets(self.client, self.options.topic, partitions, which, self.options.timeout)

    async def read_range(
        self, tp: TopicPartition, epoch: str, channel: str, since: int, stop: int, limit: int, top: Position
    ) -> History:
        """``channel``'s records after offset ``since`` (a Fanline offset) up to ``stop``."""
        key = channel.encode()
        keep = self.options.history_size or None
        # Only the last ``history_size`` records of a key are retained, so
        # only those are kept while scanning; without a cap, only ``limit``.
        found: deque[Any] = deque(maxlen=keep) if keep else deque()
        count = 0

        def visit(record: Any) -> None:
            nonlocal count
            if record.key == key:
                count += 1
                if keep or len(found) < max(limit, 0):
                    found.append(record)

        reached = await self.scan(tp, since, stop, visit)
        if reached < stop:
            # The read could not reach the top the index promised (a record
            # the log counts but fetch does not return yet): a history that
            # stops short would skip it, so the caller tries again.
            raise BrokerUnavailable("kafka history is not fetchable up to its top yet; try again")
        horizon = time.time() * 1000 - self.options.history_ttl * 1000
        expired = any(record.timestamp < horizon for record in found)
        complete = not expired and (keep is None or count <= keep)
        retained = [record for record in found if record.timestamp >= horizon]
        publications = [record_publication(record, epoch, channel) for record in retained[: max(limit, 0)]]
        return History(top=top, publications=publications, complete=complete)

    async def scan(self, tp: TopicPartition, start: int, stop: int, visit: Callable[[Any], None]) -> int:
        """Hand every record of ``tp`` in ``[start, stop)`` to ``visit``, in order; return how far it got.

        The answer is ``stop`` unless the log ends earlier for fetches than
        ListOffsets said (see :meth:`_scan_assigned`).  Bounded by
        ``scan_limit`` records and a deadline; called under the lock.
        """
        if start >= stop:
            return stop
        reader = self.reader
        deadline = max(self.options.timeout * 2, (stop - start) / 20_000)
        try:
            with KAFKA.unavailable("history read"):
                async with asyncio.timeout(deadline):
                    return await self._scan_assigned(tp, start, stop, visit)
        finally:
            # An assigned reader keeps long-polling at the end of the log,
            # and the next read's fetch would queue behind that request.
            reader.unsubscribe()

    async def _scan_assigned(self, tp: TopicPartition, start: int, stop: int, visit: Callable[[Any], None]) -> int:
        reader = self.reader
        reader.assign([tp])
        reader.seek(tp, start)
        position = start
        for _ in range(self.options.scan_limit):
            batch = await reader.getmany(tp, timeout_ms=int(self.options.timeout * 1000), max_records=2000)
            records = batch.get(tp, ())
            hole = None
            for record in records:
                if record.offset >= stop:
                    return stop
                if record.offset < position:
                    continue
                if record.offset > position and self.holes.wait_for(tp.partition, position):
                    hole = position  # a record may still appear there: read again from it
                    break
                self.holes.filled(tp.partition, position)
                visit(record)
                position = record.offset + 1
            if hole is not None:
                reader.seek(tp, hole)
                await asyncio.sleep(0.02)
                continue
            position = max(position, int(await reader.position(tp)))
            if position >= stop:
                return stop
            highwater = reader.highwater(tp)
            if not records and highwater is not None and highwater <= position:
                # Fetch says the log ends here although ListOffsets said
                # later.  A record may still appear (Tansu makes records
                # visible late): wait for it as for a hole; then what cannot
                # be fetched cannot be delivered (Tansu after a restart counts
                # records it never serves), so say how far the scan got.
                if self.holes.wait_for(tp.partition, position):
                    await asyncio.sleep(0.02)
                    continue
                return position
        return position
