"""The state table's layout: where each row lives, what it means, and this instance's copy of all of them.

Every row (a breaker, a probe result, a suspension, a profile override) lives in a partition of its own, so
the instances re-reading one changed row never load the partition of another (Azure's target is about 2,000
entities/s per partition). A row's partition key starts with its bucket, one of `BUCKETS` chosen by a
stable hash of its kind and key. The version entity (state_versions.py) keeps one counter per bucket, and a
reader re-reads a bucket whose counter moved with one range query over the partition keys of that bucket:
that finds the bucket's new rows and misses its deleted ones, which a point read per row could not.

Rows written before this layout (partition = kind, row key = key) are still understood by a full read, and
migrated by the store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .breakers import SharedBreaker
from .leases import encode_key

__all__ = [
    "BREAKER", "BUCKETS", "CALLER", "HEALTH", "KINDS", "PROFILE", "Health", "Row", "RowView", "Snapshot",
    "breaker_entity", "bucket_filter", "bucket_of", "decode", "entity", "health_entity", "partition_key",
]  # fmt: skip

log = logging.getLogger("gateway.state")

BREAKER, HEALTH, CALLER, PROFILE = "breaker", "health", "caller", "profile"
KINDS = frozenset((BREAKER, HEALTH, CALLER, PROFILE))  # also the partition keys of the old layout
# Counters in the version entity: few enough to keep it near 1 KiB (it is read by every instance every
# interval, and Azure's per-partition target is stated for 1 KiB entities); many enough that a changed row
# rarely shares its bucket (and so its re-read) with more than one other.
BUCKETS = 64
_KEY_BYTES = 1024  # a Table key is at most 1 KiB (UTF-16)


@dataclass(frozen=True, slots=True)
class Health:
    """The last probe of an APIM-mode backend."""

    ok: bool
    latency_ms: float | None
    probed_at: float
    error: str = ""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The whole shared state, as this instance knows it."""

    breakers: dict[str, SharedBreaker]
    health: dict[str, Health]
    suspended: dict[str, str]  # caller -> reason
    profiles: dict[str, dict[str, Any]]  # profile name -> the operator's override (JSON object)


@dataclass(frozen=True, slots=True)
class Row:
    """One decoded row: its kind, its key, and what it says (None: a row that says nothing, e.g. resumed)."""

    kind: str
    key: str
    value: Any


def bucket_of(kind: str, key: str) -> int:
    """A row's bucket: stable across processes and versions (crc32, not Python's salted hash)."""
    return zlib.crc32(f"{kind}|{key}".encode("utf-8", "surrogatepass")) % BUCKETS


def partition_key(kind: str, key: str) -> str:
    """`bb|kind|key`: the bucket first (hex), so one range query finds a bucket's rows; a partition per row."""
    prefix = f"{bucket_of(kind, key):02x}|{kind}|"
    encoded = encode_key(key)
    if len((prefix + encoded).encode("utf-16-le")) > _KEY_BYTES:
        encoded = "%H" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    return prefix + encoded


def bucket_filter(bucket: int) -> str:
    """The partition keys of one bucket: from `bb|` up to, not including, `bb}` (`}` follows `|` in ASCII)."""
    return f"PartitionKey ge '{bucket:02x}|' and PartitionKey lt '{bucket:02x}}}'"


def decode(entity: Mapping[str, Any]) -> Row | None:
    """A stored entity as a row of either layout; None for an entity that is not a state row."""
    kind, key = entity.get("Kind"), entity.get("Key")
    if not (isinstance(kind, str) and isinstance(key, str)):
        kind, key = entity.get("PartitionKey"), entity.get("RowKey")  # the old layout
    if kind not in KINDS or not isinstance(key, str):
        return None
    return Row(kind, key, _value(kind, key, entity))


