"""Deterministic orchestrators: plain generators, testable by replay without the Functions host.

`relay_request` runs one deferred request to the end: one backend attempt per activity call; after a
retryable failure it waits on a durable timer until the moment the activity reported (Retry-After, or the
first breaker re-opening) — no compute while waiting — and tries again, until success, a non-retryable
answer, the attempt cap or the request's deadline. Whatever the end, one completion message is published: a
publish that keeps failing is tried again on a backing-off durable timer, never given up.
No I/O and no clock here: time is `context.current_utc_datetime`, everything else comes from activities.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import azure.durable_functions as df

from gateway.errors import error_object

__all__ = [
    "ATTEMPT_ACTIVITY",
    "BATCH_ORCHESTRATOR",
    "PUBLISH_ACTIVITY",
    "RELAY_ORCHESTRATOR",
    "RUNNING",
    "batch_job",
    "relay_request",
]

RELAY_ORCHESTRATOR = "relay_request"
ATTEMPT_ACTIVITY = "attempt_backend"
PUBLISH_ACTIVITY = "publish_completion"
BATCH_ORCHESTRATOR = "batch_job"
BATCH_SUBMIT, BATCH_POLL, BATCH_CANCEL = "batch_submit", "batch_poll", "batch_cancel_backend"
BATCH_COLLECT, BATCH_FINISH = "batch_collect", "batch_finish"
# Durable runtime statuses of work that has not ended yet.
RUNNING = frozenset({"Pending", "Running", "ContinuedAsNew", "Suspended"})
# Polls of a backend that does not answer before the round counts as failed and the lines move on.
UNREACHABLE_POLLS = 3
# A crashed activity (worker died, storage hiccup) is retried by the Durable runtime before we see it fail.
ACTIVITY_RETRY = df.RetryOptions(first_retry_interval_in_milliseconds=2000, max_number_of_attempts=3)
# A publish that still fails after those retries (Service Bus or storage down) is tried again after a durable
# timer, waiting 30 s, then twice as long each time up to 10 minutes: the completion is never given up.
PUBLISH_WAIT_S, PUBLISH_MAX_WAIT_S = 30, 600
# An attempt whose activity failed every execution is tried again after 10 s, then twice as long each time (at
# most 10 minutes), within the request's deadline and attempt cap.
ATTEMPT_WAIT_S = 10


def relay_request(context: df.DurableOrchestrationContext):
    """Input: the AsyncRequest dict built by orchestrations.starter. Output: the completion message body."""
    request: dict[str, Any] = context.get_input()
    deadline = datetime.fromtimestamp(request["deadline"], UTC)
    attempts = crashes = 0
    avoid: list[str] = []
    tried: dict[str, Any] = {}  # the last backend (and deployment) an attempt tried
    outcome: dict[str, Any] | None = None
    while outcome is None:
        now = context.current_utc_datetime
        if now >= deadline:
            outcome = _ended("expired", "The request expired before a backend could serve it.", "expired")
            break
        if attempts >= request["max_attempts"]:
            if crashes and crashes == attempts:  # never ran to an answer: the gateway failed, not the backends
                outcome = _ended("failed", "The gateway could not run the request.", "internal_error")
            else:
                message = f"No backend served the request in {attempts} attempts."
                outcome = _ended("failed", message, "attempts_exhausted")
            break
        attempts += 1
        context.set_custom_status({"state": "calling", "attempt": attempts})
        try:
            result = yield context.call_activity_with_retry(
                ATTEMPT_ACTIVITY, ACTIVITY_RETRY, {"request": request, "attempt": attempts, "avoid": avoid}
            )
        except Exception:
            # Every execution of this attempt failed (storage down longer than the activity's retries, workers
            # recycled): one attempt spent; wait and try again, as after a busy backend, within the deadline.
            crashes += 1
            if attempts < request["max_attempts"]:
                wait_s = min(ATTEMPT_WAIT_S * 2 ** (crashes - 1), PUBLISH_MAX_WAIT_S)
                retry_at = min(context.current_utc_datetime + timedelta(seconds=wait_s), deadline)
                context.set_custom_status(
                    {
                        "state": "waiting",
                        "attempt": attempts,
                        "reason": "activity_failed",
                        "next_try_at": retry_at.isoformat(),
                    }
                )
                yield context.create_timer(retry_at)
            continue
        if result["status"] != "retry":
            outcome = result
            break
        avoid = [result["backend"]] if result.get("backend") else []
        if result.get("backend"):
            tried = {"backend": result["backend"], "deployment": result.get("deployment")}
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
    for key, value in tried.items():  # no answer (expired, attempts exhausted): the last backend tried
        outcome.setdefault(key, value)
    publishing: dict[str, Any] = {"state": "publishing", "attempt": attempts, "status": outcome["status"]}
    failures = 0
    while True:
        context.set_custom_status(publishing)
        try:
            message = yield context.call_activity_with_retry(
                PUBLISH_ACTIVITY, ACTIVITY_RETRY, {"request": request, "outcome": outcome}
            )
            break
        except Exception:
            failures += 1
            retry_at = context.current_utc_datetime + timedelta(
                seconds=min(PUBLISH_WAIT_S * 2 ** (failures - 1), PUBLISH_MAX_WAIT_S)
            )
            publishing = {**publishing, "publish_failures": failures, "next_try_at": retry_at.isoformat()}
            context.set_custom_status(publishing)
            yield context.create_timer(retry_at)
    context.set_custom_status({"state": "done", "status": outcome["status"]})
    return message


def batch_job(context: df.DurableOrchestrationContext):
    """A managed OpenAI batch: submit to a backend, poll with backing-off durable timers, collect, and resubmit
    the unanswered lines elsewhere after a failed or expired round, up to the job's round limit.

    Input: the job dict built by orchestrations.batch_api. Custom status and output: the batch view that
    `GET /v1/batches/{id}` turns into the OpenAI batch object.
    """
    job: dict[str, Any] = context.get_input()
    deadline = datetime.fromtimestamp(job["created_at"] + job["window_s"], UTC)
    view: dict[str, Any] = {
        "status": "validating",
        "request_counts": {"total": job["lines"], "completed": 0, "failed": 0},
    }
    context.set_custom_status(view)
    avoid: list[str] = []
    rounds = 0
    last, cancelled = "failed", False
    while rounds < job["max_rounds"] and not cancelled:
        now = context.current_utc_datetime
        if now >= deadline:
            last = "expired"
            break
        rounds += 1
        submitted = yield context.call_activity_with_retry(
            BATCH_SUBMIT, ACTIVITY_RETRY, {"job": job, "round": rounds, "avoid": avoid}
        )
        if submitted["status"] == "nothing_left":
            last = "completed"
            break
        if submitted["status"] != "submitted":
            if submitted.get("backend"):
                avoid = [*avoid, submitted["backend"]]
            yield context.create_timer(min(datetime.fromtimestamp(submitted["retry_at"], UTC), deadline))
            continue
        view = {**view, "status": "in_progress", "backend": submitted["backend"], "round": rounds}
        view.setdefault("in_progress_at", int(now.timestamp()))
        context.set_custom_status(view)
        ref = {
            "job": job,
            "backend": submitted["backend"],
            "deployment": submitted.get("deployment"),
            "backend_batch_id": submitted["backend_batch_id"],
        }
        delay, unreachable = job["poll_min_s"], 0
        while True:
            fire_at = min(context.current_utc_datetime + timedelta(seconds=delay), deadline)
            yield context.create_timer(fire_at)
            delay = min(delay * 2, job["poll_max_s"])
            poll = yield context.call_activity_with_retry(BATCH_POLL, ACTIVITY_RETRY, ref)
            now = context.current_utc_datetime
            if poll.get("cancel_requested") and not cancelled:
                cancelled = True
                view = {**view, "status": "cancelling", "cancelling_at": int(now.timestamp())}
                yield context.call_activity_with_retry(BATCH_CANCEL, ACTIVITY_RETRY, ref)
            counts = poll.get("request_counts") or {}
            done = view["request_counts"]
            view = {
                **view,
                "backend_status": poll["status"],
                "request_counts": {
                    "total": job["lines"],
                    "completed": max(done["completed"], int(counts.get("completed") or 0)),
                    "failed": max(done["failed"], int(counts.get("failed") or 0)),
                },
            }
            context.set_custom_status(view)
            unreachable = unreachable + 1 if poll["status"] == "unreachable" else 0
            if poll["status"] in ("completed", "failed", "expired", "cancelled") or unreachable >= UNREACHABLE_POLLS:
                break
            if now >= deadline:
                yield context.call_activity_with_retry(BATCH_CANCEL, ACTIVITY_RETRY, ref)
                poll = {**poll, "status": "expired"}
                break
        view = {
            **view,
            "status": "cancelling" if cancelled else "finalizing",
            "finalizing_at": int(context.current_utc_datetime.timestamp()),
        }
        context.set_custom_status(view)
        collected = yield context.call_activity_with_retry(BATCH_COLLECT, ACTIVITY_RETRY, {**ref, "poll": poll})
        view = {
            **view,
            "request_counts": {
                "total": job["lines"],
                "completed": collected["succeeded"],
                "failed": collected["failed"],
            },
        }
        last = "completed" if collected["remaining"] == 0 else ("expired" if poll["status"] == "expired" else "failed")
        if collected["remaining"] == 0:
            break
        avoid = [*avoid, submitted["backend"]]
    end = {
        "status": "cancelled" if cancelled else last,
        "rounds": rounds,
        **{k: view.get(k) for k in ("in_progress_at", "finalizing_at", "cancelling_at")},
    }
    final = yield context.call_activity_with_retry(BATCH_FINISH, ACTIVITY_RETRY, {"job": job, "end": end})
    context.set_custom_status(final)
    return final


def _ended(status: str, message: str, code: str) -> dict[str, Any]:
    return {"status": status, "error": error_object(message, code=code)}
