"""What one instance knows about its backends right now: per backend host, and per deployment on it.

Azure's quotas and 429s are per deployment, so throttling, `x-ratelimit-remaining-*`, generation speed and the
half-open trial after a 429 live on a `DeploymentState`. Connection errors, timeouts and 5xx mean the host
failed, so the failure window, latency, probes and the operator's disable live on a `BackendState`. Each holds
a `SharedBreaker` under its scope key (`weu`, or `weu:gpt-4o` for a deployment), which is the row key the
state store shares between instances.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .breakers import FailureWindow, SharedBreaker
from .config import Backend, Settings
from .state_store import Health

__all__ = ["EWMA_ALPHA", "BackendState", "DeploymentState", "PoolState", "Target", "scope_key"]

EWMA_ALPHA = 0.3  # weight of the newest latency sample
# Deployments learnt from clients (backends without a deployments= list) are bounded: names come from outside.
MAX_DEPLOYMENT_SCOPES = 1024
COMPLETION_SAMPLES = 256  # recent completion lengths kept per deployment, for the expected-duration estimate


def scope_key(backend: str, deployment: str) -> str:
    """The shared-state key of one deployment; backend names contain no ':' so the two kinds never collide."""
    return f"{backend}:{deployment}"


@dataclass(frozen=True, slots=True)
class Target:
    """One backend and the deployment name it uses for the requested model."""

    backend: Backend
    deployment: str
    key: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", scope_key(self.backend.name, self.deployment))


class _Scope:
    """A breaker scope: its shared breaker and the last thing that went wrong there."""

    __slots__ = ("breaker", "key", "last_error", "last_error_at", "last_status")

    def __init__(self, key: str) -> None:
        self.key = key
        self.breaker = SharedBreaker()
        self.last_status: int | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None

    def note_error(self, error: str, now: float) -> None:
        self.last_error, self.last_error_at = error, now


class BackendState(_Scope):
    """The host: failure window (5xx, timeouts, connection errors), latency, probe health, disable."""

    __slots__ = ("backend", "failures", "health", "ttfb_ms")

    def __init__(self, backend: Backend, failures: FailureWindow) -> None:
        super().__init__(backend.name)
        self.backend = backend
        self.failures = failures
        self.ttfb_ms: float | None = None  # EWMA of time to first byte (answers and probes)
        self.health: Health | None = None

    def observe_latency(self, ms: float) -> None:
        self.ttfb_ms = ms if self.ttfb_ms is None else (1 - EWMA_ALPHA) * self.ttfb_ms + EWMA_ALPHA * ms

    def probed_down(self) -> bool:
        """APIM-mode backends that failed their last probe; direct ones are healthy until answers say otherwise."""
        return self.backend.mode == "apim" and self.health is not None and not self.health.ok


class DeploymentState(_Scope):
    """One deployment on one backend: 429s, remaining capacity, generation speed."""

    __slots__ = (
        "backend_name", "capacity_at", "completion_tokens", "deployment", "remaining_requests", "remaining_tokens",
        "tokens_per_s",
    )  # fmt: skip

    def __init__(self, backend_name: str, deployment: str) -> None:
        super().__init__(scope_key(backend_name, deployment))
        self.backend_name = backend_name
        self.deployment = deployment
        self.remaining_tokens: int | None = None
        self.remaining_requests: int | None = None
        self.capacity_at = 0.0
        self.tokens_per_s: float | None = None  # EWMA of generation speed, for "will it finish in time?"
        self.completion_tokens: deque[int] = deque(maxlen=COMPLETION_SAMPLES)  # recent completion lengths

    def capacity(self, now: float, window_s: float) -> tuple[float, float]:
        """Remaining (tokens, requests); unknown or older than the rate-limit window counts as plenty."""
        if now - self.capacity_at > window_s:
            return float("inf"), float("inf")
        tokens = float("inf") if self.remaining_tokens is None else float(self.remaining_tokens)
        requests = float("inf") if self.remaining_requests is None else float(self.remaining_requests)
        return tokens, requests


class PoolState:
    """The registry every pool part works on: backends by name, deployments by scope key."""

    def __init__(self, settings: Settings, instance_id: str, clock: Callable[[], float]) -> None:
        self.settings = settings
        self.instance_id = instance_id
        self.clock = clock
        self.backends: dict[str, BackendState] = {
            b.name: BackendState(b, self.failure_window()) for b in settings.backends
        }
        self.deployments: dict[str, DeploymentState] = {}
        for b in settings.backends:
            for deployment in {*b.deployments.values(), *b.batch_deployments.values()}:
                self.deployments[scope_key(b.name, deployment)] = DeploymentState(b.name, deployment)

    def failure_window(self) -> FailureWindow:
        return FailureWindow(self.settings.breaker_failures, self.settings.breaker_window_s)

    def deployment(self, target: Target) -> DeploymentState:
        """The state of a target's deployment, created on first use (bounded: names may come from clients)."""
        state = self.deployments.get(target.key)
        if state is None:
            state = DeploymentState(target.backend.name, target.deployment)
            if len(self.deployments) < MAX_DEPLOYMENT_SCOPES:
                self.deployments[target.key] = state
        return state

    def scope(self, key: str) -> _Scope | None:
        """A backend or deployment scope by its shared-state key; unknown deployments of known backends are added."""
        if ":" not in key:
            return self.backends.get(key)
        state = self.deployments.get(key)
        if state is None:
            backend, _, deployment = key.partition(":")
            if backend in self.backends and len(self.deployments) < MAX_DEPLOYMENT_SCOPES:
                state = self.deployments[key] = DeploymentState(backend, deployment)
        return state

    def scopes(self) -> list[_Scope]:
        return [*self.backends.values(), *self.deployments.values()]

    def deployments_of(self, backend: str) -> list[DeploymentState]:
        return [d for d in self.deployments.values() if d.backend_name == backend]
