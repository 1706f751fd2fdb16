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
the topic id (a UUID Kafka gives each incarnation of a topic), the partition
count and the channel: a recreated topic, a broker that lost its data, or
a changed partition count (which moves channels between partitions) all give
new epochs, so clients get an explicit reset instead of a spliced stream.

History is the log itself.  A read scans the channel's partition from the
requested offset to the high watermark and keeps the records of that key;
``history_size`` and ``history_ttl`` are enforced on read (only the last N
records of a key, younger than the TTL, count as retained).  The top of a
channel comes from a per-partition index "key -> last offset", built by one
scan and then extended from the tail and from the live consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka import errors as kafka_errors
from aiokafka.client import AIOKafkaClient
from aiokafka.partitioner import murmur2
from aiokafka.protocol.admin import CreateTopicsRequest
from aiokafka.protocol.offset import OffsetRequest

from .base import Broker, BrokerError, BrokerListener, BrokerUnavailable, NullListener
from .kafka_metadata import UNKNOWN_TOPIC_OR_PARTITION, TopicMetadataRequest, parse_metadata
from .tasks import TaskSet
from .types import History, InvalidEventType, Position, Publication, normalize_data, validate_event_type

log = logging.getLogger("fanline.broker.kafka")

EVENT_HEADER = "fanline-event"

# ListOffsets timestamps meaning "log start" and "log end".
_EARLIEST = -2
_LATEST = -1

# A producer in one of these states fails every later send until it is
# recreated (aiokafka #1017): the broker lost its producer state, or the
# sequence numbers went out of step after a broker restart.
_FATAL_PRODUCER_ERRORS: tuple[type[BaseException], ...] = (
    kafka_errors.OutOfOrderSequenceNumber,
    kafka_errors.UnknownProducerId,
    kafka_errors.InvalidProducerEpoch,
    kafka_errors.InvalidProducerIdMapping,
    kafka_errors.ProducerFenced,
    kafka_errors.IllegalStateError,
    kafka_errors.ProducerClosed,
)


