"""Which connections the heartbeat ticker pings and checks at each tick."""

from __future__ import annotations

from dataclasses import dataclass

from node.heartbeats import MAX_SLICES, HeartbeatSlices


@dataclass(eq=False)
class Conn:
    number: int
    heartbeat_slot: int = -1


def ticks_until_pinged(slices: HeartbeatSlices[Conn], connection: Conn) -> int:
    for tick in range(1, 2 * slices.slices + 1):
        to_ping, _ = slices.advance()
        if connection in to_ping:
            return tick
    raise AssertionError("never pinged")


def test_a_new_connection_gets_its_first_heartbeat_about_one_interval_after_connecting() -> None:
    for number in range(100):
        probe: HeartbeatSlices[Conn] = HeartbeatSlices(25.0, 10.0)
        assert probe.slices == MAX_SLICES and probe.tick == 0.1
        for _ in range(37):
            probe.advance()  # the node has been running for a while
        connection = Conn(number)
        probe.add(connection)
        # Between 0.9 and 1 interval (225 to 250 ticks of 0.1 s).
        assert 225 <= ticks_until_pinged(probe, connection) <= 250


def test_connections_arriving_together_are_spread_over_a_tenth_of_the_interval() -> None:
    slices: HeartbeatSlices[Conn] = HeartbeatSlices(25.0, 10.0)
    connections = [Conn(n) for n in range(10_000)]
    for connection in connections:
        slices.add(connection)
    pinged: list[Conn] = []
    largest = 0
    for _ in range(slices.slices):
        to_ping, _ = slices.advance()
        pinged += to_ping
        largest = max(largest, len(to_ping))
    # Every one exactly once per interval, in 25 slices of 400.
    assert sorted(c.number for c in pinged) == list(range(10_000))
    assert largest == 10_000 // (MAX_SLICES // 10)


def test_a_bucket_is_checked_the_first_tick_at_least_timeout_after_its_ping() -> None:
    slices: HeartbeatSlices[Conn] = HeartbeatSlices(25.0, 10.0)
    assert slices.check_lag == 100  # 100 ticks of 0.1 s
    one = Conn(0)
    slices.add(one)
    ticks_pinged, ticks_checked = [], []
    for tick in range(2 * slices.slices):
        to_ping, to_check = slices.advance()
        if one in to_ping:
            ticks_pinged.append(tick)
        if one in to_check:
            ticks_checked.append(tick)
    assert ticks_pinged == [249, 249 + MAX_SLICES]
    assert ticks_checked == [99, 99 + MAX_SLICES]  # the first: no ping yet, so nothing to find
    assert ticks_checked[1] - ticks_pinged[0] == slices.check_lag


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
