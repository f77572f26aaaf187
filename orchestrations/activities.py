"""Activities of the async path: plain async functions over the gateway's services (no decorators, no host types).

`attempt_backend` makes one attempt through the same `Attempts` as the synchronous path (choose, claim the
trial, credential, send, learn), so a fault teaches the pool the same thing on both paths. A streamed
request is consumed here and stored as the object the non-streamed API would have returned; a stream that
ends in an error event ends the request as `failed` with the backend's error, and is never sent again
(another try would be a second billed call). `publish_completion` is idempotent: a recorded completion is
not sent again when the activity is retried.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from gateway import errors, tracing, translate
from gateway.assemble import AssembleError, assemble_completion, parse_sse
from gateway.attempt import usage_record
from gateway.bootstrap import Services
from gateway.completions import CompletionMessage, publish_once
from gateway.headers import forwarded_headers
from gateway.lanes import Lane
from gateway.limit_terms import limit_key
from gateway.pool_state import Target
from gateway.results import StoredBlob
from gateway.upstream import TransportError
from gateway.usage import Usage, response_model, usage_from_json_body

__all__ = [
    "attempt_backend",
    "completion_message",
    "ended",
    "publish_completion",
    "record_unanswered",
    "result_url",
    "since_submitted",
    "status_url",
]

# One activity call may not run longer than this (host.json functionTimeout is 10 minutes).
ACTIVITY_BUDGET_S = 540.0
SLOT_WAIT_S = 10.0  # how long an attempt queues for a slot of a backend at its concurrency, in its priority
SLOT_RETRY_S = 1.0  # then the orchestration's durable timer brings it back this much later


def result_url(request_id: str) -> str:
    return f"/results/{request_id}"


def status_url(request_id: str) -> str:
    return f"/status/{request_id}"


def ended(status: str, message: str, code: str) -> dict[str, Any]:
    """An outcome without a backend answer to relay: expired, failed by the gateway, cancelled."""
    return {"status": status, "error": errors.error_object(message, code=code)}


async def attempt_backend(services: Services, payload: dict[str, Any]) -> dict[str, Any]:
    """One attempt on one backend. Returns succeeded | failed (a final answer) | retry (with retry_at) | expired.

    Each attempt is a span in the trace of the request that was deferred; an answer's span ends with its usage
    record, any other outcome's when the attempt returns.
    """
    span = tracing.start_activity(payload["request"], payload["attempt"])
    result: dict[str, Any] = {}
    try:
        result = await _attempt_backend(services, payload)
        return result
    finally:
        attributes = {"gateway.outcome": str(result.get("status", "failed")), "gateway.async": True}
        if reason := result.get("reason") or (result.get("error") or {}).get("code"):
            attributes["error.type"] = str(reason)
        if backend := result.get("backend"):
            attributes["gateway.backend"] = str(backend)
        tracing.leave(span, result.get("http_status"), attributes=attributes)


async def _attempt_backend(services: Services, payload: dict[str, Any]) -> dict[str, Any]:
    request = payload["request"]
    now = time.time()
    if now >= request["deadline"]:
        return ended("expired", "The request expired before a backend could serve it.", "expired")
    assert services.results is not None
    stored = await services.results.get_request(request["id"])
    if stored is None:
        return ended("failed", "The stored request body is missing.", "request_missing")
    settings, pool = services.settings, services.pool
    route = translate.resolve(
        "POST", request["path"], request["query"], stored.content_type, stored.body, settings.api_version
    )
    await pool.refresh_if_due()
    tiers = frozenset(request["tiers"]) if request.get("tiers") else None  # a ptu-only caller stays on PTU
    lane = Lane(tiers, int(request.get("priority") or 5), request["deadline"])
    caller_slot = None
    profile = services.governance.profile_named(request.get("profile"))
    if profile is not None and profile.concurrency is not None:  # the caller's async attempts count too
        key = limit_key(str(request["caller"]), route.model if profile.per_model else None)
        wait_until = _queue_until(request, now)
        caller_slot = await services.quotas.caller_slots.acquire(key, profile.concurrency, lane.priority, wait_until)
        if caller_slot is None:
            return _retry(time.time() + SLOT_RETRY_S, None, None, "caller at its concurrency")
    try:
        return await _attempt_in_lane(services, payload, route, stored, lane)
    finally:
        if caller_slot is not None:
            caller_slot.release()


async def _attempt_in_lane(
    services: Services, payload: dict[str, Any], route: translate.Route, stored: StoredBlob, lane: Lane
) -> dict[str, Any]:
    """A backend its tiers allow with a slot (queueing a while for one), then the attempt on it."""
    request, now = payload["request"], time.time()
    pool, tiers = services.pool, lane.tiers
    attempts, full = services.attempts, set[str]()
    target, slot = await attempts.choose(route.model, set(payload.get("avoid", ())), full, lane)
    if target is None:
        target, slot = await attempts.choose(route.model, set(), full, lane)
    if target is None and full:  # every backend it may use is at its concurrency: queue for a slot a while
        wait_until = _queue_until(request, now)
        target, slot = await attempts.queue(route.model, full, wait_until, lane)
        if target is None:
            return _retry(time.time() + SLOT_RETRY_S, None, None, "backends at their concurrency")
    if target is None:
        free_at = pool.earliest_open_until(route.model, tiers=tiers)
        return _retry(free_at or now + services.settings.default_retry_after_s, None, None, "no backend available")
    try:
        return await _attempt_on(services, payload, route, stored, target, tiers, time.time())
    finally:
        if slot is not None:
            slot.release()  # held while the answer is read, as on the sync path


async def _attempt_on(
    services: Services,
    payload: dict[str, Any],
    route: translate.Route,
    stored: StoredBlob,
    target: Target,
    tiers: frozenset[str] | None,
    now: float,
) -> dict[str, Any]:
    """The attempt on the chosen backend: send, read, assemble a stream, store the result, record usage. `tiers`:
    the lane's, for where a retry could go."""
    request, attempt_no = payload["request"], payload["attempt"]
    settings, pool, attempts = services.settings, services.pool, services.attempts
    headers = forwarded_headers(request["headers"], request["request_id"], settings.forward_headers)
    remaining = min(request["deadline"] - now, ACTIVITY_BUDGET_S)
    attempt = await attempts.forward(target, "POST", route, stored.body, headers, total_s=remaining)
    if attempt.response is None:
        if pool.choose(route.model, tiers=tiers) is not None:
            retry_at = now  # another backend can take it right away
        else:
            backoff = attempt.retry_after_s if attempt.retry_after_s is not None else min(2.0**attempt_no, 60.0)
            retry_at = pool.earliest_open_until(route.model, tiers=tiers) or now + backoff
        return _retry(retry_at, target, attempt.status, attempt.failure)
    status = attempt.response.status
    try:
        raw = await attempts.read(attempt)
    except TransportError:
        return _retry(now, target, status, "the answer broke off")

    content_type = attempt.response.headers.get("content-type", "application/octet-stream")
    body, usage, streamed, model, error = raw, None, False, None, None
    if content_type.startswith("text/event-stream"):
        streamed = True
        try:
            assembled = assemble_completion(parse_sse(raw))
        except AssembleError as exc:  # the backend ended its stream with an error: final, never re-sent
            body, content_type, status = json.dumps(_stream_error(exc)).encode(), "application/json", 502
            error = "stream_error"  # as the sync path records a stream that ends in an error event
        else:
            body, content_type = json.dumps(assembled).encode(), "application/json"
            usage = Usage.from_openai(assembled.get("usage"))
            model = assembled.get("model")
    elif content_type.startswith("application/json") and target.backend.parses_usage:
        usage = usage_from_json_body(raw)
        model = response_model(raw)
    attempts.finished(attempt, usage)
    await services.results.put_result(request["id"], body, content_type, status)
    record = usage_record(route, target, request["request_id"], status, attempt_no, request["caller"], error)
    record.streaming, record.usage, record.profile = streamed, usage, request.get("profile")
    record.priority, record.is_async = request.get("priority"), True
    record.response_model = model if isinstance(model, str) else None
    if status == 400 and body.find(b'"content_filter"') >= 0:
        record.outcome = "content_filtered"
    record.duration_ms = since_submitted(request)
    services.usage.record(record)
    inline = None
    if content_type.startswith("application/json") and len(body) <= settings.result_inline_bytes:
        inline = json.loads(body)
    return {
        "status": "succeeded" if status < 400 else "failed",
        "http_status": status,
        "backend": target.backend.name,
        "deployment": target.deployment,
        "usage": usage.as_dict() if usage else None,
        "content_type": content_type,
        "result": inline,
        "error": (inline or {}).get("error") if status >= 400 and isinstance(inline, dict) else None,
    }


