"""The Kafka adapter: one topic, the channel as record key, history read back from the log.

``kafka://host:9092,host2:9092?topic=fanline&partitions=16`` (see
docs/brokers/kafka.md for every option and the guarantees).

Layout.  Every channel is the key of its records in one topic, so the
default partitioner (murmur2 of the key, as in the Java client) puts all of
a channel in one partition, in order.  The adapter computes that partition
itself: a node ``assign()``\\ s exactly the partitions of its subscribed
channels, with no consumer group.

Positions.  A publication's offset is its partition offset + 1, so offset 0
stays "before the first publication".  Offsets of one channel are not
consecutive (the partition is shared), so ``contiguous_offsets`` is False
and live gaps are reported through ``on_resync``.  The epoch is a hash of
the topic's layout (its id, a UUID Kafka gives each incarnation of a topic,
and its partition count) and the channel (broker_adapters/kafka_topic.py):
a recreated topic, a broker that lost its data, or a changed partition count
(which moves channels between partitions) all give new epochs, so clients get
an explicit reset instead of a spliced stream.  An answer is stamped with a
layout only if it travelled connections on which that layout was checked
(broker_adapters/kafka_incarnation.py).

History is the log itself (broker_adapters/kafka_log.py): a read scans the
channel's partition from the requested offset up to the channel's top and
keeps the records of that key.  The top comes from a per-partition index
"key -> last offset" (broker_adapters/kafka_index.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka import errors as kafka_errors
from aiokafka.client import AIOKafkaClient

from .backoff import wait_until_set
from .base import Broker, BrokerError, BrokerListener, BrokerUnavailable, NullListener
from .errors import UnknownBrokerURL
from .kafka_holes import Holes
from .kafka_index import KeyIndex, KeyIndexes
from .kafka_log import EVENT_HEADER, LATEST, LogReader, list_offsets, record_publication
from .kafka_topic import KAFKA, Layout, Topic, partition_for
from .options import parse_options
from .tasks import TaskSet
from .types import History, Position, Publication

__all__ = ["KafkaBroker", "KafkaOptions", "from_url", "partition_for"]

log = logging.getLogger("fanline.broker.kafka")

# A producer in one of these states fails every later send until it is
# recreated (aiokafka #1017): the broker lost its producer state, or the
# sequence numbers went out of step after a broker restart.
# How long the live loop waits before it fetches again from a hole.
_HOLE_POLL = 0.02

_FATAL_PRODUCER_ERRORS: tuple[type[BaseException], ...] = (
    kafka_errors.OutOfOrderSequenceNumber,
    kafka_errors.UnknownProducerId,
    kafka_errors.InvalidProducerEpoch,
    kafka_errors.InvalidProducerIdMapping,
    kafka_errors.ProducerFenced,
    kafka_errors.IllegalStateError,
    kafka_errors.ProducerClosed,
)


@dataclass(frozen=True, slots=True)
class KafkaOptions:
    """The URL's query options; docs/brokers/kafka.md has a row for each."""

    topic: str = "fanline"
    partitions: int = 16
    replication_factor: int = 1
    create_topic: bool = True
    history_size: int = 1000
    history_ttl: float = 600.0
    idempotent: bool = True
    timeout: float = 5.0
    scan_limit: int = 200_000
    index_keys: int = 200_000
    check_interval: float = 1.0
    # Seconds a reader waits for a record to appear in a hole of a partition's
    # offsets before it takes the hole as real (broker_adapters/kafka_holes.py).
    hole_wait: float = 0.25

    def __post_init__(self) -> None:
        if self.partitions < 1 or self.replication_factor < 1:
            raise ValueError("partitions and replication_factor must be at least 1")
        if self.history_size < 0 or self.history_ttl <= 0 or self.timeout <= 0 or self.scan_limit < 1:
            raise ValueError("history_size must be >= 0; history_ttl, timeout and scan_limit > 0")
        if self.index_keys < 1 or self.check_interval <= 0 or not self.topic:
            raise ValueError("index_keys and check_interval must be positive, topic non-empty")
        if not 0 <= self.hole_wait <= 10:
            raise ValueError("hole_wait must be between 0 and 10 seconds")


