"""Virtual time and an in-memory Table service, so the scale model can run the gateway's own code at 1,000 instances.

`VirtualLoop` is an asyncio event loop whose clock jumps to the next timer instead of waiting: minutes of
simulated traffic run in seconds, deterministically. `SimTable` answers the Table client calls the stores make
(create_table, get_entity, create_entity, update_entity with an ETag condition), each applied atomically after a
simulated round trip. It counts every call by partition
and by simulated second, and refuses what Azure refuses: a string property over 64 KiB, an entity over 1 MiB.

This is a model of Azure Table Storage (latency and ETag semantics only), used by bench/sim_leases.py to drive the
real `gateway.limiter.Limiter`; the gateway's tests use Azurite instead.
"""

from __future__ import annotations

import asyncio
import random
import selectors
from collections import defaultdict
from typing import Any

from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceModifiedError, ResourceNotFoundError

__all__ = ["MAX_STRING_CHARS", "SimStorage", "VirtualLoop"]

MAX_STRING_CHARS = 32 * 1024  # a string property is at most 64 KiB of UTF-16 [Table service data model]
MAX_ENTITY_BYTES = 1024 * 1024


class _JumpingSelector(selectors.SelectSelector):
    """Never waits: a poll with a timeout moves the loop's clock to the end of it (nothing does real I/O)."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            raise RuntimeError("virtual time: nothing is scheduled and nothing is ready (a deadlock in the model)")
        self.now += timeout
        return []


class VirtualLoop(asyncio.SelectorEventLoop):
    """An event loop on simulated seconds: `time()` starts at 0 and advances only to the next due timer."""

    def __init__(self) -> None:
        self._jumping = _JumpingSelector()
        super().__init__(selector=self._jumping)

    def time(self) -> float:
        return self._jumping.now


class _Entity(dict):
    """What get_entity returns: the properties, and the ETag in `metadata` (as azure-data-tables does)."""

    metadata: dict[str, Any]


def _error(kind: type[HttpResponseError], code: str) -> HttpResponseError:
    exc = kind(message=code)
    exc.error_code = code
    return exc


class SimStorage:
    """One storage account's tables, shared by every simulated instance; `client()` is a Table client factory."""

    def __init__(self, latency_s: float, rng: random.Random, jitter: float = 0.3) -> None:
        self.latency_s = latency_s
        self.jitter = jitter  # a round trip takes latency x uniform(1 - jitter, 1 + jitter)
        self._rng = rng
        self._rows: dict[tuple[str, str], tuple[dict[str, Any], int]] = {}
        self._tables: set[str] = set()
        self._etags = 0
        # (partition, simulated second) -> calls, and entities written (for the entity-size report)
        self.calls: dict[tuple[str, int], int] = defaultdict(int)
        self.by_kind: dict[tuple[str, int], int] = defaultdict(int)  # (read/create/update/failed/table, second)
        self.largest_entity = 0  # bytes, as the service would count them (UTF-16 strings)

    def count(self, kind: str, seconds: range) -> int:
        """Calls of one kind (read, create, update, failed, table) applied within `seconds`."""
        return sum(self.by_kind.get((kind, s), 0) for s in seconds)

    def client(self, table: str = "leases") -> _SimTableClient:
        return _SimTableClient(self, table)

    async def call(self, partition: str, kind: str, apply: Any) -> Any:
        """One round trip, with `apply()` (atomic, counted) at its end: only the order of calls on the service
        matters for conflicts, and a write sent when a read's answer arrives lands one round trip after it."""
        await asyncio.sleep(self.latency_s * self._rng.uniform(1 - self.jitter, 1 + self.jitter))
        second = int(asyncio.get_running_loop().time())
        self.calls[(partition, second)] += 1
        try:
            result = apply()
        except HttpResponseError:
            self.by_kind[("failed", second)] += 1
            raise
        self.by_kind[(kind, second)] += 1
        return result

    def _next_etag(self) -> int:
        self._etags += 1
        return self._etags

    def _check_size(self, entity: dict[str, Any]) -> None:
        size = 0
        for value in entity.values():
            if isinstance(value, str):
                if len(value) > MAX_STRING_CHARS:
                    raise _error(HttpResponseError, "PropertyValueTooLarge")
                size += 2 * len(value)
            else:
                size += 8
        self.largest_entity = max(self.largest_entity, size)
        if size > MAX_ENTITY_BYTES:
            raise _error(HttpResponseError, "EntityTooLarge")

    # the service side of each call (atomic)

    def get(self, table: str, place: tuple[str, str]) -> _Entity:
        stored = self._rows.get((table, *place))  # type: ignore[arg-type]
        if stored is None:
            raise _error(ResourceNotFoundError, "ResourceNotFound")
        entity = _Entity(stored[0])
        entity.metadata = {"etag": f'W/"{stored[1]}"'}
        return entity

    def create(self, table: str, entity: dict[str, Any]) -> dict[str, Any]:
        key = (table, entity["PartitionKey"], entity["RowKey"])
        if key in self._rows:
            raise _error(ResourceExistsError, "EntityAlreadyExists")
        self._check_size(entity)
        etag = self._next_etag()
        self._rows[key] = (dict(entity), etag)  # type: ignore[index]
        return {"etag": f'W/"{etag}"'}

    def update(self, table: str, entity: dict[str, Any], etag: str | None) -> dict[str, Any]:
        key = (table, entity["PartitionKey"], entity["RowKey"])
        stored = self._rows.get(key)  # type: ignore[arg-type]
        if stored is None:
            raise _error(ResourceNotFoundError, "ResourceNotFound")
        if etag is not None and etag != f'W/"{stored[1]}"':
            raise _error(ResourceModifiedError, "UpdateConditionNotSatisfied")
        self._check_size(entity)
        new = self._next_etag()
        self._rows[key] = (dict(entity), new)  # type: ignore[index]
        return {"etag": f'W/"{new}"'}

    def make_table(self, table: str) -> None:
        if table in self._tables:
            raise _error(ResourceExistsError, "TableAlreadyExists")
        self._tables.add(table)


class _SimTableClient:
    """The subset of `azure.data.tables.aio.TableClient` the lease store calls."""

    def __init__(self, storage: SimStorage, table: str) -> None:
        self._storage, self._table = storage, table

    async def create_table(self) -> None:
        await self._storage.call("(tables)", "table", lambda: self._storage.make_table(self._table))

    async def get_entity(self, partition_key: str, row_key: str) -> _Entity:
        return await self._storage.call(
            partition_key, "read", lambda: self._storage.get(self._table, (partition_key, row_key))
        )

    async def create_entity(self, entity: dict[str, Any]) -> dict[str, Any]:
        return await self._storage.call(
            entity["PartitionKey"], "create", lambda: self._storage.create(self._table, entity)
        )

    async def update_entity(self, entity: dict[str, Any], *, etag: str | None = None, **_: Any) -> dict[str, Any]:
        return await self._storage.call(
            entity["PartitionKey"], "update", lambda: self._storage.update(self._table, entity, etag)
        )

    async def close(self) -> None:
        return None
