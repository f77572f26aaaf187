"""What the operator routes do: the backends view, breaker reset, disable/enable, counters, probes.

Hosting-independent (the HTTP functions in gateway/http.py only translate), so tests drive it directly too.
"""

from __future__ import annotations

from typing import Any

from .health import probe_all
from .pipeline import Gateway

__all__ = ["backends_view", "change_backend", "probe", "stats"]


def backends_view(gateway: Gateway) -> dict[str, Any]:
    pool = gateway.pool
    return {
        "instance": pool.instance_id,
        "storage": {"ok": pool.storage_ok, "operations": pool.store.operations if pool.store else 0},
        "backends": pool.describe(),
    }


async def change_backend(gateway: Gateway, name: str, action: str) -> tuple[int, dict[str, Any]]:
    pool = gateway.pool
    if name not in pool.runtimes:
        return 404, {
            "error": {
                "message": f"No backend named '{name}'.",
                "type": "invalid_request_error",
                "param": None,
                "code": "backend_not_found",
            }
        }
    if action == "reset":
        await pool.reset(name)
    elif action in ("disable", "enable"):
        await pool.set_disabled(name, action == "disable")
    else:
        return 404, {
            "error": {
                "message": f"Unknown action '{action}' (reset, disable, enable).",
                "type": "invalid_request_error",
                "param": None,
                "code": "route_not_found",
            }
        }
    return 200, {"backend": name, "breaker": pool.status(name), "action": action}


def stats(gateway: Gateway) -> dict[str, Any]:
    store = gateway.pool.store
    return {
        "instance": gateway.pool.instance_id,
        "requests": gateway.requests,
        "storage_operations": store.operations if store else 0,
        "storage_ok": gateway.pool.storage_ok,
    }


async def probe(gateway: Gateway) -> dict[str, Any]:
    results = await probe_all(gateway.pool, gateway.upstream, gateway.auth)
    return {name: {"ok": h.ok, "latency_ms": h.latency_ms, "error": h.error or None} for name, h in results.items()}
