"""Health probes of `mode=apim` backends: up/down and latency, shared through the state store.

`mode=direct` backends are never probed; they count as healthy until their answers say otherwise (breakers).
A timer function runs `probe_all` on every instance's schedule; results land in the same table as the
breakers, so every instance sees them at its next refresh, and they feed the `latency` strategy.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp

from .credentials import BackendAuth
from .routing import BackendPool, BackendRuntime
from .state_store import Health
from .upstream import Upstream

__all__ = ["probe_all"]

log = logging.getLogger("gateway.health")
PROBE_TIMEOUT_S = 5.0


async def probe_all(pool: BackendPool, upstream: Upstream, auth: BackendAuth) -> dict[str, Health]:
    """Probes every APIM-mode backend that has a probe path, concurrently; returns the results by name."""
    runtimes = [rt for rt in pool.runtimes.values() if rt.backend.mode == "apim" and rt.backend.probe]
    results = await asyncio.gather(*(_probe(rt, upstream, auth) for rt in runtimes))
    for runtime, health in zip(runtimes, results, strict=True):
        runtime.health = health
        if health.latency_ms is not None:
            runtime.observe_latency(health.latency_ms)
        if pool.store is not None and pool.storage_ok:
            try:
                await pool.store.write_health(runtime.backend.name, health)
            except Exception as exc:
                log.warning("Could not store the probe of %s: %s", runtime.backend.name, type(exc).__name__)
    return {rt.backend.name: h for rt, h in zip(runtimes, results, strict=True)}


async def _probe(runtime: BackendRuntime, upstream: Upstream, auth: BackendAuth) -> Health:
    backend = runtime.backend
    started = time.monotonic()
    try:
        headers = await auth.headers(backend)
        async with upstream.session().get(
            backend.host + (backend.probe or ""), headers=headers, timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)
        ) as resp:
            await resp.read()
            latency = (time.monotonic() - started) * 1000
            ok = resp.status < 500 and resp.status != 429
            return Health(ok, round(latency, 2), time.time(), "" if ok else f"HTTP {resp.status}")
    except (TimeoutError, aiohttp.ClientError) as exc:
        return Health(False, None, time.time(), type(exc).__name__)
    except Exception as exc:  # a credential failure is a failed probe, not a crashed timer
        log.warning("Probe of %s failed: %s", backend.name, type(exc).__name__)
        return Health(False, None, time.time(), type(exc).__name__)
