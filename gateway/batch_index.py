"""A caller's batches, newest first: one Table row per batch, written when the batch is created.

Listing batches asks for the newest `limit` batches of one caller after a cursor. The Durable instance query
cannot answer that on Azure: it returns one page of 100 instances, ordered by instance id (so the *oldest*
batches, since batch ids sort by creation), and the Python SDK can neither ask for another page size nor follow
the continuation token (azure-functions-durable-python#580). This index is keyed for the question: the partition
is the caller (a hash, so any caller name is a valid key and two callers never share one), the row key is the
batch id's time and random part with every hex digit inverted, so the newest batch sorts first and the `after`
cursor is a row-key bound. A page is one range query of `limit + 1` rows, however many batches the caller or the
task hub holds.

The row is written before the orchestration starts (a batch that runs is always listed) and deleted when the
batch's start fails or the housekeeping purges it. A listing skips a row whose instance is gone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from azure.core.exceptions import ResourceNotFoundError

from . import ids
from .lazy_table import LazyTable

__all__ = ["BatchIndex", "batch_index_table", "row_key"]

_TIME_AND_RANDOM = len("batch_") + 12  # new_batch_id: batch_ + caller tag (12) + ms (12) + random (20)
_INVERTED = str.maketrans("0123456789abcdef", "fedcba9876543210")


def batch_index_table(state_table: str) -> str:
    """The index table, beside the state table (Table names are at most 63 characters)."""
    return state_table[:56] + "batches"


def row_key(batch_id: str) -> str | None:
    """The row key of a batch id made by `ids.new_batch_id` (None for older ids, which are not indexed):
    ascending row keys are descending ids, that is newest first."""
    if ids.batch_created_ms(batch_id) is None:
        return None
    return batch_id[_TIME_AND_RANDOM:].translate(_INVERTED)


def _partition(caller: str) -> str:
    return hashlib.sha256(caller.encode()).hexdigest()


class BatchIndex:
    """Batch ids per caller in Table Storage (None: in this process only, e.g. without storage in tests)."""

    def __init__(self, table_client_factory: Callable[[], Any] | None) -> None:
        self._table = LazyTable(table_client_factory, self._one_call) if table_client_factory else None
        self._memory: dict[str, dict[str, str]] = {}  # partition → row key → batch id
        self.operations = 0  # storage calls made

    async def add(self, caller: str, batch_id: str) -> None:
        """Indexes a new batch (written again harmlessly if retried). Storage errors propagate: the batch
        is not started without its row."""
        key = row_key(batch_id)
        if key is None:
            raise ValueError("only ids made by ids.new_batch_id are indexed")
        partition = _partition(caller)
        if self._table is None:
            self._memory.setdefault(partition, {})[key] = batch_id
            return
        entity = {"PartitionKey": partition, "RowKey": key, "BatchId": batch_id}
        for _ in range(2):
            table = await self._table.client()
            self.operations += 1
            try:
                await table.upsert_entity(entity)
                return
            except ResourceNotFoundError:  # the table was wiped under us: create it again, once
                self._table.lost()
        raise RuntimeError("the batch index table could not be created")

    async def newest(self, caller: str, after: str | None, count: int) -> tuple[list[str], bool]:
        """Up to `count` of the caller's batch ids, newest first, older than batch `after` if given; and whether
        more follow. One range query; an `after` that is not an indexed id has nothing after it."""
        partition = _partition(caller)
        bound = "" if after is None else row_key(after)
        if bound is None:
            return [], False
        if self._table is None:
            rows = sorted((k, v) for k, v in self._memory.get(partition, {}).items() if k > bound)
            return [batch_id for _, batch_id in rows[:count]], len(rows) > count
        table = await self._table.client()
        self.operations += 1
        found: list[str] = []
        try:
            query = table.query_entities(
                "PartitionKey eq @partition and RowKey gt @bound",
                parameters={"partition": partition, "bound": bound},
                select=["RowKey", "BatchId"],
                results_per_page=count + 1,
            )
            async for entity in query:  # follows the service's continuation if it answers in smaller pages
                found.append(str(entity["BatchId"]))
                if len(found) > count:
                    break
        except ResourceNotFoundError:  # no table (yet, or wiped): no batches
            self._table.lost()
            return [], False
        return found[:count], len(found) > count

    async def remove(self, caller: str, batch_id: str) -> None:
        """Drops a batch's row (its start failed, or housekeeping purged it); a missing row is fine."""
        key = row_key(batch_id)
        if key is None:
            return
        partition = _partition(caller)
        if self._table is None:
            self._memory.get(partition, {}).pop(key, None)
            return
        table = await self._table.client()
        self.operations += 1
        try:
            await table.delete_entity(partition, key)
        except ResourceNotFoundError:
            pass

    async def close(self) -> None:
        if self._table is not None:
            await self._table.close()

    def _one_call(self) -> None:
        self.operations += 1
