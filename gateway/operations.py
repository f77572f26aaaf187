"""What the operator routes do: the backends view, breaker reset, disable/enable, counters, probes.

Hosting-independent (the HTTP functions in gateway/http.py only translate), so tests drive it directly too.
Named `operations`, not `operator`, so it never shadows the standard library module.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from . import errors
from .attempt import Attempts
from .governance import Governance
from .health import probe_all
from .pool import BackendPool

if TYPE_CHECKING:
    from .bootstrap import Services

__all__ = [
    "ACTIONS",
    "backends_view",
    "callers_view",
    "change_backend",
    "change_caller",
    "override_profile",
    "probe",
    "stats",
]

ACTIONS = ("reset", "disable", "enable")


def backends_view(pool: BackendPool) -> dict[str, Any]:
    return {
        "instance": pool.instance_id,
        "storage": {"ok": pool.storage_ok, "operations": pool.store.operations if pool.store else 0},
        "backends": pool.describe(),
    }


async def change_backend(pool: BackendPool, name: str, action: str) -> dict[str, Any]:
    """Applies an operator action to one backend on every instance; 404 for an unknown backend or action."""
    if pool.backend(name) is None:
        raise errors.not_found(f"No backend named '{name}'.", code="backend_not_found")
    if action == "reset":
        await pool.reset(name)
    elif action in ("disable", "enable"):
        await pool.set_disabled(name, action == "disable")
    else:
        raise errors.not_found(f"Unknown action '{action}' ({', '.join(ACTIONS)}).", code="route_not_found")
    return {"backend": name, "breaker": pool.status(name), "action": action}


def callers_view(services: Services) -> list[dict[str, Any]]:
    return services.governance.callers()


async def change_caller(governance: Governance, name: str, action: str) -> dict[str, Any]:
    if action not in ("suspend", "resume"):
        raise errors.not_found(f"Unknown action '{action[:32]}' (suspend, resume).", code="route_not_found")
    return await governance.set_suspended(name, action == "suspend", "suspended by an operator")


async def override_profile(governance: Governance, name: str, body: bytes) -> dict[str, Any]:
    try:
        fields = json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError):
        raise errors.bad_request("The body must be a JSON object of profile keys.", code="invalid_json") from None
    return await governance.override_profile(name, fields)


def stats(pool: BackendPool, requests: int) -> dict[str, Any]:
    """This instance's counters. `storage_ops_per_s` (state table reads and writes per second over the last
    minute) times the instance count is what the account and the version entity's partition see."""
    store = pool.store
    return {
        "instance": pool.instance_id,
        "requests": requests,
        "storage_operations": store.operations if store else 0,
        "storage_reads": store.meter.reads if store else 0,
        "storage_writes": store.meter.writes if store else 0,
        "storage_ops_per_s": store.meter.per_second() if store else {"reads": 0.0, "writes": 0.0, "window_s": 0.0},
        "state_reads": dict(pool.sync.reads),
        "storage_ok": pool.storage_ok,
        "unexpected_storage_errors": pool.sync.unexpected_errors,
    }


async def probe(attempts: Attempts) -> dict[str, Any]:
    results = await probe_all(attempts)
    return {name: {"ok": h.ok, "latency_ms": h.latency_ms, "error": h.error or None} for name, h in results.items()}