def partition_for(channel: str, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for this key (Java-compatible murmur2)."""
    return int(murmur2(channel.encode()) & 0x7FFFFFFF) % partitions


@dataclass(frozen=True, slots=True)
class _Layout:
    """One incarnation of the topic, as the broker describes it."""

    topic_id: bytes
    partitions: int

    def stream(self, partition: int) -> str:
        """Names one incarnation of one partition (what an index is valid for)."""
        seed = self.topic_id + self.partitions.to_bytes(4, "big") + partition.to_bytes(4, "big")
        return hashlib.blake2b(seed, digest_size=8).hexdigest()

    def epoch(self, channel: str) -> str:
        # The channel is part of the hash so that a position used on another
        # channel fails the epoch check (a reset, never wrong data).  Hex is
        # inside the epoch alphabet; 64 bits make collisions negligible.
        seed = self.topic_id + self.partitions.to_bytes(4, "big") + channel.encode()
        return hashlib.blake2b(seed, digest_size=8).hexdigest()


@dataclass(slots=True)
class _KeyIndex:
    """What this node knows of one partition: the last offset of each key.

    Every record in ``[base, scanned_to)`` has been seen, so a key missing
    from ``last`` has no record there.
    """

    stream: str
    base: int
    scanned_to: int
    last: dict[str, int] = field(default_factory=dict)

    def see(self, key: str, offset: int) -> None:
        if offset > self.last.get(key, -1):
            self.last[key] = offset


class KafkaBroker(Broker):
    kind = "kafka"
    contiguous_offsets = False

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        topic: str = "fanline",
        partitions: int = 16,
        replication_factor: int = 1,
        create_topic: bool = True,
        history_size: int = 1000,
        history_ttl: float = 600.0,
        idempotent: bool = True,
        timeout: float = 5.0,
        scan_limit: int = 200_000,
        index_keys: int = 200_000,
        check_interval: float = 1.0,
    ) -> None:
        if partitions < 1 or replication_factor < 1:
            raise ValueError("partitions and replication_factor must be at least 1")
        if history_size < 0 or history_ttl <= 0 or timeout <= 0 or scan_limit < 1:
            raise ValueError("history_size must be >= 0; history_ttl, timeout and scan_limit > 0")
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.partitions = partitions
        self.replication_factor = replication_factor
        self.create_topic = create_topic
        self.history_size = history_size
        self.history_ttl = history_ttl
        self.idempotent = idempotent
        self.timeout = timeout
        self.scan_limit = scan_limit
        self.index_keys = index_keys
        self.check_interval = check_interval

        self._listener: BrokerListener = NullListener()
        self._client: AIOKafkaClient | None = None
        self._producer: AIOKafkaProducer | None = None
        self._reader: AIOKafkaConsumer | None = None  # history scans, one at a time
        self._live: AIOKafkaConsumer | None = None
        self._tasks = TaskSet()
        self._started = False

        self._layout: _Layout | None = None
        # False after any sign that the broker went away: the next publish
        # checks (and if needed creates) the topic first, because a producer
        # reconnecting to an empty broker would otherwise write into a topic
        # that does not exist yet (Tansu accepts such writes; see the docs).
        self._verified = False
        # Admin and producer connections as they were when the layout was last
        # verified after a publish (see _stamp_layout).
        self._verified_incarnation: tuple[Any, ...] | None = None
        self._layout_refresh: asyncio.Future[_Layout] | None = None
        self._indexes: dict[int, _KeyIndex] = {}
        # Highest offset our producer got per partition: a lower one proves
        # the topic was recreated under us.
        self._produced: dict[int, int] = {}
        self._producer_lock = asyncio.Lock()
        self._reader_lock = asyncio.Lock()

        # Live delivery.
        self._channels: set[str] = set()
        self._assign_lock = asyncio.Lock()
        # partition -> next offset the live consumer will hand us.
        self._next: dict[int, int] = {}
        self._assigned = asyncio.Event()
        self._wake = asyncio.Event()
        # Set when live positions can no longer be trusted (out of range,
        # a new topic): the watchdog then re-reads every partition from its
        # end and asks the listener to resync from history.
        self._live_reset = False
        self._available = False
        # The live consumer's connections when the layout was last checked.
        self._checked_connections: tuple[Any, ...] | None = None

    # -- lifecycle -----------------------------------------------------------------

    async def start(self, listener: BrokerListener) -> None:
        if self._started:
            self._listener = listener
            return
        self._listener = listener
        try:
            async with asyncio.timeout(self.timeout * 2):
                self._client = AIOKafkaClient(
                    bootstrap_servers=self.bootstrap_servers,
                    request_timeout_ms=int(self.timeout * 1000),
                    client_id="fanline-admin",
                )
                await self._client.bootstrap()
                await self._refresh_layout()
                # Partition leaders for ListOffsets come from this metadata
                # (asked for after our create: it may auto-create the topic).
                await self._client.add_topic(self.topic)
                self._reader = self._new_consumer("fanline-history")
                await self._reader.start()
                self._live = self._new_consumer("fanline-live")
                await self._live.start()
                self._producer = await self._start_producer()
        except BaseException as exc:
            await self._close_clients()
            if isinstance(exc, asyncio.CancelledError):
                raise
            if self.idempotent and isinstance(exc, kafka_errors.UnknownError):
                # Tansu 0.6 (memory storage) answers InitProducerId this way.
                raise BrokerError("the Kafka broker refused an idempotent producer; set idempotent=false") from exc
            raise _unavailable("cannot connect to Kafka", exc) from exc
        self._started = True
        self._available = True
        self._spawn(self._live_loop(), "kafka-live")
        self._spawn(self._watch(), "kafka-watch")
        listener.on_availability(True)

    async def close(self) -> None:
        await self._tasks.cancel_all()
        await self._close_clients()
        self._started = False
        self._listener = NullListener()

    async def _close_clients(self) -> None:
        for closer in (
            self._producer.stop if self._producer else None,
            self._live.stop if self._live else None,
            self._reader.stop if self._reader else None,
            self._client.close if self._client else None,
        ):
            if closer is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(self.timeout):
                        await closer()
        self._producer = self._live = self._reader = None
        self._client = None

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self._tasks.spawn(coro, name)

    def _new_consumer(self, client_id: str) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            client_id=client_id,
            group_id=None,
            enable_auto_commit=False,
            # Never jump silently: an out-of-range position is an error we
            # turn into an explicit resync.
            auto_offset_reset="none",
            request_timeout_ms=int(self.timeout * 1000),
            fetch_max_wait_ms=200,
            metadata_max_age_ms=30_000,
        )

    async def _start_producer(self) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap_servers,
            client_id="fanline-publish",
            acks="all",
            enable_idempotence=self.idempotent,
            request_timeout_ms=int(self.timeout * 1000),
            linger_ms=0,
            metadata_max_age_ms=30_000,
        )
        try:
            async with asyncio.timeout(self.timeout):
                await producer.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await producer.stop()
            raise
        return producer

    # -- topic layout --------------------------------------------------------------

    async def _refresh_layout(self) -> _Layout:
        """Ask the broker for the topic's id and partition count; adopt changes.

        Concurrent callers share one request.
        """
        pending = self._layout_refresh
        if pending is None:
            task = self._tasks.spawn(self._fetch_layout(), "kafka-layout")
            task.add_done_callback(self._refresh_done)
            pending = self._layout_refresh = task
        return await asyncio.shield(pending)

    def _refresh_done(self, future: asyncio.Future[_Layout]) -> None:
        if self._layout_refresh is future:
            self._layout_refresh = None
        if not future.cancelled() and future.exception() is None:
            self._adopt(future.result())
            self._verified = True
        else:
            self._verified = False

    def _adopt(self, layout: _Layout) -> None:
        if layout == self._layout:
            return
        if self._layout is not None:
            log.warning(
                "kafka topic changed identity; every channel starts a new epoch",
                extra={"topic": self.topic, "partitions": layout.partitions},
            )
            self._live_reset = True
            self._wake.set()
        self._layout = layout
        self._verified_incarnation = None
        self._indexes.clear()
        self._produced.clear()

    async def _fetch_layout(self) -> _Layout:
        client = self._client
        if client is None:
            raise BrokerUnavailable("kafka broker is not started")
        try:
            async with asyncio.timeout(self.timeout):
                for _attempt in range(3):
                    node = client.get_random_node()
                    if node is None:
                        raise BrokerUnavailable("no Kafka broker known")
                    metadata = parse_metadata(await client.send(node, TopicMetadataRequest([self.topic])))
                    info = metadata.topics.get(self.topic)
                    if info is not None and info.error_code == 0 and info.partitions > 0:
                        return _Layout(topic_id=info.topic_id, partitions=info.partitions)
                    if info is None or info.error_code != UNKNOWN_TOPIC_OR_PARTITION:
                        code = None if info is None else info.error_code
                        raise BrokerUnavailable(f"kafka topic {self.topic!r} metadata error {code}")
                    if not self.create_topic:
                        raise BrokerError(f"kafka topic {self.topic!r} does not exist and create_topic is off")
                    await self._create_topic(client, metadata.controller_id)
        except BrokerError:
            raise
        except NotImplementedError as exc:
            raise BrokerError("the Kafka broker does not support Metadata v10 (Kafka 2.8 or later needed)") from exc
        except (kafka_errors.KafkaError, TimeoutError, OSError) as exc:
            raise _unavailable("kafka metadata request failed", exc) from exc
        raise BrokerUnavailable(f"kafka topic {self.topic!r} is not ready yet")

    async def _create_topic(self, client: AIOKafkaClient, controller: int) -> None:
        configs: list[tuple[str, str]] = [
            # Let Kafka drop what the TTL has expired anyway; reads filter by
            # timestamp too, so a broker that ignores this stays correct.
            ("retention.ms", str(int(self.history_ttl * 1000) + 60_000)),
        ]
        request = CreateTopicsRequest(
            create_topic_requests=[(self.topic, self.partitions, self.replication_factor, [], configs)],
            timeout=int(self.timeout * 1000),
            validate_only=False,
        )
        response = await client.send(controller, request)
        for topic_error in response.topic_errors:
            code = topic_error[1]
            if code not in (0, kafka_errors.TopicAlreadyExistsError.errno):
                raise BrokerError(f"cannot create kafka topic {self.topic!r}: error {code}")
        log.info("created kafka topic", extra={"topic": self.topic, "partitions": self.partitions})

    async def _current_layout(self) -> _Layout:
        if self._layout is None or not self._verified:
            return await self._refresh_layout()
        return self._layout

    # -- publishing ------------------------------------------------------------------

    async def publish(self, channel: str, data: str, *, event: str | None = None) -> Publication:
        layout = await self._current_layout()
        partition = partition_for(channel, layout.partitions)
        headers = [(EVENT_HEADER, event.encode())] if event else []
        producer = await self._producer_or_start()
        before = self._incarnation(producer)
        try:
            async with asyncio.timeout(self.timeout + 1):
                result = await producer.send_and_wait(
                    self.topic, value=data.encode(), key=channel.encode(), partition=partition, headers=headers
                )
        except _FATAL_PRODUCER_ERRORS as exc:
            self._replace_producer(producer)
            self._layout_refresh_soon()
            raise _unavailable("kafka producer failed; recreated it", exc) from exc
        except (kafka_errors.KafkaError, TimeoutError, OSError, AssertionError) as exc:
            # The topic may be gone or have other partitions now: look again.
            self._layout_refresh_soon()
            raise _unavailable("kafka publish failed", exc) from exc
        offset = int(result.offset)
        layout = await self._stamp_layout(producer, before, layout)
        if offset <= self._produced.get(partition, -1):
            # Offsets only grow within one incarnation of a partition.
            layout = await self._refresh_layout()
        self._produced[partition] = max(offset, self._produced.get(partition, -1))
        index = self._indexes.get(partition)
        if index is not None and index.stream == layout.stream(partition) and index.scanned_to == offset:
            index.see(channel, offset)
            index.scanned_to = offset + 1
        timestamp = int(result.timestamp) if result.timestamp and result.timestamp > 0 else int(time.time() * 1000)
        return Publication(
            channel=channel,
            epoch=layout.epoch(channel),
            offset=offset + 1,
            data=data,
            event=event,
            time_ms=timestamp,
        )

    # -- incarnations ----------------------------------------------------------------
    #
    # A broker that restarts without its data serves a new topic (a new topic
    # id) under the old name, and its offsets start again.  A record must be
    # stamped with the epoch of the incarnation that holds it, or one event
    # id would name two publications (issue 10, bug 4).  Kafka says nothing of
    # incarnations on a produce or fetch, but a restart breaks every
    # connection: so an answer is trusted only if it came over the very
    # connections that were open when the topic's identity was last checked.

    def _incarnation(self, client: AIOKafkaProducer | AIOKafkaConsumer | None) -> tuple[Any, ...] | None:
        """Identity of the admin connections and ``client``'s, or None if unknown."""
        admin = _connections(self._client)
        own = _connections(client)
        if admin is None or own is None:
            return None
        return (admin, own)

    def _check_incarnation(
        self, seen: tuple[Any, ...] | None, client: AIOKafkaProducer | AIOKafkaConsumer | None, what: str
    ) -> None:
        if not _survives(seen, self._incarnation(client)):
            self._layout_refresh_soon()
            raise BrokerUnavailable(f"kafka connections changed during a {what}; try again")

    async def _stamp_layout(
        self, producer: AIOKafkaProducer, before: tuple[Any, ...] | None, layout: _Layout
    ) -> _Layout:
        """The layout a just-acknowledged record belongs to.

        If the producer's connections are those it had when the layout was
        verified, that layout.  If the producer reconnected before this send,
        the record went to whatever answers now: check the topic again and
        use that, provided nothing reconnects meanwhile.  If it reconnected
        during the send, nobody can say where the record went, and an
        unknown outcome is what the caller must hear (a publish that failed
        with broker_unavailable may or may not have been stored).
        """
        after = self._incarnation(producer)
        if after is not None and after == self._verified_incarnation:
            return layout
        if not _survives(before, after):
            self._layout_refresh_soon()
            raise BrokerUnavailable("kafka connection changed while publishing; the outcome is unknown")
        checked = await self._refresh_layout()
        now = self._incarnation(producer)
        if not _survives(after, now):
            raise BrokerUnavailable("kafka connection changed while publishing; the outcome is unknown")
        self._verified_incarnation = now
        return checked

    async def _producer_or_start(self) -> AIOKafkaProducer:
        if self._producer is not None:
            return self._producer
        async with self._producer_lock:
            if self._producer is None:
                try:
                    self._producer = await self._start_producer()
                except (kafka_errors.KafkaError, TimeoutError, OSError) as exc:
                    raise _unavailable("cannot start kafka producer", exc) from exc
            return self._producer

    def _replace_producer(self, broken: AIOKafkaProducer) -> None:
        if self._producer is broken:
            self._producer = None  # the next publish starts a fresh one
        self._spawn(self._stop_quietly(broken.stop), "kafka-producer-stop")

    async def _stop_quietly(self, stop: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.timeout):
                await stop()

    def _layout_refresh_soon(self) -> None:
        self._verified = False
        self._wake.set()

    # -- history -----------------------------------------------------------------

    async def history(self, channel: str, since: int | None, limit: int) -> History:
        # Every read looks at the topic's identity first, so a recreated
        # topic is never read under the old epoch.
        layout = await self._refresh_layout()
        seen = self._incarnation(self._reader)
        partition = partition_for(channel, layout.partitions)
        epoch = layout.epoch(channel)
        tp = TopicPartition(self.topic, partition)
        async with self._reader_lock:
            log_start, end = await self._bounds(tp)
            index = await self._index(tp, layout.stream(partition), log_start, end)
            last = index.last.get(channel)
            if last is None:
                # No record of this key in [base, end): any position in that
                # range means "nothing yet".
                if since is not None and index.base <= since <= end:
                    history = History(top=Position(epoch, since), complete=True)
                else:
                    history = History(top=Position(epoch, index.base), complete=since is None)
                self._check_incarnation(seen, self._reader, "history read")
                return history
            top = Position(epoch, last + 1)
            if since is None or since >= top.offset:
                self._check_incarnation(seen, self._reader, "history read")
                return History(top=top, complete=True)
            if since < log_start or end - since > self.scan_limit:
                # Records after the position are gone from the log, or too
                # many to scan: the reader must be reset.
                return History(top=top, complete=False)
            # Read up to the top itself, not to ``end``: live delivery and our
            # own publishes extend the index past the ListOffsets answer, and
            # a top the read does not reach would claim records it never
            # returned (issue 10: a resume skipped the record after the replay).
            history = await self._read_range(tp, epoch, channel, since, top.offset, limit, top)
        self._check_incarnation(seen, self._reader, "history read")
        return history

    async def _bounds(self, tp: TopicPartition) -> tuple[int, int]:
        start, end = await asyncio.gather(
            self._list_offsets([tp.partition], _EARLIEST), self._list_offsets([tp.partition], _LATEST)
        )
        return start[tp.partition], end[tp.partition]

    async def _list_offsets(self, partitions: list[int], which: int) -> dict[int, int]:
        """The log start (``_EARLIEST``) or end (``_LATEST``) offsets of partitions.

        Sent on the admin client's connections: a consumer queues this
        request behind its own long-polling fetch on the same connection,
        which would add up to ``fetch_max_wait_ms`` to every history read.
        """
        client = self._client
        if client is None:
            raise BrokerUnavailable("kafka broker is not started")
        by_leader: dict[int, list[int]] = {}
        for partition in partitions:
            leader = client.cluster.leader_for_partition(TopicPartition(self.topic, partition))
            if leader is None or leader < 0:
                client.force_metadata_update()
                raise BrokerUnavailable(f"no leader known for kafka partition {partition}")
            by_leader.setdefault(leader, []).append(partition)
        offsets: dict[int, int] = {}
        try:
            async with asyncio.timeout(self.timeout):
                for leader, wanted in by_leader.items():
                    request = OffsetRequest(-1, 0, [(self.topic, [(p, which) for p in wanted])])
                    response = await client.send(leader, request)
                    for _topic, answers in response.topics:
                        for partition, error_code, *info in answers:
                            if error_code != 0:
                                client.force_metadata_update()
                                raise BrokerUnavailable(f"kafka ListOffsets error {error_code}")
                            offsets[int(partition)] = int(info[-1] if response.API_VERSION else info[0][0])
        except BrokerError:
            raise
        except (kafka_errors.KafkaError, TimeoutError, OSError) as exc:
            raise _unavailable("kafka offsets request failed", exc) from exc
        if set(offsets) != set(partitions):
            raise BrokerUnavailable("kafka ListOffsets answered for other partitions")
        return offsets

    async def _index(self, tp: TopicPartition, stream: str, log_start: int, end: int) -> _KeyIndex:
        index = self._indexes.get(tp.partition)
        stale = (
            index is None
            or index.stream != stream
            or index.scanned_to > end  # the log lost records: not the log we indexed
            or index.scanned_to < log_start  # records were trimmed before we saw them
            or end - index.scanned_to > self.scan_limit
        )
        if index is None or stale:
            base = max(log_start, end - self.scan_limit)
            index = _KeyIndex(stream=stream, base=base, scanned_to=base)
            self._indexes[tp.partition] = index
        if index.scanned_to < end:
            start = index.scanned_to

            def visit(record: Any) -> None:
                if record.key is not None:
                    index.see(record.key.decode("utf-8", errors="replace"), int(record.offset))

            await self._scan(tp, start, end, visit)
            index.scanned_to = max(index.scanned_to, end)
            if len(index.last) > self.index_keys:
                # Bounded memory over speed: the next read rebuilds it.
                del self._indexes[tp.partition]
        return index

    async def _read_range(
        self, tp: TopicPartition, epoch: str, channel: str, since: int, stop: int, limit: int, top: Position
    ) -> History:
        key = channel.encode()
        keep = self.history_size or None
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

        await self._scan(tp, since, stop, visit)
        horizon = time.time() * 1000 - self.history_ttl * 1000
        expired = any(record.timestamp < horizon for record in found)
        complete = not expired and (keep is None or count <= keep)
        retained = [record for record in found if record.timestamp >= horizon]
        publications = [self._publication(record, epoch, channel) for record in retained[: max(limit, 0)]]
        return History(top=top, publications=publications, complete=complete)

    async def _scan(self, tp: TopicPartition, start: int, stop: int, visit: Callable[[Any], None]) -> None:
        """Hand every record of ``tp`` in ``[start, stop)`` to ``visit``, in order.

        Bounded by ``scan_limit`` records and a deadline; called under the
        reader lock, because the reader has one assignment at a time.
        """
        reader = self._reader
        if reader is None or start >= stop:
            return
        deadline = max(self.timeout * 2, (stop - start) / 20_000)
        try:
            async with asyncio.timeout(deadline):
                await self._scan_assigned(reader, tp, start, stop, visit)
        except (kafka_errors.KafkaError, TimeoutError, OSError) as exc:
            raise _unavailable("kafka history read failed", exc) from exc
        finally:
            # An assigned reader keeps long-polling at the end of the log,
            # and the next read's fetch would queue behind that request.
            reader.unsubscribe()

    async def _scan_assigned(
        self, reader: AIOKafkaConsumer, tp: TopicPartition, start: int, stop: int, visit: Callable[[Any], None]
    ) -> None:
        reader.assign([tp])
        reader.seek(tp, start)
        position = start
        for _ in range(self.scan_limit):
            batch = await reader.getmany(tp, timeout_ms=int(self.timeout * 1000), max_records=2000)
            records = batch.get(tp, ())
            for record in records:
                if record.offset >= stop:
                    return
                if record.offset >= position:
                    visit(record)
            position = int(await reader.position(tp))
            if position >= stop:
                return
            highwater = reader.highwater(tp)
            if not records and highwater is not None and highwater <= position:
                # Fetch says the log ends here although ListOffsets said
                # later (seen on Tansu after a restart): what cannot be
                # fetched cannot be delivered, so stop.
                return

    def _publication(self, record: Any, epoch: str, channel: str) -> Publication:
        event: str | None = None
        for name, value in record.headers or ():
            if name == EVENT_HEADER and value:
                try:
                    event = validate_event_type(value.decode("utf-8", errors="replace"))
                except InvalidEventType:
                    event = None  # a foreign publisher's odd header must not break SSE framing
        raw = record.value
        return Publication(
            channel=channel,
            epoch=epoch,
            offset=int(record.offset) + 1,
            data="null" if raw is None else normalize_data(raw),
            event=event,
            time_ms=int(record.timestamp) if record.timestamp and record.timestamp > 0 else 0,
        )

    # -- live delivery --------------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        async with self._assign_lock:
            layout = await self._current_layout()
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
            layout = self._layout
            if layout is None:
                return
            partition = partition_for(channel, layout.partitions)
            if any(partition_for(c, layout.partitions) == partition for c in self._channels):
                return
            await self._assign(layout, reset_all=False)

    async def _assign(self, layout: _Layout, *, reset_all: bool) -> None:
        """Point the live consumer at the partitions of the subscribed channels.

        Partitions already read continue from where they were, so nothing
        between is skipped; new ones (and all, with ``reset_all``) start at
        their current end, which is what "subscribed from now on" means.
        Called under the assign lock.
        """
        live = self._live
        if live is None:
            raise BrokerUnavailable("kafka broker is not started")
        wanted = {partition_for(c, layout.partitions) for c in self._channels}
        fresh = wanted if reset_all else wanted - set(self._next)
        ends = await self._list_offsets(sorted(fresh), _LATEST) if fresh else {}
        # No await from here: the live loop sees the new assignment whole.
        positions = {p: ends[p] if p in fresh else self._next[p] for p in wanted}
        self._next = positions
        live.assign([TopicPartition(self.topic, p) for p in sorted(wanted)])
        for p, offset in positions.items():
            live.seek(TopicPartition(self.topic, p), offset)
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
            for tp, records in batches.items():
                self._deliver(layout, tp.partition, records)

    async def _layout_for_batch(self, live: AIOKafkaConsumer, batches: dict[Any, Any]) -> _Layout | None:
        """The layout to stamp a fetched batch with, or None to drop it.

        A broker that restarted without its data serves a new topic under
        the old name, and a consumer that reconnects keeps fetching from its
        old offsets: those records must not get the old epoch.  A restart
        means a new connection, so when the consumer's connections changed
        since the layout was last checked, the layout is checked again
        before anything of the batch is delivered.
        """
        connections = _connections(live)
        if connections is None or connections != self._checked_connections:
            try:
                await self._refresh_layout()
            except BrokerError:
                # Unverifiable: fetch these records again later.
                self._rewind(live, batches)
                await asyncio.sleep(0.2)
                return None
            self._checked_connections = connections
        if self._live_reset:
            # Positions are about to be reset and history re-read; records
            # fetched from the old positions are covered by that.
            return None
        return self._layout

    def _rewind(self, live: AIOKafkaConsumer, batches: dict[Any, Any]) -> None:
        for tp in batches:
            offset = self._next.get(tp.partition)
            if offset is not None:
                with contextlib.suppress(kafka_errors.IllegalStateError):
                    live.seek(tp, offset)

    def _deliver(self, layout: _Layout, partition: int, records: Iterable[Any]) -> None:
        expected = self._next.get(partition)
        if expected is None:
            return  # unassigned while the batch was in flight
        index = self._indexes.get(partition)
        if index is not None and index.stream != layout.stream(partition):
            index = None
        for record in records:
            offset = int(record.offset)
            if offset < expected:
                continue  # fetched again after a reassignment
            # Nothing exists between ``expected`` and this record, so an
            # index that knows everything before ``expected`` can take it.
            if index is not None and index.scanned_to >= expected and offset >= index.scanned_to:
                if record.key is not None:
                    index.see(record.key.decode("utf-8", errors="replace"), offset)
                index.scanned_to = offset + 1
            expected = offset + 1
            if record.key is None:
                continue
            channel = record.key.decode("utf-8", errors="replace")
            if channel in self._channels:
                self._listener.on_publication(self._publication(record, layout.epoch(channel), channel))
        self._next[partition] = expected

    async def _watch(self) -> None:
        """Notice a lost or restored broker and a recreated topic; repair live delivery."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.check_interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                layout = await self._refresh_layout()
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
        await self._refresh_layout()
        if self._started and (self._live_reset or not self._available):
            # Reachable, but live delivery is not repaired yet: not healthy.
            self._wake.set()
            raise BrokerUnavailable("kafka live delivery is being re-established")


def _connections(owner: object) -> tuple[Any, ...] | None:
    """The open broker connections of a client, consumer or producer, compared by identity.

    aiokafka has no public "reconnected" signal, so this reads its client's
    connection table; if that ever changes shape, None makes the callers
    treat every answer as unverifiable, which is slower but still correct.
    """
    client = owner if isinstance(owner, AIOKafkaClient) else getattr(owner, "_client", None) or getattr(
        owner, "client", None
    )
    conns = getattr(client, "_conns", None)
    if not isinstance(conns, dict):
        return None
    return tuple(_Same(conn) for conn in conns.values())


def _survives(old: tuple[Any, ...] | None, new: tuple[Any, ...] | None) -> bool:
    """Every connection of ``old`` is still open in ``new`` (new ones may have been added)."""
    if old is None or new is None:
        return False
    return all(set(before) <= set(now) for before, now in zip(old, new, strict=True))


class _Same:
    """Compares by identity, and keeps its object alive so ids are not reused."""

    __slots__ = ("obj",)

    def __init__(self, obj: object) -> None:
        self.obj = obj

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Same) and other.obj is self.obj

    def __hash__(self) -> int:
        return id(self.obj)


def _unavailable(message: str, exc: BaseException) -> BrokerUnavailable:
    detail = str(exc) or type(exc).__name__
    return BrokerUnavailable(f"{message}: {detail}")


def from_url(url: str) -> KafkaBroker:
    """``kafka://host:9092[,host:9092]?topic=fanline&partitions=16&history_size=1000&history_ttl=600``."""
    from urllib.parse import urlsplit

    from . import UnknownBrokerURL, url_options

    parts = urlsplit(url)
    if not parts.netloc:
        raise UnknownBrokerURL("kafka URL needs host:port, e.g. kafka://127.0.0.1:9092")
    options = url_options(
        url,
        {
            "topic": str,
            "partitions": int,
            "replication_factor": int,
            "create_topic": bool,
            "history_size": int,
            "history_ttl": float,
            "idempotent": bool,
            "timeout": float,
            "scan_limit": int,
            "index_keys": int,
            "check_interval": float,
        },
    )
    try:
        return KafkaBroker(parts.netloc, **options)  # type: ignore[arg-type]
    except ValueError as exc:
        raise UnknownBrokerURL(f"bad kafka URL option: {exc}") from None
