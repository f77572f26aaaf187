"""Storage calls per second over the last minute, on a controlled clock."""

from gateway.ops_meter import WINDOW_S, OpsMeter
from tests.support.clock import Clock


def test_rates_are_averaged_over_the_time_since_start_until_a_minute_has_passed():
    clock = Clock(1000.0)
    meter = OpsMeter(clock)
    assert meter.per_second() == {"reads": 0.0, "writes": 0.0, "window_s": 1.0}
    for _ in range(10):
        clock.now += 1
        meter.read()
    meter.write(5)
    assert meter.per_second() == {"reads": 1.0, "writes": 0.5, "window_s": 10.0}
    assert (meter.reads, meter.writes, meter.total) == (10, 5, 15)


def test_only_the_last_minute_counts():
    clock = Clock(1000.0)
    meter = OpsMeter(clock)
    meter.write(600)  # a burst at the start
    for _ in range(2 * WINDOW_S):
        clock.now += 1
        meter.read(2)
    rates = meter.per_second()
    assert rates["window_s"] == WINDOW_S and rates["writes"] == 0.0  # the burst has left the window
    assert rates["reads"] == 2.0
    clock.now += 10 * WINDOW_S  # idle for ten minutes
    assert meter.per_second()["reads"] == 0.0 and meter.total == 600 + 4 * WINDOW_S
