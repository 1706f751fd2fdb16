"""The node's side of the control channel: announcements, and commands acted on where they apply.

Every node subscribes to :data:`~broker_adapters.control.CONTROL_CHANNEL`
through its hub, like any channel, with one internal subscriber (this
module's :class:`Control`).  It:

- announces itself every ``announce_interval`` seconds, so every node knows
  which nodes are alive (silent for 2.5 intervals: gone) and how many
  connections each holds; a cluster-wide count waits for exactly those;
- acts on commands the server API or a ``Publisher`` sent: disconnect,
  unsubscribe, refresh and revoke act on the connections of one user (or one
  client id) that *this* node holds, and a node holding none ignores them;
  ``info`` asks every node for its subscriber count of a channel.

A disconnect or revoke may also *ban* the user for some seconds: every node
then refuses the user's new connections until then (``forbidden``).  The
ban list is kept by each node from the commands it saw; a node that starts
later does not know older bans (docs/server-api.md).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from broker_adapters.base import BrokerError
from broker_adapters.control import CONTROL_CHANNEL, MAX_REASON, Command, ControlMessage, decode, encode
from broker_adapters.tasks import TaskSet
from broker_adapters.types import Position

from . import protocol
from .errors import ClientError, CloseCode, ErrorCode
from .presence import client_id

if TYPE_CHECKING:
    from .access import Identity
    from .connection import Connection
    from .hub import Delivery, Subscription
    from .resume import ResetReason
    from .runtime import Node

log = logging.getLogger("fanline.commands")

#: Close code of a disconnect that names none.
DEFAULT_DISCONNECT_CODE = 4009
#: Most seconds a ban may last.
MAX_BAN = 86400.0
#: Bans remembered per node; the oldest go first past this.
MAX_BANS = 100_000


@dataclass(frozen=True, slots=True)
class ChannelCount:
    """What the cluster said about a channel's subscribers."""

    subscribers: int
    answered: int
    expected: int


