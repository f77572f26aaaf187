"""Concurrency across instances, with priority admission: a backend's `concurrency=N`, `reserved=R`, and a caller's
profile `concurrency=N` (CallerSlots, the same queue over rows of their own).

Instances lease slots of a limit's N from Table rows (ETag-conditional, so the slots held by all instances never
add up to more than N) and renew the lease about once a second while they have work, by recent demand (requests in
flight, and waiting ones weighted by priority). While everyone's demand fits N, an instance holds its demand and a
quarter more, and the rest stays unheld for whichever instance bursts next; past N, each holds its share by demand.
An instance that wants more than it holds is starving: the others, seeing that in the row, renew every 100 ms and
give back at once the slots their requests free. R of the N slots form a pool of their own that only priority-1
requests may use (dedicated capacity), leased by priority-1 demand only, so it follows the urgent work across
instances. A request runs only on a slot its instance holds.

Each limit has one queue on an instance: waiting requests are admitted in priority order (1 first, FIFO within a
priority), priority 1 from the dedicated pool or the general one, the others from the general one; a request that
has waited `GATEWAY_AGING_S` moves up one level per interval, so nobody starves; a waiting request leaves the queue
at its deadline. Storage calls are per renewal (every 100 ms while a share can move to where requests wait, every
0.5 s while an instance that held the whole limit alone has requests waiting), never per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError

from .config import Backend
from .lazy_table import LazyTable, write_unless_changed
from .leases import encode_key
from .state_sync import STORAGE_ERRORS

__all__ = ["CallerSlots", "Slot", "SlotQueue", "Slots"]

log = logging.getLogger("gateway.slots")

PARTITION = "slots"  # backends' slots; a caller's (profile `concurrency=`) are in CALLER_PARTITION
CALLER_PARTITION = "caller-slots"
IDLE_QUEUES = 256  # callers' queues kept before idle ones are dropped (memory stays bounded)
LEASE_S = 5.0  # a holder that stops renewing loses its slots after this
RENEW_S = 1.0  # renewal interval while an instance has work on the backend
STARVED_S = 0.1  # renewal interval while requests wait and a share can move (slots left, or others share the limit)
LONE_S = 0.5  # while requests wait at an instance that held the whole limit alone: it looks for newcomers
DEMAND_DECAY = 0.6  # share of the previous demand kept at each renewal: shares follow recent load, not bursts
HEADROOM = 0.25  # uncontended, an instance holds this much more than its demand (a burst needs no renewal)
_RETRIES = 20


class Slot:
    """One admitted request's hold on a slot (a backend's or its caller's); released once, when it ends."""

    __slots__ = ("_pool", "_queue", "_released")

    def __init__(self, queue: SlotQueue, pool: Pool) -> None:
        self._queue = queue
        self._pool = pool
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._pool.in_flight -= 1
            self._queue.admit()
            if self._pool.others_starving and self._pool.free:
                self._queue.renew_now()  # an idle slot here while requests wait elsewhere: hand it over


class Pool:
    """The slots of one pool of a limit (a backend's or a caller's) that this instance holds, leased from its row."""

    def __init__(self, limit: int, row: str, table: LazyTable | None, instance_id: str, partition: str) -> None:
        self.limit = limit
        self.row = row
        self.partition = partition
        self.instance_id = instance_id
        self.held = 0 if table else limit  # without shared storage: this instance alone
        self.in_flight = 0
        self.demand = 0.0  # recent demand (decaying): what this instance asks its share by
        self.others_starving = False  # at the last renewal, another instance wanted more than it held
        self.others_live = False  # at the last renewal, other instances held slots or wanted some
        self._table = table  # shared by the pools of one owner (Slots, CallerSlots), which closes it
        self.operations = 0

    def resize(self, limit: int) -> None:
        """A new limit (an operator changed the profile); shared slots follow at the next renewal."""
        self.limit = limit
        if self.local:
            self.held = limit

    @property
    def local(self) -> bool:
        """No shared storage: this instance holds the whole limit."""
        return self._table is None

    @property
    def free(self) -> bool:
        return self.in_flight < self.held

    @property
    def can_move(self) -> bool:
        """A renewal could change what this instance holds: slots are left, or other instances share the limit.
        (An instance alone at its limit renews once a second, however many requests wait.)"""
        return self.held < self.limit or self.others_live

    async def claim(self, demand_now: float) -> None:
        """One conditional update of the row: this instance's share of the limit, never past what others hold.

        Demand decays rather than drops, so an instance keeps what its recent load needs. While everyone's demand
        fits the limit, an instance holds its demand and a little headroom, and leaves the rest unheld for whoever
        bursts next; past the limit, each holds its share by demand. An instance that wants more than it holds is
        starving: the others then renew often and give back at once what they free (`others_starving`)."""
        decayed = max(demand_now, self.demand * DEMAND_DECAY)
        self.demand = decayed if decayed >= 0.05 else 0.0
        assert self._table is not None
        table = await self._table.client()
        for _ in range(_RETRIES):
            now = time.time()
            self.operations += 1
            try:
                entity = await table.get_entity(self.partition, self.row)
                holders, etag = json.loads(entity.get("Holders", "{}")), entity.metadata["etag"]
            except ResourceNotFoundError:
                holders, etag = {}, None
            live = {k: v for k, v in holders.items() if v[2] > now and k != self.instance_id}
            others = sum(v[0] for v in live.values())
            others_demand = sum(v[1] for v in live.values())
            if math.ceil(self.demand) + others_demand <= self.limit:  # room for all: demand plus headroom
                wanted = math.ceil(self.demand * (1 + HEADROOM)) if self.demand else 0
            else:  # round half up: a small leftover demand does not pin an idle slot, an even split gets one
                wanted = math.floor(self.limit * self.demand / (self.demand + others_demand) + 0.5)
            mine = max(0, min(max(wanted, self.in_flight), self.limit - others))
            if mine or self.demand:
                live[self.instance_id] = [mine, round(self.demand, 3), now + LEASE_S]
            row = {"PartitionKey": self.partition, "RowKey": self.row, "Holders": json.dumps(live)}
            self.operations += 1
            try:
                await write_unless_changed(table, row, etag)
            except (ResourceModifiedError, ResourceExistsError):
                continue  # another instance renewed in between: decide again on what it wrote
            self.held = mine
            self.others_starving = any(v[1] > v[0] for k, v in live.items() if k != self.instance_id)
            self.others_live = any(k != self.instance_id for k in live)
            return
        log.warning("Slots %s: too many concurrent renewals; keeping what is held", self.row)

    async def close(self) -> None:
        if self._table is not None and self._table.opened and self.held:
            with contextlib.suppress(*STORAGE_ERRORS):
                self.in_flight, self.demand = 0, 0.0
                await self.claim(0)  # give the slots back for the others


