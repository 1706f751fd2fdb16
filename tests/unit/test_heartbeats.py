"""Which connections the heartbeat ticker pings and checks at each tick."""

from __future__ import annotations

from dataclasses import dataclass

from node.heartbeats import MAX_SLICES, HeartbeatSlices


@dataclass(frozen=True)
class Conn:
    number: int


def test_every_connection_is_pinged_once_per_interval_in_small_slices() -> None:
    slices: HeartbeatSlices[Conn] = HeartbeatSlices(25.0, 10.0)
    assert slices.slices == MAX_SLICES and slices.tick == 0.1
    connections = [Conn(n) for n in range(10_000)]
    for connection in connections:
        slices.add(connection)
    pinged: list[Conn] = []
    largest = 0
    for _ in range(slices.slices):
        to_ping, _ = slices.advance()
        pinged += to_ping
        largest = max(largest, len(to_ping))
    assert sorted(pinged, key=lambda c: c.number) == connections
    assert largest == 10_000 // MAX_SLICES


def test_a_bucket_is_checked_the_first_tick_at_least_timeout_after_its_ping() -> None:
    slices: HeartbeatSlices[Conn] = HeartbeatSlices(25.0, 10.0)
    assert slices.check_lag == 100  # 100 ticks of 0.1 s
    one = Conn(7)
    slices.add(one)
    ticks_pinged, ticks_checked = [], []
    for tick in range(2 * slices.slices):
        to_ping, to_check = slices.advance()
        if one in to_ping:
            ticks_pinged.append(tick)
        if one in to_check:
            ticks_checked.append(tick)
    assert ticks_pinged == [7, 7 + MAX_SLICES]
    assert ticks_checked == [107, 107 + MAX_SLICES]


def test_short_intervals_keep_ticks_of_at_least_10_ms() -> None:
    slices: HeartbeatSlices[Conn] = HeartbeatSlices(0.5, 0.2)
    assert slices.slices == 50 and abs(slices.tick - 0.01) < 1e-12
    assert slices.check_lag == 20
    assert HeartbeatSlices(0.001, 0.001).slices == 1


def test_a_timeout_longer_than_the_interval_is_checked_after_later_pings() -> None:
    slices: HeartbeatSlices[Conn] = HeartbeatSlices(1.0, 2.5)
    assert slices.check_lag == 250 and slices.check_lag > slices.slices


def test_a_connection_that_left_is_neither_pinged_nor_checked() -> None:
    slices: HeartbeatSlices[Conn] = HeartbeatSlices(1.0, 1.0)
    gone = Conn(3)
    slices.add(gone)
    slices.discard(gone)
    for _ in range(2 * slices.slices):
        to_ping, to_check = slices.advance()
        assert gone not in to_ping and gone not in to_check
