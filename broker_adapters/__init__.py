"""Broker adapters for Fanline, chosen by URL.

``open_broker("memory://")``, ``open_broker("redis://host:6379/0")``,
``open_broker("nats://host:4222")``, ``open_broker("kafka://host:9092")``.

The contract is :class:`~broker_adapters.base.Broker`; docs/brokers.md
describes it and each broker.  Every adapter has the same shape: a frozen
options dataclass filled from the URL (:mod:`.options`), its client
library's errors translated in one place (:mod:`.library_errors`), foreign
publications accepted the same way (:mod:`.foreign`), reconnects paced by
:mod:`.backoff`, and its background tasks in one :class:`~.tasks.TaskSet`.
"""

from __future__ import annotations

from .base import Broker, BrokerListener, BrokerStats
from .errors import BrokerError, BrokerUnavailable, FanlineError, UnknownBrokerURL
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
    "Position",
    "Publication",
    "UnknownBrokerURL",
    "open_broker",
]
