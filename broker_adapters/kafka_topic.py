"""The Kafka adapter's one topic: its layout, checked against the broker, and the epochs it gives.

A :class:`Layout` is one incarnation of the topic as the broker describes it
(Metadata v10, broker_adapters/kafka_metadata.py): its topic id and partition
count.  Channel epochs and index identities are hashes of it, so a recreated
topic, a broker that lost its data or a changed partition count gives every
channel a new epoch.

:class:`Topic` keeps the current layout: it asks the broker (concurrent
callers share one request), creates the topic if allowed, tells its owner
when the layout changed, and decides which layout a publish acknowledgement
or a history read belongs to (broker_adapters/kafka_incarnation.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiokafka import errors as kafka_errors
from aiokafka.client import AIOKafkaClient
from aiokafka.partitioner import murmur2
from aiokafka.protocol.admin import CreateTopicsRequest

from .errors import BrokerError, BrokerUnavailable
from .kafka_incarnation import connections
from .kafka_metadata import UNKNOWN_TOPIC_OR_PARTITION, TopicMetadataRequest, parse_metadata
from .library_errors import LibraryErrors
from .tasks import TaskSet

if TYPE_CHECKING:
    from .kafka import KafkaOptions

log = logging.getLogger("fanline.broker.kafka")

#: What aiokafka raises when Kafka did not do what was asked.
KAFKA = LibraryErrors("kafka", (kafka_errors.KafkaError, TimeoutError, OSError))


def partition_for(channel: str, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for this key (Java-compatible murmur2)."""
    return int(murmur2(channel.encode()) & 0x7FFFFFFF) % partitions


@dataclass(frozen=True, slots=True)
class Layout:
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


