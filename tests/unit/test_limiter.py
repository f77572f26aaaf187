"""Slice sizing and limit keys: the pure part of the limiter."""

from gateway.limit_terms import FAIR_SHARE, HEADROOM, limit_key, slice_size


def test_limit_keys_of_caller_and_model_do_not_collide():
    assert limit_key("a:b", "c") != limit_key("a", "b:c")
    assert limit_key("app:1") == "app:1"


def test_a_slice_covers_the_rate_for_a_lifetime_when_far_from_the_limit():
    assert slice_size(1, 1, rate=2000, lifetime_s=2, free=1_000_000, holders=1) == 2000 * 2 * HEADROOM
    assert slice_size(1, 40, rate=0, lifetime_s=2, free=1_000_000, holders=1) == 40  # waiting requests


def test_slices_shrink_to_a_fair_share_near_the_limit_but_always_hold_the_request():
    assert slice_size(1, 1, rate=100, lifetime_s=2, free=80, holders=4) == 80 // (FAIR_SHARE * 4) < 100 * 2
    assert slice_size(1, 1, rate=100, lifetime_s=2, free=3, holders=4) == 1
    assert slice_size(500, 500, rate=10, lifetime_s=2, free=600, holders=4) == 500
    assert slice_size(2, 2, rate=100, lifetime_s=2, free=1, holders=1) == 0  # does not fit: refused
    assert slice_size(1, 1, rate=0, lifetime_s=2, free=1, holders=1) == 1


def test_a_caller_over_its_limit_leases_what_frees_in_one_piece():
    assert slice_size(1, 1, rate=100, lifetime_s=2, free=80, holders=4, over=True) == 80
    assert slice_size(1, 1, rate=10, lifetime_s=2, free=80, holders=4, over=True) == 25  # still no more than its rate
