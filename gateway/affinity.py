"""Response affinity: which backend keeps each response, so a conversation goes on where it lives.

Azure keeps a response, and what `previous_response_id` needs of it, on the resource that created it, for 30
days. The gateway records the backend, model and caller of each response it sees created, once, when the answer
carries the id (the JSON body, or a stream's `response.created` event), before the client can have the id. The
row sits in its own table (one row per id, with its expiry; not the state table, which every refresh reads
whole). A request naming an id, or a `previous_response_id`, then goes to that backend whatever the strategy;
an id this caller did not create gets the same 404 as an unknown one.

Lookups are cheap: an in-process cache of the ids this instance created or looked up, and a point read for any
other. Rows past their expiry are ignored and deleted when read; `purge_expired` (housekeeping) removes the rest.

Tokens are counted once per response: on the call that created it, or, for a `background` response (it goes on
after its create answered, and outlives a create stream cut short), on the first call that reports its usage, its
create stream or a retrieval, claimed with an ETag-conditional update of its row so two calls cannot both count it.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import UpdateMode

from . import errors
from .lazy_table import LazyTable
from .state_sync import STORAGE_ERRORS
from .translate import Route

__all__ = ["RETENTION_S", "Affinity", "Holder", "affinity_table", "is_background", "keeps_response"]

log = logging.getLogger("gateway.affinity")

RETENTION_S = 30 * 24 * 3600.0  # how long Azure keeps a stored response
CACHE_SIZE = 10_000  # ids this instance remembers (most recently used)
_LOOKUP_RETRY_S = 5


@dataclass(frozen=True, slots=True)
class Holder:
    """Where a response lives and whose it is."""

    backend: str
    model: str  # the model alias it was created with: what its follow-up requests are governed as
    caller: str
    expires_at: float
    background: bool = False  # created with `background: true`: its tokens go to the first call reporting them
    etag: str | None = None  # the row's version this instance last saw: a claim is then one conditional update


def affinity_table(state_table: str) -> str:
    """The table of response rows, beside the state table (Table names are at most 63 characters)."""
    return state_table[:54] + "responses"


def keeps_response(route: Route) -> bool:
    """A created response the backend keeps (`store: false` ones cannot be named again: no row for them)."""
    return route.creates_response and not (route.json and route.json.get("store") is False)


def is_background(route: Route) -> bool:
    """A kept response created with `background: true`: it runs on after the call that created it answered."""
    return keeps_response(route) and bool(route.json and route.json.get("background") is True)


class Affinity:
    """Response id → backend, in Table Storage (None: this process only, e.g. without storage in tests)."""

    def __init__(self, table_client_factory: Callable[[], Any] | None, clock: Callable[[], float] = time.time) -> None:
        self._table = LazyTable(table_client_factory, self._one_call) if table_client_factory else None
        self._clock = clock
        self._cache: OrderedDict[str, Holder] = OrderedDict()
        self._counted: OrderedDict[str, None] = OrderedDict()  # background responses whose tokens are counted
        self.operations = 0  # storage calls made (the chain test counts them)

    async def bind(self, route: Route, caller: str) -> tuple[Route, str | None]:
        """The route (with the model of the response its path names) and the backend it must go to, if any."""
        if route.resource_id:
            holder = await self._owned(route.resource_id, caller, None)
            return replace(route, model=holder.model), holder.backend
        if (previous := route.previous_response_id) is not None:
            return route, (await self._owned(previous, caller, "previous_response_id")).backend
        return route, None

    async def remember(self, response_id: str, backend: str, route: Route, caller: str) -> None:
        """Records a created response once. If storage fails, this instance still knows it (logged)."""
        if response_id in self._cache:
            return
        background = is_background(route)
        holder = Holder(backend, route.model, caller, self._clock() + RETENTION_S, background)
        self._keep(response_id, holder)
        if self._table is None:
            return
        entity = {
            "PartitionKey": _partition(response_id),
            "RowKey": response_id,
            "Backend": backend,
            "Model": route.model,
            "Caller": caller,
            "ExpiresAt": holder.expires_at,
            "Background": background,
        }
        try:
            table = await self._table.client()
            self.operations += 1
            written = await table.create_entity(entity)
        except ResourceExistsError:
            pass  # written already (the same answer seen twice): ids are never reused
        except STORAGE_ERRORS as exc:
            log.warning("Could not record response %s (%s): other instances will not find it", response_id, exc)
        else:
            if background and self._cache.get(response_id) is holder:  # its claim needs no read then
                self._cache[response_id] = replace(holder, etag=written.get("etag"))

    async def count_once(self, response_id: str) -> bool:
        """True for the one call that counts a background response's tokens (its create stream, read to its end,
        or the first retrieval reporting them); False for any other call, and for any other response."""
        holder = self._cache.get(response_id)
        if holder is None or not holder.background or response_id in self._counted:
            return False
        self._mark_counted(response_id)
        if self._table is None:
            return True
        try:
            table = await self._table.client()
            etag = holder.etag
            if etag is None:
                self.operations += 1
                entity = await table.get_entity(_partition(response_id), response_id)
                if entity.get("Counted"):
                    return False
                etag = entity.metadata["etag"]
            self.operations += 1
            await table.update_entity(
                {"PartitionKey": _partition(response_id), "RowKey": response_id, "Counted": True},
                mode=UpdateMode.MERGE,
                etag=etag,
                match_condition=MatchConditions.IfNotModified,
            )
        except ResourceModifiedError:
            return False  # the row changed since this instance saw it: only a claim changes it, so it is counted
        except ResourceNotFoundError:  # never written (storage was down): no other instance can know it
            log.warning("Response %s has no row; counted here", response_id)
        except STORAGE_ERRORS as exc:  # counted here; another instance might count it too: said in the log
            log.warning("Could not mark response %s as counted (%s)", response_id, exc)
        return True

    async def lookup(self, response_id: str) -> Holder | None:
        """Where the response lives; None when unknown or expired. 503 when storage cannot say."""
        now = self._clock()
        holder = self._cache.get(response_id)
        if holder is not None:
            if holder.expires_at > now:
                self._cache.move_to_end(response_id)
                return holder
            del self._cache[response_id]
        if self._table is None:
            return None
        try:
            table = await self._table.client()
            self.operations += 1
            entity = await table.get_entity(_partition(response_id), response_id)
        except ResourceNotFoundError:
            return None
        except STORAGE_ERRORS:
            log.warning("Response affinity storage unreachable; cannot route %s", response_id, exc_info=True)
            raise errors.conversation_unavailable(
                "The gateway cannot tell now which backend keeps this response; retry later.", _LOOKUP_RETRY_S
            ) from None
        holder = Holder(
            str(entity["Backend"]),
            str(entity["Model"]),
            str(entity["Caller"]),
            float(entity["ExpiresAt"]),
            bool(entity.get("Background")),
            entity.metadata.get("etag"),
        )
        if holder.expires_at <= now:
            await self._delete(table, _partition(response_id), response_id)
            return None
        if entity.get("Counted"):
            self._mark_counted(response_id)
        self._keep(response_id, holder)
        return holder

    async def purge_expired(self) -> int:
        """Deletes the rows past their expiry (the housekeeping timer); returns how many."""
        if self._table is None:
            return 0
        try:
            table = await self._table.client()
            self.operations += 1
            expired = table.query_entities(
                "ExpiresAt lt @now", parameters={"now": self._clock()}, select=["PartitionKey", "RowKey"]
            )
            rows = [(entity["PartitionKey"], entity["RowKey"]) async for entity in expired]
        except STORAGE_ERRORS as exc:  # reads ignore expired rows anyway: the next run purges them
            log.warning("Could not list expired response rows (%s)", exc)
            return 0
        for partition, row in rows:
            await self._delete(table, partition, row)
        return len(rows)

    async def close(self) -> None:
        if self._table is not None:
            await self._table.close()

    async def _owned(self, response_id: str, caller: str, param: str | None) -> Holder:
        holder = await self.lookup(response_id)
        if holder is None or holder.caller != caller:  # someone else's id gets the answer an unknown one gets
            what = "Previous response" if param else "Response"
            raise errors.GatewayError(
                404,
                f"{what} with id '{response_id}' not found.",
                code="previous_response_not_found" if param else "response_not_found",
                param=param,
            )
        return holder

    def _keep(self, response_id: str, holder: Holder) -> None:
        self._cache[response_id] = holder
        self._cache.move_to_end(response_id)
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)

    def _mark_counted(self, response_id: str) -> None:
        self._counted[response_id] = None
        if len(self._counted) > CACHE_SIZE:
            self._counted.popitem(last=False)

    async def _delete(self, table: Any, partition: str, row: str) -> None:
        try:
            self.operations += 1
            await table.delete_entity(partition, row)
        except ResourceNotFoundError:
            pass
        except STORAGE_ERRORS as exc:  # it stays ignored (expired); the next purge tries again
            log.warning("Could not delete the expired response row %s (%s)", row, exc)

    def _one_call(self) -> None:
        self.operations += 1


def _partition(response_id: str) -> str:
    """Rows spread over 256 partitions, so creating many responses at once is not one partition's load."""
    return hashlib.sha256(response_id.encode()).hexdigest()[:2]
