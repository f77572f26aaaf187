"""Breaker, health and governance state shared by every instance, in one Azure Table.

The layout (state_rows.py) puts every row in a partition of its own; the version entity (state_versions.py)
says which buckets of rows changed. So the periodic read is one small entity, plus one range query per
bucket that changed; a full read (`read_all`) is for start, resync after an outage, and once a minute.

Every write changes its row, then bumps the row's bucket (ETag-conditional merge, retried on conflict). A
breaker write is conditional on the ETag read just before, and a conflict re-reads and merges, so two
instances opening the same breaker end with the later open-until. A bump that cannot be made now (storage
trouble, or too many concurrent bumps) is kept in `pending_bumps` and made at the next refresh. Every call is
counted in `meter`: the happy path must cost none, and `/gateway/stats` reports the rates.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import UpdateMode

from . import state_rows as rows
from . import state_versions as versions
from .breakers import SharedBreaker
from .lazy_table import LazyTable, write_unless_changed
from .ops_meter import OpsMeter
from .state_rows import BREAKER, CALLER, HEALTH, KINDS, PROFILE, Health, Row, RowView, Snapshot, bucket_of
from .state_versions import Versions

__all__ = ["BREAKER", "CALLER", "HEALTH", "PROFILE", "Health", "Snapshot", "StateStore"]

log = logging.getLogger("gateway.state")

_CONFLICT_RETRIES = 10


class StateStore:
    def __init__(self, table_client_factory: Callable[[], Any], instance_id: str) -> None:
        self.instance_id = instance_id
        self.meter = OpsMeter()
        self._table = LazyTable(table_client_factory, self.meter.write)
        self.pending_bumps: set[int] = set()  # buckets whose rows changed and whose counter is not bumped yet

    @property
    def operations(self) -> int:
        """Every storage call made (the benchmark's storage operations per request)."""
        return self.meter.total

    # ------------------------------------------------------------------ reading

    async def read_versions(self) -> Versions:
        """The version entity (one point read); `versions.ABSENT` while no one has written."""
        table = await self._table.client()
        self.meter.read()
        try:
            return versions.parse(await table.get_entity(versions.PARTITION, versions.ROW))
        except ResourceNotFoundError as exc:
            self._lost(exc)
            return versions.ABSENT

    async def read_buckets(self, buckets: Iterable[int]) -> dict[int, list[Row]]:
        """The rows of each bucket, one range query per bucket, concurrently."""
        table = await self._table.client()
        wanted = sorted(buckets)
        found = await asyncio.gather(*(self._query(table, rows.bucket_filter(b)) for b in wanted))
        return {b: [row for e in entities if (row := rows.decode(e)) is not None] for b, entities in zip(
            wanted, found, strict=True)}  # fmt: skip

    async def read_all(self) -> tuple[list[Row], list[Mapping[str, Any]]]:
        """Every row (old-layout rows first, so a current row of the same kind and key wins) and the
        old-layout entities, which `migrate` moves."""
        table = await self._table.client()
        current: list[Mapping[str, Any]] = []
        legacy: list[Mapping[str, Any]] = []
        pages = 0
        try:
            async for page in table.list_entities().by_page():  # a page is one call
                pages += 1
                async for entity in page:
                    (legacy if entity["PartitionKey"] in KINDS else current).append(entity)
        except ResourceNotFoundError as exc:  # the table itself is gone (a new or wiped account): recreate it
            self._lost(exc)
            await self._table.client()
        finally:
            self.meter.read(max(pages, 1))
        decoded = [row for e in (*legacy, *current) if (row := rows.decode(e)) is not None]
        return decoded, legacy

    async def load(self) -> Snapshot:
        """The whole table as one snapshot (a full read; tests and the operator's tools)."""
        view = RowView()
        view.replace_all((await self.read_all())[0])
        return view.snapshot()

    # ------------------------------------------------------------------ writing

    async def update_breaker(
        self, name: str, change: Callable[[SharedBreaker], SharedBreaker | None], *, bump_now: bool = True
    ) -> SharedBreaker | None:
        """Applies `change` to the stored breaker with optimistic concurrency; None if `change` declined.

        `change` sees the freshest stored state on every try, so merges are computed against what another
        instance just wrote, never against a stale copy. With `bump_now` False the bump is left in
        `pending_bumps` for the caller to make later (a half-open claim must not wait for it).
        """
        table = await self._table.client()
        for _ in range(_CONFLICT_RETRIES):
            try:
                self.meter.read()
                entity = await table.get_entity(rows.partition_key(BREAKER, name), "")
                current, etag = rows.decode(entity), entity.metadata["etag"]
                stored = current.value if current is not None else SharedBreaker()
            except ResourceNotFoundError as exc:
                stored, etag = SharedBreaker(), None
                self._lost(exc)
            new = change(stored)
            if new is None or new == stored:
                return new  # declined, or nothing to change: no write
            row = rows.breaker_entity(name, new, self.instance_id, time.time())
            if etag is None:
                table = await self._table.client()  # the table may be gone, not just the row
            try:
                self.meter.write()
                await write_unless_changed(table, row, etag)
            except (ResourceModifiedError, ResourceExistsError):
                # Someone wrote in between: read again and merge with theirs, after a short jittered pause.
                await asyncio.sleep(random.uniform(0, 0.02))
                continue
            await self._changed(BREAKER, name, bump_now)
            return new
        raise ResourceModifiedError(f"breaker {name}: too many concurrent updates")

    async def put_row(self, kind: str, key: str, properties: dict[str, Any]) -> None:
        """An operator's row (suspension, profile override), replaced whole; bumped before returning."""
        await self._upsert(rows.entity(kind, key, properties, self.instance_id))
        await self._changed(kind, key)

    async def delete_row(self, kind: str, key: str) -> None:
        table = await self._table.client()
        self.meter.write()
        try:
            await table.delete_entity(rows.partition_key(kind, key), "")
        except ResourceNotFoundError as exc:
            self._lost(exc)
            return  # nothing was there: nothing changed
        await self._changed(kind, key)

    async def write_health(self, name: str, health: Health) -> None:
        await self._upsert(rows.health_entity(name, health, self.instance_id))
        await self._changed(HEALTH, name)

    # ------------------------------------------------------------------ the version entity

    async def bump(self, bucket: int) -> bool:
        """Counts one change of `bucket`, on top of any concurrent bump; False (and pending) after too many
        conflicts. A storage error propagates, with the bump left pending."""
        self.pending_bumps.add(bucket)
        for _ in range(_CONFLICT_RETRIES):
            current = await self.read_versions()
            entity = versions.bump_entity(current, bucket)
            table = await self._table.client()  # again: reading may have found the table gone
            try:
                self.meter.write()
                await write_unless_changed(table, entity, current.etag, UpdateMode.MERGE)
            except (ResourceModifiedError, ResourceExistsError):
                await asyncio.sleep(random.uniform(0, 0.02))  # another bump won: read theirs and count on top
                continue
            self.pending_bumps.discard(bucket)
            return True
        log.warning("Version bump of bucket %d deferred: too many concurrent bumps", bucket)
        return False

    async def flush_bumps(self) -> int:
        """Makes the bumps that could not be made when their rows changed; returns how many it made. One bump
        covers every earlier change of its bucket: a reader that sees it re-reads all of them."""
        made = 0
        for bucket in sorted(self.pending_bumps):
            if not await self.bump(bucket):
                break
            made += 1
        return made

    async def migrate(self, legacy: Iterable[Mapping[str, Any]]) -> int:
        """Moves rows of the old layout (partition = kind) into the current one; a current row already there
        is newer and stays. Returns the rows moved."""
        table = await self._table.client()
        moved = 0
        for old in legacy:
            kind, key = old["PartitionKey"], old["RowKey"]
            properties = {k: v for k, v in old.items() if k not in ("PartitionKey", "RowKey", "UpdatedBy")}
            try:
                self.meter.write()
                await table.create_entity(rows.entity(kind, key, properties, self.instance_id))
                moved += 1
                await self._changed(kind, key)
            except ResourceExistsError:
                pass
            self.meter.write()
            try:
                await table.delete_entity(kind, key)
            except ResourceNotFoundError:
                pass
        if moved:
            log.warning("Moved %d state row(s) of the previous table layout", moved)
        return moved

    # ------------------------------------------------------------------ housekeeping

    async def close(self) -> None:
        await self._table.close()

    async def _changed(self, kind: str, key: str, now: bool = True) -> None:
        bucket = bucket_of(kind, key)
        if now:
            await self.bump(bucket)
        else:
            self.pending_bumps.add(bucket)

    async def _upsert(self, entity: dict[str, Any]) -> None:
        """Replaces a row whole; once more if the table turned out to be gone (a new or wiped account)."""
        for last in (False, True):
            table = await self._table.client()
            self.meter.write()
            try:
                await table.upsert_entity(entity, mode=UpdateMode.REPLACE)
                return
            except ResourceNotFoundError as exc:
                self._lost(exc)
                if last or self._table.created:
                    raise

    async def _query(self, table: Any, query: str) -> list[Any]:
        self.meter.read()
        try:
            return [entity async for entity in table.query_entities(query)]
        except ResourceNotFoundError as exc:
            self._lost(exc)
            return []

    def _lost(self, exc: ResourceNotFoundError) -> None:
        """A missing row is normal; a missing table (a new or wiped account) is created again on next use."""
        if getattr(exc, "error_code", None) == "TableNotFound":
            self._table.lost()
