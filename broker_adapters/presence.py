"""Presence: the optional broker capability that says who is subscribed to a channel, cluster-wide.

Modelled on centrifuge's optional capability interfaces (``PresenceManager``
beside ``Broker``): a broker that can keep presence returns a
:class:`PresenceStore` from :meth:`broker_adapters.base.Broker.presence`;
one that cannot returns None, and a node then needs a separate store
(``presence_store``, for example a Redis beside Kafka; docs/presence.md).

The contract, for every store:

- entries are written by the node that holds the connection, and expire
  ``ttl`` seconds after that node last wrote them, so the clients of a node
  that died leave the list within ``ttl`` without anyone removing them;
- a node writes in batches (:meth:`PresenceStore.write`): one call carries
  every change of many channels, and a refresh rewrites all of a node's
  entries of a channel at once, never one call per connection per interval;
- a channel holds at most ``max_clients`` entries: a client beyond the cap
  is not recorded (the count says how many were refused);
- :meth:`PresenceStore.count` answers without reading the entries where the
  broker allows it (Redis: ``ZCARD``); docs/presence.md says what it costs on
  each broker.

Nothing is kept in the node: every read asks the store, so any node (and
the server API) gives the same answer.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

#: Longest client id and user id accepted in an entry.
MAX_ID_LENGTH = 255


@dataclass(frozen=True, slots=True)
class PresenceSettings:
    """What every store is built with; the same on every node of a cluster."""

    #: Seconds an entry lives after its node last wrote it.
    ttl: float = 60.0
    #: Most entries per channel.
    max_clients: int = 1000

    def __post_init__(self) -> None:
        if self.ttl <= 0 or self.max_clients < 1:
            raise ValueError("presence ttl must be > 0 and max_clients >= 1")


@dataclass(frozen=True, slots=True)
class PresenceEntry:
    """One present client: its connection id, its user ("" if anonymous), its info (compact JSON or None)."""

    client: str
    user: str = ""
    info: str | None = None

    def encode(self) -> str:
        """The stored form: a JSON array ``[user, info]`` (info as JSON text inside it)."""
        return json.dumps([self.user, self.info], separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def decode(cls, client: str, stored: str | bytes) -> PresenceEntry | None:
        """The entry ``stored`` holds; None for anything not written by :meth:`encode`."""
        try:
            user, info = json.loads(stored)
        except (ValueError, TypeError):
            return None
        if not isinstance(user, str) or not (info is None or isinstance(info, str)):
            return None
        return cls(client, user, info)

    def as_dict(self) -> dict[str, object]:
        """The entry as the protocol and the API show it (``info`` decoded)."""
        out: dict[str, object] = {"client": self.client, "user": self.user}
        if self.info is not None:
            out["info"] = json.loads(self.info)
        return out


@dataclass(slots=True)
class ChannelPresence:
    """One node's presence changes for one channel, as one step of a :meth:`PresenceStore.write`.

    ``present`` is every entry the node holds for the channel now; ``added``
    the ones that are new since its last write; ``removed`` the clients that
    left.  With ``refresh`` the store renews every entry in ``present`` (the
    periodic write); without it only ``added`` and ``removed`` need writing,
    though a store that keeps one document per node and channel (NATS)
    rewrites ``present`` either way.
    """

    channel: str
    present: Sequence[PresenceEntry] = ()
    added: Sequence[PresenceEntry] = ()
    removed: Sequence[str] = ()
    refresh: bool = False
    # Filled in by the store: entries refused because the channel was full.
    refused: int = field(default=0)


class PresenceStore(abc.ABC):
    """Where a cluster's presence lives; see the module docstring."""

    def __init__(self, settings: PresenceSettings) -> None:
        self.settings = settings

    @abc.abstractmethod
    async def write(self, owner: str, changes: Sequence[ChannelPresence]) -> None:
        """Apply one node's changes (``owner`` names the node), in as few round trips as the broker allows.

        Sets :attr:`ChannelPresence.refused` on each change.  Raises
        :class:`~broker_adapters.errors.BrokerUnavailable` if the store
        cannot be reached; the caller writes everything again next time.
        """

    @abc.abstractmethod
    async def list(self, channel: str) -> list[PresenceEntry]:
        """Every unexpired entry of ``channel`` (at most ``max_clients``), in no particular order."""

    @abc.abstractmethod
    async def count(self, channel: str) -> int:
        """How many unexpired entries ``channel`` has."""

    async def close(self) -> None:  # noqa: B027 - optional: most stores own nothing of their own
        """Release what the store holds beyond its broker's connections."""


def users_of(entries: Sequence[PresenceEntry]) -> int:
    """How many distinct users ``entries`` name (anonymous clients count once each)."""
    named = {e.user for e in entries if e.user}
    return len(named) + sum(1 for e in entries if not e.user)
