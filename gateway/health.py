"""Health probes of `mode=apim` backends: up/down and latency, shared through the state store.

`mode=direct` backends are never probed; they count as healthy until their answers say otherwise (breakers).
A timer function runs `probe_all` on every instance's schedule. Probes are sent through the same attempt as
every request (credential, transport), teach the pool latency, and land in the same table as the breakers,
so every instance sees them at its next refresh.
"""

from __future__ import annotations

import asyncio
import logging
import time

from .attempt import Attempts
from .pool import Target
from .state_store import Health
from .state_sync import STORAGE_ERRORS
from .upstream import TransportError

__all__ = ["probe_all"]

log = logging.getLogger("gateway.health")
PROBE_TIMEOUT_S = 5.0
# A failed probe, not a bug: a credential (AzureError), the network, or a Key Vault answer that is not JSON.
_FAILED_PROBE: tuple[type[BaseException], ...] = (*STORAGE_ERRORS, ValueError)


async def probe_all(attempts: Attempts) -> dict[str, Health]:
    """Probes every APIM-mode backend that has a probe path, concurrently; shares and returns the results."""
    pool = attempts.pool
    backends = [b for b in pool.settings.backends if b.mode == "apim" and b.probe]
    results = await asyncio.gather(*(_probe(attempts, Target(b, "")) for b in backends))
    probed = {b.name: health for b, health in zip(backends, results, strict=True)}
    await pool.sync.share_health(probed)
    return probed


async def _probe(attempts: Attempts, target: Target) -> Health:
    backend = target.backend
    try:
        attempt = await attempts.send(target, "GET", backend.probe or "/", {}, total_s=PROBE_TIMEOUT_S, probe=True)
        if attempt.response is None:
            return Health(False, None, time.time(), attempt.failure or "no answer")
        latency = (time.monotonic() - attempt.sent_at) * 1000
        await attempt.response.read()
        attempt.response.release()
    except TransportError as exc:
        return Health(False, None, time.time(), exc.kind)
    except _FAILED_PROBE as exc:
        log.warning("Probe of %s failed: %s", backend.name, type(exc).__name__)
        return Health(False, None, time.time(), type(exc).__name__)
    except Exception:  # a bug: failed probe all the same (the timer goes on), but logged with its trace and counted
        attempts.unexpected_errors += 1
        log.error("Unexpected error probing %s", backend.name, exc_info=True)
        return Health(False, None, time.time(), "internal error")
    ok = attempt.status is not None and attempt.status < 500 and attempt.status != 429
    return Health(ok, round(latency, 2), time.time(), "" if ok else f"HTTP {attempt.status}")
