"""The breaker state machine and the failure window, with time passed in."""

from gateway.breakers import CLOSED, DISABLED, HALF_OPEN, OPEN, FailureWindow, SharedBreaker


def test_states_over_time():
    b = SharedBreaker()
    assert b.status(100) == CLOSED
    b = b.tripped_until(130, "429")
    assert (b.status(100), b.status(129.9), b.status(130)) == (OPEN, OPEN, HALF_OPEN)
    assert b.closed().status(130) == CLOSED


def test_open_until_only_extends():
    b = SharedBreaker().tripped_until(200, "first")
    assert b.tripped_until(150, "earlier").open_until == 200
    assert b.tripped_until(250, "later").open_until == 250


def test_merge_keeps_the_later_open_until_but_takes_the_rest_from_the_newer_state():
    local = SharedBreaker().tripped_until(300, "local 429")
    stored = SharedBreaker(open_until=200, tripped=True, disabled=True)
    merged = local.merged(stored)
    assert (merged.open_until, merged.disabled, merged.reason) == (300, True, "local 429")
    assert SharedBreaker().merged(stored) == stored  # nothing local to keep
    assert local.merged(SharedBreaker(open_until=400, tripped=True)).open_until == 400


def test_one_trial_at_a_time_and_claims_lapse():
    b = SharedBreaker().tripped_until(100, "429")
    assert b.trial_free(110, "i1") and b.trial_free(110, "i2")
    claimed = b.claimed("i1", 140)
    assert claimed.trial_free(110, "i1") and not claimed.trial_free(110, "i2")
    assert claimed.trial_free(140, "i2")  # the holder died: the claim lapses
    assert claimed.tripped_until(200, "again").trial_owner == ""  # re-opening clears the claim


def test_disabled_wins_over_everything():
    assert SharedBreaker(disabled=True).status(0) == DISABLED
    assert SharedBreaker(disabled=True, open_until=10, tripped=True).status(0) == DISABLED


def test_failure_window_slides_and_restarts_after_tripping():
    w = FailureWindow(threshold=3, window_s=10)
    assert not w.add(0) and not w.add(5)
    assert not w.add(10.5)  # the failure at 0 has left the window
    assert w.add(12)  # 5, 10.5, 12
    assert len(w) == 0 and not w.add(13)


def test_an_open_until_within_a_second_of_the_stored_one_is_not_rewritten():
    stored = SharedBreaker().tripped_until(100.0, "429")
    assert stored.extended_to(100.9, "429") is None  # a storm's near-equal open-untils: no write
    assert stored.extended_to(101.0, "429") is None
    assert stored.extended_to(101.5, "429").open_until == 101.5  # later than that: extended
    assert SharedBreaker().extended_to(50.0, "429").open_until == 50.0  # closed: always written
