"""Broker adapters for Fanline, chosen by URL.

``open_broker("memory://")``, ``open_broker("redis://host:6379/0")``,
``open_broker("nats://host:4222")``, ``open_broker("kafka://host:9092")``.
Each networked broker's client library is an extra (``fanline[redis]``,
``[nats]``, ``[kafka]``, ``[all]``); a URL whose client is missing is refused
with the extra to install (:mod:`.registry`).

The contract is :class:`~broker_adapters.base.Broker`; docs/brokers.md
describes it and each broker.  Every adapter has the same shape: a frozen
options dataclass filled from the URL (:mod:`.options`), its client
library's errors translated in one place (:mod:`.library_errors`), foreign
publications accepted the same way (:mod:`.foreign`), reconnects paced by
:mod:`.backoff`, and its background tasks in one :class:`~.tasks.TaskSet`.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .base import Broker, BrokerListener, BrokerStats
from .errors import BrokerError, BrokerUnavailable, FanlineError, MissingBrokerClient, UnknownBrokerURL
from .registry import open_broker
from .types import History, Position, Publication

__all__ = [
    "Broker",
    "BrokerError",
    "BrokerListener",
    "BrokerStats",
    "BrokerUnavailable",
    "FanlineError",
    "History",
    "MissingBrokerClient",
    "Position",
    "Publication",
    "UnknownBrokerURL",
    "__version__",
    "open_broker",
]

try:
    # pyproject.toml holds the version; the installed metadata carries it here.
    __version__ = version("fanline")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
