"""The backend pool: which backend serves the next attempt, and what every answer teaches it.

Priority always wins: a lower tier is used only when every backend of the better one is open, cooling down,
disabled, down (probe) or out of capacity. Within a tier a strategy chooses (`priority`, `weighted`,
`round-robin`, `random`, `latency`, `capacity`). Breaker state is shared through the state store: refreshed
with one query at most every `GATEWAY_STATE_REFRESH_MS` (in the background, so requests do not wait) and
written only on transitions. If storage is unreachable the pool keeps working on local state, says so once,
and pushes its transitions when storage comes back.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, replace
from typing import Any

from .breakers import CLOSED, DISABLED, HALF_OPEN, OPEN, FailureWindow, SharedBreaker
from .config import Backend, Settings
from .state_store import Health, StateStore

__all__ = ["BackendPool", "BackendRuntime", "Target"]

log = logging.getLogger("gateway.pool")

EWMA_ALPHA = 0.3  # weight of the newest latency sample
TRIAL_TTL_S = 30.0  # a half-open trial claim lapses after this, in case its holder died
STALE_FACTOR = 5  # state older than this many refresh intervals is awaited, not refreshed in the background
INITIAL_LOAD_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class Target:
    """One backend and the deployment name it uses for the requested model."""

    backend: Backend
    deployment: str


class BackendRuntime:
    """What this instance knows about one backend right now."""

    __slots__ = (
        "backend", "breaker", "capacity_at", "failures", "health", "last_error", "last_error_at", "last_status",
        "remaining_requests", "remaining_tokens", "tokens_per_s", "ttfb_ms",
    )  # fmt: skip

    def __init__(self, backend: Backend, failures: FailureWindow) -> None:
        self.backend = backend
        self.breaker = SharedBreaker()
        self.failures = failures
        self.ttfb_ms: float | None = None  # EWMA of time to first byte (answers and probes)
        self.tokens_per_s: float | None = None  # EWMA of generation speed, for "will it finish in time?"
        self.remaining_tokens: int | None = None
        self.remaining_requests: int | None = None
        self.capacity_at = 0.0
        self.health: Health | None = None
        self.last_status: int | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None

    def observe_latency(self, ms: float) -> None:
        self.ttfb_ms = ms if self.ttfb_ms is None else (1 - EWMA_ALPHA) * self.ttfb_ms + EWMA_ALPHA * ms

    def capacity(self, now: float, window_s: float) -> tuple[float, float]:
        """Remaining (tokens, requests); unknown or older than the rate-limit window counts as plenty."""
        if now - self.capacity_at > window_s:
            return float("inf"), float("inf")
        tokens = float("inf") if self.remaining_tokens is None else float(self.remaining_tokens)
        requests = float("inf") if self.remaining_requests is None else float(self.remaining_requests)
        return tokens, requests

    def probed_down(self) -> bool:
        """APIM-mode backends that failed their last probe; direct ones are healthy until answers say otherwise."""
        return self.backend.mode == "apim" and self.health is not None and not self.health.ok


class BackendPool:
    def __init__(
        self,
        settings: Settings,
        store: StateStore | None = None,
        *,
        instance_id: str = "local",
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.instance_id = instance_id
        self.clock = clock
        self._rng = rng or random.Random()
        self.runtimes: dict[str, BackendRuntime] = {
            b.name: BackendRuntime(b, FailureWindow(settings.breaker_failures, settings.breaker_window_s))
            for b in settings.backends
        }
        self._ordered = sorted(settings.backends, key=lambda b: (b.priority, -b.weight))  # stable: config order
        self._cache: dict[str, tuple[Target, ...]] = {}
        self._strategy_state: dict[tuple[str, int], Any] = {}
        # Shared-state bookkeeping.
        self.loaded_at: float | None = None
        self.storage_ok = True
        self._refresh_task: asyncio.Task | None = None
        self._pending: dict[str, SharedBreaker] = {}  # transitions storage has not taken yet
        self._inflight: dict[str, int] = {}  # breaker writes under way, by backend
        self._tasks: set[asyncio.Task] = set()

    # ------------------------------------------------------------------ choosing

    def candidates(self, model: str) -> tuple[Target, ...]:
        """Every target able to serve `model`, best priority first; empty when no backend serves it."""
        cached = self._cache.get(model)
        if cached is None:
            cached = tuple(
                Target(b, deployment) for b in self._ordered if (deployment := b.deployment_for(model)) is not None
            )
            if len(self._cache) < 1024:  # bounded: unknown names from clients must not grow memory
                self._cache[model] = cached
        return cached

    def status(self, name: str, now: float | None = None) -> str:
        return self.runtimes[name].breaker.status(self.clock() if now is None else now)

    def available(self, runtime: BackendRuntime, now: float) -> bool:
        status = runtime.breaker.status(now)
        if status in (OPEN, DISABLED) or runtime.probed_down():
            return False
        if status == HALF_OPEN and not runtime.breaker.trial_free(now, self.instance_id):
            return False
        tokens, requests = runtime.capacity(now, self.settings.capacity_window_s)
        return tokens > 0 and requests > 0

    def choose(self, model: str, exclude: set[str] | frozenset[str] = frozenset()) -> Target | None:
        """The next target for `model`: the best tier with an available backend, then the model's strategy."""
        now = self.clock()
        targets = self.candidates(model)
        tier: list[Target] = []
        for target in targets:
            if tier and target.backend.priority != tier[0].backend.priority:
                break  # the best tier with anything available wins
            runtime = self.runtimes[target.backend.name]
            if target.backend.name not in exclude and self.available(runtime, now):
                tier.append(target)
        if not tier:
            return None
        if len(tier) == 1:
            return tier[0]
        return self._pick(self.settings.strategy_for(model), (model, tier[0].backend.priority), tier, now)

    def earliest_open_until(self, model: str, exclude: set[str] | frozenset[str] = frozenset()) -> float | None:
        """When the first cooling (open) backend for `model` frees up; None if none is merely cooling."""
        now = self.clock()
        times = [
            rt.breaker.open_until
            for t in self.candidates(model)
            if t.backend.name not in exclude
            and (rt := self.runtimes[t.backend.name]).breaker.status(now) == OPEN
            and not rt.probed_down()
        ]
        return min(times) if times else None

    def _pick(self, strategy: str, key: tuple[str, int], tier: list[Target], now: float) -> Target:
        if strategy == "weighted":
            return self._smooth_weighted(key, tier)
        if strategy == "round-robin":
            turn = self._strategy_state.get(key, 0)
            self._strategy_state[key] = turn + 1
            return tier[turn % len(tier)]
        if strategy == "random":
            return self._rng.choice(tier)
        if strategy == "latency":
            if self._rng.random() < self.settings.latency_explore:
                return self._rng.choice(tier)  # keep re-measuring the others, so a recovered backend comes back
            return min(tier, key=lambda t: self.runtimes[t.backend.name].ttfb_ms or 0.0)
        if strategy == "capacity":
            window = self.settings.capacity_window_s
            return max(tier, key=lambda t: self.runtimes[t.backend.name].capacity(now, window))
        return tier[0]  # priority: the configuration's order (weight first) within the tier

    def _smooth_weighted(self, key: tuple[str, int], tier: list[Target]) -> Target:
        """nginx's smooth weighted round-robin: exact proportions, no bursts to one backend."""
        current: dict[str, int] = self._strategy_state.setdefault(("weighted", *key), {})
        weights = {t.backend.name: t.backend.weight for t in tier}
        if not any(weights.values()):
            weights = dict.fromkeys(weights, 1)
        for name, weight in weights.items():
            current[name] = current.get(name, 0) + weight
        best = max(tier, key=lambda t: current[t.backend.name])
        current[best.backend.name] -= sum(weights.values())
        return best

    # ------------------------------------------------------------------ half-open trial

    async def acquire(self, target: Target) -> bool:
        """True when the attempt may go. In half-open only the instance that claims the trial may send."""
        runtime = self.runtimes[target.backend.name]
        now = self.clock()
        if runtime.breaker.status(now) != HALF_OPEN or runtime.breaker.trial_owner == self.instance_id:
            return True
        until = now + TRIAL_TTL_S

        def claim(current: SharedBreaker) -> SharedBreaker | None:
            if current.status(now) != HALF_OPEN:
                return None if current.status(now) != CLOSED else current
            if not current.trial_free(now, self.instance_id):
                return None
            return current.claimed(self.instance_id, until)

        if self.store is not None and self.storage_ok:
            try:
                result = await self.store.update_breaker(target.backend.name, claim)
            except Exception as exc:  # storage trouble: decide locally
                self._storage_failed(exc)
            else:
                if result is None:
                    return False  # another instance holds the trial
                runtime.breaker = result
                return True
        runtime.breaker = runtime.breaker.claimed(self.instance_id, until)
        return True

    # ------------------------------------------------------------------ learning from answers

    def on_answer(
        self, target: Target, status: int, ttfb_ms: float, headers: Mapping[str, str], retry_after_s: float | None
    ) -> None:
        """Every answer from a backend: latency, capacity headers, and breaker transitions."""
        runtime = self.runtimes[target.backend.name]
        now = self.clock()
        runtime.last_status = status
        runtime.observe_latency(ttfb_ms)
        self._observe_capacity(runtime, headers, now)
        if status == 429:
            wait = retry_after_s if retry_after_s is not None else self.settings.default_retry_after_s
            self._note_error(runtime, f"429 (retry after {wait:g} s)", now)
            self._trip(runtime, now + wait, "429")
        elif status == 408 or status >= 500:
            self._note_error(runtime, f"HTTP {status}", now)
            self._failure(runtime, now, f"HTTP {status}")
        else:  # success, or the client's own mistake (4xx): never counts against the backend
            if runtime.breaker.tripped and runtime.breaker.status(now) == HALF_OPEN:
                self._close(runtime)

    def observe_generation(self, target: Target, completion_tokens: int, seconds: float) -> None:
        """Generation speed from a finished answer (only answers long enough to say something)."""
        if completion_tokens >= 16 and seconds > 0:
            runtime = self.runtimes[target.backend.name]
            rate = completion_tokens / seconds
            runtime.tokens_per_s = rate if runtime.tokens_per_s is None else 0.7 * runtime.tokens_per_s + 0.3 * rate

    def tokens_per_second(self, targets: tuple[Target, ...]) -> float | None:
        """The best observed generation speed among `targets`, None when none was observed yet."""
        rates = [r for t in targets if (r := self.runtimes[t.backend.name].tokens_per_s)]
        return max(rates) if rates else None

    def on_transport_error(self, target: Target, kind: str) -> None:
        """Timeouts and connection errors count as failures toward the breaker."""
        runtime = self.runtimes[target.backend.name]
        now = self.clock()
        self._note_error(runtime, kind, now)
        self._failure(runtime, now, kind)

    def _observe_capacity(self, runtime: BackendRuntime, headers: Mapping[str, str], now: float) -> None:
        tokens = headers.get("x-ratelimit-remaining-tokens")
        requests = headers.get("x-ratelimit-remaining-requests")
        if tokens is None and requests is None:
            return
        runtime.remaining_tokens = _int_or_none(tokens)
        runtime.remaining_requests = _int_or_none(requests)
        runtime.capacity_at = now

    @staticmethod
    def _note_error(runtime: BackendRuntime, error: str, now: float) -> None:
        runtime.last_error, runtime.last_error_at = error, now

    def _failure(self, runtime: BackendRuntime, now: float, reason: str) -> None:
        if runtime.breaker.tripped and runtime.breaker.status(now) == HALF_OPEN:
            self._trip(runtime, now + self.settings.breaker_cooldown_s, f"trial failed: {reason}")
        elif runtime.failures.add(now):
            self._trip(runtime, now + self.settings.breaker_cooldown_s, f"{self.settings.breaker_failures} failures")

    def _trip(self, runtime: BackendRuntime, until: float, reason: str) -> None:
        if runtime.breaker.status(self.clock()) == OPEN and runtime.breaker.open_until >= until:
            return  # already open at least that long: no transition, no write
        runtime.breaker = runtime.breaker.tripped_until(until, reason)
        log.warning("Breaker of %s open for %.1f s (%s)", runtime.backend.name, until - self.clock(), reason)
        self._persist(runtime.backend.name, lambda current: current.extended_to(until, reason))

    def _close(self, runtime: BackendRuntime) -> None:
        runtime.breaker = runtime.breaker.closed()
        log.info("Breaker of %s closed (trial succeeded)", runtime.backend.name)
        now = self.clock()

        def close(current: SharedBreaker) -> SharedBreaker | None:
            # Someone re-opened it meanwhile (a fresh 429): their later open-until wins.
            return current.closed() if current.open_until <= now else None

        self._persist(runtime.backend.name, close)

    # ------------------------------------------------------------------ operator actions

    async def reset(self, name: str) -> None:
        """Closes the breaker everywhere (admin)."""
        runtime = self.runtimes[name]
        runtime.breaker = runtime.breaker.closed()
        runtime.failures = FailureWindow(self.settings.breaker_failures, self.settings.breaker_window_s)
        await self._write_now(name, lambda current: current.closed())

    async def set_disabled(self, name: str, disabled: bool) -> None:
        """Takes a backend out of (or back into) rotation on every instance (admin)."""
        runtime = self.runtimes[name]
        runtime.breaker = replace(runtime.breaker, disabled=disabled)
        await self._write_now(name, lambda current: replace(current, disabled=disabled))

    def describe(self) -> list[dict[str, Any]]:
        """The admin view: configuration (secrets masked) and live state of every backend."""
        now = self.clock()
        view = []
        for runtime in self.runtimes.values():
            b = runtime.breaker
            tokens, requests = runtime.capacity(now, self.settings.capacity_window_s)
            view.append(
                {
                    "config": runtime.backend.masked(),
                    "breaker": b.status(now),
                    "open_until": b.open_until if b.status(now) == OPEN else None,
                    "reason": b.reason or None,
                    "disabled": b.disabled,
                    "latency_ewma_ms": None if runtime.ttfb_ms is None else round(runtime.ttfb_ms, 2),
                    "last_status": runtime.last_status,
                    "last_error": runtime.last_error,
                    "last_error_at": runtime.last_error_at,
                    "remaining_tokens": None if tokens == float("inf") else int(tokens),
                    "remaining_requests": None if requests == float("inf") else int(requests),
                    "probe": None
                    if runtime.health is None
                    else {
                        "ok": runtime.health.ok,
                        "latency_ms": runtime.health.latency_ms,
                        "probed_at": runtime.health.probed_at,
                        "error": runtime.health.error or None,
                    },
                }
            )
        return view

    # ------------------------------------------------------------------ shared state

    async def refresh_if_due(self) -> None:
        """Keeps shared state at most one refresh interval old, without making requests wait for it.

        Only the first load and a long-idle instance (state older than a few intervals) wait, briefly,
        so a fresh instance never starts by sending to a backend everyone else knows is open.
        """
        if self.store is None:
            return
        now = time.monotonic()
        age = None if self.loaded_at is None else now - self.loaded_at
        if age is not None and age < self.settings.state_refresh_s:
            return
        if self._refresh_task is None or self._refresh_task.done():
            self._refresh_task = asyncio.ensure_future(self.refresh())
        if age is None or age > STALE_FACTOR * self.settings.state_refresh_s:
            try:
                await asyncio.wait_for(asyncio.shield(self._refresh_task), INITIAL_LOAD_TIMEOUT_S)
            except TimeoutError:
                pass  # go on with what we know; the refresh completes in the background

    async def refresh(self) -> None:
        """One query for the whole table; then the transitions storage missed while it was away."""
        assert self.store is not None
        try:
            breakers, health = await self.store.load()
        except Exception as exc:
            self._storage_failed(exc)
            self.loaded_at = time.monotonic()  # retry after one interval, not on every request
            return
        if not self.storage_ok:
            log.warning("State storage is reachable again; resynchronising %d pending change(s)", len(self._pending))
            self.storage_ok = True
        pending, self._pending = self._pending, {}
        for name, runtime in self.runtimes.items():
            remote = breakers.get(name, SharedBreaker())
            if name in pending or self._inflight.get(name):
                # Our own transition has not reached storage yet: an open-until only ever extends.
                runtime.breaker = runtime.breaker.merged(remote)
            else:
                runtime.breaker = remote  # storage is the truth (admin resets and enables included)
            if name in pending:
                mine = pending[name]
                self._persist(name, lambda current, mine=mine: mine.merged(current))
            if name in health:
                runtime.health = health[name]
                if health[name].latency_ms is not None and runtime.backend.mode == "apim":
                    runtime.observe_latency(health[name].latency_ms)
        self.loaded_at = time.monotonic()

    def _persist(self, name: str, change: Callable[[SharedBreaker], SharedBreaker | None]) -> None:
        """Writes a transition in the background; the request that caused it does not wait."""
        if self.store is None:
            return
        if not self.storage_ok:
            self._pending[name] = self.runtimes[name].breaker
            return
        self._spawn(self._write(name, change))

    async def _write(self, name: str, change: Callable[[SharedBreaker], SharedBreaker | None]) -> None:
        assert self.store is not None
        self._inflight[name] = self._inflight.get(name, 0) + 1
        try:
            stored = await self.store.update_breaker(name, change)
        except Exception as exc:
            self._storage_failed(exc)
            self._pending[name] = self.runtimes[name].breaker
            return
        finally:
            self._inflight[name] -= 1
        local = self.runtimes[name].breaker
        if stored is not None and not (local.tripped and local.open_until > stored.open_until):
            self.runtimes[name].breaker = stored  # unless a later local transition is on its way

    async def _write_now(self, name: str, change: Callable[[SharedBreaker], SharedBreaker | None]) -> None:
        if self.store is not None:
            await self._write(name, change)

    def _storage_failed(self, exc: Exception) -> None:
        if self.storage_ok:
            log.warning("State storage unreachable (%s); continuing on local state", type(exc).__name__)
        self.storage_ok = False

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def settle(self) -> None:
        """Waits for background writes and refreshes (shutdown, and tests that inspect storage)."""
        while self._tasks or (self._refresh_task is not None and not self._refresh_task.done()):
            await asyncio.gather(*self._tasks, *([self._refresh_task] if self._refresh_task else []))


def _int_or_none(value: str | None) -> int | None:
    try:
        return None if value is None else int(float(value))
    except ValueError:
        return None
