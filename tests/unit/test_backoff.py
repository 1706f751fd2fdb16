"""Jittered exponential backoff (broker_adapters/backoff.py)."""

from __future__ import annotations

import asyncio
import random

import pytest

from broker_adapters.backoff import Backoff, wait_until_set


def test_waits_double_up_to_the_cap_and_start_again_after_reset() -> None:
    backoff = Backoff(first=0.1, most=1.0, uniform=lambda low, high: 1.0)
    assert [round(backoff.next(), 3) for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    backoff.reset()
    assert backoff.next() == pytest.approx(0.1)


def test_jitter_spreads_each_wait_within_its_bounds() -> None:
    rng = random.Random(4)
    backoff = Backoff(first=1.0, most=1.0, jitter=0.5, uniform=rng.uniform)
    waits = [backoff.next() for _ in range(200)]
    assert all(0.5 <= w <= 1.5 for w in waits)
    assert max(waits) - min(waits) > 0.5  # really spread, not lockstep


def test_no_jitter_is_exact() -> None:
    backoff = Backoff(first=0.1, most=5.0, jitter=0.0)
    assert [backoff.next() for _ in range(3)] == pytest.approx([0.1, 0.2, 0.4])


@pytest.mark.parametrize(
    "kwargs", [{"first": 0}, {"first": 2, "most": 1}, {"factor": 0.5}, {"jitter": 1.0}, {"jitter": -0.1}]
)
def test_unbounded_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)  # type: ignore[arg-type]


async def test_a_wait_ends_when_woken() -> None:
    wake = asyncio.Event()
    asyncio.get_running_loop().call_soon(wake.set)
    assert await wait_until_set(wake, 60) is True


async def test_a_wait_without_wake_times_out() -> None:
    assert await wait_until_set(asyncio.Event(), 0.01) is False
