"""The rules of resume, without I/O.

A subscriber stands at a :class:`Position` in a channel's stream.  Three
questions decide everything it is sent, and each is answered here by a pure
function:

- :func:`follow`: a live publication arrives; what does a subscriber at
  ``position`` get?  The publication, nothing (a duplicate), or, when the
  stream started again in another epoch, a reset first.
- :func:`plan_subscribe`: a client subscribes, maybe with ``since``.  Given
  the history read after ``since`` and the live publications that arrived
  while it was being read (*held*), what does the ``subscribed`` reply say,
  and which resets and publications follow it, in which order?
- :func:`plan_repair`: the node's live delivery of a channel may have
  skipped something.  Given the history read after the last position it
  fanned out, and what arrived live meanwhile, what goes to every subscriber?

The merge of history and held publications follows offsets, never the
stream top a history read reports: offsets within an epoch only grow, so
"after the last one delivered" is the one rule that can neither skip nor
repeat, even when the top and the read disagree (a broker whose offsets are
shared between channels can report a top that the read did not reach).

A position only ever moves in the same message that says why: the
``subscribed`` reply of a resume that cannot be served keeps the client's own
``since``, and the reset that follows it is what moves the position on.  A
connection cut between the two leaves the client at ``since``, and its next
resume gets the same reset again.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from broker_adapters.types import History, Position, Publication


class ResetReason(enum.StrEnum):
    """Why a subscriber's position cannot be continued.  See docs/protocol.md."""

    EPOCH_CHANGED = "epoch_changed"  # the stream was lost and started again
    HISTORY_TRIMMED = "history_trimmed"  # missed publications left the history
    TOO_FAR_BEHIND = "too_far_behind"  # more missed than the replay limit
    POSITION_AHEAD = "position_ahead"  # the id is beyond the stream's top
    SLOW_CONSUMER = "slow_consumer"  # the server dropped queued events


@dataclass(frozen=True, slots=True)
class Reset:
    """Tell a subscriber that it now stands at ``position``, and why."""

    position: Position
    reason: ResetReason


#: One message for a subscriber, after its ``subscribed`` reply.
Step = Publication | Reset


class MergeGap(Exception):
    """History and the held live publications do not join up; read again."""


@dataclass(frozen=True, slots=True)
class ResumePlan:
    """What a subscribe is answered with.

    ``start`` is the position the ``subscribed`` reply carries: the client's
    ``since`` when it resumed (whether or not it could be recovered), the
    stream's top when it did not ask to resume.  ``steps`` follow the reply
    in this order; ``position`` is where the subscriber stands after them.
    """

    start: Position
    recovered: bool | None
    replayed: int
    steps: tuple[Step, ...]
    position: Position

    @property
    def reset(self) -> Reset | None:
        """The reset that answers an unrecoverable resume, if this is one."""
        first = self.steps[0] if self.steps else None
        return first if isinstance(first, Reset) and self.recovered is False else None


def follow(position: Position, publication: Publication) -> tuple[Position, tuple[Step, ...]]:
    """A live ``publication`` reaches a subscriber at ``position``.

    Returns the subscriber's new position and what it is sent.  Two epochs
    are never spliced: a publication of another epoch is preceded by a reset
    to the position just before it.  A spurious reset is safe; a spliced
    stream is not.
    """
    if publication.epoch != position.epoch:
        before = Position(publication.epoch, publication.offset - 1)
        return publication.position, (Reset(before, ResetReason.EPOCH_CHANGED), publication)
    if publication.offset <= position.offset:
        return position, ()
    return publication.position, (publication,)


def fold(position: Position, publications: Iterable[Publication]) -> tuple[Position, list[Step]]:
    """:func:`follow` over a sequence: the steps for a subscriber at ``position``."""
    steps: list[Step] = []
    for publication in publications:
        position, sent = follow(position, publication)
        steps.extend(sent)
    return position, steps


def unrecoverable(since: Position, history: History, replay_limit: int) -> ResetReason | None:
    """Why the publications after ``since`` cannot be replayed from ``history``, if they cannot."""
    top = history.top
    if since.epoch != top.epoch:
        return ResetReason.EPOCH_CHANGED
    if since.offset > top.offset:
        return ResetReason.POSITION_AHEAD
    if not history.complete:
        return ResetReason.HISTORY_TRIMMED
    if sum(1 for p in history.publications if p.offset > since.offset) > replay_limit:
        return ResetReason.TOO_FAR_BEHIND
    return None


