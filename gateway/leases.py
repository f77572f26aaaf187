"""The shared side of rate limits: one Table row per (limit kind, key), in a partition of its own, that every
instance leases from.

A row holds `Buckets`, a JSON map from a bucket number (a 1/`BUCKETS_PER_S` second) to an amount. An instance's
live lease is counted in the bucket of its expiry; when the instance renews or returns it, that reservation is
replaced by what it really admitted, each amount in the bucket of its admission time. A lease is granted only
if the buckets still in the window plus the new amount fit the limit, so every 60 s window's admissions were
all counted together at the last grant among them (see `docs/limits.md`). `Holders` counts the live leases by
the second they expire in: how many instances share the budget, so slices can shrink with their number. An
instance that renews takes its old lease out as it adds the new one, so the count needs no instance names and
the row stays about 1 KiB however many instances lease from it.

Writes are conditional on the ETag of the row as this instance last wrote or read it (`IfNotModified`): an
instance alone with a key writes without reading first; one that shares the key reads first; a conflict reads
again and decides again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError

from .lazy_table import LazyTable, write_unless_changed

__all__ = [
    "BUCKETS_PER_S",
    "WINDOW_S",
    "LeaseContention",
    "LeaseTable",
    "Row",
    "active_holders",
    "add_to",
    "bucket_of",
    "counted",
    "decode_row",
    "encode_key",
    "holder_second",
    "merged",
    "merged_holders",
    "partition_of",
    "retry_after",
    "row_entity",
]

WINDOW_S = 60.0
BUCKETS_PER_S = 2  # bucket width 0.5 s: a finished amount is counted at most 0.5 s longer than its 60 s
PRUNE_MARGIN_S = 5.0  # instances' clocks differ a little: keep buckets a few seconds past the window
ACTIVE_S = 10.0  # an instance whose latest lease expired longer ago than this no longer shares the budget
_CONFLICT_RETRIES = 20
_KEY_BYTES = 1024  # Table keys are at most 1 KiB (UTF-16)
_FORBIDDEN = frozenset("/\\#?%")  # % too, so the encoding is reversible and two keys never meet


class LeaseContention(Exception):
    """Too many instances wrote the same row at once: not an outage, so never STORAGE_ERRORS."""


@dataclass(slots=True)
class Row:
    """The stored state of one (kind, key): amounts by bucket, live leases by expiry second, the latest limit."""

    buckets: dict[int, int] = field(default_factory=dict)
    holders: dict[int, int] = field(default_factory=dict)
    limit: int = 0


def encode_key(text: str) -> str:
    """A Table-safe, collision-free key: caller and model names come from outside.

    Characters Table keys forbid (/ \\ # ? and control characters) and % become %XX; an empty or over-long
    key becomes %H and a hash (a form the escaping never produces).
    """
    out = "".join(
        f"%{ord(ch):02X}" if ch in _FORBIDDEN or ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F else ch for ch in text
    )
    if not out or len(out.encode("utf-16-le")) > _KEY_BYTES:
        return "%H" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return out


def partition_of(kind: str, key: str) -> str:
    """A partition of its own for each (kind, key) row: a busy caller's row never shares Azure's per-partition
    target (about 2,000 operations/s) with another's. A kind never contains `|`, so the split is unambiguous."""
    return encode_key(f"{kind}|{key}")


def holder_second(expires: float) -> int:
    """The second a lease expiring at `expires` is counted in among the holders (rounded up)."""
    return math.ceil(expires)


def bucket_of(t: float) -> int:
    """The bucket an amount admitted (or a lease expiring) at `t` is counted in: rounded up, never early."""
    return math.ceil(t * BUCKETS_PER_S)


def _oldest_counted(now: float) -> float:
    """Buckets numbered above this are in the window ending at `now` (any part of them is within 60 s)."""
    return (now - WINDOW_S) * BUCKETS_PER_S


def add_to(buckets: dict[int, int], bucket: int, amount: int) -> None:
    """Adds `amount` to a bucket; a bucket that comes to zero is dropped."""
    total = buckets.get(bucket, 0) + amount
    if total:
        buckets[bucket] = total
    else:
        buckets.pop(bucket, None)


def counted(buckets: Mapping[int, int], now: float) -> int:
    """What counts against the limit at `now`: every bucket any part of which is within the last 60 s."""
    edge = _oldest_counted(now)
    return sum(amount for bucket, amount in buckets.items() if bucket > edge)


def merged(buckets: Mapping[int, int], delta: Mapping[int, int], now: float) -> dict[int, int]:
    """`buckets` plus `delta`, without buckets no instance can count any more; never below zero.

    A negative total means the row was lost (a wiped account) after the amount it returns was added: dropped.
    """
    return _merged(buckets, delta, (now - WINDOW_S - PRUNE_MARGIN_S) * BUCKETS_PER_S)


def merged_holders(holders: Mapping[int, int], delta: Mapping[int, int], now: float) -> dict[int, int]:
    """`holders` plus `delta` (a renewing instance's old lease out, its new one in), without expiries that no
    longer count (`active_holders`); never below zero (an old lease already pruned is simply gone)."""
    return _merged(holders, delta, now - ACTIVE_S - 1)


def _merged(buckets: Mapping[int, int], delta: Mapping[int, int], edge: float) -> dict[int, int]:
    out = {bucket: amount for bucket, amount in buckets.items() if bucket > edge}
    for bucket, change in delta.items():
        if bucket > edge and change:
            total = out.get(bucket, 0) + change
            if total > 0:
                out[bucket] = total
            else:
                out.pop(bucket, None)
    return out


def retry_after(buckets: Mapping[int, int], now: float, limit: int, amount: int) -> float:
    """Seconds until enough of the counted amount leaves the window for `amount` to fit (0 if it fits now).

    Returns may free budget sooner; an amount larger than the limit never fits, and gets a whole window.
    """
    if amount > limit:
        return WINDOW_S
    edge = _oldest_counted(now)
    live = sorted((bucket, value) for bucket, value in buckets.items() if bucket > edge)
    excess = sum(value for _, value in live) + amount - limit
    for bucket, value in live:
        if excess <= 0:
            break
        excess -= value
        if excess <= 0:
            return max(0.0, bucket / BUCKETS_PER_S + WINDOW_S - now)
    return 0.0


def active_holders(holders: Mapping[int, int], now: float) -> int:
    """How many instances share the budget now: this one (its own lease already taken out of `holders`) and
    those whose lease is live or expired within `ACTIVE_S`."""
    return 1 + sum(count for second, count in holders.items() if second > now - ACTIVE_S)


class LeaseTable:
    """The lease rows of one table; every storage call is counted in `operations`."""

    def __init__(self, table_client_factory: Callable[[], Any], instance_id: str) -> None:
        self._table = LazyTable(table_client_factory, self._one_call)
        self.instance_id = instance_id
        self.operations = 0
        self._cache: dict[tuple[str, str], tuple[Row, str | None]] = {}  # as last written or read, with ETag

    async def transact(self, kind: str, key: str, decide: Callable[[Row, bool], Row | None]) -> Row:
        """Writes `decide(row, fresh)` conditionally on the row it saw; returns the row as stored.

        `decide` sees the row as this instance last wrote it (`fresh` False) or as just read (`fresh` True),
        and returns the new row, or None for nothing to write. None from a cached row reads again first, so a
        decision to write nothing (a refusal) is never taken on stale data; a write needs no re-read, since
        its ETag condition fails if anyone wrote in between. `decide` must not change the row it is given.
        Only an instance alone with a key (its lease the only one counted) keeps the row it wrote: where others
        lease too, the next write would most likely fail its condition, so a read first costs one call, not two.
        """
        place = (partition_of(kind, key), encode_key(key))
        table = await self._table.client()
        cached = self._cache.get(place)
        for _ in range(_CONFLICT_RETRIES):
            fresh = cached is None
            if cached is None:
                cached = await self._read(table, place)
            row, etag = cached
            new = decide(row, fresh)
            if new is None:
                if fresh:
                    return row
                cached = None
                continue
            entity = row_entity(place, new, self.instance_id)
            try:
                self.operations += 1
                metadata = await write_unless_changed(table, entity, etag)
            except (ResourceModifiedError, ResourceExistsError):
                cached = None  # someone wrote in between: read theirs and decide again
                await asyncio.sleep(random.uniform(0, 0.005))  # jitter against lock-step retries, not a wait
                continue
            except ResourceNotFoundError as exc:  # the row or the table was deleted (a wiped account)
                if getattr(exc, "error_code", None) == "TableNotFound":
                    self._table.lost()
                    table = await self._table.client()
                cached = None
                continue
            if sum(new.holders.values()) > 1:
                self._cache.pop(place, None)
            else:
                self._cache[place] = (new, metadata.get("etag"))
            return new
        self._cache.pop(place, None)
        raise LeaseContention(f"{kind} {key!r}: too many concurrent lease updates")

    async def read(self, kind: str, key: str) -> Row | None:
        """The stored row (the operator view and tests); None if there is none."""
        row, etag = await self._read(await self._table.client(), (partition_of(kind, key), encode_key(key)))
        return None if etag is None else row

    def forget(self, kind: str, key: str) -> None:
        self._cache.pop((partition_of(kind, key), encode_key(key)), None)

    async def close(self) -> None:
        await self._table.close()

    def _one_call(self) -> None:
        self.operations += 1

    async def _read(self, table: Any, place: tuple[str, str]) -> tuple[Row, str | None]:
        self.operations += 1
        try:
            entity = await table.get_entity(*place)
        except ResourceNotFoundError as exc:
            if getattr(exc, "error_code", None) == "TableNotFound":
                self._table.lost()
                await self._table.client()
            return Row(), None
        self._cache[place] = (decode_row(entity), entity.metadata["etag"])
        return self._cache[place]


def decode_row(entity: Mapping[str, Any]) -> Row:
    """The row a stored entity holds (the inverse of `row_entity`)."""
    return Row(
        {int(b): int(a) for b, a in json.loads(entity.get("Buckets") or "{}").items()},
        {int(s): int(c) for s, c in json.loads(entity.get("Holders") or "{}").items()},
        int(entity.get("Limit") or 0),
    )


def row_entity(place: tuple[str, str], row: Row, instance_id: str) -> dict[str, Any]:
    """The entity that stores `row` at `place` (partition key, row key)."""
    return {
        "PartitionKey": place[0],
        "RowKey": place[1],
        "Buckets": json.dumps({str(b): a for b, a in sorted(row.buckets.items())}, separators=(",", ":")),
        "Holders": json.dumps({str(s): c for s, c in sorted(row.holders.items())}, separators=(",", ":")),
        # A string, not an Edm.Int32: token limits pass 2**31 (a 10B TPM pool).
        "Limit": str(row.limit),
        "UpdatedBy": instance_id,
        "UpdatedAt": time.time(),
    }