async def publish_completion(services: Services, payload: dict[str, Any]) -> dict[str, Any]:
    """Publishes the completion message once; returns the orchestration's output (message + inline result).

    A request that ended without a backend answer (expired, attempts exhausted) is recorded here, so throttled
    and failed async traffic shows in usage like sync traffic does.
    """
    request, outcome = payload["request"], payload["outcome"]
    assert services.results is not None and services.completions is not None
    message = completion_message(request, outcome)
    if await publish_once(services.completions, services.results, message):
        await services.results.delete_request(request["id"])
        if not outcome.get("http_status"):
            record_unanswered(services, request, outcome)
    else:  # retried after a successful publish: answer with what was sent
        message = CompletionMessage(**await services.results.get_completion(request["id"]))
    return {**json.loads(message.body()), "result": outcome.get("result")}


def completion_message(request: dict[str, Any], outcome: dict[str, Any]) -> CompletionMessage:
    return CompletionMessage(
        id=request["id"],
        request_id=request["request_id"],
        status=outcome["status"],
        model=request.get("model"),
        deployment=outcome.get("deployment"),
        backend=outcome.get("backend"),
        caller=request.get("caller"),
        profile=request.get("profile"),
        attempts=int(outcome.get("attempts", 0)),
        http_status=outcome.get("http_status"),
        usage=outcome.get("usage"),
        result_url=result_url(request["id"]) if outcome.get("http_status") else None,
        error=outcome.get("error"),
        submitted_at=request.get("submitted_at"),
        completed_at=datetime.now(UTC).isoformat(),
    )


