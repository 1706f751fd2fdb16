"""Holes in a partition's offsets (broker_adapters/kafka_holes.py)."""

from __future__ import annotations

from broker_adapters.kafka_holes import Holes


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_hole_is_waited_for_then_accepted() -> None:
    clock = Clock()
    holes = Holes(0.25, clock)
    assert holes.wait_for(0, 10)  # first met: fetch again from 10
    clock.now = 0.1
    assert holes.wait_for(0, 10)  # still within the wait
    clock.now = 0.3
    assert not holes.wait_for(0, 10)  # a real hole: move on
    assert holes.accepted == 1


def test_a_hole_that_fills_is_forgotten() -> None:
    clock = Clock()
    holes = Holes(0.25, clock)
    assert holes.wait_for(1, 5)
    holes.filled(1, 5)
    clock.now = 10.0
    assert holes.wait_for(1, 5)  # met again later: a new wait, not an old one


def test_no_wait_accepts_at_once() -> None:
    assert not Holes(0.0).wait_for(0, 1)
