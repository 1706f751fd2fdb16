"""Which adapter serves which broker URL scheme.

Adapter modules are imported on first use, so a node on one broker does not
need the client libraries of the others to import cleanly.  Each adapter
module has ``from_url(url)``, which parses the URL's options
(:func:`broker_adapters.options.parse_options`) and returns an unstarted
:class:`~broker_adapters.base.Broker`.
"""

from __future__ import annotations

import importlib
from urllib.parse import urlsplit

from .base import Broker
from .errors import UnknownBrokerURL

# scheme -> the module whose from_url(url) builds its adapter.
ADAPTERS: dict[str, str] = {
    "memory": "broker_adapters.memory",
    "redis": "broker_adapters.redis",
    "rediss": "broker_adapters.redis",
    "redis+cluster": "broker_adapters.redis_cluster",
    "rediss+cluster": "broker_adapters.redis_cluster",
    "nats": "broker_adapters.nats",
    "tls": "broker_adapters.nats",
    "kafka": "broker_adapters.kafka",
}


def open_broker(url: str) -> Broker:
    """An unstarted adapter for ``url``; :class:`UnknownBrokerURL` if none fits."""
    scheme = urlsplit(url).scheme
    module_name = ADAPTERS.get(scheme)
    if module_name is None:
        known = ", ".join(f"{s}://" for s in sorted(ADAPTERS))
        raise UnknownBrokerURL(f"unknown broker URL scheme {scheme!r}; use one of {known}")
    broker: Broker = importlib.import_module(module_name).from_url(url)
    return broker
