"""Deterministic orchestrators: plain generators, testable by replay without the Functions host.

`relay_request` runs one deferred request to the end: one backend attempt per activity call; after a
retryable failure it waits on a durable timer until the moment the activity reported (Retry-After, or the
first breaker re-opening) — no compute while waiting — and tries again, until success, a non-retryable
answer, the attempt cap or the request's deadline. Whatever the end, one completion message is published.
No I/O and no clock here: time is `context.current_utc_datetime`, everything else comes from activities.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import azure.durable_functions as df

__all__ = ["ATTEMPT_ACTIVITY", "PUBLISH_ACTIVITY", "RELAY_ORCHESTRATOR", "relay_request"]

RELAY_ORCHESTRATOR = "relay_request"
ATTEMPT_ACTIVITY = "attempt_backend"
PUBLISH_ACTIVITY = "publish_completion"
# A crashed activity (worker died, storage hiccup) is retried by the Durable runtime before we see it fail.
ACTIVITY_RETRY = df.RetryOptions(first_retry_interval_in_milliseconds=2000, max_number_of_attempts=3)


def relay_request(context: df.DurableOrchestrationContext):
    """Input: the AsyncRequest dict built by orchestrations.starter. Output: the completion message body."""
    request: dict[str, Any] = context.get_input()
    deadline = datetime.fromtimestamp(request["deadline"], UTC)
    attempts = 0
    avoid: list[str] = []
    outcome: dict[str, Any] | None = None
    while outcome is None:
        now = context.current_utc_datetime
        if now >= deadline:
            outcome = _ended("expired", "The request expired before a backend could serve it.", "expired")
            break
        if attempts >= request["max_attempts"]:
            outcome = _ended("failed", f"No backend served the request in {attempts} attempts.", "attempts_exhausted")
            break
        attempts += 1
        context.set_custom_status({"state": "calling", "attempt": attempts})
        try:
            result = yield context.call_activity_with_retry(
                ATTEMPT_ACTIVITY, ACTIVITY_RETRY, {"request": request, "attempt": attempts, "avoid": avoid}
            )
        except Exception:
            outcome = _ended("failed", "The gateway could not run the request.", "internal_error")
            break
        if result["status"] != "retry":
            outcome = result
            break
        avoid = [result["backend"]] if result.get("backend") else []
        retry_at = min(datetime.fromtimestamp(result["retry_at"], UTC), deadline)
        if retry_at > now:
            context.set_custom_status(
                {
                    "state": "waiting",
                    "attempt": attempts,
                    "backend": result.get("backend"),
                    "last_status": result.get("http_status"),
                    "reason": result.get("reason"),
                    "next_try_at": retry_at.isoformat(),
                }
            )
            yield context.create_timer(retry_at)

    outcome["attempts"] = attempts
    context.set_custom_status({"state": "publishing", "attempt": attempts, "status": outcome["status"]})
    message = yield context.call_activity_with_retry(
        PUBLISH_ACTIVITY, ACTIVITY_RETRY, {"request": request, "outcome": outcome}
    )
    context.set_custom_status({"state": "done", "status": outcome["status"]})
    return message


def _ended(status: str, message: str, code: str) -> dict[str, Any]:
    return {"status": status, "error": {"message": message, "type": "gateway_error", "param": None, "code": code}}
