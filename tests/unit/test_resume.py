"""The resume planner (node/resume.py): tables for each rule, properties for the merge."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker_adapters.types import History, Position, Publication
from node.resume import (
    MergeGap,
    Reset,
    ResetReason,
    follow,
    history_is_behind,
    history_up_to,
    plan_repair,
    plan_subscribe,
)

E = "ep"


def pub(offset: int, epoch: str = E) -> Publication:
    return Publication(channel="c", epoch=epoch, offset=offset, data=str(offset))


def offsets(steps: tuple[object, ...] | list[object]) -> list[object]:
    """Steps as readable values: an offset per publication, ("reset", reason, offset) per reset."""
    out: list[object] = []
    for step in steps:
        if isinstance(step, Reset):
            out.append(("reset", step.reason.value, step.position.offset))
        else:
            assert isinstance(step, Publication)
            out.append(step.offset)
    return out


# -- follow -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "position,publication,expected_position,expected",
    [
        (Position(E, 4), pub(5), 5, [5]),
        (Position(E, 4), pub(9), 9, [9]),  # offsets may skip (shared streams)
        (Position(E, 4), pub(4), 4, []),  # duplicate
        (Position(E, 4), pub(2), 4, []),  # older
        (Position("old", 40), pub(3), 3, [("reset", "epoch_changed", 2), 3]),
    ],
)
def test_follow(position: Position, publication: Publication, expected_position: int, expected: list[object]) -> None:
    new, steps = follow(position, publication)
    assert new.offset == expected_position
    assert offsets(steps) == expected


# -- subscribe ----------------------------------------------------------------------

TABLE = [
    # name, since, top, complete, history offsets, held offsets, limit -> start, recovered, replayed, steps
    ("fresh", None, 7, True, [], [8, 9], 300, 7, None, 0, [8, 9]),
    ("fresh drops held before top", None, 7, True, [], [6, 7, 8], 300, 7, None, 0, [8]),
    ("recovered", 4, 7, True, [5, 6, 7], [], 300, 4, True, 3, [5, 6, 7]),
    ("recovered with overlap", 4, 7, True, [5, 6, 7], [7, 8], 300, 4, True, 3, [5, 6, 7, 8]),
    ("up to date", 7, 7, True, [], [8], 300, 7, True, 0, [8]),
    ("too far behind", 1, 7, True, [2, 3, 4, 5, 6, 7], [8], 3, 1, False, 0,
     [("reset", "too_far_behind", 7), 8]),
    ("trimmed", 1, 7, False, [5, 6, 7], [], 300, 1, False, 0, [("reset", "history_trimmed", 7)]),
    ("ahead", 9, 7, True, [], [8], 300, 9, False, 0, [("reset", "position_ahead", 7), 8]),
    # Issue 10, bug 1: the top a read reports can be past what the read
    # covered (Kafka's index ran ahead of its scan).  The held live event at
    # the top must still be delivered: the merge follows offsets, not the top.
    ("top ahead of the read", 4, 9, True, [5, 7], [9, 11], 300, 4, True, 2, [5, 7, 9, 11]),
]


@pytest.mark.parametrize(
    "name,since,top,complete,history,held,limit,start,recovered,replayed,steps", TABLE, ids=[row[0] for row in TABLE]
)
def test_plan_subscribe(
    name: str, since: int | None, top: int, complete: bool, history: list[int], held: list[int], limit: int,
    start: int, recovered: bool | None, replayed: int, steps: list[object],
) -> None:
    plan = plan_subscribe(
        None if since is None else Position(E, since),
        History(top=Position(E, top), publications=[pub(o) for o in history], complete=complete),
        [pub(o) for o in held],
        replay_limit=limit,
    )
    assert plan.start == Position(E, start)
    assert plan.recovered is recovered
    assert plan.replayed == replayed
    assert offsets(plan.steps) == steps


def test_unrecoverable_resume_keeps_since_and_resets_in_the_next_step() -> None:
    """The reply never moves the client past a gap; the reset does (the reset window)."""
    plan = plan_subscribe(
        Position("old", 40), History(top=Position(E, 7)), [pub(8)], replay_limit=300
    )
    assert plan.start == Position("old", 40)
    assert plan.recovered is False
    assert plan.reset == Reset(Position(E, 7), ResetReason.EPOCH_CHANGED)
    assert offsets(plan.steps) == [("reset", "epoch_changed", 7), 8]
    assert plan.position == Position(E, 8)


def test_held_event_of_a_new_epoch_resets_before_it() -> None:
    plan = plan_subscribe(
        Position(E, 4), History(top=Position(E, 5), publications=[pub(5)]), [pub(1, "new")], replay_limit=300
    )
    assert offsets(plan.steps) == [5, ("reset", "epoch_changed", 0), 1]
    assert plan.position == Position("new", 1)


def test_contiguous_merge_with_a_hole_asks_for_another_read() -> None:
    with pytest.raises(MergeGap):
        plan_subscribe(
            Position(E, 4),
            History(top=Position(E, 6), publications=[pub(5), pub(6)]),
            [pub(8)],
            replay_limit=300,
            contiguous=True,
        )


# -- repair -----------------------------------------------------------------------------


def test_repair_replays_after_origin_then_held() -> None:
    last, steps = plan_repair(
        Position(E, 4), History(top=Position(E, 6), publications=[pub(5), pub(6)]), [pub(6), pub(7)], replay_limit=300
    )
    assert offsets(steps) == [5, 6, 7]
    assert last == Position(E, 7)


@pytest.mark.parametrize(
    "history,reason",
    [
        (History(top=Position("new", 3)), "epoch_changed"),
        (History(top=Position(E, 9), complete=False), "history_trimmed"),
        (History(top=Position(E, 9), publications=[pub(o) for o in range(5, 10)]), "history_trimmed"),  # > limit
        (History(top=Position(E, 2)), "history_trimmed"),  # the stream went backwards
    ],
)
def test_repair_that_cannot_replay_resets_everyone_to_the_top(history: History, reason: str) -> None:
    last, steps = plan_repair(Position(E, 4), history, [], replay_limit=3)
    assert offsets(steps) == [("reset", reason, history.top.offset)]
    assert last == history.top


# -- properties ---------------------------------------------------------------------------


@st.composite
def race(draw: st.DrawFn) -> tuple[list[Publication], int, int, int, int]:
    """A stream, a client position, and a history read racing live delivery.

    Offsets skip at random (shared streams).  The subscriber starts holding
    live publications at index ``hold_from``; the read starts later and sees
    the stream up to ``read_to``; the top it reports may be anywhere from
    what it read to what exists (the Kafka race of issue 10).
    """
    gaps = draw(st.lists(st.integers(1, 3), min_size=1, max_size=40))
    stream, offset = [], 0
    for gap in gaps:
        offset += gap
        stream.append(pub(offset))
    n = len(stream)
    since_index = draw(st.integers(-1, n - 1))  # -1: before the first
    hold_from = draw(st.integers(since_index + 1, n))
    read_to = draw(st.integers(max(hold_from, since_index + 1), n))  # the read sees [0, read_to)
    top_index = draw(st.integers(read_to, n))  # the top it reports covers [0, top_index)
    return stream, since_index, hold_from, read_to, top_index


@settings(max_examples=400, deadline=None)
@given(race())
def test_a_recovered_resume_gets_exactly_what_it_missed_in_order(
    case: tuple[list[Publication], int, int, int, int],
) -> None:
    stream, since_index, hold_from, read_to, top_index = case
    since = Position(E, stream[since_index].offset if since_index >= 0 else 0)
    top = Position(E, stream[top_index - 1].offset if top_index else 0)
    history = History(top=top, publications=stream[since_index + 1 : read_to])
    held = stream[hold_from:]
    plan = plan_subscribe(since, history, held, replay_limit=10_000)
    assert plan.recovered is True
    assert [s for s in plan.steps] == stream[since_index + 1 :]



# -- the node's recent window ----------------------------------------------------------------

from node.resume import replay_from_recent  # noqa: E402


@pytest.mark.parametrize(
    "since,expected",
    [
        (Position(E, 4), [5, 7, 9]),  # the base itself: everything in the window
        (Position(E, 5), [7, 9]),
        (Position(E, 6), [7, 9]),  # between offsets of a shared stream
        (Position(E, 9), []),  # up to date
        (Position(E, 3), None),  # older than the window: read the broker
        (Position(E, 10), None),  # ahead: the broker decides (position_ahead)
        (Position("other", 5), None),  # another epoch
    ],
)
def test_replay_from_recent(since: Position, expected: list[int] | None) -> None:
    got = replay_from_recent(since, Position(E, 4), [pub(5), pub(7), pub(9)], replay_limit=300)
    assert (None if got is None else [p.offset for p in got]) == expected


def test_an_empty_window_serves_only_its_base() -> None:
    assert replay_from_recent(Position(E, 4), Position(E, 4), [], 300) == []
    assert replay_from_recent(Position(E, 3), Position(E, 4), [], 300) is None


def test_the_window_never_replays_past_the_limit() -> None:
    assert replay_from_recent(Position(E, 4), Position(E, 4), [pub(5), pub(6)], replay_limit=1) is None


@pytest.mark.parametrize(
    ("top", "fanned_out", "behind"),
    [
        (Position(E, 5), None, False),  # nothing fanned out yet: any read will do
        (Position(E, 5), Position(E, 5), False),
        (Position(E, 7), Position(E, 5), False),  # publications since: they are read or held
        (Position(E, 4), Position(E, 5), True),  # the read misses 5, fanned out before registration
        (Position("other", 1), Position(E, 5), False),  # a recreated stream: the read is the newer
    ],
)
def test_history_behind_what_was_fanned_out_is_read_again(
    top: Position, fanned_out: Position | None, behind: bool
) -> None:
    assert history_is_behind(top, fanned_out) is behind


def test_a_history_that_stays_behind_starts_fresh_subscribes_at_the_node_and_resets_resumes() -> None:
    stale = History(top=Position(E, 4), publications=[pub(4)], complete=True)
    answer = history_up_to(stale, Position(E, 6))
    fresh = plan_subscribe(None, answer, [pub(7)], replay_limit=100)
    assert fresh.start == Position(E, 6) and offsets(fresh.steps) == [7]
    resumed = plan_subscribe(Position(E, 3), answer, [pub(7)], replay_limit=100)
    assert resumed.recovered is False
    assert offsets(resumed.steps) == [("reset", "history_trimmed", 6), 7]
