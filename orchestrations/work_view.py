"""Recent async requests and batches for the operator console: instance queries, nothing per instance.

`GET /gateway/work?hours=1` lists the newest orchestrations created in the window, at most `limit`. The Durable
instance query answers a page at a time in instance-id order, not newest first, so the whole window is read,
page by page (instance_query), at most WORK_PAGES pages: exact for windows of up to 2,000 instances; beyond
that the answer says `"complete": false` (the newest of what was read), and a shorter `hours` helps. Only what
an operator needs is shown: kind, state, caller and model, attempts or line counts, timestamps and the error
message of work that failed. Never the request's headers or body.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.upstream import Upstream

from . import instance_query
from .workflows import BATCH_ORCHESTRATOR, RELAY_ORCHESTRATOR

__all__ = ["recent_work"]

MAX_HOURS = 48
MAX_ITEMS = 200
WORK_PAGES = 20  # instance-query pages read per view (100 instances each)


async def recent_work(client: Any, upstream: Upstream, hours: float = 1.0, limit: int = 50) -> dict[str, Any]:
    """The async requests and batches created in the last `hours`, newest first."""
    hours = min(max(hours, 0.05), MAX_HOURS)
    limit = min(max(limit, 1), MAX_ITEMS)
    since = datetime.now(UTC) - timedelta(hours=hours)
    listing = await instance_query.query(client, upstream, max_pages=WORK_PAGES, created_from=since, show_input=True)
    ours = [s for s in listing.items if s.name in (RELAY_ORCHESTRATOR, BATCH_ORCHESTRATOR)]
    items = [_item(s) for s in instance_query.newest_first(ours)[:limit]]
    return {"since": _iso(since), "count": len(ours), "items": items, "complete": listing.complete}


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
