"""The scale model (bench/scale_sim.py): its quick form, its claims at 1,000 instances, and its single-instance
part checked against real development hosts sharing one Azurite."""

import math
import random

import pytest

from bench import scale_sim, sim_readpath
from bench.sim_calibrate import calibrate
from bench.sim_leases import LeaseConfig, simulate_leases
from bench.sim_targets import TARGETS, Scenario
from bench.sim_writes import RETRIES, breaker_storm
from gateway.state_sync import RESYNC_S


@pytest.fixture(scope="module")
def model() -> dict:
    return scale_sim.run(Scenario(simulate_s=20.0), (10, 1000), quick=True)


def test_the_recommended_read_path_stays_under_every_table_target_at_1000_instances(model: dict) -> None:
    design = model["recommended"]
    assert design == "b+c"  # the one built
    for mode in scale_sim.MODES:
        at_1000 = model["readpath"][mode][design][-1]
        assert at_1000["instances"] == 1000
        assert at_1000["peak_partition"] <= TARGETS["table_partition"].limit
        assert at_1000["peak_account"] <= TARGETS["table_account"].limit
        assert at_1000["all_know_s"] <= scale_sim.PROPAGATION_BUDGET  # still about one refresh interval
        assert model["stops"][mode][design] >= 1000
    assert model["account"]["total"] <= TARGETS["table_account"].limit


def test_the_read_path_before_issue_17_does_not(model: dict) -> None:
    for mode in scale_sim.MODES:
        before = model["readpath"][mode]["a"]
        assert not before[0]["exceeds"]  # fine at 10 instances...
        assert "table_partition" in before[-1]["exceeds"]  # ...over the partition target at 1,000
        assert model["stops"][mode]["a"] < 1000


def test_an_adaptive_interval_stays_under_the_targets_by_giving_up_propagation(model: dict) -> None:
    d = model["readpath"]["steady"]["d"][-1]
    assert not d["exceeds"] and d["interval_s"] > 10
    assert d["all_know_s"] > scale_sim.PROPAGATION_BUDGET  # which is why it is not recommended


def test_the_simulated_refresh_rate_is_the_closed_form() -> None:
    """The renewal process the simulation draws refreshes from has the rate the calibration measures."""
    rng = random.Random(5)
    rate, interval, horizon = 2.0, 1.0, 20_000.0
    times = sim_readpath._schedule(rng, rate, interval, horizon)
    assert len(times) / horizon == pytest.approx(sim_readpath.refresh_rate(rate, interval, ratio=1.0), rel=0.03)


def test_a_429_storm_overwhelmed_one_row_before_and_not_as_built() -> None:
    sc = Scenario()
    before, built = breaker_storm(1000, sc), breaker_storm(1000, sc, built=True)
    assert before.failed > 0 and before.peak_ops_per_s > TARGETS["table_partition"].limit
    assert built.failed == 0 and built.peak_ops_per_s < TARGETS["table_partition"].limit
    assert built.writes <= 2 and 0 < built.bump_operations <= 2 * RETRIES * built.writes  # one transition, bumped
    assert built.operations < 1.5 * built.writers  # about one read per writer


def test_the_built_read_path_re_reads_whole_buckets_and_resyncs_once_a_minute() -> None:
    """The model of the built design counts the reads the gateway makes: a version read per refresh, a bucket's
    rows when it changed, every row about once a minute."""
    sc = Scenario(simulate_s=130.0, changes_per_s=0.01)  # nearly no change: the resync dominates row reads
    result = sim_readpath.simulate("b+c", 10, sc)
    per_row = result.mean_partition  # the busiest partition is the version entity: a read per refresh
    assert per_row == pytest.approx(10 * sim_readpath.refresh_rate(sc.per_instance_rps, sc.refresh_s), rel=0.1)
    quiet_tx = 10 * (sim_readpath.refresh_rate(sc.per_instance_rps, sc.refresh_s) + sc.entities() / RESYNC_S)
    assert result.mean_account == pytest.approx(quiet_tx, rel=0.2)
    assert sum(len(rows) for rows in sim_readpath.buckets(sc).values()) == sc.entities()


def test_leases_never_grant_beyond_the_limit_so_overshoot_comes_only_from_settlement_and_clocks() -> None:
    exact = simulate_leases(300, LeaseConfig(limit=600, tokens_mean=1, used_share=(1.0, 1.0), under_p=0.0,
                                             clock_sd_s=0.0, windows=1))
    assert exact.overshoot_max == 0.0 and 0.9 <= exact.admitted <= 1.0
    assert exact.rejected > 0.25  # demand is 1.5 x the limit: about a third is refused
    worst = simulate_leases(1000, LeaseConfig(used_share=(0.9, 1.0), under_p=0.2, under_max=0.5, windows=1))
    assert 0 < worst.overshoot_max < 0.05  # "within a few percent however many instances run"


def test_stops_scaling_is_where_the_simulation_starts_to_exceed() -> None:
    sc = Scenario(simulate_s=20.0)
    limit = sim_readpath.stops_scaling("a", sc)
    assert math.isfinite(limit)
    below, above = max(1, int(limit * 0.8)), int(limit * 1.25) + 1
    assert not sim_readpath.simulate("a", below, sc).exceeds()
    assert sim_readpath.simulate("a", above, sc).exceeds()


@pytest.mark.timeout(120)
def test_the_single_instance_model_matches_two_development_hosts() -> None:
    measured = calibrate(hosts=2, trials=1, window_s=4.0)
    for phase in ("busy", "paced"):
        m = measured[phase]
        assert 0.6 * m["model_ops_per_s"] <= m["ops_per_s"] <= 1.5 * m["model_ops_per_s"], m
    delays = measured["propagation_s"]
    assert delays["samples"] == 2
    assert delays["max"] <= delays["model_max"] + 0.5  # one refresh interval and a read, with slack for a busy box