def record_unanswered(services: Services, request: dict[str, Any], outcome: dict[str, Any]) -> None:
    """The usage record of async work that ended without a backend answer: expired, cancelled, failed; with the
    attempts made and the last backend tried (the orchestration puts both in the outcome)."""
    route = translate.Route(request["api_style"], request["operation"], request["model"], "", "", None)
    status = {"expired": 504, "cancelled": 499}.get(outcome["status"], 503)
    code = (outcome.get("error") or {}).get("code") or outcome["status"]
    attempts = int(outcome.get("attempts", 0))
    record = usage_record(route, None, request["request_id"], status, attempts, request["caller"], code)
    record.backend, record.deployment = outcome.get("backend"), outcome.get("deployment")
    record.profile, record.priority = request.get("profile"), request.get("priority")
    record.is_async, record.duration_ms = True, since_submitted(request)
    services.usage.record(record)


def since_submitted(request: dict[str, Any]) -> float:
    """Milliseconds since the request was submitted: an async request's duration is end to end."""
    try:
        submitted = datetime.fromisoformat(request["submitted_at"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return 0.0
    return round(max(0.0, time.time() - submitted) * 1000, 3)


def _stream_error(exc: AssembleError) -> dict[str, Any]:
    """The backend's error event as the body of the failed result (its `error` object when it has one)."""
    event = exc.error or {}
    error = event.get("error") if isinstance(event.get("error"), dict) else None
    return {"error": error or errors.error_object(str(exc), code="stream_error")}


def _queue_until(request: dict[str, Any], now: float) -> float:
    """How long an attempt queues for a slot (its caller's or a backend's): SLOT_WAIT_S, or less before its deadline."""
    return time.monotonic() + max(0.0, min(SLOT_WAIT_S, request["deadline"] - now))


def _retry(retry_at: float, target: Target | None, http_status: int | None, reason: str | None) -> dict[str, Any]:
    """Try again at `retry_at`; `target` is the backend this attempt tried (None when it found none to try)."""
    return {
        "status": "retry",
        "retry_at": retry_at,
        "backend": target.backend.name if target else None,
        "deployment": target.deployment if target else None,
        "http_status": http_status,
        "reason": reason,
    }
