"""Activities of the async path: plain async functions over the gateway core (no decorators, no host types).

`attempt_backend` makes one attempt through the same pool, breakers, credentials and upstream session as the
synchronous path (`Gateway.attempt`), so there is no second implementation of forwarding. A streamed request
is consumed here and stored as the object the non-streamed API would have returned.
`publish_completion` is idempotent: a recorded completion is not sent again when the activity is retried.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp

from gateway import translate
from gateway.assemble import assemble_completion, parse_sse
from gateway.completions import CompletionMessage, publish_once
from gateway.pipeline import Gateway, Inbound, forwarded_headers, usage_record
from gateway.usage import Usage, usage_from_json_body

__all__ = ["attempt_backend", "publish_completion", "result_url"]

# One activity call may not run longer than this (host.json functionTimeout is 10 minutes).
ACTIVITY_BUDGET_S = 540.0


def result_url(request_id: str) -> str:
    return f"/results/{request_id}"


async def attempt_backend(gateway: Gateway, payload: dict[str, Any]) -> dict[str, Any]:
    """One attempt on one backend. Returns succeeded | failed (a final answer) | retry (with retry_at) | expired."""
    request, attempt = payload["request"], payload["attempt"]
    now = time.time()
    if now >= request["deadline"]:
        return _ended("expired", "The request expired before a backend could serve it.", "expired")
    stored = await gateway.results.get_request(request["id"])
    if stored is None:
        return _ended("failed", "The stored request body is missing.", "request_missing")
    inbound = Inbound("POST", request["path"], request["query"], request["headers"], stored.body)
    route = translate.resolve(
        "POST", request["path"], request["query"], stored.content_type, stored.body, gateway.settings.api_version
    )
    pool = gateway.pool
    await pool.refresh_if_due()
    target = pool.choose(route.model, set(payload.get("avoid", ()))) or pool.choose(route.model)
    if target is None:
        free_at = pool.earliest_open_until(route.model)
        return _retry(free_at or now + gateway.settings.default_retry_after_s, None, None, "no backend available")
    if not await pool.acquire(target):
        return _retry(now + 1, target.backend.name, None, "another instance holds the half-open trial")

    started = time.monotonic()
    headers = forwarded_headers(request["headers"], request["request_id"])
    remaining = min(request["deadline"] - now, ACTIVITY_BUDGET_S)
    outcome = await gateway.attempt(inbound, route, target, headers, request["request_id"], remaining)
    if outcome.resp is None:
        if pool.choose(route.model) is not None:
            retry_at = now  # another backend can take it right away
        else:
            backoff = outcome.retry_after_s if outcome.retry_after_s is not None else min(2.0**attempt, 60.0)
            retry_at = pool.earliest_open_until(route.model) or now + backoff
        return _retry(retry_at, target.backend.name, outcome.status, outcome.failure)

    resp = outcome.resp
    try:
        raw = await resp.read()
    except (TimeoutError, aiohttp.ClientError) as exc:
        resp.close()
        pool.on_transport_error(target, type(exc).__name__)
        return _retry(now, target.backend.name, resp.status, "the answer broke off")
    finally:
        resp.release()
    content_type = resp.headers.get("content-type", "application/octet-stream")
    body, usage, streamed = raw, None, False
    if content_type.startswith("text/event-stream"):
        streamed = True
        assembled = assemble_completion(parse_sse(raw))
        body, content_type = json.dumps(assembled).encode(), "application/json"
        usage = Usage.from_openai(assembled.get("usage"))
    elif content_type.startswith("application/json") and target.backend.parses_usage:
        usage = usage_from_json_body(raw)
    await gateway.results.put_result(request["id"], body, content_type, resp.status)
    record = usage_record(route, target, request["request_id"], resp.status, attempt, request["caller"])
    record.streaming, record.usage = streamed, usage
    record.duration_ms = round((time.monotonic() - started) * 1000, 3)
    gateway.usage.record(record)
    inline = None
    if content_type.startswith("application/json") and len(body) <= gateway.settings.result_inline_bytes:
        inline = json.loads(body)
    return {
        "status": "succeeded" if resp.status < 400 else "failed",
        "http_status": resp.status,
        "backend": target.backend.name,
        "deployment": target.deployment,
        "usage": usage.as_dict() if usage else None,
        "content_type": content_type,
        "result": inline,
        "error": (inline or {}).get("error") if resp.status >= 400 and isinstance(inline, dict) else None,
    }


async def publish_completion(gateway: Gateway, payload: dict[str, Any]) -> dict[str, Any]:
    """Publishes the completion message once; returns the orchestration's output (message + inline result)."""
    request, outcome = payload["request"], payload["outcome"]
    message = completion_message(request, outcome)
    if await publish_once(gateway.completions, gateway.results, message):
        await gateway.results.delete_request(request["id"])
    else:  # retried after a successful publish: answer with what was sent
        message = CompletionMessage(**await gateway.results.get_completion(request["id"]))
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
        attempts=int(outcome.get("attempts", 0)),
        http_status=outcome.get("http_status"),
        usage=outcome.get("usage"),
        result_url=result_url(request["id"]) if outcome.get("http_status") else None,
        error=outcome.get("error"),
        submitted_at=request.get("submitted_at"),
        completed_at=datetime.now(UTC).isoformat(),
    )


def _retry(retry_at: float, backend: str | None, http_status: int | None, reason: str | None) -> dict[str, Any]:
    return {"status": "retry", "retry_at": retry_at, "backend": backend, "http_status": http_status, "reason": reason}


def _ended(status: str, message: str, code: str) -> dict[str, Any]:
    return {"status": status, "error": {"message": message, "type": "gateway_error", "param": None, "code": code}}
