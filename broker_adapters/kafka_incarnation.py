"""Which incarnation of the topic an answer came from, judged by the connections it travelled.

A broker that restarts without its data serves a new topic (a new topic id)
under the old name, and its offsets start again.  A record must be stamped
with the epoch of the incarnation that holds it, or one event id would name
two publications.  Kafka says nothing of incarnations in a produce or fetch
answer, but a restart breaks every connection: so an answer is trusted only
if it came over the very connections that were open when the topic's
identity was last confirmed, or that a metadata request started after it
names the same topic (broker_adapters/kafka_topic.py, ``Topic.confirm``).

aiokafka has no public "reconnected" signal, so :func:`connections` reads a
client's connection table; if that ever changes shape, it answers None and
every answer counts as unverifiable, which is slower but still correct.
"""

from __future__ import annotations

from typing import Any

from aiokafka.client import AIOKafkaClient


def connections(owner: object) -> tuple[Any, ...] | None:
    """The open broker connections of a client, consumer or producer, compared by identity."""
    client = owner if isinstance(owner, AIOKafkaClient) else getattr(owner, "_client", None) or getattr(
        owner, "client", None
    )
    conns = getattr(client, "_conns", None)
    if not isinstance(conns, dict):
        return None
    return tuple(_Same(conn) for conn in conns.values())


class _Same:
    """Compares by identity, and keeps its object alive so ids are not reused."""

    __slots__ = ("obj",)

    def __init__(self, obj: object) -> None:
        self.obj = obj

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Same) and other.obj is self.obj

    def __hash__(self) -> int:
        return id(self.obj)
