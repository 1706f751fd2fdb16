"""Which adapter serves which broker URL scheme.

Adapter modules are imported on first use, so a node on one broker does not
need the client libraries of the others: each broker's client is a pip extra
(``fanline[redis]``, ``[nats]``, ``[kafka]``, ``[all]``), and a URL whose
client is missing is refused with the extra to install.  Each adapter
module has ``from_url(url)``, which parses the URL's options
(:func:`broker_adapters.options.parse_options`) and returns an unstarted
:class:`~broker_adapters.base.Broker`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from urllib.parse import urlsplit

from .base import Broker
from .errors import MissingBrokerClient, UnknownBrokerURL


@dataclass(frozen=True)
class Adapter:
    """The module whose ``from_url(url)`` builds a scheme's adapter, and the client library it needs.

    ``extra`` is the pip extra that installs ``clients`` (top-level module
    names); None for the memory broker, which needs none.
    """

    module: str
    extra: str | None = None
    clients: tuple[str, ...] = ()


_REDIS = Adapter("broker_adapters.redis", "redis", ("redis",))
_REDIS_CLUSTER = Adapter("broker_adapters.redis_cluster", "redis", ("redis",))
_NATS = Adapter("broker_adapters.nats", "nats", ("nats",))
ADAPTERS: dict[str, Adapter] = {
    "memory": Adapter("broker_adapters.memory"),
    "redis": _REDIS,
    "rediss": _REDIS,
    "redis+cluster": _REDIS_CLUSTER,
    "rediss+cluster": _REDIS_CLUSTER,
    "nats": _NATS,
    "tls": _NATS,
    "kafka": Adapter("broker_adapters.kafka", "kafka", ("aiokafka",)),
}


def missing_client(scheme: str, adapter: Adapter, missing_module: str | None) -> MissingBrokerClient | None:
    """The error to raise when importing ``adapter`` failed on ``missing_module``, if it is the broker's client.

    None when the missing module is something else: a broken install, or a
    bug, which must surface as it is.
    """
    top = (missing_module or "").partition(".")[0]
    if adapter.extra is None or top not in adapter.clients:
        return None
    return MissingBrokerClient(
        f"{scheme}:// needs the {top} client library, which is not installed: pip install 'fanline[{adapter.extra}]'"
    )


def check_hosts(url: str) -> None:
    """Refuse a host list whose port is not a number, before any connection attempt retries it forever."""
    hosts = urlsplit(url).netloc.rpartition("@")[2]
    for host in filter(None, hosts.split(",")):
        _, sep, port = host.rpartition(":") if not host.endswith("]") else ("", "", "")
        if sep and not (port.isdigit() and 0 < int(port) < 65536):
            raise UnknownBrokerURL(f"broker URL host {host!r}: the port must be a number from 1 to 65535")


def open_broker(url: str) -> Broker:
    """An unstarted adapter for ``url``; :class:`UnknownBrokerURL` for a URL no node could use."""
    scheme = urlsplit(url).scheme
    adapter = ADAPTERS.get(scheme)
    if adapter is None:
        known = ", ".join(f"{s}://" for s in sorted(ADAPTERS))
        raise UnknownBrokerURL(f"unknown broker URL scheme {scheme!r}; use one of {known}")
    check_hosts(url)
    try:
        module = importlib.import_module(adapter.module)
    except ModuleNotFoundError as exc:
        error = missing_client(scheme, adapter, exc.name)
        if error is None:
            raise
        raise error from None
    broker: Broker = module.from_url(url)
    return broker
