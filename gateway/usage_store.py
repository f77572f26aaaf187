"""Usage per minute, summed over every instance, for `GET /gateway/usage` and the operator console.

Nothing is written per request. `UsageCounters`, a usage-recorder sink, adds each record to an in-memory row
per (minute, caller, model, backend, deployment); a background task writes the changed rows at most once per
GATEWAY_USAGE_FLUSH_S (10 s), and stops when nothing changed, so an idle instance makes no storage calls.

Rows are per instance (`UsageTable`): PartitionKey the UTC minute (`YYYYMMDDHHMM`), RowKey the instance and a
digest of the dimensions, each row holding that instance's running totals for that minute. A flush replaces
its rows whole (upsert REPLACE, in batches of one partition), so a retried or repeated flush can never count
twice and instances never contend for a row: no ETag read-modify-write, no conflicts under scale-out. A query
writes nothing: it reads the window's partitions (one range query) and sums over instances, this instance's
rows taken from memory (so the usage API and the console never make an instance flush sooner). The price is one
row per instance and dimension set per minute; docs/architecture.md compares this with shared ETag-merged rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableTransactionError, UpdateMode

from .lazy_table import LazyTable
from .state_sync import STORAGE_ERRORS
from .usage import UsageRecord, outcome_of

__all__ = ["DIMENSIONS", "RETENTION_DAYS", "Counts", "UsageCounters", "UsageTable", "minute_key"]

log = logging.getLogger("gateway.usage_store")

DIMENSIONS = ("caller", "model", "backend", "deployment")
# Minutes kept in memory after a flush. A record is stamped when its request started (a long stream's record
# comes minutes later), and a flush replaces the instance's row whole: a minute forgotten too early would lose
# what was counted before. Nothing runs this long (HTTP answers: 230 s; an activity: 10 minutes).
KEEP_MINUTES = 60
RETENTION_DAYS = 32  # the usage API's longest window is 31 days; housekeeping deletes older rows
_BATCH = 100  # operations per Table transaction (the service's limit)

Key = tuple[int, str, str, str, str]  # (epoch minute, caller, model, backend, deployment)


@dataclass(slots=True)
class Counts:
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    failed: int = 0  # no usable answer (failed, expired, cancelled)
    throttled: int = 0  # refused by a backend's or the caller's limit

    def add(self, record: UsageRecord) -> None:
        self.requests += 1
        if (usage := record.usage) is not None:
            self.input_tokens += usage.prompt_tokens
            self.output_tokens += usage.completion_tokens
            self.cached_tokens += usage.cached_tokens or 0
        outcome = outcome_of(record)
        if outcome.startswith("throttled"):
            self.throttled += 1
        elif outcome in ("failed", "expired", "cancelled"):
            self.failed += 1

    def merge(self, other: Counts) -> None:
        for f in _FIELDS:
            setattr(self, f, getattr(self, f) + getattr(other, f))

    def as_dict(self) -> dict[str, int]:
        return {f: getattr(self, f) for f in _FIELDS}


_FIELDS = tuple(f.name for f in fields(Counts))
_COLUMNS = {f: "".join(part.title() for part in f.split("_")) for f in _FIELDS}  # input_tokens -> InputTokens


def minute_key(minute: int) -> str:
    """The partition of an epoch minute: `YYYYMMDDHHMM` (UTC), which sorts as time does."""
    return time.strftime("%Y%m%d%H%M", time.gmtime(minute * 60))


class UsageTable:
    """The shared table: this instance's rows written whole, every instance's rows read by minute range."""

    def __init__(self, table_client_factory: Callable[[], Any], instance_id: str) -> None:
        self._table = LazyTable(table_client_factory, self._one_call)
        self.instance_id = instance_id
        self.operations = 0

    async def write(self, rows: dict[Key, Counts]) -> None:
        table = await self._table.client()
        by_minute: dict[int, list[tuple[str, dict[str, Any], dict[str, Any]]]] = {}
        for key, counts in rows.items():
            by_minute.setdefault(key[0], []).append(("upsert", self._entity(key, counts), {"mode": UpdateMode.REPLACE}))
        for operations in by_minute.values():
            for start in range(0, len(operations), _BATCH):
                self.operations += 1
                try:
                    await table.submit_transaction(operations[start : start + _BATCH])
                except (ResourceNotFoundError, TableTransactionError) as exc:
                    if getattr(exc, "error_code", None) != "TableNotFound":
                        raise
                    self._table.lost()  # the table is gone (a new or wiped account): create it, write again
                    table = await self._table.client()
                    self.operations += 1
                    await table.submit_transaction(operations[start : start + _BATCH])

    async def read(self, first_minute: int, last_minute: int) -> list[tuple[Key, str, Counts]]:
        """Every instance's rows of the minutes [first, last]: (key, instance, counts)."""
        table = await self._table.client()
        self.operations += 1
        query = "PartitionKey ge @first and PartitionKey le @last"
        window = {"first": minute_key(first_minute), "last": minute_key(last_minute)}
        out = []
        with contextlib.suppress(ResourceNotFoundError):  # no table yet: no usage yet
            async for e in table.query_entities(query, parameters=window):
                key = (int(e["Minute"]), e["Caller"], e["Model"], e["Backend"], e["Deployment"])
                counts = Counts(**{f: int(e.get(column) or 0) for f, column in _COLUMNS.items()})
                out.append((key, str(e.get("Instance", "")), counts))
        return out

    async def purge(self, before_minute: int) -> int:
        """Deletes every instance's rows of the minutes before `before_minute` (housekeeping); returns how many."""
        table = await self._table.client()
        self.operations += 1
        old: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        with contextlib.suppress(ResourceNotFoundError):
            query = table.query_entities(
                "PartitionKey lt @before",
                parameters={"before": minute_key(before_minute)},
                select=["PartitionKey", "RowKey"],
            )
            async for e in query:
                old.setdefault(e["PartitionKey"], []).append(
                    ("delete", {"PartitionKey": e["PartitionKey"], "RowKey": e["RowKey"]})
                )
        for operations in old.values():
            for start in range(0, len(operations), _BATCH):
                self.operations += 1
                await table.submit_transaction(operations[start : start + _BATCH])
        return sum(len(ops) for ops in old.values())

    async def close(self) -> None:
        await self._table.close()

    def _entity(self, key: Key, counts: Counts) -> dict[str, Any]:
        minute, *dims = key
        digest = hashlib.sha256("\0".join(dims).encode()).hexdigest()[:24]
        entity: dict[str, Any] = {
            "PartitionKey": minute_key(minute),
            "RowKey": f"{self.instance_id}|{digest}",  # names come from outside: never in the key itself
            "Minute": minute,
            "Instance": self.instance_id,
            **{name.title(): value for name, value in zip(DIMENSIONS, dims, strict=True)},
        }
        entity.update({column: getattr(counts, f) for f, column in _COLUMNS.items()})
        return entity

    def _one_call(self) -> None:
        self.operations += 1