@dataclass(slots=True)
class _Waiter:
    priority: int
    enqueued: float
    seq: int
    future: asyncio.Future[Pool] = field(repr=False)


class SlotQueue:
    """One limit on this instance (a backend's, or a caller's): its pools (dedicated, general), who waits, and the
    lease renewals. `row` names its Table rows, `partition` their partition."""

    def __init__(
        self,
        name: str,
        limit: int,
        reserved: int,
        table: LazyTable | None,
        instance_id: str,
        aging_s: float,
        row: str | None = None,
        partition: str = PARTITION,
    ) -> None:
        self.name = name
        self.aging_s = aging_s
        row = row or name
        self.general = Pool(limit - reserved, row, table, instance_id, partition)
        self.dedicated = Pool(reserved, row + "~p1", table, instance_id, partition) if reserved else None
        self._shared = table is not None
        self._waiters: list[_Waiter] = []
        self._seq = itertools.count()
        self._renewing: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.peak = 0

    def pools_for(self, priority: int) -> list[Pool]:
        """Priority 1 may use the dedicated pool first, then the general one; the others the general one."""
        return [self.dedicated, self.general] if priority <= 1 and self.dedicated else [self.general]

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def in_flight(self) -> int:
        return sum(p.in_flight for p in self._pools())

    def try_acquire(self, priority: int) -> Slot | None:
        """A slot now, if one is free to this priority and nobody better waits; else None."""
        if any(self._effective(w, time.monotonic()) <= priority for w in self._waiters):
            return None
        for pool in self.pools_for(priority):
            if pool.free:
                return self._take(pool)
        self._renew_soon()
        return None

    async def acquire(self, priority: int, deadline: float) -> Slot | None:
        """Waits in priority order for a slot until `deadline` (monotonic); None when it passes first."""
        if slot := self.try_acquire(priority):
            return slot
        loop = asyncio.get_running_loop()
        waiter = _Waiter(priority, time.monotonic(), next(self._seq), loop.create_future())
        self._waiters.append(waiter)
        self._renew_soon(wake=any(p.can_move for p in self.pools_for(priority)))
        try:
            pool = await asyncio.wait_for(asyncio.shield(waiter.future), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            if waiter.future.done():  # admitted just as the deadline passed: it was counted, so take it
                return Slot(self, waiter.future.result())
            self._waiters.remove(waiter)
            return None
        except asyncio.CancelledError:  # the request went away while it waited: its place, or its slot, goes
            if waiter.future.done():
                Slot(self, waiter.future.result()).release()
            else:
                self._waiters.remove(waiter)
            raise
        return Slot(self, pool)

    def admit(self) -> None:
        """Hands free slots to waiters: best effective priority first (aging), FIFO within a priority."""
        now = time.monotonic()
        for waiter in sorted(self._waiters, key=lambda w: (self._effective(w, now), w.seq)):
            pool = next((p for p in self.pools_for(self._effective(waiter, now)) if p.free), None)
            if pool is None:
                return  # the best waiter fits nowhere, so no worse one fits either (it may use fewer pools)
            self._waiters.remove(waiter)
            pool.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            waiter.future.set_result(pool)

    def _take(self, pool: Pool) -> Slot:
        pool.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        self._renew_soon()
        return Slot(self, pool)

    def _effective(self, waiter: _Waiter, now: float) -> int:
        return max(1, waiter.priority - int((now - waiter.enqueued) / self.aging_s))

    # ------------------------------------------------------------------ the shared lease

    def renew_now(self) -> None:
        self._renew_soon(wake=True)

    def _renew_soon(self, *, wake: bool = False) -> None:
        if not self._shared:
            return
        if self._renewing is None or self._renewing.done():
            self._renewing = asyncio.ensure_future(self._renew_while_busy())
        elif wake:
            self._wake.set()

    async def _renew_while_busy(self) -> None:
        """Renews about once a second while there is work, every 100 ms while requests starve; then lets go."""
        while True:
            now = time.monotonic()
            urgent = sum(9 for w in self._waiters if self._effective(w, now) <= 1)
            weighted = sum(10 - self._effective(w, now) for w in self._waiters)
            try:
                if self.dedicated is not None:
                    await self.dedicated.claim(self.dedicated.in_flight + urgent)
                await self.general.claim(self.general.in_flight + weighted)
            except STORAGE_ERRORS as exc:
                log.warning("Slots of %s: storage unreachable (%s); keeping what is held", self.name, exc)
            self.admit()
            if not self._waiters and all(p.demand == 0 and p.held == 0 for p in self._pools()):
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval())

    def _interval(self) -> float:
        """Renewing often helps only while a share can move; an instance alone at its limit only has to notice
        the instances that start to want slots (they cannot take any until it gives some back)."""
        pools = self._pools()
        if any(p.others_starving and p.held for p in pools):
            return STARVED_S
        if self._waiters:
            return STARVED_S if any(p.can_move for p in pools) else LONE_S
        return RENEW_S

    @property
    def idle(self) -> bool:
        """Nothing waits, runs or is held here, and no renewal is under way: the queue can be forgotten."""
        return (
            not self._waiters
            and self.in_flight == 0
            and all(p.held == 0 or p.local for p in self._pools())  # a shared slot is given back first
            and (self._renewing is None or self._renewing.done())
        )

    @property
    def operations(self) -> int:
        return sum(p.operations for p in self._pools())

    def _pools(self) -> list[Pool]:
        return [p for p in (self.general, self.dedicated) if p is not None]

    async def close(self) -> None:
        if self._renewing is not None:
            self._renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError, *STORAGE_ERRORS):
                await self._renewing
        for pool in self._pools():
            await pool.close()