class Topic:
    """The topic's current layout, as last checked, and the checks of answers against it."""

    def __init__(
        self,
        options: KafkaOptions,
        tasks: TaskSet,
        wake: asyncio.Event,
        on_change: Callable[[Layout, bool], None],
    ) -> None:
        self.options = options
        self.client: AIOKafkaClient | None = None
        self.layout: Layout | None = None
        self._tasks = tasks
        # Wakes the owner's watcher, which refreshes the layout soon.
        self._wake = wake
        # Called with the new layout, and whether it replaces an earlier one.
        self._on_change = on_change
        # False after any sign that the broker went away: the next publish
        # checks (and if needed creates) the topic first, because a producer
        # reconnecting to an empty broker would otherwise write into a topic
        # that does not exist yet (Tansu accepts such writes; see the docs).
        self._verified = False
        # Per kind of client (producer, reader, live consumer): its
        # connections when an answer over them was last confirmed (see confirm).
        self._confirmed: dict[str, tuple[Any, ...]] = {}
        self._refreshing: asyncio.Future[Layout] | None = None

    # -- the layout ------------------------------------------------------------------

    async def refresh(self) -> Layout:
        """Ask the broker for the topic's id and partition count; adopt changes.

        Concurrent callers share one request.
        """
        pending = self._refreshing
        if pending is None:
            task = self._tasks.spawn(self._fetch(), "kafka-layout")
            task.add_done_callback(self._refresh_done)
            pending = self._refreshing = task
        return await asyncio.shield(pending)

    async def fresh(self) -> Layout:
        """The topic's identity from a request that starts now, not shared with one in flight.

        A request already in flight may have been answered by a broker that
        restarted since; confirming an answer needs one that started after it.
        """
        layout = await self._fetch()
        self._adopt(layout)
        self._verified = True
        return layout

    async def current(self) -> Layout:
        """The layout, refreshed first if anything suggested it may have changed."""
        if self.layout is None or not self._verified:
            return await self.refresh()
        return self.layout

    def refresh_soon(self) -> None:
        self._verified = False
        self._wake.set()

    def _refresh_done(self, future: asyncio.Future[Layout]) -> None:
        if self._refreshing is future:
            self._refreshing = None
        if not future.cancelled() and future.exception() is None:
            self._adopt(future.result())
            self._verified = True
        else:
            self._verified = False

    def _adopt(self, layout: Layout) -> None:
        if layout == self.layout:
            return
        replaced = self.layout is not None
        if replaced:
            log.warning(
                "kafka topic changed identity; every channel starts a new epoch",
                extra={
                    "topic": self.options.topic,
                    "partitions": layout.partitions,
                    "topic_id": layout.topic_id.hex(),
                    "previous_topic_id": self.layout.topic_id.hex() if self.layout else None,
                },
            )
        self.layout = layout
        self._confirmed.clear()
        self._on_change(layout, replaced)

    async def _fetch(self) -> Layout:
        client = self.client
        if client is None:
            raise BrokerUnavailable("kafka broker is not started")
        topic = self.options.topic
        with KAFKA.unavailable("metadata request"):
            try:
                async with asyncio.timeout(self.options.timeout):
                    for _attempt in range(3):
                        node = client.get_random_node()
                        if node is None:
                            raise BrokerUnavailable("no Kafka broker known")
                        metadata = parse_metadata(await client.send(node, TopicMetadataRequest([topic])))
                        info = metadata.topics.get(topic)
                        if info is not None and info.error_code == 0 and info.partitions > 0:
                            return Layout(topic_id=info.topic_id, partitions=info.partitions)
                        if info is None or info.error_code != UNKNOWN_TOPIC_OR_PARTITION:
                            code = None if info is None else info.error_code
                            raise BrokerUnavailable(f"kafka topic {topic!r} metadata error {code}")
                        if not self.options.create_topic:
                            raise BrokerError(f"kafka topic {topic!r} does not exist and create_topic is off")
                        await self._create(client, metadata.controller_id)
            except NotImplementedError as exc:
                raise BrokerError("the Kafka broker does not support Metadata v10 (Kafka 2.8 or later needed)") from exc
        raise BrokerUnavailable(f"kafka topic {topic!r} is not ready yet")

    async def _create(self, client: AIOKafkaClient, controller: int) -> None:
        options = self.options
        configs: list[tuple[str, str]] = [
            # Let Kafka drop what the TTL has expired anyway; reads filter by
            # timestamp too, so a broker that ignores this stays correct.
            ("retention.ms", str(int(options.history_ttl * 1000) + 60_000)),
        ]
        request = CreateTopicsRequest(
            create_topic_requests=[(options.topic, options.partitions, options.replication_factor, [], configs)],
            timeout=int(options.timeout * 1000),
            validate_only=False,
        )
        response = await client.send(controller, request)
        for topic_error in response.topic_errors:
            code = topic_error[1]
            if code not in (0, kafka_errors.TopicAlreadyExistsError.errno):
                raise BrokerError(f"cannot create kafka topic {options.topic!r}: error {code}")
        log.info("created kafka topic", extra={"topic": options.topic, "partitions": options.partitions})

    # -- incarnations ----------------------------------------------------------------

    def _connections(self, client: object) -> tuple[Any, ...] | None:
        """The admin client's connections and ``client``'s: an answer may combine both
        (a history read's ListOffsets goes over the admin client, its scan over the reader)."""
        admin, own = connections(self.client), connections(client)
        return None if admin is None or own is None else admin + own

    async def confirm(self, role: str, client: object, layout: Layout, what: str) -> None:
        """An answer (``what``) just came from ``client``: make sure ``layout`` names its incarnation.

        A record must carry the epoch of the topic incarnation that holds it,
        or one event id would name two publications.  Kafka says nothing of
        incarnations in a produce or fetch answer, but a broker restart breaks
        every connection.  So the answer is taken as it is when ``client``'s
        connections are exactly those that a previous confirmation saw;
        otherwise a metadata request that starts now, after the answer, must
        name the same topic, and nothing may reconnect meanwhile.  The admin
        client's connections count too: parts of an answer (offsets, the
        topic's identity) travel over them.  A
        topic that changed identity (a broker that restarted empty; the topic
        recreated after a record landed in a partition that no longer
        exists) cannot name the answer: raises BrokerUnavailable, the
        outcome unknown (issue 10, bug 4).
        """
        now = self._connections(client)
        if now is not None and now == self._confirmed.get(role) and layout == self.layout:
            return
        checked = await self.fresh()
        if now is None or checked != layout or self._connections(client) != now:
            self.refresh_soon()
            raise BrokerUnavailable(f"kafka topic or connection changed during a {what}; the outcome is unknown")
        self._confirmed[role] = now
