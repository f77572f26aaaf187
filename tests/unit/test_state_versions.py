"""The version entity and the table layout it indexes: which buckets a reader re-reads, what a bump writes,
where rows live, and this instance's copy of them. Pure: no storage."""

from __future__ import annotations

import pytest

from gateway import state_rows as rows
from gateway.breakers import SharedBreaker
from gateway.state_rows import BREAKER, BUCKETS, CALLER, HEALTH, PROFILE, Health, Row, RowView, bucket_of, partition_key
from gateway.state_versions import ABSENT, Versions, bump_entity, changed_buckets, counter_name, parse


class Stored(dict):
    """An entity as the SDK returns it: a dict with `metadata`."""

    def __init__(self, values: dict, etag: str = 'W/"1"') -> None:
        super().__init__(values)
        self.metadata = {"etag": etag}


def test_a_reader_that_never_read_or_sees_another_epoch_reads_everything():
    now = Versions("e1", {3: 2})
    assert changed_buckets(None, now) is None
    assert changed_buckets(Versions("e0", {3: 2}), now) is None  # a wiped table: its counters start again
    assert changed_buckets(Versions("e1", {3: 2}), ABSENT) is None  # the table was wiped
    assert changed_buckets(ABSENT, ABSENT) == set()  # nothing written yet, nothing to read


def test_the_first_bump_moves_only_its_own_bucket_for_a_reader_that_found_no_entity():
    assert changed_buckets(ABSENT, Versions("e1", {3: 1})) == {3}


def test_only_moved_counters_are_re_read():
    seen = Versions("e", {1: 4, 2: 7, 9: 1})
    assert changed_buckets(seen, Versions("e", {1: 4, 2: 7, 9: 1})) == set()
    assert changed_buckets(seen, Versions("e", {1: 5, 2: 7, 9: 1, 40: 1})) == {1, 40}  # moved, and new
    assert changed_buckets(seen, Versions("e", {1: 4, 2: 7})) == {9}  # gone (a counter never should; still read)


def test_parse_takes_counters_epoch_and_etag_and_ignores_the_rest():
    stored = Stored({"PartitionKey": "versions", "RowKey": "v", "Epoch": "abc", counter_name(0): 3,
                     counter_name(63): 9, "b99": 5, counter_name(5): "x", counter_name(6): True}, etag="W/\"7\"")
    v = parse(stored)
    assert (v.epoch, dict(v.counters), v.etag) == ("abc", {0: 3, 63: 9}, 'W/"7"')
    assert parse(None) == ABSENT and ABSENT.get(12) == 0


def test_a_bump_writes_one_counter_one_up_and_only_a_new_entity_draws_an_epoch():
    current = Versions("abc", {4: 41, 5: 2}, etag='W/"3"')
    assert bump_entity(current, 4) == {"PartitionKey": "versions", "RowKey": "v", counter_name(4): 42}
    assert bump_entity(current, 9)[counter_name(9)] == 1
    first, again = bump_entity(ABSENT, 4), bump_entity(ABSENT, 4)
    assert first[counter_name(4)] == 1 and first["Epoch"] and first["Epoch"] != again["Epoch"]


def test_buckets_are_stable_and_spread():
    # Pinned: every instance, of every version, must put a row in the same bucket (crc32, not salted hash()).
    assert bucket_of(BREAKER, "weu:gpt-4o-mini") == 55
    used = {bucket_of(CALLER, f"caller-{i}") for i in range(500)}
    assert len(used) == BUCKETS  # 500 keys reach every bucket


def test_a_bucket_filter_selects_exactly_the_partitions_of_its_bucket():
    keys = [(kind, f"{kind}-{i}") for kind in (BREAKER, HEALTH, CALLER, PROFILE) for i in range(200)]
    keys += [(BREAKER, "weu:gpt-4o"), (CALLER, "app:" + "z" * 40), (CALLER, "x|y}"), (CALLER, "~~~")]
    for bucket in (0, 9, 10, 15, 16, 63):
        low, high = f"{bucket:02x}|", f"{bucket:02x}}}"
        assert rows.bucket_filter(bucket) == f"PartitionKey ge '{low}' and PartitionKey lt '{high}'"
        selected = {k for k in keys if low <= partition_key(*k) < high}  # the service's string order
        assert selected == {k for k in keys if bucket_of(*k) == bucket}
    assert partition_key("versions", "v")[:3] != "versions"[:3]  # (the version entity is never a row)


def test_partition_keys_are_table_safe_whatever_the_key():
    for key in ("a/b", "a#b?c", "x" * 2000, "", "tab\there"):
        pk = partition_key(CALLER, key)
        assert not set("/\\#?") & set(pk) and all(ord(c) >= 0x20 for c in pk)
        assert len(pk.encode("utf-16-le")) <= 1024
    assert partition_key(CALLER, "x" * 2000) != partition_key(CALLER, "x" * 2001)


def test_rows_decode_from_either_layout():
    breaker = SharedBreaker(open_until=100.0, tripped=True, reason="429")
    current = rows.decode(rows.breaker_entity("weu:gpt-4o", breaker, "A", 1.0))
    assert current == Row(BREAKER, "weu:gpt-4o", breaker)
    old_layout = {"PartitionKey": "breaker", "RowKey": "weu", "OpenUntil": 100.0, "Tripped": True, "Reason": "429"}
    legacy = rows.decode(old_layout)
    assert legacy == Row(BREAKER, "weu", breaker)
    suspension = rows.entity(CALLER, "team-a", {"Suspended": True, "Reason": "r"}, "A")
    assert rows.decode(suspension) == Row(CALLER, "team-a", "r")
    assert rows.decode(rows.entity(PROFILE, "gold", {"Override": "{not json"}, "A")) == Row(PROFILE, "gold", None)
    assert rows.decode({"PartitionKey": "versions", "RowKey": "v", "b00": 1}) is None


def test_the_view_replaces_what_a_read_covers_and_says_whether_anything_changed():
    view = RowView()
    suspended = Row(CALLER, "team-a", "abuse")
    probe = Row(HEALTH, "apim1", Health(True, 12.0, 5.0))
    assert view.replace_all([suspended, probe]) is True
    assert view.snapshot().suspended == {"team-a": "abuse"} and view.snapshot().health["apim1"].ok
    assert view.replace_all([probe, suspended]) is False  # the same rows: no change, the same snapshot
    bucket = bucket_of(CALLER, "team-a")
    assert view.replace_bucket(bucket, [suspended]) is False
    assert view.replace_bucket(bucket, []) is True  # resumed: the row is gone from its bucket
    assert view.snapshot().suspended == {} and "apim1" in view.snapshot().health  # other buckets untouched


def test_a_full_read_prefers_the_later_row_of_one_kind_and_key():
    view = RowView()
    view.replace_all([Row(CALLER, "team-a", "old layout"), Row(CALLER, "team-a", "current")])
    assert view.snapshot().suspended == {"team-a": "current"}


@pytest.mark.parametrize("kind", [BREAKER, HEALTH, CALLER, PROFILE])
def test_every_kind_lands_in_its_own_snapshot_field(kind):
    value = {BREAKER: SharedBreaker(tripped=True), HEALTH: Health(False, None, 1.0), CALLER: "why",
             PROFILE: {"rpm": 5}}[kind]
    view = RowView()
    view.replace_all([Row(kind, "k", value)])
    snap = view.snapshot()
    fields = {BREAKER: snap.breakers, HEALTH: snap.health, CALLER: snap.suspended, PROFILE: snap.profiles}
    assert fields[kind] == {"k": value} and all(not f for k, f in fields.items() if k != kind)
