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
from typing import TYPE_CHECKING

from aiokafka import errors as kafka_errors
from aiokafka.client import AIOKafkaClient
from aiokafka.partitioner import murmur2
from aiokafka.protocol.admin import CreateTopicsRequest

from .errors import BrokerError, BrokerUnavailable
from .kafka_incarnation import Incarnation, incarnation, survives
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
        # Admin and producer connections as they were when the layout was last
        # verified after a publish (see stamp).
        self._verified_incarnation: Incarnation = None
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
        self._verified_incarnation = None
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

    def incarnation(self, client: object) -> Incarnation:
        """Identity of the admin connections and ``client``'s, or None if unknown."""
        return incarnation(self.client, client)

    def check(self, seen: Incarnation, client: object, what: str) -> None:
        """Refuse an answer if ``client``'s connections changed since ``seen``."""
        if not survives(seen, self.incarnation(client)):
            self.refresh_soon()
            raise BrokerUnavailable(f"kafka connections changed during a {what}; try again")

    async def stamp(self, producer: object, before: Incarnation, layout: Layout) -> Layout:
        """The layout a just-acknowledged record belongs to.

        If the producer's connections are those it had when the layout was
        verified, that layout.  If the producer reconnected before this send,
        the record went to whatever answers now: check the topic again, and
        keep the layout only if the topic is the very one the send started
        with.  A topic that changed identity across the send (a broker that
        restarted empty, and the topic recreated after our record landed in
        a partition that no longer exists) cannot name the record: its
        offsets start again and would be handed out twice.  If the topic
        changed, or the producer reconnected during the send, nobody can say
        where the record went, and an unknown outcome is what the caller
        must hear (a publish that failed with broker_unavailable may or may
        not have been stored).
        """
        after = self.incarnation(producer)
        if after is not None and after == self._verified_incarnation:
            return layout
        if not survives(before, after):
            self.refresh_soon()
            raise BrokerUnavailable("kafka connection changed while publishing; the outcome is unknown")
        checked = await self.refresh()
        now = self.incarnation(producer)
        if not survives(after, now) or checked != layout:
            self.refresh_soon()
            raise BrokerUnavailable("kafka topic changed while publishing; the outcome is unknown")
        self._verified_incarnation = now
        return checked
