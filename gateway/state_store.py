"""Breaker, health and governance state shared by every instance, in one Azure Table.

Rows: PartitionKey `breaker` (one per backend and per deployment: open-until, tripped, disabled, trial claim),
`health` (probe results), `caller` (an operator's suspension) and `profile` (an operator's profile override).
Reads are one query for the whole table; breaker writes are conditional on the ETag read just before
(`MatchConditions.IfNotModified`), and a conflict re-reads and merges, so two instances opening the same
breaker end with the later open-until. Every call is counted: the benchmark reports storage operations per
request, and the happy path must cost none.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import (
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.data.tables import UpdateMode

from .breakers import SharedBreaker

__all__ = ["BREAKER", "CALLER", "HEALTH", "PROFILE", "Health", "Snapshot", "StateStore"]

log = logging.getLogger("gateway.state")

BREAKER, HEALTH, CALLER, PROFILE = "breaker", "health", "caller", "profile"
_CONFLICT_RETRIES = 10


@dataclass(frozen=True, slots=True)
class Health:
    """The last probe of an APIM-mode backend."""

    ok: bool
    latency_ms: float | None
    probed_at: float
    error: str = ""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The whole shared state, as one query read it."""

    breakers: dict[str, SharedBreaker]
    health: dict[str, Health]
    suspended: dict[str, str]  # caller -> reason
    profiles: dict[str, dict[str, Any]]  # profile name -> the operator's override (JSON object)


class StateStore:
    def __init__(self, table_client_factory: Callable[[], Any], instance_id: str) -> None:
        self._factory = table_client_factory
        self._table: Any = None
        self._table_ready = False
        self.instance_id = instance_id
        self.operations = 0  # every storage call made, for the stats view and the benchmark

    async def load(self) -> Snapshot:
        """The whole table in one query: breakers by scope, health by backend, suspensions, profile overrides."""
        table = await self._ready()
        breakers: dict[str, SharedBreaker] = {}
        health: dict[str, Health] = {}
        suspended: dict[str, str] = {}
        profiles: dict[str, dict[str, Any]] = {}
        self.operations += 1
        try:
            entities = [entity async for entity in table.list_entities()]
        except ResourceNotFoundError:  # the table itself is gone (a new or wiped account): recreate it
            self._table_ready = False
            await self._ready()
            entities = []
        for entity in entities:
            if entity["PartitionKey"] == BREAKER:
                breakers[entity["RowKey"]] = _breaker(entity)
            elif entity["PartitionKey"] == HEALTH:
                health[entity["RowKey"]] = Health(
                    bool(entity.get("Ok")),
                    entity.get("LatencyMs"),
                    float(entity.get("ProbedAt", 0)),
                    entity.get("Error", ""),
                )
            elif entity["PartitionKey"] == CALLER and entity.get("Suspended"):
                suspended[entity["RowKey"]] = str(entity.get("Reason", ""))
            elif entity["PartitionKey"] == PROFILE:
                try:
                    override = json.loads(entity.get("Override", "{}"))
                except ValueError:
                    log.error("Ignoring the unreadable override of profile %s", entity["RowKey"])
                    continue
                if isinstance(override, dict):
                    profiles[entity["RowKey"]] = override
        return Snapshot(breakers, health, suspended, profiles)

    async def put_row(self, partition: str, key: str, properties: dict[str, Any]) -> None:
        """An operator's row (suspension, profile override), replaced whole."""
        table = await self._ready()
        self.operations += 1
        row = {"PartitionKey": partition, "RowKey": key, **properties, "UpdatedBy": self.instance_id}
        await table.upsert_entity(row, mode=UpdateMode.REPLACE)

    async def delete_row(self, partition: str, key: str) -> None:
        table = await self._ready()
        self.operations += 1
        try:
            await table.delete_entity(partition, key)
        except ResourceNotFoundError:
            pass

    async def update_breaker(
        self, name: str, change: Callable[[SharedBreaker], SharedBreaker | None]
    ) -> SharedBreaker | None:
        """Applies `change` to the stored breaker with optimistic concurrency; None if `change` declined.

        `change` sees the freshest stored state on every try, so merges are computed against what another
        instance just wrote, never against a stale copy.
        """
        table = await self._ready()
        for _ in range(_CONFLICT_RETRIES):
            try:
                self.operations += 1
                entity = await table.get_entity(BREAKER, name)
                current, etag = _breaker(entity), entity.metadata["etag"]
            except ResourceNotFoundError as exc:
                current, etag = SharedBreaker(), None
                if getattr(exc, "error_code", None) == "TableNotFound":
                    self._table_ready = False
            new = change(current)
            if new is None or new == current:
                return new  # declined, or nothing to change: no write
            row = _row(name, new, self.instance_id)
            if etag is None:
                await self._ready()  # the table may be gone, not just the row
            try:
                self.operations += 1
                if etag is None:
                    await table.create_entity(row)
                else:
                    await table.update_entity(
                        row, mode=UpdateMode.REPLACE, etag=etag, match_condition=MatchConditions.IfNotModified
                    )
                return new
            except (ResourceModifiedError, ResourceExistsError):
                # Someone wrote in between: read again and merge with theirs, after a short jittered pause.
                await asyncio.sleep(random.uniform(0, 0.02))
        raise ResourceModifiedError(f"breaker {name}: too many concurrent updates")

    async def write_health(self, name: str, health: Health) -> None:
        table = await self._ready()
        self.operations += 1
        await table.upsert_entity(
            {
                "PartitionKey": HEALTH,
                "RowKey": name,
                "Ok": health.ok,
                "LatencyMs": health.latency_ms,
                "ProbedAt": health.probed_at,
                "Error": health.error[:500],
                "UpdatedBy": self.instance_id,
            }
        )

    async def close(self) -> None:
        if self._table is not None:
            await self._table.close()
            self._table = None
            self._table_ready = False

    async def _ready(self) -> Any:
        if self._table is None:
            self._table = self._factory()
        if not self._table_ready:
            try:
                self.operations += 1
                await self._table.create_table()
            except ResourceExistsError:
                pass
            self._table_ready = True
        return self._table


def _breaker(entity: Any) -> SharedBreaker:
    return SharedBreaker(
        open_until=float(entity.get("OpenUntil", 0.0)),
        tripped=bool(entity.get("Tripped", False)),
        disabled=bool(entity.get("Disabled", False)),
        trial_owner=entity.get("TrialOwner", ""),
        trial_until=float(entity.get("TrialUntil", 0.0)),
        reason=entity.get("Reason", ""),
    )


def _row(name: str, state: SharedBreaker, instance_id: str) -> dict[str, Any]:
    return {
        "PartitionKey": BREAKER,
        "RowKey": name,
        "OpenUntil": float(state.open_until),
        "Tripped": state.tripped,
        "Disabled": state.disabled,
        "TrialOwner": state.trial_owner,
        "TrialUntil": float(state.trial_until),
        "Reason": state.reason[:500],
        "UpdatedBy": instance_id,
        "UpdatedAt": time.time(),
    }