class _Owner:
    """The shared part of Slots and CallerSlots: one table client for all their queues, and the storage meter."""

    def __init__(self, table: Callable[[], Any] | None, instance_id: str, aging_s: float) -> None:
        self._table = LazyTable(table, self._count) if table else None
        self._instance_id = instance_id
        self._aging_s = aging_s
        self._operations = 0  # table creations, and the calls of queues no longer kept
        self.queues: dict[str, SlotQueue] = {}

    def _queue(self, name: str, limit: int, reserved: int, row: str, partition: str) -> SlotQueue:
        return SlotQueue(name, limit, reserved, self._table, self._instance_id, self._aging_s, row, partition)

    def _count(self) -> None:
        self._operations += 1

    @property
    def operations(self) -> int:
        """Storage calls made so far (the benchmark's storage operations per request)."""
        return self._operations + sum(q.operations for q in self.queues.values())

    async def close(self) -> None:
        for queue in self.queues.values():
            await queue.close()
        if self._table is not None:
            await self._table.close()


class Slots(_Owner):
    """The queues of every backend with `concurrency=`; the others are unlimited."""

    def __init__(self, backends: tuple[Backend, ...], table: Callable[[], Any] | None, instance_id: str,
                 aging_s: float) -> None:  # fmt: skip
        super().__init__(table, instance_id, aging_s)
        for b in backends:
            if b.concurrency is not None:
                self.queues[b.name] = self._queue(b.name, b.concurrency, b.reserved, b.name, PARTITION)

    def limited(self, backend: str) -> bool:
        return backend in self.queues

    def try_acquire(self, backend: str, priority: int) -> Slot | None:
        return self.queues[backend].try_acquire(priority)

    async def acquire(self, backend: str, priority: int, deadline: float) -> Slot | None:
        return await self.queues[backend].acquire(priority, deadline)

    def queue(self, backend: str) -> SlotQueue | None:
        return self.queues.get(backend)


class CallerSlots(_Owner):
    """Profile `concurrency=N`: a caller's requests in flight across instances, with the same leased slots and
    priority queue as a backend's (rows in CALLER_PARTITION, keyed by the caller's limit key)."""

    async def acquire(self, key: str, limit: int, priority: int, deadline: float) -> Slot | None:
        """A slot of the caller's `limit`, waiting in priority order until `deadline` (monotonic); None after."""
        queue = self.queues.get(key)
        if queue is None:
            if len(self.queues) >= IDLE_QUEUES:
                self._drop_idle()
            queue = self.queues[key] = self._queue(key, limit, 0, encode_key(key), CALLER_PARTITION)
        queue.general.resize(limit)  # an operator may change the profile at run time
        return await queue.acquire(priority, deadline)

    def _drop_idle(self) -> None:
        for key, queue in list(self.queues.items()):
            if queue.idle:
                self._operations += queue.operations
                del self.queues[key]
