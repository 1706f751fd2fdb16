"""Presence in a node: this node's present clients, written to the cluster's store in batches.

A channel keeps presence when its namespace is in ``presence_namespaces``.
Every connection subscribed to such a channel is *present* there: an entry
with its client id (``<node>.<number>``), its user and its info (the token's
``info`` claim or the connect hook's answer, at most
``presence_max_info_bytes``).  The entries live in the broker's
:class:`~broker_adapters.presence.PresenceStore` (or the one
``presence_store`` names), never only in a node, so any node and the server
API read the same list.

Writes are batched per node, never one call per connection per interval:

- joins and leaves are collected and written by one writer task; while a
  write is in flight, further changes wait and go together in the next one;
- every ``presence_refresh`` seconds the writer renews *all* of the node's
  entries in one write (Redis: one pipeline, one script call per channel;
  NATS: one document per channel), so an entry lives ``presence_ttl`` past
  its node's last refresh, and a dead node's clients leave within it.

Join and leave events travel on a reserved channel per channel
(``fanline.presence.<channel>``) as ordinary publications; a node relays
them to its connections that asked (``join_leave`` in their subscribe),
through one internal subscription per channel however many ask.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING

from broker_adapters import open_broker
from broker_adapters.base import Broker, BrokerError, NullListener
from broker_adapters.control import presence_events_channel
from broker_adapters.presence import ChannelPresence, PresenceEntry, PresenceSettings, PresenceStore
from broker_adapters.tasks import TaskSet
from broker_adapters.types import Position

from .errors import ClientError, ErrorCode
from .settings import SettingsError

if TYPE_CHECKING:
    from .connection import Connection
    from .hub import Delivery, Subscription
    from .resume import ResetReason
    from .runtime import Node

log = logging.getLogger("fanline.presence")

# Channels per store write: keeps one pipeline (or one gather of publishes) bounded.
_WRITE_CHUNK = 500


def client_id(node_name: str, connection: Connection) -> str:
    """The id a connection has in presence and in the server API: unique in the cluster."""
    return f"{node_name}.{connection.number}"


def parse_namespaces(text: str) -> tuple[frozenset[str], bool]:
    names = frozenset(n.strip() for n in text.split(",") if n.strip())
    return names - {"*"}, "*" in names


class Relay:
    """The node's one subscription to a channel's join/leave events; passes them to the presence."""

    __slots__ = ("presence", "channel", "subscription", "settled")

    def __init__(self, presence: Presence, channel: str) -> None:
        self.presence = presence
        self.channel = channel
        self.subscription: Subscription | None = None
        # Set once the subscription is live (or failed): a listener waits for
        # it, so the events after its ``subscribed`` reply reach it.
        self.settled = asyncio.Event()

    def push(self, subscription: Subscription, delivery: Delivery) -> None:
        self.presence.relay(self.channel, delivery.publication.data)

    def push_reset(self, subscription: Subscription, position: Position, reason: ResetReason) -> None:
        pass  # events are at most once; nothing to reset


class Presence:
    def __init__(self, node: Node) -> None:
        self.node = node
        settings = node.settings
        self.settings = PresenceSettings(ttl=settings.presence_ttl, max_clients=settings.presence_max_clients)
        self._namespaces, self._everywhere = parse_namespaces(settings.presence_namespaces)
        self.store: PresenceStore | None = None
        self._own_broker: Broker | None = None
        if self.configured:
            if settings.presence_store:
                self._own_broker = open_broker(settings.presence_store)
                self.store = self._own_broker.presence(self.settings)
            else:
                self.store = node.broker.presence(self.settings)
            if self.store is None:
                raise SettingsError(
                    f"the {node.broker.kind} broker keeps no presence: set presence_store to a redis:// or "
                    "nats:// URL (docs/presence.md)"
                )
        # channel -> client id -> entry: what this node holds and refreshes.
        self._local: dict[str, dict[str, PresenceEntry]] = {}
        # Changes not written yet.
        self._added: dict[str, dict[str, PresenceEntry]] = {}
        self._removed: dict[str, set[str]] = {}
        self._wake = asyncio.Event()
        # channel -> connections that want its join/leave events, and the relays.
        self._listeners: dict[str, dict[Connection, None]] = {}
        self._relays: dict[str, Relay] = {}
        self._tasks = TaskSet()
        node.metrics.presence_entries._read = lambda: float(sum(len(v) for v in self._local.values()))

    @property
    def configured(self) -> bool:
        return self._everywhere or bool(self._namespaces)

    def enabled(self, channel: str) -> bool:
        """Does ``channel`` keep presence (its namespace is listed)?"""
        if self._everywhere:
            return True
        namespace, colon, _ = channel.partition(":")
        return bool(colon) and namespace in self._namespaces

    def check(self, channel: str) -> PresenceStore:
        """The store, if ``channel`` keeps presence; raises ClientError(presence_disabled) otherwise."""
        if self.store is None or not self.enabled(channel):
            raise ClientError(ErrorCode.PRESENCE_DISABLED, f"{channel} keeps no presence", channel=channel)
        return self.store

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self.store is None:
            return
        self._tasks.spawn(self._write_forever(), "presence-writer")

    async def stop(self) -> None:
        await self._tasks.cancel_all()
        if self.store is not None:
            # A node that stops takes its clients out of presence now, rather
            # than leaving them for presence_ttl (best effort, bounded).
            for channel, local in self._local.items():
                self._removed.setdefault(channel, set()).update(local)
            self._local.clear()
            changes = self._changes(refresh=False)
            if changes:
                try:
                    async with asyncio.timeout(1.0):
                        await self._write(changes, "changes")
                except TimeoutError:
                    pass
            await self.store.close()
        if self._own_broker is not None:
            await self._own_broker.close()

    # -- what connections do -------------------------------------------------------------------

    def entry(self, connection: Connection) -> PresenceEntry:
        identity = connection.identity
        user = (identity.user or "") if identity is not None else ""
        info = identity.info if identity is not None else None
        if info is not None and len(info.encode()) > self.node.settings.presence_max_info_bytes:
            info = None
        return PresenceEntry(client_id(self.node.name, connection), user, info)

    def joined(self, connection: Connection, channel: str, join_leave: bool = False) -> None:
        """``connection`` subscribed to ``channel``: present there from now on (if the channel keeps presence)."""
        if self.store is None or not self.enabled(channel):
            return
        entry = self.entry(connection)
        self._local.setdefault(channel, {})[entry.client] = entry
        self._added.setdefault(channel, {})[entry.client] = entry
        removed = self._removed.get(channel)
        if removed is not None:
            removed.discard(entry.client)
        self._wake.set()
        if join_leave:
            self._listen(connection, channel)
        self._announce("join", channel, entry)

    def left(self, connection: Connection, channel: str) -> None:
        """``connection`` is no longer subscribed to ``channel``."""
        local = self._local.get(channel)
        if local is None:
            return
        self._unlisten(connection, channel)
        cid = client_id(self.node.name, connection)
        entry = local.pop(cid, None)
        if entry is None:
            return
        if not local:
            del self._local[channel]
        added = self._added.get(channel)
        if added is not None:
            added.pop(cid, None)
        self._removed.setdefault(channel, set()).add(cid)
        self._wake.set()
        self._announce("leave", channel, entry)

    def released(self, connection: Connection) -> None:
        """``connection`` ended: it leaves every channel."""
        for channel in list(connection.subscriptions or ()):
            self.left(connection, channel)

    # -- the writer ------------------------------------------------------------------------------

    def _changes(self, refresh: bool) -> list[ChannelPresence]:
        channels = set(self._added) | set(self._removed)
        if refresh:
            channels |= set(self._local)
        changes = []
        for channel in channels:
            local = self._local.get(channel, {})
            changes.append(
                ChannelPresence(
                    channel,
                    present=list(local.values()),
                    added=list(self._added.get(channel, {}).values()),
                    removed=list(self._removed.get(channel, ())),
                    refresh=refresh,
                )
            )
        self._added.clear()
        self._removed.clear()
        return changes

    async def _write_forever(self) -> None:
        assert self.store is not None
        loop = asyncio.get_running_loop()
        interval = self.node.settings.presence_refresh
        delay = 0.2
        while self._own_broker is not None:
            try:
                await self._own_broker.start(NullListener())
                break
            except BrokerError as exc:
                self.node.log_throttled(log, "presence store not reachable, retrying", error=str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        next_refresh = loop.time() + interval
        failed = False
        while True:
            try:
                async with asyncio.timeout(max(0.0, next_refresh - loop.time())):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            # After a failure every entry is written again: what was lost is not known.
            refresh = failed or loop.time() >= next_refresh
            if refresh:
                next_refresh = loop.time() + interval
            changes = self._changes(refresh)
            if not changes:
                continue
            failed = not await self._write(changes, "refresh" if refresh else "changes")
            if failed:
                await asyncio.sleep(min(1.0, interval))

    async def _write(self, changes: list[ChannelPresence], kind: str) -> bool:
        assert self.store is not None
        metrics = self.node.metrics
        started = time.perf_counter()
        try:
            for i in range(0, len(changes), _WRITE_CHUNK):
                batch = changes[i : i + _WRITE_CHUNK]
                await self.store.write(self.node.name, batch)
                refused = sum(c.refused for c in batch)
                if refused:
                    metrics.presence_refused.inc(refused)
        except BrokerError as exc:
            self.node.log_throttled(log, "presence write failed", error=str(exc))
            return False
        metrics.presence_write_seconds.observe(time.perf_counter() - started)
        metrics.presence_writes.labels(kind).inc()
        return True

    # -- join and leave events ---------------------------------------------------------------------

    def _announce(self, kind: str, channel: str, entry: PresenceEntry) -> None:
        if not self.node.settings.presence_join_leave:
            return
        fields = [
            ("type", kind), ("channel", channel), ("client", entry.client), ("user", entry.user),
        ]
        head = ",".join(f'"{k}":{_json(v)}' for k, v in fields)
        data = "{" + head + (f',"info":{entry.info}' if entry.info is not None else "") + "}"
        self._tasks.spawn(self._publish(presence_events_channel(channel), data), f"presence-{kind}")

    async def _publish(self, channel: str, data: str) -> None:
        try:
            await self.node.hub.publish(channel, data, None, source="presence")
        except BrokerError as exc:
            # At most once, as documented: a lost join or leave is not retried.
            self.node.log_throttled(log, "join/leave event not published", error=str(exc))

    async def listen(self, connection: Connection, channel: str) -> None:
        """Relay ``channel``'s join/leave events to ``connection``.

        Returns once the node's relay subscription is live, so that every
        join or leave published after this returns reaches the connection
        (at most once: a relay that failed to subscribe is logged, not raised).
        Does nothing for a channel without presence or events.
        """
        if self.store is None or not self.enabled(channel) or not self.node.settings.presence_join_leave:
            return
        self._listen(connection, channel)
        relay = self._relays.get(channel)
        if relay is not None:
            await relay.settled.wait()

    def relay_ready(self, channel: str) -> bool:
        """Would :meth:`listen` return at once (no relay needed, or it is live)?"""
        if self.store is None or not self.enabled(channel) or not self.node.settings.presence_join_leave:
            return True
        relay = self._relays.get(channel)
        return relay is not None and relay.settled.is_set()

    def unlisten(self, connection: Connection, channel: str) -> None:
        """Undo :meth:`listen` for a subscribe that failed."""
        self._unlisten(connection, channel)

    def _listen(self, connection: Connection, channel: str) -> None:
        listeners = self._listeners.setdefault(channel, {})
        listeners[connection] = None
        if channel not in self._relays:
            relay = self._relays[channel] = Relay(self, channel)
            self._tasks.spawn(self._start_relay(relay), f"presence-relay:{channel}")

    def _unlisten(self, connection: Connection, channel: str) -> None:
        listeners = self._listeners.get(channel)
        if listeners is None or connection not in listeners:
            return
        del listeners[connection]
        if not listeners:
            del self._listeners[channel]
            relay = self._relays.pop(channel, None)
            if relay is not None and relay.subscription is not None:
                self.node.hub.unsubscribe(relay.subscription)

    async def _start_relay(self, relay: Relay) -> None:
        hub = self.node.hub
        events = presence_events_channel(relay.channel)
        try:
            subscribed = hub.subscribe_now(relay, events, None) or await hub.subscribe(relay, events, None)
        except BrokerError as exc:
            self.node.log_throttled(log, "join/leave relay not subscribed", error=str(exc))
            if self._relays.get(relay.channel) is relay:
                del self._relays[relay.channel]
            return
        finally:
            relay.settled.set()
        hub.start_delivery(subscribed)
        if self._relays.get(relay.channel) is relay:
            relay.subscription = subscribed.subscription
        else:
            hub.unsubscribe(subscribed.subscription)  # nobody listens any more

    def relay(self, channel: str, data: str) -> None:
        """A join or leave of ``channel``: the same line to every local connection that asked."""
        listeners = self._listeners.get(channel)
        if not listeners:
            return
        line = data.encode()
        for connection in listeners:
            connection.send(line)

    # -- reads -------------------------------------------------------------------------------------

    async def list(self, channel: str) -> list[PresenceEntry]:
        store = self.check(channel)
        try:
            return await store.list(channel)
        except BrokerError as exc:
            raise ClientError(ErrorCode.BROKER_UNAVAILABLE, f"cannot read presence now: {exc}", channel=channel) from None

    async def count(self, channel: str) -> int:
        store = self.check(channel)
        try:
            return await store.count(channel)
        except BrokerError as exc:
            raise ClientError(ErrorCode.BROKER_UNAVAILABLE, f"cannot read presence now: {exc}", channel=channel) from None


def _json(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)
