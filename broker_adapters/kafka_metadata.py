"""Kafka Metadata v10 on the wire, for the one field aiokafka does not read: the topic id.

A Fanline epoch must change when a topic is deleted and created again (or a
broker without persistence restarts), or an old position would be taken for
a continuation of a new log.  Kafka names each incarnation of a topic with a
random UUID, returned by Metadata v10 and later (Kafka 2.8+); aiokafka 0.14
only speaks Metadata v0-v5, so this module defines v10 with aiokafka's own
protocol types and sends it through an ``AIOKafkaClient``.

The request never asks the broker to auto-create the topic.
"""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO
from typing import Any

from aiokafka.protocol.abstract import AbstractType
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Boolean, CompactArray, CompactString, Int16, Int32, Schema, TaggedFields

UNKNOWN_TOPIC_OR_PARTITION = 3


class _Uuid(AbstractType):  # type: ignore[misc]
    """Kafka's UUID type: 16 raw bytes."""

    @classmethod
    def encode(cls, value: bytes) -> bytes:
        return value

    @classmethod
    def decode(cls, data: BytesIO) -> bytes:
        value: bytes = data.read(16)
        if len(value) != 16:
            raise ValueError("buffer underrun decoding a UUID")
        return value


_STRING = CompactString("utf-8")


class MetadataResponse_v10(Response):  # type: ignore[misc]  # noqa: N801 - aiokafka's naming
    API_KEY = 3
    API_VERSION = 10
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "brokers",
            CompactArray(
                ("node_id", Int32), ("host", _STRING), ("port", Int32), ("rack", _STRING), ("tags", TaggedFields)
            ),
        ),
        ("cluster_id", _STRING),
        ("controller_id", Int32),
        (
            "topics",
            CompactArray(
                ("error_code", Int16),
                ("name", _STRING),
                ("topic_id", _Uuid),
                ("is_internal", Boolean),
                (
                    "partitions",
                    CompactArray(
                        ("error_code", Int16),
                        ("partition_index", Int32),
                        ("leader_id", Int32),
                        ("leader_epoch", Int32),
                        ("replica_nodes", CompactArray(Int32)),
                        ("isr_nodes", CompactArray(Int32)),
                        ("offline_replicas", CompactArray(Int32)),
                        ("tags", TaggedFields),
                    ),
                ),
                ("topic_authorized_operations", Int32),
                ("tags", TaggedFields),
            ),
        ),
        ("cluster_authorized_operations", Int32),
        ("tags", TaggedFields),
    )


class MetadataRequest_v10(RequestStruct):  # type: ignore[misc]  # noqa: N801
    API_KEY = 3
    API_VERSION = 10
    FLEXIBLE_VERSION = True
    RESPONSE_TYPE = MetadataResponse_v10
    SCHEMA = Schema(
        ("topics", CompactArray(("topic_id", _Uuid), ("name", _STRING), ("tags", TaggedFields))),
        ("allow_auto_topic_creation", Boolean),
        ("include_cluster_authorized_operations", Boolean),
        ("include_topic_authorized_operations", Boolean),
        ("tags", TaggedFields),
    )


class TopicMetadataRequest(Request[MetadataRequest_v10]):  # type: ignore[misc]
    """Metadata for named topics, with their ids, never auto-creating them."""

    API_KEY = 3

    def __init__(self, topics: list[str]) -> None:
        self.topics = topics

    def build(self, request_struct_class: type[Any]) -> Any:
        return request_struct_class([(bytes(16), name, {}) for name in self.topics], False, False, False, {})


@dataclass(frozen=True, slots=True)
class TopicMetadata:
    name: str
    error_code: int
    topic_id: bytes
    partitions: int


@dataclass(frozen=True, slots=True)
class ClusterMetadata:
    controller_id: int
    broker_ids: tuple[int, ...]
    topics: dict[str, TopicMetadata]


def parse_metadata(response: Any) -> ClusterMetadata:
    topics = {
        name: TopicMetadata(name=name, error_code=error, topic_id=topic_id, partitions=len(partitions or ()))
        for error, name, topic_id, _internal, partitions, _ops, _tags in response.topics
    }
    brokers = tuple(int(b[0]) for b in response.brokers)
    return ClusterMetadata(controller_id=int(response.controller_id), broker_ids=brokers, topics=topics)
