"""Which backends may serve a model, in the order to try them.

For now the order is static: lowest `priority` first, then highest `weight`, then configuration order.
The backend-pool issue replaces this with strategies, breakers and health; the pipeline only depends on
`BackendPool.candidates()`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import Backend

__all__ = ["BackendPool", "Target"]


@dataclass(frozen=True, slots=True)
class Target:
    """One backend and the deployment name it uses for the requested model."""

    backend: Backend
    deployment: str


class BackendPool:
    """The configured backends, indexed by the model/deployment names clients use."""

    def __init__(self, backends: tuple[Backend, ...]) -> None:
        self.backends = backends
        self._ordered = sorted(backends, key=lambda b: (b.priority, -b.weight))  # sorted() is stable
        self._cache: dict[str, tuple[Target, ...]] = {}

    def candidates(self, model: str) -> tuple[Target, ...]:
        """Targets able to serve `model`, best first; empty when no backend serves it."""
        cached = self._cache.get(model)
        if cached is None:
            cached = tuple(
                Target(b, deployment) for b in self._ordered if (deployment := b.deployment_for(model)) is not None
            )
            if len(self._cache) < 1024:  # bounded: unknown names from clients must not grow memory
                self._cache[model] = cached
        return cached
