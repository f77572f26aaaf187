"""Choosing: which target serves the next attempt (pure: state and clock in, a target out).

PTU first, then priority: PayGo backends are used only when every PTU backend is saturated, and only for callers
whose profile allows the `paygo` tier (a caller limited to `ptu` never reaches a PayGo backend). Within a tier, a
lower priority is used only when every backend of the better one is open, cooling down, disabled, down (probe) or
out of capacity; then a strategy chooses (`priority`, `weighted`, `round-robin`, `random`, `latency`,
`capacity`). A target is available when both its backend and its deployment are: a 429 on `gpt-4o` keeps
`gpt-4o` away from that backend, not `gpt-4o-mini`.
"""

from __future__ import annotations

import random
from typing import Any

from .breakers import DISABLED, HALF_OPEN, OPEN
from .pool_state import BackendState, DeploymentState, PoolState, Target

__all__ = ["Chooser"]

_CACHE_LIMIT = 1024  # unknown model names from clients must not grow memory


class Chooser:
    def __init__(self, state: PoolState, rng: random.Random | None = None) -> None:
        self._state = state
        self._rng = rng or random.Random()
        backends = state.settings.backends
        # PTU before PayGo, then priority, then weight; stable: configuration order among equals.
        self._ordered = sorted(backends, key=lambda b: (b.tier != "ptu", b.priority, -b.weight))
        self._cache: dict[tuple[str, bool], tuple[Target, ...]] = {}
        self._strategy_state: dict[Any, Any] = {}

    def candidates(self, model: str, *, batch: bool = False) -> tuple[Target, ...]:
        """Every target able to serve `model` (its Global Batch deployments with `batch`), best priority first."""
        cached = self._cache.get((model, batch))
        if cached is None:
            cached = tuple(
                Target(b, deployment)
                for b in self._ordered
                if (deployment := b.batch_deployment_for(model) if batch else b.deployment_for(model)) is not None
            )
            if len(self._cache) < _CACHE_LIMIT:
                self._cache[(model, batch)] = cached
        return cached

    def available(self, target: Target, now: float) -> bool:
        """Neither the backend nor the deployment is open, disabled, probed down, claimed or out of capacity."""
        state = self._state
        if not _scope_free(state.backends[target.backend.name], now, state.instance_id):
            return False
        deployment = state.deployment(target)
        if not _scope_free(deployment, now, state.instance_id):
            return False
        tokens, requests = deployment.capacity(now, state.settings.capacity_window_s)
        return tokens > 0 and requests > 0

    def choose(
        self,
        model: str,
        exclude: set[str] | frozenset[str] = frozenset(),
        *,
        batch: bool = False,
        tiers: frozenset[str] | None = None,
    ) -> Target | None:
        """The next target among the caller's `tiers` (None: all): the best group (tier, priority) with an
        available backend, then the model's strategy within it."""
        now = self._state.clock()
        group: list[Target] = []
        for target in self.candidates(model, batch=batch):
            backend = target.backend
            if tiers is not None and backend.tier not in tiers:
                continue
            if group and (backend.tier, backend.priority) != (group[0].backend.tier, group[0].backend.priority):
                break  # the best group with anything available wins
            if backend.name not in exclude and self.available(target, now):
                group.append(target)
        if not group:
            return None
        if len(group) == 1:
            return group[0]
        strategy = self._state.settings.strategy_for(model)
        first = group[0].backend
        return self._pick(strategy, (model, batch, first.tier, first.priority), group, now)

    def earliest_open_until(
        self, model: str, exclude: set[str] | frozenset[str] = frozenset(), tiers: frozenset[str] | None = None
    ) -> float | None:
        """When the first merely cooling (open) target for `model` frees up; None if none is merely cooling."""
        now = self._state.clock()
        times = []
        for target in self.candidates(model):
            if target.backend.name in exclude or (tiers is not None and target.backend.tier not in tiers):
                continue
            backend = self._state.backends[target.backend.name]
            scopes = (backend, self._state.deployment(target))
            statuses = [s.breaker.status(now) for s in scopes]
            if DISABLED in statuses or backend.probed_down() or OPEN not in statuses:
                continue
            times.append(max(s.breaker.open_until for s, st in zip(scopes, statuses, strict=True) if st == OPEN))
        return min(times) if times else None

    def _pick(self, strategy: str, key: tuple[str, bool, str, int], tier: list[Target], now: float) -> Target:
        if strategy == "weighted":
            return self._smooth_weighted(key, tier)
        if strategy == "round-robin":
            turn: int = self._strategy_state.get(key, 0)
            self._strategy_state[key] = turn + 1
            return tier[turn % len(tier)]
        if strategy == "random":
            return self._rng.choice(tier)
        backends = self._state.backends
        if strategy == "latency":
            if self._rng.random() < self._state.settings.latency_explore:
                return self._rng.choice(tier)  # keep re-measuring the others, so a recovered backend comes back
            return min(tier, key=lambda t: backends[t.backend.name].ttfb_ms or 0.0)
        if strategy == "capacity":
            window = self._state.settings.capacity_window_s
            return max(tier, key=lambda t: self._state.deployment(t).capacity(now, window))
        return tier[0]  # priority: the configuration's order (weight first) within the tier

    def _smooth_weighted(self, key: tuple[str, bool, str, int], tier: list[Target]) -> Target:
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


def _scope_free(scope: BackendState | DeploymentState, now: float, instance_id: str) -> bool:
    status = scope.breaker.status(now)
    if status in (OPEN, DISABLED):
        return False
    if isinstance(scope, BackendState) and scope.probed_down():
        return False
    return status != HALF_OPEN or scope.breaker.trial_free(now, instance_id)
