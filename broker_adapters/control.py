"""The control channel: commands between the nodes of a cluster, carried by the broker itself.

Commands are ordinary publications on the reserved channel
:data:`CONTROL_CHANNEL`, so they reach every node on every broker through
the same path as any publication (and a node that missed one during a short
broker outage gets it in the repair that follows, see docs/architecture.md).
Clients can neither subscribe nor publish there: the ``fanline.`` prefix is
reserved.  Each node, the server API and :class:`~broker_adapters.publisher.Publisher`
send commands; each node acts on those that concern connections it holds
and ignores the rest.

A command is one JSON object with ``cmd`` (a :class:`Command`), ``time``
(ms since the Unix epoch; a node ignores commands older than
:data:`MAX_AGE_MS`, so a repair long after the fact replays nothing stale)
and the command's fields.  This module is the codec, without I/O.
"""

from __future__ import annotations

import enum
import json
import time
from dataclasses import dataclass
from typing import Any

CONTROL_CHANNEL = "fanline.control"
#: Prefix of the channel that carries a channel's join and leave events.
PRESENCE_EVENTS_PREFIX = "fanline.presence."
#: Commands older than this (by their sender's clock) are ignored.
MAX_AGE_MS = 30_000
#: Longest reason of a disconnect, in characters (a close frame's reason has 123 bytes).
MAX_REASON = 100


class Command(enum.StrEnum):
    ANNOUNCE = "announce"  # a node is alive: {node, connections}
    DISCONNECT = "disconnect"  # {user, client?, code, reason, ban}
    UNSUBSCRIBE = "unsubscribe"  # {user, channel, client?}
    REFRESH = "refresh"  # {user, expire_at}: set the expiry of the user's connections
    REVOKE = "revoke"  # {user, ban}: close the user's connections as expired
    INFO = "info"  # {channel, reply}: every node answers with its subscriber count
    INFO_REPLY = "info_reply"  # {reply, node, subscribers}


@dataclass(frozen=True, slots=True)
class ControlMessage:
    command: Command
    fields: dict[str, Any]
    time_ms: int

    def get_str(self, name: str) -> str | None:
        value = self.fields.get(name)
        return value if isinstance(value, str) and value else None

    def get_number(self, name: str) -> float | None:
        value = self.fields.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        return float(value)


def encode(command: Command, **fields: Any) -> str:
    """A command as the compact JSON text a publication carries."""
    body = {"cmd": command.value, "time": int(time.time() * 1000)}
    body.update({k: v for k, v in fields.items() if v is not None})
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def decode(data: str, now_ms: int | None = None) -> ControlMessage | None:
    """The command ``data`` holds; None for anything malformed, unknown or stale."""
    try:
        body = json.loads(data)
        command = Command(str(body.get("cmd"))) if isinstance(body, dict) else None
    except (ValueError, TypeError):
        return None
    if command is None:
        return None
    sent = body.get("time")
    if isinstance(sent, bool) or not isinstance(sent, int):
        return None
    now = int(time.time() * 1000) if now_ms is None else now_ms
    if now - sent > MAX_AGE_MS:
        return None
    return ControlMessage(command, body, sent)


def presence_events_channel(channel: str) -> str:
    """The reserved channel carrying ``channel``'s join and leave events."""
    return PRESENCE_EVENTS_PREFIX + channel
