"""Bucket maths and key encoding of the lease rows, with time passed in (no storage)."""

import pytest

from gateway.leases import (
    BUCKETS_PER_S,
    WINDOW_S,
    active_holders,
    bucket_of,
    counted,
    encode_key,
    merged,
    retry_after,
)

NOW = 1_800_000_000.0


def b(t: float) -> int:
    return bucket_of(t)


def test_buckets_round_up_so_an_amount_is_never_counted_early():
    assert bucket_of(NOW) == NOW * BUCKETS_PER_S
    assert bucket_of(NOW + 0.01) == NOW * BUCKETS_PER_S + 1
    assert bucket_of(NOW + 1 / BUCKETS_PER_S) == NOW * BUCKETS_PER_S + 1


def test_a_bucket_counts_while_any_part_of_it_is_within_the_window():
    buckets = {b(NOW): 5, b(NOW + 0.2): 7, b(NOW + 30): 11}
    assert counted(buckets, NOW + 30) == 23
    # Amounts admitted at NOW + 0.2 may have been admitted as late as the end of their bucket: still counted.
    edge_of_second = b(NOW + 0.2) / BUCKETS_PER_S
    assert counted(buckets, edge_of_second + WINDOW_S - 0.001) == 7 + 11
    assert counted(buckets, edge_of_second + WINDOW_S) == 11
    assert counted(buckets, NOW + 30 + WINDOW_S) == 0


def test_merged_adds_prunes_and_never_goes_below_zero():
    old, mid, new = b(NOW - 100), b(NOW - 10), b(NOW + 1)
    out = merged({old: 3, mid: 4, new: 5}, {mid: -4, new: 2, b(NOW - 200): 9, b(NOW + 2): -3}, NOW)
    assert out == {new: 7}  # old pruned, mid returned to zero, the lost bucket's return dropped
    original = {mid: 1}
    merged(original, {mid: 5}, NOW)
    assert original == {mid: 1}  # a copy: decisions may run again on the same row


def test_retry_after_is_when_enough_of_the_oldest_amounts_leave_the_window():
    buckets = {b(NOW): 4, b(NOW + 10): 3, b(NOW + 20): 3}
    now = NOW + 30
    assert retry_after(buckets, now, 10, 0) == 0.0
    assert retry_after(buckets, now, 10, 1) == pytest.approx(30.0)  # NOW's 4 leave at NOW + 60
    assert retry_after(buckets, now, 10, 5) == pytest.approx(40.0)  # needs NOW + 10's 3 as well
    assert retry_after(buckets, now, 12, 2) == 0.0
    assert retry_after(buckets, now, 10, 11) == WINDOW_S  # more than the limit never fits


def test_active_holders_counts_recent_leases_and_this_instance_once():
    holders = {"me": NOW - 100, "a": NOW - 1, "b": NOW - 9, "c": NOW - 11}
    assert active_holders(holders, NOW, "me") == 3
    assert active_holders({}, NOW, "me") == 1


def test_keys_from_outside_are_escaped_without_collisions():
    names = ["team/a", "team%2Fa", "a\\b", "q?x#y", "tab\tnew\nline", "del\x7f", "c1\x85", "plain-name_1.ü"]
    encoded = [encode_key(n) for n in names]
    assert len(set(encoded)) == len(names)
    for key in encoded:
        assert not any(ch in "/\\#?" or ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in key)
    assert encode_key("plain-name_1.ü") == "plain-name_1.ü"  # readable when nothing needs escaping
    assert encode_key("team/a") == "team%2Fa" and encode_key("team%2Fa") == "team%252Fa"
    long = "x" * 600
    assert encode_key(long).startswith("%H") and encode_key(long) != encode_key(long + "y")
    assert len(encode_key(long).encode("utf-16-le")) <= 1024
    assert encode_key("").startswith("%H")
