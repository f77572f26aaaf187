"""Learning: what every backend answer (or its absence) teaches the pool.

A 429 opens the deployment's breaker for its Retry-After: Azure throttles per deployment. 408, 5xx,
timeouts and connection errors count toward the backend's failure window: the host failed, whatever the
model. Any answer from the host closes a half-open backend; a success closes a half-open deployment. Capacity
headers and generation speed are kept per deployment. Transitions are shared through `SharedState`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from .breakers import HALF_OPEN, OPEN, SAME_UNTIL_S, SharedBreaker
from .metrics import breaker_transition
from .pool_state import BackendState, DeploymentState, PoolState, Target, _Scope
from .state_sync import SharedState

__all__ = ["Learner"]

log = logging.getLogger("gateway.pool")

MIN_TOKENS_FOR_SPEED = 16  # shorter answers say nothing about generation speed


class Learner:
    def __init__(self, state: PoolState, sync: SharedState) -> None:
        self._state = state
        self._sync = sync

    def on_answer(
        self, target: Target, status: int, ttfb_ms: float, headers: Mapping[str, str], retry_after_s: float | None
    ) -> None:
        """Every answer from a backend: latency, capacity headers, and breaker transitions."""
        state, now = self._state, self._state.clock()
        backend, deployment = state.backends[target.backend.name], state.deployment(target)
        backend.last_status = deployment.last_status = status
        backend.observe_latency(ttfb_ms)
        self._observe_capacity(deployment, headers, now)
        if status == 408 or status >= 500:
            backend.note_error(f"HTTP {status}", now)
            self._failure(backend, now, f"HTTP {status}")
            return
        if _half_open_tripped(backend.breaker, now):
            self._close(backend)  # the host answered
        if status == 429:
            wait = retry_after_s if retry_after_s is not None else state.settings.default_retry_after_s
            deployment.note_error(f"429 (retry after {wait:g} s)", now)
            self.trip(deployment, now + wait, "429")
        elif _half_open_tripped(deployment.breaker, now):
            self._close(deployment)  # success, or the client's own 4xx: never counts against the backend

    def on_transport_error(self, target: Target, kind: str) -> None:
        """Timeouts, refused or broken connections (before or during the answer) count against the host."""
        backend, now = self._state.backends[target.backend.name], self._state.clock()
        backend.note_error(kind, now)
        self._failure(backend, now, kind)

    def on_probe(self, target: Target, latency_ms: float | None) -> None:
        """A probe's latency feeds the latency strategy; its up/down verdict is kept as health, not a breaker."""
        if latency_ms is not None:
            self._state.backends[target.backend.name].observe_latency(latency_ms)

    def observe_generation(self, target: Target, completion_tokens: int, seconds: float) -> None:
        """Completion length and generation speed from a finished answer (speed only from answers long enough
        to say something)."""
        deployment = self._state.deployment(target)
        deployment.completion_tokens.append(completion_tokens)
        if completion_tokens >= MIN_TOKENS_FOR_SPEED and seconds > 0:
            rate = completion_tokens / seconds
            previous = deployment.tokens_per_s
            deployment.tokens_per_s = rate if previous is None else 0.7 * previous + 0.3 * rate

    def tokens_per_second(self, targets: tuple[Target, ...]) -> float | None:
        """The best observed generation speed among `targets`, None when none was observed yet."""
        rates = [r for t in targets if (r := self._state.deployment(t).tokens_per_s)]
        return max(rates) if rates else None

    def completion_tokens_p95(self, targets: tuple[Target, ...]) -> int | None:
        """The 95th percentile of recent completion lengths among `targets`, None before any was observed."""
        lengths = sorted(n for t in targets for n in self._state.deployment(t).completion_tokens)
        return lengths[min(len(lengths) - 1, int(0.95 * len(lengths)))] if lengths else None

    def trip(self, scope: _Scope, until: float, reason: str) -> None:
        """Opens a scope's breaker until `until` (only ever later), here and, in the background, everywhere."""
        now = self._state.clock()
        if scope.breaker.status(now) == OPEN and scope.breaker.open_until >= until - SAME_UNTIL_S:
            return  # already open about that long (in-flight requests' 429s): no transition, no write
        scope.breaker = scope.breaker.tripped_until(until, reason)
        log.warning("Breaker of %s open for %.1f s (%s)", scope.key, until - now, reason)
        breaker_transition(scope.key, "open", reason)
        self._sync.persist(scope.key, lambda current: current.extended_to(until, reason))

    def _failure(self, backend: BackendState, now: float, reason: str) -> None:
        settings = self._state.settings
        if _half_open_tripped(backend.breaker, now):
            self.trip(backend, now + settings.breaker_cooldown_s, f"trial failed: {reason}")
        elif backend.failures.add(now):
            self.trip(backend, now + settings.breaker_cooldown_s, f"{settings.breaker_failures} failures")

    def _close(self, scope: _Scope) -> None:
        scope.breaker = scope.breaker.closed()
        log.info("Breaker of %s closed (trial succeeded)", scope.key)
        breaker_transition(scope.key, "closed", "trial succeeded")
        now = self._state.clock()

        def close(current: SharedBreaker) -> SharedBreaker | None:
            # Someone re-opened it meanwhile (a fresh 429): their later open-until wins.
            return current.closed() if current.open_until <= now else None

        self._sync.persist(scope.key, close)

    @staticmethod
    def _observe_capacity(deployment: DeploymentState, headers: Mapping[str, str], now: float) -> None:
        tokens = headers.get("x-ratelimit-remaining-tokens")
        requests = headers.get("x-ratelimit-remaining-requests")
        if tokens is None and requests is None:
            return
        deployment.remaining_tokens = _int_or_none(tokens)
        deployment.remaining_requests = _int_or_none(requests)
        deployment.capacity_at = now


def _half_open_tripped(breaker: SharedBreaker, now: float) -> bool:
    return breaker.tripped and breaker.status(now) == HALF_OPEN


def _int_or_none(value: str | None) -> int | None:
    try:
        return None if value is None else int(float(value))
    except ValueError:
        return None