class Control:
    def __init__(self, node: Node) -> None:
        self.node = node
        # node name -> (loop time last heard, connections it announced)
        self.nodes: dict[str, tuple[float, int]] = {}
        # user -> Unix time until which new connections are refused
        self.bans: dict[str, float] = {}
        # reply id -> answers so far (node -> subscribers), and an event set at each answer
        self._waiting: dict[str, tuple[dict[str, int], asyncio.Event]] = {}
        self._subscription: Subscription | None = None
        self._subscribed = asyncio.Event()
        self._tasks = TaskSet()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._tasks.spawn(self._run(), "control")

    async def stop(self) -> None:
        await self._tasks.cancel_all()

    async def _run(self) -> None:
        hub = self.node.hub
        delay = 0.2
        while True:
            try:
                subscribed = hub.subscribe_now(self, CONTROL_CHANNEL, None) or await hub.subscribe(
                    self, CONTROL_CHANNEL, None
                )
                break
            except BrokerError as exc:
                self.node.log_throttled(log, "control channel not subscribed yet", error=str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        hub.start_delivery(subscribed)
        self._subscription = subscribed.subscription
        self._subscribed.set()
        interval = self.node.settings.announce_interval
        while True:
            await self._send(Command.ANNOUNCE, node=self.node.name, connections=len(self.node.connections))
            await asyncio.sleep(interval)

    async def _send(self, command: Command, **fields: object) -> bool:
        try:
            await self.node.hub.publish(CONTROL_CHANNEL, encode(command, **fields), None, source="control")
        except BrokerError as exc:
            self.node.log_throttled(log, "control message not sent", command=command.value, error=str(exc))
            return False
        return True

    # -- what the server API asks ----------------------------------------------------------

    async def send(self, command: Command, **fields: object) -> None:
        """Send a command to every node (this one included).  Raises ClientError if the broker fails."""
        try:
            await self.node.hub.publish(CONTROL_CHANNEL, encode(command, **fields), None, source="api")
        except BrokerError as exc:
            raise ClientError(ErrorCode.BROKER_UNAVAILABLE, f"command not sent: {exc}") from None

    def live_nodes(self) -> dict[str, int]:
        """The nodes heard from within 2.5 announce intervals, with the connections each announced."""
        horizon = self.node.loop_time() - 2.5 * self.node.settings.announce_interval
        for name in [n for n, (seen, _) in self.nodes.items() if seen < horizon]:
            del self.nodes[name]
        live = {name: count for name, (_, count) in self.nodes.items()}
        live[self.node.name] = len(self.node.connections)
        return live

    async def channel_count(self, channel: str, timeout: float = 1.0) -> ChannelCount:
        """Subscribers of ``channel`` on every live node: waits for each node's answer, at most ``timeout``."""
        expected = set(self.live_nodes())
        reply = secrets.token_hex(8)
        answers: dict[str, int] = {}
        arrived = asyncio.Event()
        self._waiting[reply] = (answers, arrived)
        try:
            await self.send(Command.INFO, channel=channel, reply=reply, node=self.node.name)
            try:
                async with asyncio.timeout(timeout):
                    while not expected <= set(answers):
                        arrived.clear()
                        await arrived.wait()
            except TimeoutError:
                pass  # a node that did not answer in time is counted as not answering
        finally:
            del self._waiting[reply]
        return ChannelCount(sum(answers.values()), len(answers), len(expected | set(answers)))

    def check_banned(self, identity: Identity | None) -> None:
        """Raises ClientError(forbidden) if the identity's user is banned now."""
        if identity is None or identity.user is None or not self.bans:
            return
        until = self.bans.get(identity.user)
        if until is None:
            return
        left = until - time.time()
        if left <= 0:
            del self.bans[identity.user]
            return
        raise ClientError(ErrorCode.FORBIDDEN, f"this user may not connect for {left:.0f} s")

    # -- the control channel's subscriber ------------------------------------------------------

    def push(self, subscription: Subscription, delivery: Delivery) -> None:
        message = decode(delivery.publication.data)
        if message is None:
            return
        try:
            acted = self.handle(message)
        except Exception:
            log.exception("control command failed", extra={"command": message.command.value})
            return
        self.node.metrics.commands.labels(message.command.value, "yes" if acted else "no").inc()

    def push_reset(self, subscription: Subscription, position: Position, reason: ResetReason) -> None:
        pass  # commands are not replayed across a reset; they are short-lived by design

    def handle(self, message: ControlMessage) -> bool:
        """Act on one command; True if this node did something."""
        command = message.command
        if command is Command.ANNOUNCE:
            name = message.get_str("node")
            connections = message.get_number("connections")
            if name is not None and name != self.node.name:
                self.nodes[name] = (self.node.loop_time(), int(connections or 0))
            return True
        if command is Command.INFO:
            channel, reply = message.get_str("channel"), message.get_str("reply")
            if channel is None or reply is None:
                return False
            count = sum(1 for c in self.node.connections if c.subscriptions and channel in c.subscriptions)
            self._tasks.spawn(
                self._send(Command.INFO_REPLY, reply=reply, node=self.node.name, subscribers=count), "info-reply"
            )
            return True
        if command is Command.INFO_REPLY:
            waiting = self._waiting.get(message.get_str("reply") or "")
            name = message.get_str("node")
            if waiting is None or name is None:
                return False
            answers, arrived = waiting
            answers[name] = int(message.get_number("subscribers") or 0)
            arrived.set()
            return True
        user = message.get_str("user")
        if user is None:
            return False
        if command in (Command.DISCONNECT, Command.REVOKE):
            self._ban(user, message)
        targets = self._connections_of(user, message.get_str("client"))
        if not targets:
            return False
        if command is Command.DISCONNECT:
            code = int(message.get_number("code") or DEFAULT_DISCONNECT_CODE)
            reason = (message.get_str("reason") or "disconnected")[:MAX_REASON]
            for connection in targets:
                connection.close(code, reason)
        elif command is Command.REVOKE:
            for connection in targets:
                connection.close(CloseCode.TOKEN_EXPIRED, ErrorCode.TOKEN_EXPIRED.value)
        elif command is Command.UNSUBSCRIBE:
            channel = message.get_str("channel")
            if channel is None:
                return False
            return sum(self._unsubscribe(connection, channel) for connection in targets) > 0
        elif command is Command.REFRESH:
            expire_at = message.get_number("expire_at")
            if expire_at is None:
                return False
            for connection in targets:
                self.node.gate.set_expiry(connection, expire_at)
        return True

    def _ban(self, user: str, message: ControlMessage) -> None:
        ban = message.get_number("ban")
        if ban is None or ban <= 0:
            return
        if len(self.bans) >= MAX_BANS and user not in self.bans:
            self.bans.pop(next(iter(self.bans)))
        self.bans[user] = message.time_ms / 1000 + min(ban, MAX_BAN)

    def _connections_of(self, user: str, client: str | None) -> list[Connection]:
        # A scan, not an index: commands are rare, and an index would cost
        # every connect and disconnect something.
        name = self.node.name
        return [
            c
            for c in self.node.connections
            if c.identity is not None
            and c.identity.user == user
            and c.closing is None
            and (client is None or client_id(name, c) == client)
        ]

    def _unsubscribe(self, connection: Connection, channel: str) -> bool:
        subscription = connection.subscriptions.get(channel) if connection.subscriptions else None
        if subscription is None or connection.subscriptions is None:
            return False
        self.node.presence.left(connection, channel)
        del connection.subscriptions[channel]
        self.node.hub.unsubscribe(subscription)
        if connection.kind == "ws":
            # Unasked for: no rid.  The client must not resubscribe on its own.
            connection.send(protocol.unsubscribed_frame(channel, None, reason="server").encode())
        return True