def history_is_behind(top: Position, fanned_out: Position | None) -> bool:
    """Is a history read whose stream top is ``top`` older than what the node fanned out already?

    A subscription is registered before its read, so what arrives after
    is held; what the node fanned out before must be in the read.  A read
    that stops short of it would lose the publications in between.  Another
    epoch says nothing: the stream was recreated, and the read is the newer.
    """
    return fanned_out is not None and fanned_out.epoch == top.epoch and top.offset < fanned_out.offset


def history_up_to(history: History, fanned_out: Position) -> History:
    """A read still behind what the node fanned out, as an answer that cannot mislead.

    The node's own last position becomes the top, and the read counts as
    incomplete: a fresh subscribe starts where the node's live delivery is,
    and a resume that the read cannot join gets a reset instead of a gap.
    """
    return History(top=fanned_out, publications=history.publications, complete=False)


def check_joined(position: Position, steps: Sequence[Step]) -> None:
    """On a stream with consecutive offsets, every publication must follow the one before.

    Raises :class:`MergeGap` otherwise: the read raced a live gap that the
    node is about to repair, and reading again gives a whole answer.
    """
    for step in steps:
        if isinstance(step, Reset):
            position = step.position
        else:
            if step.epoch == position.epoch and step.offset != position.offset + 1:
                raise MergeGap(f"expected offset {position.offset + 1}, got {step.offset}")
            position = step.position


def plan_subscribe(
    since: Position | None,
    history: History,
    held: Sequence[Publication],
    *,
    replay_limit: int,
    contiguous: bool = False,
) -> ResumePlan:
    """Answer a subscribe from ``since`` (None: no resume).

    ``history`` was read after ``since`` (or just for the top, without one)
    *after* the subscriber started holding live publications, so every
    publication is either in the read or in ``held``, or both.
    ``contiguous`` says the stream's offsets are consecutive, which lets the
    merge prove it has no hole (:class:`MergeGap` otherwise).
    """
    top = history.top
    if since is None:
        position, steps = fold(top, held)
        return ResumePlan(top, None, 0, tuple(steps), position)
    reason = unrecoverable(since, history, replay_limit)
    if reason is not None:
        position, steps = fold(top, held)
        return ResumePlan(since, False, 0, (Reset(top, reason), *steps), position)
    replay = [p for p in history.publications if p.epoch == since.epoch and p.offset > since.offset]
    position, steps = fold(since, [*replay, *held])
    if contiguous:
        check_joined(since, steps)
    return ResumePlan(since, True, len(replay), tuple(steps), position)


def replay_from_recent(
    since: Position, base: Position, recent: Sequence[Publication], replay_limit: int
) -> list[Publication] | None:
    """The publications after ``since``, from what the node itself delivered, if that covers it.

    ``recent`` is the node's window of the channel's last live publications,
    in order and without a hole, and ``base`` the position just before the
    first of them (or the channel's last position, when the window is
    empty).  A position inside the window is served from it, exactly as
    history would serve it; anything else (older, another epoch, ahead) is
    None: read the broker.
    """
    last = recent[-1].position if recent else base
    if since.epoch != base.epoch or not base.offset <= since.offset <= last.offset:
        return None
    replay = [p for p in recent if p.offset > since.offset]
    return replay if len(replay) <= replay_limit else None


def plan_repair(
    origin: Position, history: History, held: Sequence[Publication], *, replay_limit: int
) -> tuple[Position, list[Step]]:
    """Repair a channel's live delivery, which stood at ``origin``.

    Returns the channel's new last position and what every subscriber that
    stood at ``origin`` is sent.  A subscription that cannot be continued
    from history gets one reset to the stream's top; a live repair reports
    "too far behind" as trimmed history, which is what it is for the client.
    """
    reason = unrecoverable(origin, history, replay_limit)
    if reason is not None:
        if reason is not ResetReason.EPOCH_CHANGED:
            reason = ResetReason.HISTORY_TRIMMED
        top = history.top
        position, steps = fold(top, held)
        return position, [Reset(top, reason), *steps]
    replay = [p for p in history.publications if p.epoch == origin.epoch and p.offset > origin.offset]
    return fold(origin, [*replay, *held])
