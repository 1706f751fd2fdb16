"""The one JetStream stream behind the NATS adapter: its settings, its identity, its epochs.

Every node brings the stream to the same settings (created if missing,
updated if they drifted) at start, on every health check and whenever a
publish or read finds it gone; docs/brokers/nats.md lists the settings.  A
stream's *identity* is its name and creation time: a deleted and recreated
stream has a new one, and every channel's epoch, a hash of the identity and
the channel, changes with it.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RePublish, StorageType, StreamConfig, StreamInfo

from .errors import BrokerError
from .library_errors import LibraryErrors

log = logging.getLogger("fanline.broker.nats")

#: What nats-py raises when NATS did not do what was asked.
NATS = LibraryErrors("NATS", (nats.errors.Error, TimeoutError, OSError))

# JetStream API error codes (nats-server errors.json).
ERR_NO_MESSAGE = 10037
ERR_STREAM_NAME_IN_USE = 10058
ERR_STREAM_NOT_FOUND = 10059
ERR_WRONG_LAST_SEQUENCE = 10071
# Replicated streams: a conditional publish of the same subject in flight.
ERR_LAST_SUBJECT_SEQ_NOT_READY = 10163
ERR_WRONG_LAST_SEQUENCE_CONSTANT = 10164


def api_code(exc: BaseException) -> int | None:
    """The JetStream error code of an API error, None for anything else."""
    if isinstance(exc, nats.js.errors.APIError):
        return exc.err_code
    return None


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """What the adapter's options say the stream must look like."""

    name: str
    subject_prefix: str  # "<prefix>." : stored subjects
    live_prefix: str  # "<live>." : republished subjects
    history_size: int
    retention: float  # seconds
    replicas: int
    storage: str  # "file" or "memory"

    def config(self) -> StreamConfig:
        return StreamConfig(
            name=self.name,
            description="Fanline channel history (managed by the Fanline NATS adapter)",
            subjects=[self.subject_prefix + ">"],
            # A history of 0 still keeps the last message, which carries the
            # channel's top; reads then return no publications.
            max_msgs_per_subject=max(1, self.history_size),
            max_age=self.retention,
            discard=DiscardPolicy.OLD,
            storage=StorageType.FILE if self.storage == "file" else StorageType.MEMORY,
            num_replicas=self.replicas,
            republish=RePublish(src=self.subject_prefix + ">", dest=self.live_prefix + ">"),
            # Batched history reads (DIRECT.GET with "batch").
            allow_direct=True,
        )


def drift(have: StreamConfig, want: StreamConfig) -> list[str]:
    """The settings in which an existing stream differs from what the adapter needs."""
    differences = []
    if sorted(have.subjects or []) != sorted(want.subjects or []):
        differences.append("subjects")
    if have.max_msgs_per_subject != want.max_msgs_per_subject:
        differences.append("max_msgs_per_subject")
    if abs((have.max_age or 0.0) - (want.max_age or 0.0)) > 0.001:
        differences.append("max_age")
    if have.num_replicas != want.num_replicas:
        differences.append("num_replicas")
    republish = have.republish
    assert want.republish is not None
    if republish is None or (republish.src, republish.dest) != (want.republish.src, want.republish.dest):
        differences.append("republish")
    if bool(have.allow_direct) != bool(want.allow_direct):
        differences.append("allow_direct")
    if have.discard != want.discard:
        differences.append("discard")
    return differences


async def ensure_stream(js: JetStreamContext, settings: StreamSettings) -> StreamInfo:
    """Create the stream or bring its settings to ours; raises the client's errors."""
    want = settings.config()
    name = settings.name
    try:
        info = await js.stream_info(name)
    except nats.js.errors.NotFoundError as exc:
        if api_code(exc) not in (ERR_STREAM_NOT_FOUND, None):
            raise
        try:
            info = await js.add_stream(want)
            log.info("NATS stream created", extra={"stream": name})
        except nats.js.errors.BadRequestError as exc2:
            if api_code(exc2) != ERR_STREAM_NAME_IN_USE:
                raise
            info = await js.stream_info(name)  # another node created it first
    differences = drift(info.config, want)
    if differences:
        log.info("NATS stream config updated", extra={"stream": name, "fields": differences})
        try:
            info = await js.update_stream(want)
        except nats.js.errors.APIError as exc:
            fields = ", ".join(differences)
            raise BrokerError(f"cannot update NATS stream {name} ({fields}): {exc.description}") from exc
    return info


def stream_identity(info: StreamInfo) -> str:
    """``<name>:<created>``: names one incarnation of the stream."""
    created = info.created.isoformat() if info.created is not None else ""
    return f"{info.config.name}:{created}"


def channel_epoch(identity: str, channel: str) -> str:
    """A channel's epoch in one incarnation of the stream.

    The channel is part of the hash so that a position used on another
    channel fails the epoch check (a reset, never wrong data).
    """
    return hashlib.blake2b(f"{identity}\n{channel}".encode(), digest_size=8).hexdigest()
