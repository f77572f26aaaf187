"""What the operator routes do: the backends view, breaker reset, disable/enable, counters, usage, probes.

Hosting-independent (the HTTP functions in gateway/http.py only translate), so tests drive it directly too.
Named `operations`, not `operator`, so it never shadows the standard library module.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from . import errors
from .attempt import Attempts
from .caller_usage import window_by_caller
from .governance import Governance
from .health import probe_all
from .pool import BackendPool
from .usage_store import DIMENSIONS, Counts, UsageCounters, group

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
    "usage_view",
]

ACTIONS = ("reset", "disable", "enable")
_WINDOW = re.compile(r"^(\d{1,5})([mhd])$")
_MINUTES = {"m": 1, "h": 60, "d": 1440}
MAX_WINDOW_MINUTES = 31 * 1440


def backends_view(pool: BackendPool, in_flight: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Every backend's configuration and state; `in_flight`: answers awaited or being read on this instance."""
    backends = pool.describe()
    for backend in backends:
        backend["in_flight"] = (in_flight or {}).get(backend["config"]["name"], 0)
    return {
        "instance": pool.instance_id,
        "storage": {"ok": pool.storage_ok, "operations": pool.store.operations if pool.store else 0},
        "backends": backends,
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


def callers_view(services: Services) -> dict[str, Any]:
    """Known callers with their profile, limits and use of them in the current window (`window`: as the answering
    `instance` knows it, see gateway/caller_usage.py); no storage call."""
    windows = window_by_caller(services.quotas.limiter, services.quotas.caller_slots)
    callers = services.governance.callers()
    for caller in callers:
        caller["window"] = windows.get(caller["caller"], [])
    return {"instance": services.pool.instance_id, "callers": callers}


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


def stats(
    pool: BackendPool,
    requests: int,
    counters: UsageCounters | None = None,
    limit_operations: int = 0,
    unexpected: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """This instance's counters. `storage_ops_per_s` (state table reads and writes per second over the last
    minute) times the instance count is what the account and the version entity's partition see.
    `unexpected_errors`: bugs met where only outages were expected, by part (`unexpected_errors(services)`);
    each was logged at ERROR with its traceback."""
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
        "unexpected_errors": dict(unexpected or {"state": pool.sync.unexpected_errors}),
        "usage_storage_operations": counters.table.operations if counters else 0,
        "limit_storage_operations": limit_operations,
        "usage_flushes": counters.flushes if counters else 0,
    }


def unexpected_errors(services: Services) -> dict[str, int]:
    """Bugs met by the parts that expect only outages (state sync, limit leases, probes, Entra key fetches)."""
    limiter = services.quotas.limiter
    return {
        "state": services.pool.sync.unexpected_errors,
        "limits": limiter.unexpected_errors if limiter else 0,
        "probes": services.attempts.unexpected_errors,
        "entra": services.callers.unexpected_errors,
    }


async def probe(attempts: Attempts) -> dict[str, Any]:
    results = await probe_all(attempts)
    return {name: {"ok": h.ok, "latency_ms": h.latency_ms, "error": h.error or None} for name, h in results.items()}


async def usage_view(counters: UsageCounters | None, query: Mapping[str, str]) -> dict[str, Any]:
    """`GET /gateway/usage?window=1h&by=caller,model[&per=minute]`: requests and tokens over the window, summed
    over every instance. 400 for a window or dimension it does not know."""
    if counters is None:
        raise errors.unavailable(503, "Usage counting is not configured on this gateway.", None)
    window = query.get("window", "1h").strip().lower()
    match = _WINDOW.match(window)
    minutes = int(match[1]) * _MINUTES[match[2]] if match else 0
    if not 1 <= minutes <= MAX_WINDOW_MINUTES:
        raise errors.bad_request(f"window must look like 15m, 1h or 7d (at most 31d), not '{window[:20]}'.")
    by = tuple(d.strip() for d in query.get("by", "caller,model").split(",") if d.strip())
    if unknown := [d for d in by if d not in DIMENSIONS]:
        raise errors.bad_request(f"by may name {', '.join(DIMENSIONS)}; not '{unknown[0][:40]}'.")
    per_minute = query.get("per", "") == "minute"
    now_minute = int(time.time() // 60)
    first = now_minute - minutes + 1
    rows, instances = await counters.query(first, now_minute)
    totals = Counts()
    for _, counts in rows:
        totals.merge(counts)
    return {
        "window": window,
        "from": time.strftime("%Y-%m-%dT%H:%M:00Z", time.gmtime(first * 60)),
        "to": time.strftime("%Y-%m-%dT%H:%M:59Z", time.gmtime(now_minute * 60)),
        "by": list(by),
        "per": "minute" if per_minute else None,
        "instances": instances,
        "rows": group(rows, by, per_minute),
        "totals": totals.as_dict(),
    }