class UsageCounters:
    """The sink: per-minute counters in memory, flushed in the background at most once per interval."""

    def __init__(self, table: UsageTable, flush_interval_s: float, clock: Callable[[], float] = time.time) -> None:
        self.table = table
        self.flush_interval_s = flush_interval_s
        self._clock = clock
        self._rows: dict[Key, Counts] = {}
        self._dirty: set[Key] = set()
        self._task: asyncio.Task[None] | None = None
        self._last_flush = -float("inf")
        self._lock = asyncio.Lock()
        self.flushes = 0
        self.last_flush_at: float | None = None  # time.monotonic() when the last successful write started

    def __call__(self, record: UsageRecord) -> None:
        key = (
            int(record.timestamp // 60),
            record.caller or "",
            record.model or "",
            record.backend or "",
            record.deployment or "",
        )
        counts = self._rows.get(key)
        if counts is None:
            counts = self._rows[key] = Counts()
        counts.add(record)
        self._dirty.add(key)
        task = self._task
        if task is None or task.done():
            self._start_flusher()

    def _start_flusher(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # recorded outside an event loop: the next query or close flushes it
            return
        self._task = loop.create_task(self._flush_soon())

    async def _flush_soon(self) -> None:
        """Flushes the changed rows, no sooner than one interval after the previous flush, until none change."""
        while self._dirty:
            await asyncio.sleep(max(0.0, self._last_flush + self.flush_interval_s - time.monotonic()))
            try:
                await self.flush()
            except STORAGE_ERRORS as exc:  # storage is down: keep the rows, try again one interval later
                log.warning("Could not write usage counters: %s", type(exc).__name__)

    async def idle(self) -> None:
        """Waits until the background flusher has nothing left to write (tests, and before closing)."""
        while (task := self._task) is not None and not task.done():
            await asyncio.shield(task)

    async def flush(self) -> None:
        """Writes every changed row now (whole: a row's totals so far); forgets minutes that can no longer change."""
        async with self._lock:
            self._last_flush = time.monotonic()
            if not self._dirty:
                return
            keys, self._dirty = self._dirty, set()
            try:
                await self.table.write({k: self._rows[k] for k in keys})
            except BaseException:
                self._dirty |= keys
                raise
            self.flushes += 1
            self.last_flush_at = self._last_flush
            current = int(self._clock() // 60)
            for key in [k for k in self._rows if k[0] < current - KEEP_MINUTES and k not in self._dirty]:
                del self._rows[key]  # no request or activity outlives this: those minutes are final

    async def query(self, first_minute: int, last_minute: int) -> tuple[list[tuple[Key, Counts]], int]:
        """Rows of the window summed over instances, and how many instances counted any. Writes nothing.

        The other instances' rows are read from the table; this instance's own come from memory, in place of
        its stored rows (memory holds each row whole, so it is what the next flush will write: nothing counted
        twice, and its unflushed traffic counted once). A stored row of this instance that memory no longer
        holds (a minute forgotten after its flush) is taken from the table.
        """
        stored = await self.table.read(first_minute, last_minute)
        mine = {k: c for k, c in self._rows.items() if first_minute <= k[0] <= last_minute}  # after the read
        me = self.table.instance_id
        summed: dict[Key, Counts] = {}
        instances = {me} if mine else set()
        for key, instance, counts in stored:
            if instance == me and key in mine:
                continue
            instances.add(instance)
            summed.setdefault(key, Counts()).merge(counts)
        for key, counts in mine.items():
            summed.setdefault(key, Counts()).merge(counts)
        return list(summed.items()), len(instances)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, *STORAGE_ERRORS):
                await task
        with contextlib.suppress(*STORAGE_ERRORS):
            await self.flush()
        await self.table.close()


def group(rows: Iterable[tuple[Key, Counts]], by: tuple[str, ...], per_minute: bool) -> list[dict[str, Any]]:
    """Rows summed by the chosen dimensions (and minute), largest token use first."""
    index = {name: i + 1 for i, name in enumerate(DIMENSIONS)}
    grouped: dict[tuple[Any, ...], Counts] = {}
    for key, counts in rows:
        group_key = ((key[0],) if per_minute else ()) + tuple(key[index[d]] for d in by)
        grouped.setdefault(group_key, Counts()).merge(counts)
    out = []
    for group_key, counts in grouped.items():
        row: dict[str, Any] = {}
        if per_minute:
            row["minute"] = time.strftime("%Y-%m-%dT%H:%M:00Z", time.gmtime(int(group_key[0]) * 60))
        row.update(zip(by, group_key[1:] if per_minute else group_key, strict=True))
        row.update(counts.as_dict())
        out.append(row)
    out.sort(key=lambda r: (r.get("minute", ""), -(r["input_tokens"] + r["output_tokens"]), -r["requests"]))
    return out
