"""From a client library's exceptions to the errors a node understands.

Each adapter names once, as a :class:`LibraryErrors`, the exceptions its
client library raises when the broker did not do what was asked: a lost
connection, a timeout, a server-side error.  Every call into the library runs
inside ``with LIB.unavailable("publish"):``, which turns those exceptions
into :class:`BrokerUnavailable` (the node answers ``broker_unavailable`` and
the caller may retry) and lets a :class:`BrokerError` through untouched, so
an adapter's own, more precise errors survive.  Cleanup that may fail on a
dead connection runs inside ``with LIB.ignored():``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from .errors import BrokerError, BrokerUnavailable


@dataclass(frozen=True, slots=True)
class LibraryErrors:
    #: The broker's name as operators know it, for messages.
    library: str
    #: What the library raises when the broker did not do what was asked.
    errors: tuple[type[BaseException], ...]

    def translate(self, what: str, exc: BaseException) -> BrokerUnavailable:
        """The error a node sees for ``exc``, raised while doing ``what``."""
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return BrokerUnavailable(f"{self.library} {what} failed: {detail}")

    @contextlib.contextmanager
    def unavailable(self, what: str, *, also: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
        """Raise the library's errors (and ``also``) as :class:`BrokerUnavailable`."""
        try:
            yield
        except BrokerError:
            raise
        except (*self.errors, *also) as exc:
            raise self.translate(what, exc) from exc

    def ignored(self) -> contextlib.suppress:
        """Suppress the library's errors: for closing what may already be dead."""
        return contextlib.suppress(*self.errors)
