"""The version entity: one small row every instance reads each refresh interval, instead of the whole table.

It holds a counter per bucket of state rows (state_rows.py) and an epoch. A writer changes a row first, then
bumps its bucket's counter with an ETag-conditional merge, so a concurrent bump makes it read again and bump
on top: no bump is ever lost, and a reader that sees a counter has already missed no row written before it.
A reader compares the counters with the ones it last saw and re-reads only the buckets that moved. The
epoch is drawn when the entity is created: a new epoch means a new or wiped table, whose counters start
again, so the reader reads everything instead of trusting a coincidence of numbers.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .state_rows import BUCKETS

__all__ = ["ABSENT", "PARTITION", "ROW", "Versions", "bump_entity", "changed_buckets", "counter_name", "parse"]

PARTITION, ROW = "versions", "v"  # no '|' in the partition key: never mistaken for a state row


def counter_name(bucket: int) -> str:
    """`b00` … `b3f`: short names keep the entity near 1 KiB."""
    return f"b{bucket:02x}"


@dataclass(frozen=True, slots=True)
class Versions:
    """The counters as read, with the ETag a bump must match; the epoch "" means no entity yet."""

    epoch: str
    counters: Mapping[int, int] = field(default_factory=dict)
    etag: str | None = None

    def get(self, bucket: int) -> int:
        return self.counters.get(bucket, 0)


ABSENT = Versions("")


def parse(entity: Mapping[str, Any] | None) -> Versions:
    """The stored entity (None: there is none yet) as counters by bucket."""
    if entity is None:
        return ABSENT
    counters = {}
    for bucket in range(BUCKETS):
        value = entity.get(counter_name(bucket))
        if isinstance(value, int) and not isinstance(value, bool):
            counters[bucket] = value
    metadata = getattr(entity, "metadata", None) or {}
    return Versions(str(entity.get("Epoch", "")) or "?", counters, metadata.get("etag"))


def changed_buckets(seen: Versions | None, now: Versions) -> set[int] | None:
    """The buckets to re-read; None when only a full read will do (never read, or another epoch). A reader
    that found no entity has every counter at 0: the first bump creates the entity, and only its buckets moved."""
    if seen is None or (seen.epoch != now.epoch and seen.epoch != ""):
        return None
    return {b for b in set(seen.counters) | set(now.counters) if seen.get(b) != now.get(b)}


def bump_entity(current: Versions, bucket: int) -> dict[str, Any]:
    """What a bump writes: the one counter, one up (a merge leaves the others alone); a new entity gets an epoch."""
    entity: dict[str, Any] = {"PartitionKey": PARTITION, "RowKey": ROW, counter_name(bucket): current.get(bucket) + 1}
    if current.etag is None:
        entity["Epoch"] = uuid.uuid4().hex[:12]
    return entity
