"""Presence on NATS JetStream: one stream of small documents, one per node and channel.

A JetStream stream (``<stream>_PRESENCE``, subjects ``<prefix>-presence.>``)
keeps at most one message per subject (``max_msgs_per_subject=1``) and
drops messages older than the presence ``ttl`` (``max_age``).  Each node
writes, per channel where it holds present clients, one document on subject
``<prefix>-presence.<channel>.<node>`` (both tokens base64url, since channel
names hold characters a subject token may not): ``{"c": {client: [user,
info]}}``, the node's whole set for that channel.  A join, a leave or the
periodic refresh rewrites it (one publish per channel, not per client); a
node whose last client of a channel left purges its subject.  A node that
dies stops refreshing, and its documents age out after ``ttl``.

Reads list the channel's subjects (``STREAM.INFO`` with a subject filter:
one small reply naming one subject per node) and fetch each node's last
document, so a list or a count costs one request per node holding clients
of the channel, not one per client.  A count still reads those documents
(NATS keeps no per-subject counter we could read); docs/presence.md says so.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable, Sequence

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, StorageType, StreamConfig

from .nats_stream import NATS, api_code
from .presence import ChannelPresence, PresenceEntry, PresenceSettings, PresenceStore

_STREAM_NOT_FOUND = 10059
_STREAM_NAME_IN_USE = 10058


def token(text: str) -> str:
    """``text`` as one subject token: base64url without padding."""
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


class NatsPresence(PresenceStore):
    def __init__(
        self,
        settings: PresenceSettings,
        jetstream: Callable[[], JetStreamContext],
        *,
        stream: str,
        subject_prefix: str,
        replicas: int,
        storage: str,
    ) -> None:
        super().__init__(settings)
        self._jetstream = jetstream
        self._stream = stream
        self._prefix = subject_prefix + "."
        self._replicas = replicas
        self._storage = storage
        self._ready = False

    def _config(self) -> StreamConfig:
        return StreamConfig(
            name=self._stream,
            description="Fanline presence (managed by the Fanline NATS adapter)",
            subjects=[self._prefix + ">"],
            max_msgs_per_subject=1,
            max_age=self.settings.ttl,
            discard=DiscardPolicy.OLD,
            storage=StorageType.FILE if self._storage == "file" else StorageType.MEMORY,
            num_replicas=self._replicas,
            allow_direct=True,
        )

    async def _js(self) -> JetStreamContext:
        js = self._jetstream()
        if not self._ready:
            want = self._config()
            try:
                info = await js.stream_info(self._stream)
                if info.config.max_age != want.max_age or info.config.max_msgs_per_subject != 1:
                    await js.update_stream(want)
            except nats.js.errors.NotFoundError:
                try:
                    await js.add_stream(want)
                except nats.js.errors.BadRequestError as exc:
                    if api_code(exc) != _STREAM_NAME_IN_USE:
                        raise
            self._ready = True
        return js

    def _subject(self, channel: str, owner: str) -> str:
        return f"{self._prefix}{token(channel)}.{token(owner)}"

    async def write(self, owner: str, changes: Sequence[ChannelPresence]) -> None:
        if not changes:
            return
        with NATS.unavailable("presence write"):
            js = await self._js()
            try:
                await asyncio.gather(*(self._write_one(js, owner, change) for change in changes))
            except nats.js.errors.NotFoundError:
                self._ready = False  # the stream was deleted: create it on the next write
                raise

    async def _write_one(self, js: JetStreamContext, owner: str, change: ChannelPresence) -> None:
        subject = self._subject(change.channel, owner)
        present = list(change.present)
        cap = self.settings.max_clients
        change.refused = max(0, len(present) - cap)
        if not present:
            await js.purge_stream(self._stream, subject=subject)
            return
        document = {"c": {e.client: [e.user, e.info] for e in present[:cap]}}
        await js.publish(subject, json.dumps(document, separators=(",", ":")).encode(), stream=self._stream)

    async def _documents(self, channel: str) -> list[dict[str, list[object]]]:
        with NATS.unavailable("presence read"):
            js = await self._js()
            filter_subject = f"{self._prefix}{token(channel)}.*"
            info = await js.stream_info(self._stream, subjects_filter=filter_subject)
            subjects = list((info.state.subjects or {}).keys())
            messages = await asyncio.gather(
                *(js.get_last_msg(self._stream, subject, direct=True) for subject in subjects),
                return_exceptions=True,
            )
        horizon = time.time() - self.settings.ttl
        documents = []
        for message in messages:
            if isinstance(message, BaseException):
                continue  # purged between the two requests
            stamp = message.time.timestamp() if message.time is not None else time.time()
            if stamp < horizon or not message.data:
                continue  # aged out, not yet removed by the server
            try:
                document = json.loads(message.data)
            except ValueError:
                continue
            clients = document.get("c") if isinstance(document, dict) else None
            if isinstance(clients, dict):
                documents.append(clients)
        return documents

    async def list(self, channel: str) -> list[PresenceEntry]:
        entries: list[PresenceEntry] = []
        for clients in await self._documents(channel):
            for client, value in clients.items():
                if isinstance(value, list) and len(value) == 2:
                    user, info = value
                    if isinstance(user, str) and (info is None or isinstance(info, str)):
                        entries.append(PresenceEntry(client, user, info))
        return entries[: self.settings.max_clients]

    async def count(self, channel: str) -> int:
        return min(self.settings.max_clients, sum(len(c) for c in await self._documents(channel)))
