"""Presence for the embedded broker: a dict per channel, with expiry times, in the node's process."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from .presence import ChannelPresence, PresenceEntry, PresenceSettings, PresenceStore


class MemoryPresence(PresenceStore):
    """Entries and their expiry (monotonic seconds) per channel; expired ones dropped when read."""

    def __init__(self, settings: PresenceSettings, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(settings)
        self._clock = clock
        self._channels: dict[str, dict[str, tuple[float, PresenceEntry]]] = {}

    def _live(self, channel: str) -> dict[str, tuple[float, PresenceEntry]]:
        entries = self._channels.get(channel)
        if entries is None:
            return {}
        now = self._clock()
        for client in [c for c, (expiry, _) in entries.items() if expiry <= now]:
            del entries[client]
        if not entries:
            del self._channels[channel]
        return entries

    async def write(self, owner: str, changes: Sequence[ChannelPresence]) -> None:
        expiry = self._clock() + self.settings.ttl
        for change in changes:
            entries = self._live(change.channel)
            if not entries:
                entries = self._channels.setdefault(change.channel, {})
            for client in change.removed:
                entries.pop(client, None)
            refused = 0
            for entry in change.present if change.refresh else change.added:
                if entry.client in entries or len(entries) < self.settings.max_clients:
                    entries[entry.client] = (expiry, entry)
                else:
                    refused += 1
            change.refused = refused
            if not entries:
                self._channels.pop(change.channel, None)

    async def list(self, channel: str) -> list[PresenceEntry]:
        return [entry for _, entry in self._live(channel).values()]

    async def count(self, channel: str) -> int:
        return len(self._live(channel))
