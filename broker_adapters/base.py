"""The broker contract: what a node needs from whatever carries its messages.

A broker does two jobs.  It keeps a bounded history per channel, so a client
can resume from a position on any node; and it carries every publication once
to every node that has local subscribers for its channel.  Fan-out to the
individual connections happens inside the node, never on the broker.

The contract is deliberately small:

- :meth:`Broker.publish` appends to a channel's history and broadcasts, as one
  step, and returns the publication with its position;
- :meth:`Broker.history` reads the publications after an offset, with the
  stream's current top, and says whether that range is still complete;
- :meth:`Broker.subscribe` / :meth:`Broker.unsubscribe` manage the node's one
  live subscription per channel;
- live publications and "you may have missed something" signals go to the
  :class:`BrokerListener` given to :meth:`Broker.start`.

Reading or subscribing to a channel that was never published creates nothing
on the broker: a channel's stream (its epoch and history) comes into being
with its first publication, so clients cannot grow the broker's state by
naming channels.  The position of a channel without a stream is derived, the
same on every node, and its first publication continues it (docs/brokers.md
says how each broker does it).
"""

from __future__ import annotations

import abc
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from .errors import BrokerError as BrokerError
from .errors import BrokerUnavailable as BrokerUnavailable
from .presence import PresenceSettings, PresenceStore
from .types import History, Publication


class BrokerListener(Protocol):
    """Where a broker delivers what it carries.  Implemented by the node's hub."""

    def on_publication(self, publication: Publication) -> None:
        """A live publication on a subscribed channel, in stream order.

        Called from the event loop; must not block.
        """

    def on_resync(self, channels: Iterable[str] | None) -> None:
        """Live delivery may have skipped publications.

        ``None`` means every subscribed channel (for example after the broker
        connection was re-established); the listener re-reads history from
        the last position it delivered.
        """

    def on_availability(self, available: bool) -> None:
        """The connection to the broker was lost or restored."""


@dataclass(slots=True)
class BrokerStats:
    """Counters an adapter keeps as it goes, for the node's metrics.  Monotonic."""

    #: Channel streams this adapter created on the broker: first publications
    #: (0 on Kafka, which keeps no per-channel state).
    streams_created: int = 0
    #: History reads of channels that have no stream; they created nothing.
    empty_reads: int = 0


class Broker(abc.ABC):
    """Base class of every adapter.  See the module docstring."""

    #: True when the offsets of one channel's stream are consecutive
    #: integers, so a live publication whose offset is not last + 1 proves a
    #: gap.  Adapters whose offsets are shared with other channels (NATS
    #: stream sequences, Kafka partition offsets) set it to False and report
    #: gaps through :meth:`BrokerListener.on_resync` instead.
    contiguous_offsets: bool = True

    #: A short name for logs and metrics.
    kind: str = "broker"

    def __init__(self) -> None:
        self.stats = BrokerStats()

    @abc.abstractmethod
    async def start(self, listener: BrokerListener) -> None:
        """Connect, and deliver live publications to ``listener`` from now on.

        Raises :class:`BrokerUnavailable` if the broker cannot be reached;
        the caller may retry.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Release every connection and task.  Idempotent."""

    @abc.abstractmethod
    async def publish(
        self, channel: str, data: str, *, event: str | None = None
    ) -> Publication:
        """Append ``data`` (compact JSON text) to ``channel`` and broadcast it."""

    @abc.abstractmethod
    async def history(self, channel: str, since: int | None, limit: int) -> History:
        """Read ``channel`` after offset ``since``, oldest first, at most ``limit``.

        ``since=None`` asks only for the current top.  A channel that never
        had a publication has a top too, in the epoch its first publication
        will get, so a reader that subscribes to an empty channel gets a
        position to resume from; reading it stores nothing on the broker.
        """

    @abc.abstractmethod
    async def subscribe(self, channel: str) -> None:
        """Start live delivery of ``channel`` to this node.

        When this returns, every publication made afterwards reaches the
        listener.  Called once per channel per node, however many local
        connections subscribe.
        """

    @abc.abstractmethod
    async def unsubscribe(self, channel: str) -> None:
        """Stop live delivery of ``channel`` to this node."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Round-trip to the broker; raise :class:`BrokerUnavailable` if it fails."""

    # -- optional capabilities -------------------------------------------------------

    def presence(self, settings: PresenceSettings) -> PresenceStore | None:
        """A presence store kept in this broker, or None if the broker has no structure for it.

        Optional, like centrifuge's PresenceManager: see
        :mod:`broker_adapters.presence`.  Called once, before :meth:`start`;
        the store uses the broker's connections.
        """
        return None


class NullListener:
    """A listener that ignores everything, for publish-only use."""

    def on_publication(self, publication: Publication) -> None:
        pass

    def on_resync(self, channels: Iterable[str] | None) -> None:
        pass

    def on_availability(self, available: bool) -> None:
        pass
