"""The operator's view of the pool: configuration (secrets masked) and live state, per backend and deployment."""

from __future__ import annotations

from typing import Any

from .breakers import OPEN
from .pool_state import BackendState, DeploymentState, PoolState

__all__ = ["describe"]


def describe(state: PoolState) -> list[dict[str, Any]]:
    """Every backend with its host-level breaker and probe, and each deployment's breaker and capacity."""
    now = state.clock()
    return [
        {
            "config": backend.backend.masked(),
            **_breaker(backend, now),
            "disabled": backend.breaker.disabled,
            "latency_ewma_ms": None if backend.ttfb_ms is None else round(backend.ttfb_ms, 2),
            "probe": _probe(backend),
            "deployments": [_deployment(d, state, now) for d in state.deployments_of(backend.key)],
        }
        for backend in state.backends.values()
    ]


def _breaker(scope: BackendState | DeploymentState, now: float) -> dict[str, Any]:
    b = scope.breaker
    return {
        "breaker": b.status(now),
        "open_until": b.open_until if b.status(now) == OPEN else None,
        "reason": b.reason or None,
        "last_status": scope.last_status,
        "last_error": scope.last_error,
        "last_error_at": scope.last_error_at,
    }


def _deployment(deployment: DeploymentState, state: PoolState, now: float) -> dict[str, Any]:
    tokens, requests = deployment.capacity(now, state.settings.capacity_window_s)
    return {
        "deployment": deployment.deployment,
        **_breaker(deployment, now),
        "remaining_tokens": None if tokens == float("inf") else int(tokens),
        "remaining_requests": None if requests == float("inf") else int(requests),
        "tokens_per_s": None if deployment.tokens_per_s is None else round(deployment.tokens_per_s, 1),
    }


def _probe(backend: BackendState) -> dict[str, Any] | None:
    if backend.health is None:
        return None
    return {
        "ok": backend.health.ok,
        "latency_ms": backend.health.latency_ms,
        "probed_at": backend.health.probed_at,
        "error": backend.health.error or None,
    }
