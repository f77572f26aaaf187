"""Bucket maths, key encoding and layout of the lease rows, with time passed in (no storage)."""

import math

import pytest

from gateway.leases import (
    BUCKETS_PER_S,
    WINDOW_S,
    Row,
    active_holders,
    bucket_of,
    counted,
    decode_row,
    encode_key,
    holder_second,
    merged,
    merged_holders,
    partition_of,
    retry_after,
    row_entity,
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
    holders = {math.ceil(NOW - 100): 1, math.ceil(NOW - 1): 2, math.ceil(NOW - 9): 1, math.ceil(NOW - 11): 4}
    assert active_holders(holders, NOW) == 1 + 2 + 1  # expired within ACTIVE_S (10 s), and this instance
    assert active_holders({}, NOW) == 1


def test_a_renewing_instance_moves_its_lease_among_the_holders_instead_of_adding_one():
    old, new = holder_second(NOW + 1.5), holder_second(NOW + 31.2)
    holders = {old: 3, holder_second(NOW - 30): 2}
    assert merged_holders(holders, {old: -1}, NOW) | {new: 1} == {old: 2, new: 1}  # the long-expired pair pruned
    assert merged_holders({}, {holder_second(NOW - 50): -1}, NOW) == {}  # an old lease already pruned: gone


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


def test_every_key_and_kind_has_a_partition_of_its_own():
    places = {partition_of(kind, key) for kind in ("rpm", "tpm") for key in ("a", "b", "a|tpm", "")}
    assert len(places) == 8  # no two limits share Azure's per-partition target
    assert partition_of("rpm", "team/a") == "rpm|team%2Fa"
    assert partition_of("rpm", "x" * 600).startswith("%H")  # over-long: hashed, within a key's 1 KiB


def test_a_row_stays_small_however_many_instances_hold_it():
    """Azure states its per-partition target for 1 KiB entities, and refuses a string property over 64 KiB: the
    holders are counted by expiry second, not named, so 1,000 instances' leases take at most a minute's seconds."""
    holders: dict[int, int] = {}
    for i in range(1000):
        holders = merged_holders(holders, {holder_second(NOW + 2 + (i * 7919 % 58_000) / 1000): 1}, NOW)
    assert sum(holders.values()) == 1000 and len(holders) <= 60
    row = Row({b(NOW + i): 1 + i for i in range(120)}, holders, 10_000_000_000)
    entity = row_entity(("rpm|k", "k"), row, "0123456789abcdef")
    assert len(entity["Holders"]) < 1024 and len(entity["Buckets"]) < 2048
    back = decode_row(entity)
    assert (back.buckets, back.holders, back.limit) == (row.buckets, row.holders, row.limit)
