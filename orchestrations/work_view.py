"""Recent async requests and batches for the operator console: one instance query, nothing per instance.

`GET /gateway/work?hours=1` lists the orchestrations created in the window (the Durable HTTP API's instance
query: on Azure one read of the task hub's Instances table), newest first, at most `limit`. Only what an
operator needs is shown: kind, state, caller and model, attempts or line counts, timestamps and the error
message of work that failed. Never the request's headers or body.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from .workflows import BATCH_ORCHESTRATOR, RELAY_ORCHESTRATOR

__all__ = ["recent_work"]

MAX_HOURS = 48
MAX_ITEMS = 200


async def recent_work(client: Any, hours: float = 1.0, limit: int = 50) -> dict[str, Any]:
    """The async requests and batches created in the last `hours`, newest first."""
    hours = min(max(hours, 0.05), MAX_HOURS)
    limit = min(max(limit, 1), MAX_ITEMS)
    since = datetime.now(UTC) - timedelta(hours=hours)
    statuses = await client.get_status_by(created_time_from=since)
    items = [_item(s) for s in statuses if s.name in (RELAY_ORCHESTRATOR, BATCH_ORCHESTRATOR)]
    items.sort(key=lambda i: i["created"] or "", reverse=True)
    return {"since": _iso(since), "count": len(items), "items": items[:limit]}


def _item(status: Any) -> dict[str, Any]:
    request = _dict(status.input_)
    output = _dict(status.output)
    progress = _dict(status.custom_status)
    batch = status.name == BATCH_ORCHESTRATOR
    error = output.get("error") or progress.get("error")
    item: dict[str, Any] = {
        "id": status.instance_id,
        "kind": "batch" if batch else "request",
        "runtime_status": status.runtime_status.value if status.runtime_status else None,
        "state": output.get("status") or progress.get("status") or progress.get("state"),
        "caller": request.get("caller") or output.get("caller"),
        "model": request.get("model") or output.get("model"),
        "backend": output.get("backend") or progress.get("backend"),
        "created": _iso(status.created_time),
        "updated": _iso(status.last_updated_time),
        "error": (error.get("message") if isinstance(error, dict) else None),
    }
    if batch:
        item["request_counts"] = output.get("request_counts") or progress.get("request_counts")
    else:
        item["attempts"] = output.get("attempts") or progress.get("attempt")
    return item


def _dict(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    return value if isinstance(value, dict) else {}


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
