"""The backend pool: one seam over choosing, learning and shared-state sync, for every path that sends.

The parts live apart (`routing.Chooser`, `learning.Learner`, `state_sync.SharedState`, `pool_view`), each
working on one `PoolState`; this class wires them and is what the attempt, the operator routes and the tests
hold. Nothing outside reaches into its parts' state.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from .config import Settings
from .learning import Learner
from .pool_state import BackendState, PoolState, Target, scope_key
from .pool_view import describe
from .routing import Chooser
from .state_store import StateStore
from .state_sync import SharedState

__all__ = ["BackendPool", "Target"]


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
        self.state = PoolState(settings, instance_id, clock)
        self.sync = SharedState(self.state, store)
        self.chooser = Chooser(self.state, rng)
        self.learner = Learner(self.state, self.sync)
        # The operations of each part, as the pool's own (one seam for callers).
        self.candidates = self.chooser.candidates
        self.choose = self.chooser.choose
        self.available = self.chooser.available
        self.earliest_open_until = self.chooser.earliest_open_until
        self.on_answer = self.learner.on_answer
        self.on_transport_error = self.learner.on_transport_error
        self.on_probe = self.learner.on_probe
        self.observe_generation = self.learner.observe_generation
        self.tokens_per_second = self.learner.tokens_per_second
        self.completion_tokens_p95 = self.learner.completion_tokens_p95
        self.acquire = self.sync.claim_trial
        self.refresh_if_due = self.sync.refresh_if_due
        self.refresh = self.sync.refresh
        self.settle = self.sync.settle
        self.reset = self.sync.reset
        self.set_disabled = self.sync.set_disabled

    @property
    def instance_id(self) -> str:
        return self.state.instance_id

    @property
    def clock(self) -> Callable[[], float]:
        return self.state.clock

    @property
    def store(self) -> StateStore | None:
        return self.sync.store

    @property
    def storage_ok(self) -> bool:
        return self.sync.storage_ok

    def backend(self, name: str) -> BackendState | None:
        return self.state.backends.get(name)

    def target_for(self, backend_name: str, deployment: str) -> Target | None:
        """The target of a backend named earlier (a batch round); None if no backend has that name any more."""
        state = self.state.backends.get(backend_name)
        return None if state is None else Target(state.backend, deployment)

    def status(self, name: str, deployment: str | None = None) -> str:
        """A backend's (or one of its deployment's) breaker status now."""
        key = name if deployment is None else scope_key(name, deployment)
        scope = self.state.scope(key)
        if scope is None:
            raise KeyError(key)
        return scope.breaker.status(self.clock())

    def describe(self) -> list[dict[str, Any]]:
        return describe(self.state)

    async def close(self) -> None:
        await self.settle()
        if self.store is not None:
            await self.store.close()
