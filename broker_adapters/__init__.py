"""Broker adapters for Fanline, chosen by URL.

``open_broker("memory://")``, ``open_broker("redis://host:6379/0")``,
``open_broker("nats://host:4222")``, ``open_broker("kafka://host:9092")``.
Adapter modules are imported on first use, so a node on one broker does not
need the client libraries of the others to import cleanly.
"""

from __future__ import annotations

import importlib
from urllib.parse import parse_qsl, urlsplit

from .base import Broker, BrokerListener
from .errors import BrokerError, BrokerUnavailable, FanlineError, UnknownBrokerURL
from .types import History, Position, Publication

__all__ = [
    "Broker",
    "BrokerError",
    "BrokerListener",
    "BrokerUnavailable",
    "FanlineError",
    "History",
    "Position",
    "Publication",
    "UnknownBrokerURL",
    "open_broker",
]

# scheme -> (module, factory function).  Each factory takes the URL and
# returns an unstarted Broker.
_ADAPTERS: dict[str, tuple[str, str]] = {
    "memory": ("broker_adapters.memory", "from_url"),
    "redis": ("broker_adapters.redis", "from_url"),
    "rediss": ("broker_adapters.redis", "from_url"),
    "nats": ("broker_adapters.nats", "from_url"),
    "tls": ("broker_adapters.nats", "from_url"),
    "kafka": ("broker_adapters.kafka", "from_url"),
}


def open_broker(url: str) -> Broker:
    scheme = urlsplit(url).scheme
    if scheme not in _ADAPTERS:
        known = ", ".join(f"{s}://" for s in sorted(_ADAPTERS))
        raise UnknownBrokerURL(f"unknown broker URL scheme {scheme!r}; use one of {known}")
    module_name, factory = _ADAPTERS[scheme]
    module = importlib.import_module(module_name)
    broker: Broker = getattr(module, factory)(url)
    return broker


def url_options(url: str, allowed: dict[str, type]) -> dict[str, object]:
    """Parse a broker URL's query string into typed options, refusing unknown ones."""
    options: dict[str, object] = {}
    for key, raw in parse_qsl(urlsplit(url).query, keep_blank_values=True):
        if key not in allowed:
            names = ", ".join(sorted(allowed)) or "none"
            raise UnknownBrokerURL(f"unknown broker URL option {key!r}; known options: {names}")
        kind = allowed[key]
        try:
            options[key] = raw.lower() in ("1", "true", "yes") if kind is bool else kind(raw)
        except ValueError:
            raise UnknownBrokerURL(f"broker URL option {key}={raw!r} is not a {kind.__name__}") from None
    return options
