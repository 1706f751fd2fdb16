"""Real broker servers for tests, started from PyPI wheels on free loopback ports.

Each module ``<kind>_server.py`` defines a ``Server`` class with this shape:

- ``kind``: "redis", "nats" or "kafka";
- ``start()`` / ``stop()``: run the server process, and stop it for good;
- ``kill()``: SIGKILL it (a crash); ``restart()``: start it again on the same port;
- ``url(**options)``: the Fanline broker URL for it, with adapter options
  (``history_size``, ``history_ttl``, ...) as query parameters;
- ``lose_data()``: destroy the broker's data the way an operator or a crash
  would (FLUSHALL, stream deleted, topic recreated), so streams get a new epoch.

Optional hooks, used where present:

- ``raw_publish(channel, data)``: publish with the broker's own client,
  exactly as docs/brokers/<kind>.md tells a Go, Node or Java application to;
- ``restart_keeps_data``: whether ``kill()`` then ``restart()`` keeps the
  streams (tests/test_broker_faults.py has a default per kind);
- ``state()``: what the broker holds, as seen by its own client, as a set of
  facts (a key; a stream with its message count; a topic with its end
  offsets; the number of subscriptions), so that a test can see what a step
  added: ``after - before``.  Keys that expire meanwhile only disappear.

:func:`available_kinds` lists the kinds whose server module imports, so an
adapter's tests join the shared suites by adding their module alone.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from typing import Any, Protocol

import pytest


class BrokerServer(Protocol):
    kind: str

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def kill(self) -> None: ...
    def restart(self) -> None: ...
    def url(self, **options: Any) -> str: ...
    def lose_data(self) -> None: ...


class MemoryServer:
    """The embedded broker needs no server; it lives inside each node or test."""

    kind = "memory"

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def kill(self) -> None:
        raise NotImplementedError("the embedded broker dies with its node")

    def restart(self) -> None:
        raise NotImplementedError("the embedded broker dies with its node")

    def lose_data(self) -> None:
        raise NotImplementedError("the embedded broker dies with its node")

    def url(self, **options: Any) -> str:
        query = "&".join(f"{k}={v}" for k, v in options.items())
        return "memory://" + (f"?{query}" if query else "")


NETWORKED = ("redis", "nats", "kafka", "redis_cluster", "nats_cluster")
#: Multi-server brokers (a Redis Cluster of 3+3, a 3-server NATS cluster): slower to start and to fail.
CLUSTERS = ("redis_cluster", "nats_cluster")


def server_class(kind: str) -> type[Any] | None:
    if kind == "memory":
        return MemoryServer
    try:
        module = importlib.import_module(f"tests.servers.{kind}_server")
    except ModuleNotFoundError:
        return None
    server: type[Any] = module.Server
    return server


def available_kinds(include_memory: bool = True) -> list[str]:
    kinds = (["memory"] if include_memory else []) + list(NETWORKED)
    return [k for k in kinds if server_class(k) is not None]


def kind_params(include_memory: bool = True, *, long_clusters: bool = False) -> list[Any]:
    """:func:`available_kinds` as pytest params; with ``long_clusters``, the cluster kinds carry the
    ``long`` marker, which ``make test`` leaves out (``make test-long`` runs them)."""
    return [
        pytest.param(kind, marks=pytest.mark.long) if long_clusters and kind in CLUSTERS else kind
        for kind in available_kinds(include_memory)
    ]


@contextlib.contextmanager
def running(kind: str) -> Iterator[Any]:
    """A started server of ``kind``, stopped afterwards; skips if the kind has no server module."""
    cls = server_class(kind)
    if cls is None:
        pytest.skip(f"needs tests/servers/{kind}_server.py")
    server = cls()
    server.start()
    try:
        yield server
    finally:
        server.stop()
