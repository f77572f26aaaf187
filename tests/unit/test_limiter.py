"""Slice sizing and limit keys: the pure part of the limiter."""

import math

from gateway.limit_terms import (
    FAIR_SHARE,
    HEADROOM,
    ROOM,
    SLICE_REQUESTS,
    Pace,
    lease_terms,
    limit_key,
    slice_size,
    split_limit_key,
)


def test_limit_keys_of_caller_and_model_do_not_collide():
    assert limit_key("a:b", "c") != limit_key("a", "b:c")
    assert limit_key("app:1") == "app:1"


def test_limit_keys_split_back_into_caller_and_model():
    for caller in ("team-a", "app:3f2c-1", "user:ab", "key:0123456789ab", "12"):
        assert split_limit_key(limit_key(caller)) == (caller, None)
        for model in ("gpt-4o", "a:b", ""):
            assert split_limit_key(limit_key(caller, model)) == (caller, model)
    assert split_limit_key("3:ab") == ("3:ab", None)  # looks like a per-model key, is not one


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


def test_a_busy_instance_leases_for_the_shortest_lifetime_at_its_recent_rate():
    pace = Pace(rate=50, minute_rate=10, shortest_s=2, longest_s=60)  # 100 requests in 2 s: plenty
    assert lease_terms(1, 1, pace, free=1_000_000, holders=1, limit=1_000_000) == (math.ceil(50 * 2 * HEADROOM), 2)


def test_a_key_seen_now_and_then_gets_a_slice_for_several_requests_that_lives_long_enough_to_spend_it():
    pace = Pace(rate=0.0, minute_rate=0.1, shortest_s=2, longest_s=60)  # one request every 10 s
    size, lifetime = lease_terms(1, 1, pace, free=10_000, holders=10, limit=12_000)
    assert size == math.ceil(0.1 * 60 * HEADROOM) and lifetime == 60  # 8 requests would take 80 s: the longest
    tokens = Pace(rate=0.0, minute_rate=150, shortest_s=2, longest_s=60)  # 1,500-token requests every 10 s
    size, lifetime = lease_terms(1500, 1500, tokens, free=10_000_000, holders=10, limit=12_000_000)
    assert size == math.ceil(150 * 60 * HEADROOM) and lifetime == 60


def test_near_the_limit_a_seldom_seen_key_keeps_short_slices():
    pace = Pace(rate=0.0, minute_rate=0.1, shortest_s=2, longest_s=60)
    limit = 1000
    free = int(ROOM * limit)  # a long slice would leave less than ROOM of the limit free
    assert lease_terms(1, 1, pace, free=free, holders=1, limit=limit) == (1, 2)


def test_a_slice_cut_to_a_fair_share_lives_only_as_long_as_its_rest_needs():
    pace = Pace(rate=0.0, minute_rate=0.1, shortest_s=2, longest_s=60)
    size, lifetime = lease_terms(1, 1, pace, free=4000, holders=1000, limit=10_000)  # a fair share of 4
    assert size == 4000 // (FAIR_SHARE * 1000) < SLICE_REQUESTS
    assert lifetime == (size - 1) / 0.1  # its 3 other requests, at one every 10 s
    assert lease_terms(1, 1, pace, free=1000, holders=1000, limit=2000) == (1, 2)  # nothing to keep: the shortest
