"""The bounded outbox (node/outbox.py): bounds, order, conflation, lag."""

from __future__ import annotations

from node.outbox import Outbox, OutboxLimits

LIMITS = OutboxLimits(max_messages=3, max_bytes=100)


def test_bounds_refuse_without_queueing() -> None:
    box: Outbox[str] = Outbox()
    assert all(box.put(x, 10, LIMITS) for x in "abc")
    assert not box.put("d", 10, LIMITS)
    assert box.take(10) == ["a", "b", "c"]
    # An empty outbox takes one message of any size (publications are bounded
    # by max_message_bytes), or a large one could never be sent at all.
    assert box.put("big", 200, LIMITS)
    assert not box.put("more", 1, LIMITS)


def test_conflated_messages_go_after_the_queue() -> None:
    box: Outbox[str] = Outbox()
    box.put("q1", 1, LIMITS)
    box.put_latest("ch", "old", 0.0)
    box.put_latest("ch", "new", 0.0)
    assert box.take(10) == ["q1", "new"]
    assert not box


def test_take_respects_the_limit_and_keeps_order() -> None:
    box: Outbox[int] = Outbox()
    limits = OutboxLimits(100, 10_000)
    for i in range(10):
        box.put(i, 1, limits)
    assert box.take(4) == [0, 1, 2, 3]
    assert box.take(100) == [4, 5, 6, 7, 8, 9]


def test_lag_is_the_age_of_the_oldest_waiting_message() -> None:
    box: Outbox[int] = Outbox()
    limits = OutboxLimits(100, 10_000)
    box.put(1, 1, limits)
    box.put(2, 1, limits)
    assert box.waited_since() is None  # queued this pass: nothing has waited yet
    box.mark(10.0)
    box.put(3, 1, limits)
    box.mark(11.0)
    assert box.waited_since() == 10.0
    box.take(2)  # the two of 10.0 leave
    assert box.waited_since() == 11.0
    box.take(1)
    assert box.waited_since() is None


def test_an_idle_outbox_holds_nothing() -> None:
    box: Outbox[int] = Outbox()
    box.put(1, 1, LIMITS)
    box.take(10)
    assert box._items is None and box._marks is None and box._latest is None
