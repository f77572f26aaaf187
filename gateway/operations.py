"""What the operator routes do: the backends view, breaker reset, disable/enable, counters, usage, probes.

Hosting-independent (the HTTP functions in gateway/http.py only translate), so tests drive it directly too.
Named `operations`, not `operator`, so it never shadows the standard library module.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any

from . import errors
from .attempt import Attempts
from .health import probe_all
from .pool import BackendPool
from .usage_store import DIMENSIONS, Counts, UsageCounters, group

__all__ = ["ACTIONS", "backends_view", "change_backend", "probe", "stats", "usage_view"]

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


def stats(pool: BackendPool, requests: int, counters: UsageCounters | None = None) -> dict[str, Any]:
    store = pool.store
    return {
        "instance": pool.instance_id,
        "requests": requests,
        "storage_operations": store.operations if store else 0,
        "storage_ok": pool.storage_ok,
        "unexpected_storage_errors": pool.sync.unexpected_errors,
        "usage_storage_operations": counters.table.operations if counters else 0,
        "usage_flushes": counters.flushes if counters else 0,
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