def _value(kind: str, key: str, entity: Mapping[str, Any]) -> Any:
    if kind == BREAKER:
        return SharedBreaker(
            open_until=float(entity.get("OpenUntil", 0.0)),
            tripped=bool(entity.get("Tripped", False)),
            disabled=bool(entity.get("Disabled", False)),
            trial_owner=entity.get("TrialOwner", ""),
            trial_until=float(entity.get("TrialUntil", 0.0)),
            reason=entity.get("Reason", ""),
        )
    if kind == HEALTH:
        return Health(
            bool(entity.get("Ok")), entity.get("LatencyMs"), float(entity.get("ProbedAt", 0)), entity.get("Error", "")
        )
    if kind == CALLER:
        return str(entity.get("Reason", "")) if entity.get("Suspended") else None
    try:
        override = json.loads(entity.get("Override", "{}"))
    except ValueError:
        log.error("Ignoring the unreadable override of profile %s", key)
        return None
    return override if isinstance(override, dict) else None


def entity(kind: str, key: str, properties: Mapping[str, Any], instance_id: str) -> dict[str, Any]:
    """A row of the current layout: its own partition, its kind and key spelt out (the key may be encoded)."""
    return {
        "PartitionKey": partition_key(kind, key), "RowKey": "", "Kind": kind, "Key": key, **properties,
        "UpdatedBy": instance_id,
    }  # fmt: skip


def breaker_entity(key: str, state: SharedBreaker, instance_id: str, now: float) -> dict[str, Any]:
    properties = {
        "OpenUntil": float(state.open_until), "Tripped": state.tripped, "Disabled": state.disabled,
        "TrialOwner": state.trial_owner, "TrialUntil": float(state.trial_until), "Reason": state.reason[:500],
        "UpdatedAt": now,
    }  # fmt: skip
    return entity(BREAKER, key, properties, instance_id)


def health_entity(key: str, health: Health, instance_id: str) -> dict[str, Any]:
    properties = {
        "Ok": health.ok, "LatencyMs": health.latency_ms, "ProbedAt": health.probed_at, "Error": health.error[:500],
    }  # fmt: skip
    return entity(HEALTH, key, properties, instance_id)


class RowView:
    """This instance's copy of the table, by bucket, so a re-read bucket replaces exactly what it covers."""

    def __init__(self) -> None:
        self._buckets: dict[int, dict[tuple[str, str], Any]] = {}
        self._snapshot: Snapshot | None = None

    def replace_all(self, rows: Iterable[Row]) -> bool:
        """What a full read found (a later row of the same kind and key wins); True if anything differs."""
        buckets: dict[int, dict[tuple[str, str], Any]] = {}
        for row in rows:
            buckets.setdefault(bucket_of(row.kind, row.key), {})[(row.kind, row.key)] = row.value
        changed = buckets != self._buckets
        self._buckets = buckets
        if changed:
            self._snapshot = None
        return changed

    def replace_bucket(self, bucket: int, rows: Iterable[Row]) -> bool:
        """What a re-read of one bucket found; True if it differs from before."""
        fresh = {(row.kind, row.key): row.value for row in rows if bucket_of(row.kind, row.key) == bucket}
        if fresh == self._buckets.get(bucket, {}):
            return False
        self._buckets[bucket] = fresh
        self._snapshot = None
        return True

    def put(self, kind: str, key: str, value: Any) -> None:
        """A row this instance just wrote: its copy must not wait for the bucket's re-read to show it."""
        self._buckets.setdefault(bucket_of(kind, key), {})[(kind, key)] = value
        self._snapshot = None

    def snapshot(self) -> Snapshot:
        """The rows as the pool and governance use them (built once per change)."""
        if self._snapshot is None:
            out = Snapshot({}, {}, {}, {})
            by_kind: dict[str, dict[str, Any]] = {
                BREAKER: out.breakers, HEALTH: out.health, CALLER: out.suspended, PROFILE: out.profiles,
            }  # fmt: skip
            for place in self._buckets.values():
                for (kind, key), value in place.items():
                    if value is not None:
                        by_kind[kind][key] = value
            self._snapshot = out
        return self._snapshot
