"""Shared-state sync: the pool's breakers and probe results, kept in step with the state table.

Reads happen at most every `GATEWAY_STATE_REFRESH_MS`, in the background so requests do not wait: the version
entity (one small row), then only the buckets of rows whose counter moved (state_versions.py). While requests
come, the next read starts on a timer one interval after the last one ended, not at the first request after
that: waiting for a request added its gap to the interval, and at 100 instances the last one to learn of a
change did so about 1.7 s after it (docs/capacity.md). An idle instance stops reading. A full read
happens on the first refresh, after any failed one (a storage outage), and about once a minute
(`RESYNC_S`), so a bump lost with a writer that died between its row and its bump leaves no instance stale
for long. Writes happen only on transitions, in the background, ETag-conditional with merges. The half-open
trial claim is the one storage call a request awaits (it must know it holds the trial); its bump does not.

If storage is unreachable (a storage or network error) the pool keeps working on local state, says so once,
and pushes its transitions when storage comes back. Any other exception is a bug: it is logged with its
traceback and counted, never mistaken for an outage.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

from azure.core.exceptions import AzureError

from .breakers import CLOSED, HALF_OPEN, SharedBreaker
from .pool_state import PoolState, Target, _Scope
from .state_rows import BREAKER, RowView, Snapshot
from .state_store import Health, StateStore
from .state_versions import Versions, changed_buckets
from .upstream import NETWORK_ERRORS

__all__ = ["STORAGE_ERRORS", "SharedState"]

log = logging.getLogger("gateway.pool")

# What "storage is unreachable" means (Azure Storage's errors and the network's, as the transport meets them);
# anything else is a programming error.
STORAGE_ERRORS: tuple[type[BaseException], ...] = (AzureError, *NETWORK_ERRORS)
TRIAL_TTL_S = 30.0  # a half-open trial claim lapses after this, in case its holder died
STALE_FACTOR = 5  # state older than this many refresh intervals is awaited, not refreshed in the background
INITIAL_LOAD_TIMEOUT_S = 2.0
RESYNC_S = 60.0  # a full read at least this often (jittered by 10 %, so instances do not read in step)

Change = Callable[[SharedBreaker], SharedBreaker | None]


class SharedState:
    def __init__(self, state: PoolState, store: StateStore | None) -> None:
        self._state = state
        self.store = store
        self.loaded_at: float | None = None
        self.storage_ok = True
        self.unexpected_errors = 0  # bugs seen while talking to storage (logged with their traceback)
        self._refresh_task: asyncio.Task[None] | None = None
        self._pending: dict[str, SharedBreaker] = {}  # transitions storage has not taken yet, by scope key
        self._inflight: dict[str, int] = {}  # breaker writes under way, by scope key
        self._epochs: dict[str, int] = {}  # operator changes so far, by scope key: older transitions yield to them
        self._tasks: set[asyncio.Task[None]] = set()
        self.listeners: list[Callable[[Snapshot], None]] = []  # others that share these reads (governance)
        self.view = RowView()  # the table as last read
        self.seen: Versions | None = None  # the counters the view reflects; None: the next read is a full one
        self.resync_s = RESYNC_S
        self._full_at: float | None = None
        self._jitter = 1.0
        self.reads = {"full": 0, "partial": 0, "buckets": 0}  # refreshes by kind, and buckets re-read
        self._asked = False  # a request came since the last refresh began: the next one is due on time
        self._timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ reading

    async def refresh_if_due(self) -> None:
        """Keeps shared state at most one refresh interval old, without making requests wait for it.

        Only the first load and a long-idle instance (state older than a few intervals) wait, briefly,
        so a fresh instance never starts by sending to a backend everyone else knows is open.
        """
        if self.store is None:
            return
        self._asked = True
        interval = self._state.settings.state_refresh_s
        age = None if self.loaded_at is None else time.monotonic() - self.loaded_at
        if age is not None and age < interval:
            return
        if self._refresh_task is None or self._refresh_task.done():
            self._refresh_task = asyncio.ensure_future(self.refresh())
        if age is None or age > STALE_FACTOR * interval:
            try:
                await asyncio.wait_for(asyncio.shield(self._refresh_task), INITIAL_LOAD_TIMEOUT_S)
            except TimeoutError:
                pass  # go on with what we know; the refresh completes in the background

    async def refresh(self) -> None:
        """The changed rows (or all of them, when a full read is due); then the transitions storage missed."""
        assert self.store is not None
        self._asked = False
        try:
            if self.store.pending_bumps:
                await self.store.flush_bumps()
            await self._read(self.store)
        except Exception as exc:
            self._failed(exc, "refresh")
            self.seen = None  # whatever we missed meanwhile: the next read is a full one
            self.loaded_at = time.monotonic()  # retry after one interval, not on every request
            self._next_on_time()
            return
        if not self.storage_ok:
            log.warning("State storage is reachable again; resynchronising %d pending change(s)", len(self._pending))
            self.storage_ok = True
        snapshot = self.view.snapshot()
        breakers, health = snapshot.breakers, snapshot.health
        for key in breakers:
            self._state.scope(key)  # deployments another instance learnt about
        pending, self._pending = self._pending, {}
        for scope in self._state.scopes():
            remote = breakers.get(scope.key, SharedBreaker())
            if self._inflight.get(scope.key) and scope.key not in pending:
                continue  # our own write is on its way: it sets the state when it lands (a close, too)
            if scope.key in pending:
                # Our own transition has not reached storage yet: an open-until only ever extends.
                scope.breaker = scope.breaker.merged(remote)
            else:
                scope.breaker = remote  # storage is the truth (operator resets and enables included)
            if scope.key in pending:
                mine = pending[scope.key]
                self.persist(scope.key, mine.merged)
        for name, probe in health.items():
            if (backend := self._state.backends.get(name)) is not None:
                backend.health = probe
                if probe.latency_ms is not None and backend.backend.mode == "apim":
                    backend.observe_latency(probe.latency_ms)
        for listener in self.listeners:
            listener(snapshot)  # governance: suspensions and profile overrides (storage is the truth, as above)
        self.loaded_at = time.monotonic()
        self._next_on_time()

    def _next_on_time(self) -> None:
        """Sets the timer for the next refresh, one interval from now; it reads only if a request came since
        this refresh began (an idle instance makes no storage call)."""
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._state.settings.state_refresh_s, self._on_time)

    def _on_time(self) -> None:
        self._timer = None
        if self._asked and (self._refresh_task is None or self._refresh_task.done()):
            self._refresh_task = asyncio.ensure_future(self.refresh())

    async def _read(self, store: StateStore) -> bool:
        """Brings the view up to date: the version entity, then changed buckets or everything. True if the
        view changed. The counters are read first, so rows read after them are at least that new."""
        now = time.monotonic()
        full_due = self._full_at is None or now - self._full_at >= self.resync_s * self._jitter or not self.storage_ok
        current = await store.read_versions()
        buckets = None if full_due else changed_buckets(self.seen, current)
        if buckets is None:
            found, legacy = await store.read_all()
            changed = self.view.replace_all(found)
            self._full_at, self._jitter = now, random.uniform(0.9, 1.1)
            self.reads["full"] += 1
            if legacy:
                self._spawn(self._migrate(legacy))
        else:
            self.reads["partial"] += 1
            self.reads["buckets"] += len(buckets)
            changed = False
            if buckets:
                for bucket, rows in (await store.read_buckets(buckets)).items():
                    changed = self.view.replace_bucket(bucket, rows) or changed
        self.seen = current
        return changed

    async def _migrate(self, legacy: Any) -> None:
        assert self.store is not None
        try:
            await self.store.migrate(legacy)
        except Exception as exc:
            self._failed(exc, "migration")

    # ------------------------------------------------------------------ the half-open trial

    async def claim_trial(self, target: Target) -> bool:
        """True when the attempt may go: for each half-open scope of the target, this instance holds the trial."""
        for scope in (self._state.backends[target.backend.name], self._state.deployment(target)):
            if not await self._claim(scope):
                return False
        return True

    async def _claim(self, scope: _Scope) -> bool:
        state, now = self._state, self._state.clock()
        if scope.breaker.status(now) != HALF_OPEN or scope.breaker.trial_owner == state.instance_id:
            return True
        until = now + TRIAL_TTL_S

        def claim(current: SharedBreaker) -> SharedBreaker | None:
            if current.status(now) != HALF_OPEN:
                return None if current.status(now) != CLOSED else current
            if not current.trial_free(now, state.instance_id):
                return None
            return current.claimed(state.instance_id, until)

        if self.store is not None and self.storage_ok:
            try:
                result = await self.store.update_breaker(scope.key, claim, bump_now=False)
            except Exception as exc:  # storage trouble: decide locally
                self._failed(exc, "trial claim")
            else:
                if self.store.pending_bumps:
                    self._spawn(self._flush_bumps())  # others learn of the claim; this request need not wait
                if result is None:
                    return False  # another instance holds the trial
                scope.breaker = result
                return True
        scope.breaker = scope.breaker.claimed(state.instance_id, until)
        return True

    # ------------------------------------------------------------------ writing

    def persist(self, key: str, change: Change) -> None:
        """Writes a transition in the background; the request that caused it does not wait."""
        if self.store is None:
            return
        if not self.storage_ok:
            self._pending[key] = self._breaker(key)
            return
        self._spawn(self._write(key, change))

    async def write_now(self, key: str, change: Change) -> None:
        """Writes an operator's change and waits for it."""
        if self.store is not None:
            await self._write(key, change)

    async def reset(self, name: str) -> None:
        """Closes a backend's breaker and those of its deployments, everywhere (operator)."""
        backend = self._state.backends[name]
        backend.failures = self._state.failure_window()
        for scope in (backend, *self._state.deployments_of(name)):
            if scope is backend or scope.breaker.tripped:
                self._operator_change(scope.key)
                scope.breaker = scope.breaker.closed()
                await self.write_now(scope.key, lambda current: current.closed())

    async def set_disabled(self, name: str, disabled: bool) -> None:
        """Takes a backend out of (or back into) rotation on every instance (operator)."""
        backend = self._state.backends[name]
        self._operator_change(name)
        backend.breaker = replace(backend.breaker, disabled=disabled)
        await self.write_now(name, lambda current: replace(current, disabled=disabled))

    def _operator_change(self, key: str) -> None:
        """An operator's change wins over the transitions seen before it: a write still retrying against slow
        storage, or one pending since an outage, would otherwise land after a reset and open the breaker again."""
        self._epochs[key] = self._epochs.get(key, 0) + 1
        self._pending.pop(key, None)

    async def share_health(self, probed: dict[str, Health]) -> None:
        """Keeps probe results here and writes them for the other instances (a failed write is logged only)."""
        for name, probe in probed.items():
            self._state.backends[name].health = probe
            if self.store is not None and self.storage_ok:
                try:
                    await self.store.write_health(name, probe)
                except Exception as exc:
                    self._failed(exc, "probe write")

    async def _write(self, key: str, change: Change) -> None:
        assert self.store is not None
        epoch = self._epochs.get(key, 0)

        def unless_overtaken(current: SharedBreaker) -> SharedBreaker | None:
            return change(current) if self._epochs.get(key, 0) == epoch else None  # an operator changed it since

        self._inflight[key] = self._inflight.get(key, 0) + 1
        try:
            stored = await self.store.update_breaker(key, unless_overtaken)
        except Exception as exc:
            self._failed(exc, "breaker write")
            if self._epochs.get(key, 0) == epoch:
                self._pending[key] = self._breaker(key)  # written once storage is back
            return
        finally:
            self._inflight[key] -= 1
        if self._epochs.get(key, 0) != epoch:
            return  # an operator changed it while this write was under way: theirs is what this instance holds
        if stored is not None:
            self.view.put(BREAKER, key, stored)  # a refresh before the bucket's re-read must not undo it
        scope = self._state.scope(key)
        if scope is None or stored is None:
            return
        local = scope.breaker
        if not (local.tripped and local.open_until > stored.open_until):
            scope.breaker = stored  # unless a later local transition is on its way

    async def _flush_bumps(self) -> None:
        assert self.store is not None
        try:
            await self.store.flush_bumps()
        except Exception as exc:
            self._failed(exc, "version bump")

    def _breaker(self, key: str) -> SharedBreaker:
        scope = self._state.scope(key)
        return scope.breaker if scope is not None else SharedBreaker()

    # ------------------------------------------------------------------ failures and housekeeping

    def _failed(self, exc: Exception, during: str) -> None:
        if not isinstance(exc, STORAGE_ERRORS):
            self.unexpected_errors += 1
            log.error("Unexpected error during %s of shared state", during, exc_info=exc)
            return
        if self.storage_ok:
            log.warning("State storage unreachable (%s); continuing on local state", type(exc).__name__)
        self.storage_ok = False

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def settle(self) -> None:
        """Waits for background writes and refreshes (shutdown, and tests that inspect storage); the refresh
        timer stops until the next request."""
        while self._tasks or (self._refresh_task is not None and not self._refresh_task.done()):
            await asyncio.gather(*self._tasks, *([self._refresh_task] if self._refresh_task else []))
        if self._timer is not None:  # the next request sets it again
            self._timer.cancel()
            self._timer = None
