"""Each channel's position: what the Python client gives back as ``since`` to resume.

Two ids per channel, because a subscription hands its items to the
application through a queue:

- the **received** position, the id of the latest ``subscribed``, ``event`` or
  ``reset`` that arrived.  The next subscribe (after a reconnect) resumes from
  it; the items still queued stay queued, so nothing is lost or repeated.
- the **processed** position, the id of the latest item the application has
  finished with.  That is the one written to the optional store, so that a
  program that dies and starts again resumes after what it really processed.

The rules (docs/protocol.md, "Resume and reset") are pure functions here;
the store is any ``MutableMapping[str, str]``: a dict, a ``shelve`` file, or
your own.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import MutableMapping

log = logging.getLogger("fanline.client")


class Since(enum.Enum):
    """``subscribe(channel)`` without ``since``: resume from the position the client knows (in memory, else stored)."""

    KNOWN = "known"


def moves_position(kind: str, recovered: bool | None = None) -> bool:
    """Whether a ``subscribed``/``event``/``reset`` message moves its channel's position to its ``id``.

    Every one does, except a ``subscribed`` with ``recovered: false``: its
    ``id`` is the ``since`` the client sent, and only the ``reset`` that follows
    moves the position, so that a connection cut between the two leaves the
    client at ``since`` and the next resume gets the reset again.
    """
    return not (kind == "subscribed" and recovered is False)


def starting_position(since: str | None | Since, known: str | None) -> str | None:
    """Where a new subscription starts: the ``since`` given, else (``Since.KNOWN``) the known position.

    ``since=None`` starts from now on, forgetting any known position.
    """
    return known if since is Since.KNOWN else since or None


class Positions:
    """The received and processed positions of every channel, and the store behind the processed ones.

    A store that fails (a full disk, a closed shelf) is logged once and
    otherwise ignored: the positions in memory are still right for the life
    of the client.
    """

    __slots__ = ("_failed", "_prefix", "_store", "processed", "received")

    def __init__(self, store: MutableMapping[str, str] | None = None, prefix: str = "fanline:") -> None:
        self._store = store
        self._prefix = prefix
        self._failed = False
        self.received: dict[str, str] = {}
        self.processed: dict[str, str] = {}

    def start(self, channel: str, since: str | None | Since) -> str | None:
        """Begin a subscription: set both positions from ``since`` or what is known; return the position."""
        # What was processed, not what arrived: a subscription that ended (a failure) may have
        # left items the application never took.
        known = self.processed.get(channel) or self._load(channel)
        position = starting_position(since, known)
        self.received.pop(channel, None)
        self.processed.pop(channel, None)
        if position is None:
            if known is not None:
                self._write(channel, None)
            return None
        self.received[channel] = position
        if position != known:
            self.commit(channel, position)
        else:
            self.processed[channel] = position
        return position

    def receive(self, channel: str, event_id: str) -> str | None:
        """A message moved the channel to ``event_id``; returns the position it had before."""
        previous = self.received.get(channel)
        self.received[channel] = event_id
        return previous

    def commit(self, channel: str, event_id: str) -> None:
        """The application has finished with everything up to ``event_id``."""
        if self.processed.get(channel) != event_id:
            self.processed[channel] = event_id
            self._write(channel, event_id)

    def forget(self, channel: str) -> None:
        """An unsubscribed channel: forget its positions, here and in the store."""
        self.received.pop(channel, None)
        if self.processed.pop(channel, None) is not None or self._store is not None:
            self._write(channel, None)

    def _load(self, channel: str) -> str | None:
        if self._store is None:
            return None
        try:
            value = self._store.get(self._prefix + channel)
        except Exception as exc:  # the store is the application's: any failure is its own
            self._fail(exc)
            return None
        if isinstance(value, bytes):  # dbm-style stores give bytes back
            value = value.decode()
        return value if isinstance(value, str) and value else None

    def _write(self, channel: str, event_id: str | None) -> None:
        if self._store is None:
            return
        try:
            if event_id is None:
                self._store.pop(self._prefix + channel, None)
            else:
                self._store[self._prefix + channel] = event_id
        except Exception as exc:
            self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        if not self._failed:
            self._failed = True
            log.warning("fanline client: the position store failed (%r); positions are kept in memory only", exc)
