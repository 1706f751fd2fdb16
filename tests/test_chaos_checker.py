"""The chaos checker's judgement, in-process: tables of client logs against acknowledged publications."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from loadtest.chaos.checker import (
    Ack,
    AckIndex,
    ChannelLog,
    Entry,
    Kind,
    Refusal,
    Stage,
    check,
    check_log,
    refused_while_healthy,
)
from loadtest.chaos.schedule import Action, plan

CH = "news"


def acks(epoch: str, offsets: range | list[int], first_seq: int = 1) -> list[Ack]:
    return [Ack(CH, f"{epoch}-{o}", first_seq + i) for i, o in enumerate(offsets)]


def seq_of(ack_list: list[Ack], event_id: str) -> int:
    return next(a.seq for a in ack_list if a.id == event_id)


def ev(ack_list: list[Ack], event_id: str) -> Entry:
    return Entry(Kind.EVENT, id=event_id, seq=seq_of(ack_list, event_id))


def run(entries: list[Entry], published: list[Ack], persistent: bool = False):  # type: ignore[no-untyped-def]
    return check_log(ChannelLog("c1", "ws", CH, entries, persistent=persistent), AckIndex(published))


def test_a_clean_stream_with_a_recovered_resume_passes() -> None:
    published = acks("e", range(1, 8))
    result = run(
        [
            Entry(Kind.SUBSCRIBED, id="e-0"),
            ev(published, "e-1"), ev(published, "e-2"), Entry(Kind.END),
            Entry(Kind.SUBSCRIBED, id="e-2", recovered=True, since="e-2", replayed=2),
            ev(published, "e-3"), ev(published, "e-4"), ev(published, "e-5"), ev(published, "e-6"), ev(published, "e-7"),
        ],
        published,
        persistent=True,
    )
    assert not result.counts.failed() and result.findings == []
    assert (result.counts.delivered, result.counts.resumes, result.counts.recovered, result.counts.replayed) == (7, 1, 1, 2)


def test_the_event_after_the_replayed_ones_missing_is_a_silent_loss() -> None:
    # Issue 10, bug 1: recovered:true, replayed 2, and the third event after since never comes.
    published = acks("e", range(1, 6))
    result = run(
        [
            Entry(Kind.START, id="e-1"),
            Entry(Kind.SUBSCRIBED, id="e-1", recovered=True, since="e-1", replayed=2),
            ev(published, "e-2"), ev(published, "e-3"), ev(published, "e-5"),
        ],
        published,
    )
    assert (result.counts.silent_losses, result.counts.silent_gaps) == (1, 1) and result.counts.failed()
    assert [f.kind for f in result.findings] == ["silent_loss"]


def test_offsets_that_skip_are_not_losses_when_nothing_acknowledged_lies_between() -> None:
    published = acks("e", [3, 7, 20])  # NATS and Kafka share offsets with other channels
    result = run([Entry(Kind.SUBSCRIBED, id="e-0"), *(ev(published, a.id) for a in published)], published)
    assert result.counts.silent_losses == 0


def test_a_gap_covered_by_a_reset_is_counted_but_not_a_failure() -> None:
    old, new = acks("old", range(1, 5)), acks("new", range(1, 4), first_seq=100)
    result = run(
        [
            Entry(Kind.SUBSCRIBED, id="old-0"), ev(old, "old-1"), Entry(Kind.END),
            Entry(Kind.SUBSCRIBED, id="new-2", recovered=False, since="old-1"),
            Entry(Kind.RESET, id="new-2", reason="epoch_changed"),
            ev(new, "new-3"),
        ],
        old + new,
        persistent=True,
    )
    assert not result.counts.failed()
    # old-2..old-4 lost with the old stream, new-1..new-2 skipped by the reset.
    assert (result.counts.gaps_covered_by_reset, result.counts.publications_covered_by_reset) == (1, 5)
    assert result.counts.resets == {"epoch_changed": 1}


def test_the_new_reset_semantics_keep_the_position_until_the_reset() -> None:
    # subscribed recovered:false carries since; a cut before the reset leaves the client at since.
    published = acks("e", range(1, 10))
    result = run(
        [
            Entry(Kind.START, id="e-1"),
            Entry(Kind.SUBSCRIBED, id="e-1", recovered=False, since="e-1"), Entry(Kind.END),
            Entry(Kind.SUBSCRIBED, id="e-1", recovered=False, since="e-1"),
            Entry(Kind.RESET, id="e-8", reason="too_far_behind"), ev(published, "e-9"),
        ],
        published,
    )
    assert not result.counts.failed() and result.counts.reset_window_cuts == 0


def test_a_cut_between_a_position_moving_subscribed_and_its_reset_is_the_reset_window() -> None:
    # Issue 10, bug 2: the old semantics move the position in subscribed; the reset never arrives.
    published = acks("e", range(1, 10))
    result = run(
        [
            Entry(Kind.START, id="e-1"),
            Entry(Kind.SUBSCRIBED, id="e-8", recovered=False, since="e-1"), Entry(Kind.END),
            Entry(Kind.SUBSCRIBED, id="e-8", recovered=True, since="e-8", replayed=1), ev(published, "e-9"),
        ],
        published,
    )
    assert result.counts.reset_window_cuts == 1
    assert result.counts.silent_losses == 7  # e-2 .. e-8
    assert result.findings[0].kind == "reset_window"


def test_events_before_the_initial_reset_are_counted() -> None:
    published = acks("e", range(1, 10))
    result = run(
        [
            Entry(Kind.START, id="e-1"),
            Entry(Kind.SUBSCRIBED, id="e-7", recovered=False, since="e-1"),
            ev(published, "e-8"), Entry(Kind.RESET, id="e-7", reason="too_far_behind"),
        ],
        published,
    )
    assert result.counts.events_before_reset == 1


def test_duplicates_and_reorders() -> None:
    published = acks("e", range(1, 5))
    duplicate = run([Entry(Kind.SUBSCRIBED, id="e-0"), ev(published, "e-1"), ev(published, "e-2"), ev(published, "e-2")], published)
    assert (duplicate.counts.duplicates, duplicate.counts.reorders) == (1, 0)
    reorder = run(
        [Entry(Kind.SUBSCRIBED, id="e-0"), ev(published, "e-1"), ev(published, "e-3"), ev(published, "e-2")], published
    )
    assert reorder.counts.reorders == 1 and reorder.counts.silent_losses == 1  # e-2 skipped when e-3 came


def test_an_event_of_another_epoch_without_a_reset_is_a_splice() -> None:
    old, new = acks("old", range(1, 4)), acks("new", range(1, 3), first_seq=100)
    result = run([Entry(Kind.SUBSCRIBED, id="old-0"), ev(old, "old-1"), ev(new, "new-2")], old + new)
    assert result.counts.unannounced_epoch_changes == 1
    assert result.counts.silent_losses == 3  # old-2, old-3, new-1


def test_a_persistent_client_must_end_caught_up() -> None:
    published = acks("e", range(1, 6))
    behind = run([Entry(Kind.SUBSCRIBED, id="e-0"), ev(published, "e-1")], published, persistent=True)
    assert behind.counts.undelivered_at_end == 4 and behind.counts.failed()
    left = run([Entry(Kind.SUBSCRIBED, id="e-0"), ev(published, "e-1")], published, persistent=False)
    assert not left.counts.failed()


def test_unacknowledged_publications_delivered_are_fine() -> None:
    published = acks("e", [1, 3])
    result = run(
        [Entry(Kind.SUBSCRIBED, id="e-0"), ev(published, "e-1"), Entry(Kind.EVENT, id="e-2", seq=999), ev(published, "e-3")],
        published,
    )
    assert not result.counts.failed()


def test_one_id_naming_two_payloads_is_id_reuse() -> None:
    # Issue 10, bug 4: a lost acknowledged publication's id given to another one.
    published = [Ack(CH, "e-1", 1), Ack(CH, "e-2", 2), Ack(CH, "e-2", 3)]
    log = ChannelLog("c1", "ws", CH, [Entry(Kind.SUBSCRIBED, id="e-0"), Entry(Kind.EVENT, id="e-1", seq=7)], persistent=False)
    verdict = check(published, [log])
    assert verdict.total.id_reuse == 2 and verdict.failed()
    assert sorted(i for _, i, _ in verdict.reused_ids) == ["e-1", "e-2"]


def test_refusals_count_only_outside_broker_outages() -> None:
    refusals = [Refusal(5.0, "c", "ws", CH), Refusal(21.0, "c", "ws", CH), Refusal(40.0, "c", "ws", CH)]
    assert refused_while_healthy(refusals, [(10.0, 15.0)], grace=8.0) == 2
    assert refused_while_healthy(refusals, [], grace=8.0) == 3
    # A 503 before the node takes the client on is "retry later", not a refused subscribe.
    assert refused_while_healthy([Refusal(40.0, "c", "sse", CH, Stage.HANDSHAKE)], [], grace=8.0) == 0


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 60), st.integers(0, 5))
def test_any_faithful_resume_history_passes(seed: int, total: int, cuts: int) -> None:
    # Property: a client that receives every acknowledged publication once, in
    # order, across any number of recovered resumes, never fails the check.
    rng = random.Random(seed)
    offsets = sorted(rng.sample(range(1, 10 * total + 1), total))
    published = acks("e", offsets)
    cut_points = sorted(rng.sample(range(total + 1), min(cuts, total + 1)))

    def client_log(received: list[Ack]) -> list[Entry]:
        entries = [Entry(Kind.SUBSCRIBED, id="e-0")]
        position = "e-0"
        for i, ack in enumerate(received):
            if i in cut_points:
                entries += [Entry(Kind.END), Entry(Kind.SUBSCRIBED, id=position, recovered=True, since=position, replayed=0)]
            entries.append(Entry(Kind.EVENT, id=ack.id, seq=ack.seq))
            position = ack.id
        return entries

    entries = client_log(published)
    result = run(entries, published, persistent=True)
    assert not result.counts.failed() and result.findings == []
    # Dropping any one event makes it a silent loss (or, for the last, undelivered at the end).
    drop = rng.randrange(total)
    broken = run(client_log(published[:drop] + published[drop + 1 :]), published, persistent=True)
    assert broken.counts.silent_losses + broken.counts.undelivered_at_end == 1


def test_the_fault_schedule_is_a_function_of_the_seed() -> None:
    assert plan(7, 120, 3, networked=True) == plan(7, 120, 3, networked=True)
    assert plan(7, 120, 3, networked=True) != plan(8, 120, 3, networked=True)
    memory = plan(7, 600, 1, networked=False)
    assert Action.BROKER_RESTART not in {f.action for f in memory} and {f.target for f in memory} == {0}
    assert all(3 <= f.seconds <= 22 for f in memory)
