"""Rate limits (requests or tokens per sliding 60 s) shared by every instance, without a storage call per request.

Each instance leases a slice of a key's budget from its row (`leases.LeaseTable`), spends it in memory, and
leases again when the slice runs out or its lifetime ends; the new lease carries back what the old one really
admitted, so unspent budget is free again at once. Slices follow this instance's observed rate (a busy caller
far from its limit costs one storage write per lifetime) and shrink to a fair share of what is left as the
caller nears its limit. A lifetime is short (2 s) where the key is busy, and grows to up to 30 s where the
instance sees the key only now and then, so that a slice still serves a few requests: spread over 1,000
instances, a caller would otherwise cost a storage write or three per request. Tokens are reserved before
forwarding and settled afterwards, in memory.

If storage is unreachable, each instance enforces the full limit on its own (said once, and flagged on every
answer) and writes what it admitted meanwhile when storage is back.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .leases import (
    ACTIVE_S,
    BUCKETS_PER_S,
    WINDOW_S,
    LeaseContention,
    LeaseTable,
    Row,
    active_holders,
    add_to,
    bucket_of,
    counted,
    holder_second,
    merged,
    merged_holders,
    retry_after,
)
from .limit_terms import SLICE_REQUESTS, Grant, Pace, Refusal, Window, lease_terms
from .state_sync import STORAGE_ERRORS

__all__ = ["Limiter"]

log = logging.getLogger("gateway.limits")

LEASE_LIFETIME_S = 2.0  # a slice is spent within this, or its rest goes back with the next lease...
MAX_LIFETIME_S = WINDOW_S  # ...or, where the key is seldom seen here, within up to this (limit_terms.lease_terms)
RATE_SPAN_S = 5.0  # the observed rate is this instance's admissions over the last few seconds
REFUSAL_HOLD_S = 1.0  # after a refusal, refuse locally this long (or until budget frees) before asking again
OVER_S = 5.0  # refused this recently, a caller is over its limit: its slices need not be fair shares
STORAGE_RETRY_S = 5.0  # while storage is unreachable, try it again at most this often
IDLE_S = 2 * WINDOW_S  # a key unused this long is forgotten (its row keeps the truth)


@dataclass(slots=True)
class _Lease:
    serial: int
    expires: float
    amount: int
    remaining: int
    spent: dict[int, int] = field(default_factory=dict)  # admitted by bucket


@dataclass(slots=True)
class _Key:
    """One (kind, key) on this instance: its slice, what storage has not taken yet, what it admitted."""

    kind: str
    key: str
    limit: int
    seen: float  # first use on this instance (the rate's span until it has a few seconds of history)
    last: float = 0.0
    lease: _Lease | None = None
    pending: dict[int, int] = field(default_factory=dict)  # changes for the row (returns, local admissions)
    holding: dict[int, int] = field(default_factory=dict)  # changes for its holders (this instance's old lease out)
    history: dict[int, int] = field(default_factory=dict)  # this instance's admissions by bucket
    snapshot: dict[int, int] = field(default_factory=dict)  # the row's buckets at the last storage call
    refused_until: float = 0.0
    refused_at: float = -math.inf  # the last refusal: the caller is over its limit
    refused_free: int = 0  # what was left at that refusal: larger amounts are refused locally meanwhile
    waiting: int = 0  # amounts of requests waiting for the lease under way
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Limiter:
    """Per-instance slices of shared limits: `acquire`, `settle`, `window`, `close`; `operations` counts calls.

    `clock` is wall-clock seconds (`time.time`): buckets are absolute times every instance agrees on.
    """

    def __init__(
        self,
        table_client_factory: Callable[[], Any],
        instance_id: str,
        clock: Callable[[], float] = time.time,
        *,
        lifetime_s: float = LEASE_LIFETIME_S,
        max_lifetime_s: float = MAX_LIFETIME_S,
    ) -> None:
        self._table = LeaseTable(table_client_factory, instance_id)
        self.instance_id = instance_id
        self._clock = clock
        self.lifetime_s = lifetime_s
        self.max_lifetime_s = max(lifetime_s, max_lifetime_s)
        self._keys: dict[tuple[str, str], _Key] = {}
        self._serial = 0
        self._retry_at = 0.0
        self._swept_at = clock()
        self.storage_ok = True
        self.unexpected_errors = 0  # bugs met while leasing (logged with their traceback)

    @property
    def operations(self) -> int:
        """Storage calls made so far (the benchmark's storage operations per request)."""
        return self._table.operations

    async def acquire(self, key: str, kind: str, limit: int, amount: int) -> Grant | Refusal:
        """Admits `amount` (1 request, or a token estimate) under `limit` per 60 s, or refuses with a retry time."""
        now = self._clock()
        state = self._key(kind, key, limit, now)
        if amount > limit:
            return Refusal(WINDOW_S, self._used(state, now), limit, self.storage_ok)
        if amount <= 0:
            return Grant(key, kind, 0, now, 0, self.storage_ok)
        if (grant := self._spend(state, amount, now)) is not None:
            return grant
        if (answer := self._without_lease(state, amount, now)) is not None:
            return answer
        # A task of its own, so a caller that goes away mid-lease cannot leave the row and this instance's
        # bookkeeping out of step (the slice it leased is then counted, never spent: on the safe side).
        return await asyncio.shield(self._queued(state, amount))

    def settle(self, grant: Grant, used: int) -> None:
        """Corrects a token reservation with the reported usage, in memory (no storage call).

        The difference goes back to (or is taken from) the slice the grant came from if it is still this
        instance's; otherwise it is a change for the row, written with the next lease.
        """
        delta = used - grant.amount
        state = self._keys.get((grant.kind, grant.key))
        if delta == 0 or state is None:
            return
        bucket = bucket_of(grant.at)
        add_to(state.history, bucket, delta)
        lease = state.lease
        if lease is not None and grant.lease == lease.serial:
            lease.remaining -= delta
            add_to(lease.spent, bucket, delta)
        else:
            add_to(state.pending, bucket, delta)

    def window(self, key: str, kind: str) -> Window | None:
        """The last known use of a key's window; None for a key this instance has not seen lately."""
        state = self._keys.get((kind, key))
        if state is None:
            return None
        now = self._clock()
        buckets = self._known(state, now)
        edge = (now - WINDOW_S) * BUCKETS_PER_S
        oldest = min((b for b, a in buckets.items() if b > edge and a > 0), default=None)
        reset = 0.0 if oldest is None else max(0.0, oldest / BUCKETS_PER_S + WINDOW_S - now)
        return Window(self._used(state, now), state.limit, reset, self.storage_ok)

    def windows(self) -> dict[tuple[str, str], Window]:
        """Every key this instance knows, by (kind, key): the operator view."""
        return {k: w for k in list(self._keys) if (w := self.window(k[1], k[0])) is not None}

    def active_limits(self) -> list[tuple[str, str, int]]:
        """(kind, key, limit) of every key used here in the last `IDLE_S`: the callers' limits gauge."""
        edge = self._clock() - IDLE_S
        return [(s.kind, s.key, s.limit) for s in list(self._keys.values()) if s.last >= edge]

    def admitted_here(self, key: str, kind: str) -> int | None:
        """What this instance admitted for a key in the last 60 s, settled (exact); None for a key not seen lately."""
        state = self._keys.get((kind, key))
        return None if state is None else max(0, counted(state.history, self._clock()))

    async def read(self, key: str, kind: str) -> Row | None:
        """The stored row of a key (the operator view, tests)."""
        return await self._table.read(kind, key)

    async def close(self) -> None:
        """Gives back unspent slices and writes what storage has not taken yet, then closes the table client."""
        if self.storage_ok:
            for state in list(self._keys.values()):
                async with state.lock:
                    self._retire(state)
                    if state.pending or state.holding:
                        await self._give_back(state)
        await self._table.close()

    # ------------------------------------------------------------------ spending

    def _spend(self, state: _Key, amount: int, now: float) -> Grant | None:
        lease = state.lease
        if lease is None or now >= lease.expires or lease.remaining < amount:
            return None
        return self._take(state, lease, amount, now)

    def _take(self, state: _Key, lease: _Lease, amount: int, now: float) -> Grant:
        lease.remaining -= amount
        bucket = bucket_of(now)
        add_to(lease.spent, bucket, amount)
        add_to(state.history, bucket, amount)
        return Grant(state.key, state.kind, amount, now, lease.serial, True)

    def _without_lease(self, state: _Key, amount: int, now: float, probe: bool = False) -> Grant | Refusal | None:
        """The answer when asking storage is not worth it: storage down, or a recent refusal still holds.

        With `probe`, a request that finds storage due for another try claims that try for itself.
        """
        if not self.storage_ok:
            if now < self._retry_at:
                return self._local(state, amount, now)
            if probe:
                self._retry_at = now + STORAGE_RETRY_S  # one request tries storage again; the others stay local
        if now < state.refused_until and amount > state.refused_free:
            retry = retry_after(self._known(state, now), now, state.limit, amount)
            return Refusal(max(retry, state.refused_until - now), self._used(state, now), state.limit, True)
        return None

    def _local(self, state: _Key, amount: int, now: float) -> Grant | Refusal:
        """The full limit enforced on this instance alone, from what it admitted itself."""
        used = counted(state.history, now)
        if used + amount > state.limit:
            return Refusal(retry_after(state.history, now, state.limit, amount), used, state.limit, False)
        bucket = bucket_of(now)
        add_to(state.history, bucket, amount)
        add_to(state.pending, bucket, amount)  # for the row, once storage is back
        return Grant(state.key, state.kind, amount, now, 0, False)

    # ------------------------------------------------------------------ leasing

    async def _queued(self, state: _Key, amount: int) -> Grant | Refusal:
        """One lease request per key at a time; the requests behind it are served from its slice if they fit."""
        state.waiting += amount
        try:
            await state.lock.acquire()
        finally:
            state.waiting -= amount
        try:
            now = self._clock()
            if (grant := self._spend(state, amount, now)) is not None:
                return grant
            if (answer := self._without_lease(state, amount, now, probe=True)) is not None:
                return answer
            return await self._lease(state, amount)
        finally:
            state.lock.release()

    async def _lease(self, state: _Key, amount: int) -> Grant | Refusal:
        """Returns the current slice and leases a new one with room for `amount` (one conditional write)."""
        self._retire(state)
        applied = dict(state.pending)  # what this write carries back; settles may add to `pending` meanwhile
        leaving = dict(state.holding)
        pace = self._pace(state, amount, self._clock())
        decided: list[Any] = []  # the last decision: (size, now, buckets, lifetime)

        def decide(row: Row, fresh: bool) -> Row | None:
            now = self._clock()
            buckets = merged(row.buckets, applied, now)
            holders = merged_holders(row.holders, leaving, now)
            free = state.limit - counted(buckets, now)
            sharing = active_holders(holders, now)
            over = now - state.refused_at < OVER_S
            size, lifetime = lease_terms(amount, amount + state.waiting, pace, free, sharing, state.limit, over)
            decided[:] = [size, now, buckets, lifetime]
            if size:
                expires = now + lifetime
                add_to(buckets, bucket_of(expires), size)
                add_to(holders, holder_second(expires), 1)
            elif not applied and not leaving:
                return None  # a refusal with nothing to give back: no write
            return Row(buckets, holders, state.limit)

        if await self._write(state, applied, decide, leaving) is None:
            return self._local(state, amount, self._clock())
        size, now, buckets, lifetime = decided
        if not size:
            state.refused_free = state.limit - counted(buckets, now)
            retry = retry_after(buckets, now, state.limit, amount)
            state.refused_until = now + min(retry, REFUSAL_HOLD_S)
            state.refused_at = now
            return Refusal(retry, counted(buckets, now), state.limit, True)
        self._serial += 1
        state.lease = _Lease(self._serial, now + lifetime, size, size)
        state.refused_until = 0.0
        # The request that asked for the slice is admitted even if storage took longer than its lifetime; its
        # bucket is its own admission time, so the row gets it right when this slice goes back.
        return self._take(state, state.lease, amount, self._clock())

    async def _write(
        self,
        state: _Key,
        applied: dict[int, int],
        decide: Callable[[Row, bool], Row | None],
        leaving: dict[int, int],
    ) -> Row | None:
        """One transaction on the key's row carrying `applied`/`leaving` (`pending`/`holding`); None: it failed."""
        try:
            row = await self._table.transact(state.kind, state.key, decide)
        except Exception as exc:
            self._failed(exc)
            return None
        for bucket, change in applied.items():  # what the row took; settles may have added more meanwhile
            add_to(state.pending, bucket, -change)
        for second, change in leaving.items():
            add_to(state.holding, second, -change)
        state.snapshot = row.buckets
        if not self.storage_ok:
            log.warning("Limit storage is reachable again; limits are shared across instances again")
            self.storage_ok = True
        return row

    async def _give_back(self, state: _Key) -> None:
        """Writes what storage has not taken yet, without a new slice, and leaves the holders."""
        applied, leaving = dict(state.pending), dict(state.holding)

        def decide(row: Row, fresh: bool) -> Row | None:
            now = self._clock()
            return Row(merged(row.buckets, applied, now), merged_holders(row.holders, leaving, now), state.limit)

        await self._write(state, applied, decide, leaving)

    def _retire(self, state: _Key) -> None:
        """Ends the current slice: its reservation leaves the row and what it admitted takes its place."""
        lease, state.lease = state.lease, None
        if lease is not None:
            add_to(state.pending, bucket_of(lease.expires), -lease.amount)
            add_to(state.holding, holder_second(lease.expires), -1)
            for bucket, amount in lease.spent.items():
                add_to(state.pending, bucket, amount)

    def _failed(self, exc: Exception) -> None:
        if isinstance(exc, LeaseContention):
            log.info("%s; deciding this request locally", exc)
        elif not isinstance(exc, STORAGE_ERRORS):
            self.unexpected_errors += 1
            log.error("Unexpected error while leasing a limit slice", exc_info=exc)
        else:
            if self.storage_ok:
                log.warning(
                    "Limit storage unreachable (%s); each instance enforces the full limits alone", type(exc).__name__
                )
            self.storage_ok = False
            self._retry_at = self._clock() + STORAGE_RETRY_S

    # ------------------------------------------------------------------ views and housekeeping

    def _pace(self, state: _Key, amount: int, now: float) -> Pace:
        """This instance's rates for the key (the minute's only where the recent one is too slow to matter)."""
        rate = self._rate(state, now)
        busy = rate * self.lifetime_s >= SLICE_REQUESTS * amount
        return Pace(rate, rate if busy else self._rate(state, now, WINDOW_S), self.lifetime_s, self.max_lifetime_s)

    def _rate(self, state: _Key, now: float, span_s: float = RATE_SPAN_S) -> float:
        """This instance's admissions per second for the key, over the last few seconds (or `span_s`)."""
        span = min(span_s, now - state.seen + 1.0 / BUCKETS_PER_S)  # the bucket of its first use included
        edge = (now - span) * BUCKETS_PER_S
        return sum(a for b, a in state.history.items() if b > edge) / span

    def _known(self, state: _Key, now: float) -> dict[int, int]:
        """The row's buckets as last seen plus this instance's changes since (its own history if storage is down)."""
        if not self.storage_ok:
            return state.history
        return merged(state.snapshot, state.pending, now)

    def _used(self, state: _Key, now: float) -> int:
        used = counted(self._known(state, now), now)
        lease = state.lease
        if self.storage_ok and lease is not None and now < lease.expires:
            used -= max(0, lease.remaining)  # still this instance's to spend
        return max(0, used)

    def _key(self, kind: str, key: str, limit: int, now: float) -> _Key:
        if now - self._swept_at > WINDOW_S:
            self._sweep(now)
        state = self._keys.get((kind, key))
        if state is None:
            state = self._keys[(kind, key)] = _Key(kind, key, limit, now)
        state.limit, state.last = limit, now
        edge = (now - WINDOW_S - RATE_SPAN_S) * BUCKETS_PER_S
        if len(state.history) > (WINDOW_S + 2 * RATE_SPAN_S) * BUCKETS_PER_S:
            state.history = {b: a for b, a in state.history.items() if b > edge}
        if len(state.pending) > (WINDOW_S + 2 * RATE_SPAN_S) * BUCKETS_PER_S:  # a long outage
            state.pending = {b: a for b, a in state.pending.items() if b > edge}
            state.holding = {s: c for s, c in state.holding.items() if s > now - ACTIVE_S}
        return state

    def _sweep(self, now: float) -> None:
        """Forgets keys idle for a while: memory stays bounded by the callers of the last minutes."""
        self._swept_at = now
        for place, state in list(self._keys.items()):
            # Idle this long, its slice and its changes for the row are all past the window: nothing is lost.
            if state.last < now - IDLE_S and not state.lock.locked():
                del self._keys[place]
                self._table.forget(state.kind, state.key)