class KafkaBroker(Broker):
    """One topic, channels as record keys, history read back from the log; see the module docstring."""

    kind = "kafka"
    contiguous_offsets = False

    def __init__(self, bootstrap_servers: str, options: KafkaOptions | None = None) -> None:
        super().__init__()
        self.options = options or KafkaOptions()
        self.bootstrap_servers = bootstrap_servers
        self._listener: BrokerListener = NullListener()
        self._producer: AIOKafkaProducer | None = None
        self._reader: AIOKafkaConsumer | None = None  # history scans, one at a time
        self._live: AIOKafkaConsumer | None = None
        self._log: LogReader | None = None
        self._tasks = TaskSet()
        self._started = False

        self._wake = asyncio.Event()
        self._topic = Topic(self.options, self._tasks, self._wake, self._layout_changed)
        self._indexes = KeyIndexes(self.options.scan_limit, self.options.index_keys)
        # Highest offset our producer got per partition: a lower one proves
        # the topic was recreated under us.
        self._produced: dict[int, int] = {}
        self._producer_lock = asyncio.Lock()

        # Live delivery.
        self._channels: set[str] = set()
        self._assign_lock = asyncio.Lock()
        # partition -> next offset the live consumer will hand us.
        self._next: dict[int, int] = {}
        # Holes in the offsets the live consumer met (see kafka_holes).
        self._holes = Holes(self.options.hole_wait)
        self._assigned = asyncio.Event()
        # Set when live positions can no longer be trusted (out of range,
        # a new topic): the watchdog then re-reads every partition from its
        # end and asks the listener to resync from history.
        self._live_reset = False
        self._available = False
        # The live consumer's connections when the layout was last checked.

    # -- lifecycle -----------------------------------------------------------------

    async def start(self, listener: BrokerListener) -> None:
        self._listener = listener
        if self._started:
            return
        timeout = self.options.timeout
        try:
            with KAFKA.unavailable("connection", also=(Exception,)):
                try:
                    async with asyncio.timeout(timeout * 2):
                        await self._connect()
                except kafka_errors.UnknownError as exc:
                    if self.options.idempotent:
                        # Tansu 0.6 (memory storage) answers InitProducerId this way.
                        raise BrokerError(
                            "the Kafka broker refused an idempotent producer; set idempotent=false"
                        ) from exc
                    raise
        except BaseException:
            await self._close_clients()
            raise
        self._started = True
        self._available = True
        self._tasks.spawn(self._live_loop(), "kafka-live")
        self._tasks.spawn(self._watch(), "kafka-watch")
        listener.on_availability(True)

    async def _connect(self) -> None:
        client = self._topic.client = AIOKafkaClient(
            bootstrap_servers=self.bootstrap_servers,
            request_timeout_ms=int(self.options.timeout * 1000),
            client_id="fanline-admin",
        )
        await client.bootstrap()
        await self._topic.refresh()
        # Partition leaders for ListOffsets come from this metadata
        # (asked for after our create: it may auto-create the topic).
        await client.add_topic(self.options.topic)
        reader = self._reader = self._new_consumer("fanline-history")
        await reader.start()
        self._live = self._new_consumer("fanline-live")
        await self._live.start()
        self._producer = await self._start_producer()
        self._log = LogReader(client, reader, self.options, Holes(self.options.hole_wait))

    async def close(self) -> None:
        await self._tasks.cancel_all()
        await self._close_clients()
        self._started = False
        self._listener = NullListener()

    async def _close_clients(self) -> None:
        client = self._topic.client
        for closer in (
            self._producer.stop if self._producer else None,
            self._live.stop if self._live else None,
            self._reader.stop if self._reader else None,
            client.close if client else None,
        ):
            if closer is not None:
                await self._stop_quietly(closer)
        self._producer = self._live = self._reader = None
        self._log = None
        self._topic.client = None

    async def _stop_quietly(self, stop: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.options.timeout):
                await stop()

    def _new_consumer(self, client_id: str) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            client_id=client_id,
            group_id=None,
            enable_auto_commit=False,
            # Never jump silently: an out-of-range position is an error we
            # turn into an explicit resync.
            auto_offset_reset="none",
            request_timeout_ms=int(self.options.timeout * 1000),
            fetch_max_wait_ms=200,
            metadata_max_age_ms=30_000,
        )

    async def _start_producer(self) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap_servers,
            client_id="fanline-publish",
            acks="all",
            enable_idempotence=self.options.idempotent,
            request_timeout_ms=int(self.options.timeout * 1000),
            linger_ms=0,
            metadata_max_age_ms=30_000,
        )
        try:
            async with asyncio.timeout(self.options.timeout):
                await producer.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await producer.stop()
            raise
        return producer

    def _layout_changed(self, layout: Layout, replaced: bool) -> None:
        if replaced:
            self._live_reset = True
            self._wake.set()
        self._indexes.clear()
        self._produced.clear()

    def _log_reader(self) -> LogReader:
        if self._log is None:
            raise BrokerUnavailable("kafka broker is not started")
        return self._log

    # -- publishing ------------------------------------------------------------------

    async def publish(self, channel: str, data: str, *, event: str | None = None) -> Publication:
        topic = self._topic
        layout = await topic.current()
        partition = partition_for(channel, layout.partitions)
        headers = [(EVENT_HEADER, event.encode())] if event else []
        producer = await self._producer_or_start()
        try:
            async with asyncio.timeout(self.options.timeout + 1):
                result = await producer.send_and_wait(
                    self.options.topic, value=data.encode(), key=channel.encode(), partition=partition, headers=headers
                )
        except _FATAL_PRODUCER_ERRORS as exc:
            self._replace_producer(producer)
            topic.refresh_soon()
            raise KAFKA.translate("publish (the producer was recreated)", exc) from exc
        except KAFKA.errors + (AssertionError,) as exc:
            # The topic may be gone or have other partitions now: look again.
            topic.refresh_soon()
            raise KAFKA.translate("publish", exc) from exc
        offset = int(result.offset)
        await topic.confirm("producer", producer, layout, "publish")
        if offset <= self._produced.get(partition, -1):
            # Offsets only grow within one incarnation of a partition: this
            # one either is another incarnation, or hands out offsets twice.
            # Either way no id can be given to this record.
            topic.refresh_soon()
            self._produced.pop(partition, None)
            raise BrokerUnavailable("kafka partition offsets went back while publishing; the outcome is unknown")
        self._produced[partition] = offset
        index = self._indexes.valid(partition, layout.stream(partition))
        if index is not None:
            index.follow(channel, offset, expected=offset)
        timestamp = int(result.timestamp) if result.timestamp and result.timestamp > 0 else int(time.time() * 1000)
        return Publication(
            channel=channel, epoch=layout.epoch(channel), offset=offset + 1, data=data, event=event, time_ms=timestamp
        )

    async def _producer_or_start(self) -> AIOKafkaProducer:
        if self._producer is not None:
            return self._producer
        async with self._producer_lock:
            if self._producer is None:
                with KAFKA.unavailable("producer start"):
                    self._producer = await self._start_producer()
            return self._producer

    def _replace_producer(self, broken: AIOKafkaProducer) -> None:
        if self._producer is broken:
            self._producer = None  # the next publish starts a fresh one
        self._tasks.spawn(self._stop_quietly(broken.stop), "kafka-producer-stop")

    # -- history -----------------------------------------------------------------

    async def history(self, channel: str, since: int | None, limit: int) -> History:
        topic = self._topic
        # Every read looks at the topic's identity first, so a recreated
        # topic is never read under the old epoch.
        layout = await topic.refresh()
        reader = self._log_reader()
        partition = partition_for(channel, layout.partitions)
        epoch = layout.epoch(channel)
        tp = TopicPartition(self.options.topic, partition)
        async with reader.lock:
            log_start, listed_end = await reader.bounds(tp)
            end = self._indexes.read_end(partition, layout.stream(partition), listed_end)
            index = await self._index(reader, tp, layout.stream(partition), log_start, end)
            if index.scanned_to < end and self._next.get(partition, 0) > index.scanned_to:
                # Live delivery is past what this read could fetch: an answer
                # from the shorter log would miss a record already delivered.
                raise BrokerUnavailable("kafka history is behind live delivery; try again")
            last = index.last.get(channel)
            if last is None:
                # No record of this key in [base, end): any position in that
                # range means "nothing yet".
                self.stats.empty_reads += 1
                if since is not None and index.base <= since <= end:
                    history = History(top=Position(epoch, since), complete=True)
                else:
                    history = History(top=Position(epoch, index.base), complete=since is None)
                await topic.confirm("reader", reader.reader, layout, "history read")
                return history
            top = Position(epoch, last + 1)
            if since is None or since >= top.offset:
                await topic.confirm("reader", reader.reader, layout, "history read")
                return History(top=top, complete=True)
            if since < log_start or end - since > self.options.scan_limit:
                # Records after the position are gone from the log, or too
                # many to scan: the reader must be reset.
                return History(top=top, complete=False)
            # Read up to the top itself, not to ``end``: live delivery and our
            # own publishes extend the index past the ListOffsets answer, and
            # a top the read does not reach would claim records it never
            # returned (issue 10: a resume skipped the record after the replay).
            history = await reader.read_range(tp, epoch, channel, since, top.offset, limit, top)
            await topic.confirm("reader", reader.reader, layout, "history read")
        return history

    async def _index(
        self, reader: LogReader, tp: TopicPartition, stream: str, log_start: int, end: int
    ) -> KeyIndex:
        """The partition's key index, scanned up to ``end``."""
        index = self._indexes.for_read(tp.partition, stream, log_start, end)
        if index.scanned_to < end:

            def visit(record: Any) -> None:
                if record.key is not None:
                    index.see(record.key.decode("utf-8", errors="replace"), int(record.offset))

            # The index knows only what the scan reached, not what ListOffsets counted.
            end = await reader.scan(tp, index.scanned_to, end, visit)
            self._indexes.scanned(tp.partition, index, end)
        return index

    # -- live delivery --------------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        async with self._assign_lock:
            layout = await self._topic.current()
            self._channels.add(channel)
            if partition_for(channel, layout.partitions) in self._next:
                return
            try:
                await self._assign(layout, reset_all=False)
            except BaseException:
                self._channels.discard(channel)
                raise

    async def unsubscribe(self, channel: str) -> None:
        async with self._assign_lock:
            self._channels.discard(channel)
            layout = self._topic.layout
            if layout is None:
                return
            partition = partition_for(channel, layout.partitions)
            if any(partition_for(c, layout.partitions) == partition for c in self._channels):
                return
            await self._assign(layout, reset_all=False)

    async def _assign(self, layout: Layout, *, reset_all: bool) -> None:
        """Point the live consumer at the partitions of the subscribed channels.

        Partitions already read continue from where they were, so nothing
        between is skipped; new ones (and all, with ``reset_all``) start at
        their current end, which is what "subscribed from now on" means.
        Called under the assign lock.
        """
        live, client = self._live, self._topic.client
        if live is None or client is None:
            raise BrokerUnavailable("kafka broker is not started")
        topic = self.options.topic
        wanted = {partition_for(c, layout.partitions) for c in self._channels}
        fresh = wanted if reset_all else wanted - set(self._next)
        ends = await list_offsets(client, topic, sorted(fresh), LATEST, self.options.timeout) if fresh else {}
        # No await from here: the live loop sees the new assignment whole.
        positions = {p: ends[p] if p in fresh else self._next[p] for p in wanted}
        self._next = positions
        live.assign([TopicPartition(topic, p) for p in sorted(wanted)])
        for p, offset in positions.items():
            live.seek(TopicPartition(topic, p), offset)
        if wanted:
            self._assigned.set()
        else:
            self._assigned.clear()

    async def _live_loop(self) -> None:
        while True:
            await self._assigned.wait()
            live = self._live
            if live is None:
                return
            try:
                batches = await live.getmany(timeout_ms=1000, max_records=1000)
            except (kafka_errors.KafkaError, OSError) as exc:
                log.warning("kafka live consumer error", extra={"error": repr(exc)})
                self._live_reset = True
                self._wake.set()
                await asyncio.sleep(0.2)
                continue
            if not batches:
                continue
            layout = await self._layout_for_batch(live, batches)
            if layout is None:
                continue
            waiting = False
            for tp, records in batches.items():
                hole = self._deliver(layout, tp.partition, records)
                if hole is not None:
                    with contextlib.suppress(kafka_errors.IllegalStateError):
                        live.seek(tp, hole)
                    waiting = True
            if waiting:
                await asyncio.sleep(_HOLE_POLL)

    async def _layout_for_batch(self, live: AIOKafkaConsumer, batches: dict[Any, Any]) -> Layout | None:
        """The layout to stamp a fetched batch with, or None to drop it.

        A broker that restarted without its data serves a new topic under
        the old name, and a consumer that reconnects keeps fetching from its
        old offsets: those records must not get the old epoch.  A restart
        means a new connection, so when the consumer's connections changed
        since the layout was last checked, the layout is checked again
        before anything of the batch is delivered.
        """
        layout = self._topic.layout
        try:
            if layout is None:
                raise BrokerUnavailable("kafka topic not known yet")
            await self._topic.confirm("live", live, layout, "live fetch")
        except BrokerError:
            # Unverifiable, or another incarnation: fetch these records again
            # later (a changed topic also resets live delivery and resyncs).
            self._rewind(live, batches)
            await asyncio.sleep(0.2)
            return None
        if self._live_reset:
            # Positions are about to be reset and history re-read; records
            # fetched from the old positions are covered by that.
            return None
        return self._topic.layout

    def _rewind(self, live: AIOKafkaConsumer, batches: dict[Any, Any]) -> None:
        for tp in batches:
            offset = self._next.get(tp.partition)
            if offset is not None:
                with contextlib.suppress(kafka_errors.IllegalStateError):
                    live.seek(tp, offset)

    def _deliver(self, layout: Layout, partition: int, records: Iterable[Any]) -> int | None:
        """Hand a fetched batch to the listener; the offset to fetch again from, if it met a hole."""
        expected = self._next.get(partition)
        if expected is None:
            return None  # unassigned while the batch was in flight
        index = self._indexes.valid(partition, layout.stream(partition))
        holes = self._holes
        for record in records:
            offset = int(record.offset)
            if offset < expected:
                continue  # fetched again after a reassignment
            if offset > expected and holes.wait_for(partition, expected):
                # A record may still appear there (see kafka_holes): stop
                # before the hole and fetch again from it.
                self._next[partition] = expected
                self._indexes.live_reached(partition, layout.stream(partition), expected)
                return expected
            holes.filled(partition, expected)
            channel = None if record.key is None else record.key.decode("utf-8", errors="replace")
            if index is not None:
                index.follow(channel, offset, expected)
            expected = offset + 1
            if channel is not None and channel in self._channels:
                self._listener.on_publication(record_publication(record, layout.epoch(channel), channel))
        self._next[partition] = expected
        self._indexes.live_reached(partition, layout.stream(partition), expected)
        return None

    async def _watch(self) -> None:
        """Notice a lost or restored broker and a recreated topic; repair live delivery."""
        while True:
            await wait_until_set(self._wake, self.options.check_interval)
            self._wake.clear()
            try:
                layout = await self._topic.refresh()
            except BrokerError as exc:
                self._set_available(False, exc)
                continue
            if self._live_reset or not self._available:
                # Positions may have moved under us, or records may have
                # been missed while the broker was away: restart live reads
                # where they are safe and let the hub re-read history.
                reset_all = self._live_reset
                self._live_reset = False
                try:
                    async with self._assign_lock:
                        await self._assign(layout, reset_all=reset_all)
                except BrokerError as exc:
                    self._live_reset = self._live_reset or reset_all
                    self._set_available(False, exc)
                    continue
                self._listener.on_resync(None)
            self._set_available(True)

    def _set_available(self, available: bool, error: BaseException | None = None) -> None:
        if available != self._available:
            if not available:
                log.warning("kafka broker unavailable", extra={"error": str(error)})
            self._available = available
            self._listener.on_availability(available)

    async def ping(self) -> None:
        await self._topic.refresh()
        if self._started and (self._live_reset or not self._available):
            # Reachable, but live delivery is not repaired yet: not healthy.
            self._wake.set()
            raise BrokerUnavailable("kafka live delivery is being re-established")


def from_url(url: str) -> KafkaBroker:
    """``kafka://host:9092[,host:9092]?topic=fanline&partitions=16&history_size=1000&history_ttl=600``."""
    netloc = urlsplit(url).netloc
    if not netloc:
        raise UnknownBrokerURL("kafka URL needs host:port, e.g. kafka://127.0.0.1:9092")
    return KafkaBroker(netloc, parse_options(url, KafkaOptions))
