"""The client side of the async path: start an orchestration (202), answer for results, cancel, tidy up.

Works with the real `DurableOrchestrationClient` the host injects. A deferred request's body goes to Blob
Storage and the orchestration gets a small input (reference, route, model, caller, request id, deadline).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from gateway import errors, ids, tracing
from gateway.bootstrap import Services
from gateway.completions import publish_once
from gateway.deferral import Deferred, prefers_async
from gateway.headers import forwarded_headers
from gateway.messages import Inbound, Outbound
from gateway.state_sync import STORAGE_ERRORS
from gateway.translate import without_credentials
from gateway.usage_store import RETENTION_DAYS

from . import instance_query
from .activities import completion_message, ended, record_unanswered, result_url, status_url
from .workflows import RELAY_ORCHESTRATOR, RUNNING

__all__ = ["accept", "cancel", "get_result", "get_status", "housekeeping", "publish_cancelled", "start"]

log = logging.getLogger("orchestrations.starter")
POLL_AFTER_S = "2"
HOUSEKEEPING_PAGES = 20  # instance-query pages per housekeeping pass: 2,000 instances (a run every 15 min)
# The body a client may see for each way an async request can end without a backend answer to relay.
_END_STATUS = {"expired": 504, "cancelled": 409, "failed": 502}


async def start(client: Any, services: Services, deferred: Deferred) -> Outbound:
    """Stores the body, starts `relay_request`, answers 202 pointing at the gateway's own status route.

    Storage down: a fast 503 with Retry-After (nothing was accepted, so nothing is lost), never a 500.
    """
    try:
        request = await accept(services, deferred)
    except STORAGE_ERRORS as exc:
        log.warning("Could not store async request %s: %s", deferred.request_id, type(exc).__name__)
        raise errors.unavailable(503, "The gateway could not accept the request for async processing.", 5) from None
    instance_id = request["id"]
    try:
        await client.start_new(RELAY_ORCHESTRATOR, instance_id, request)
    except Exception:
        log.exception("Could not start the orchestration for request %s", deferred.request_id)
        assert services.results is not None
        with contextlib.suppress(*STORAGE_ERRORS):  # best effort: housekeeping purges what is left
            await services.results.delete(instance_id)
        raise errors.unavailable(503, "The gateway could not accept the request for async processing.", 5) from None
    payload = client.create_http_management_payload(instance_id)
    # The host builds its status URL with the app's public address: keep that origin, never its system key.
    origin = urlsplit(payload["statusQueryGetUri"])
    base = f"{origin.scheme}://{origin.netloc}"
    body: dict[str, Any] = {
        "id": instance_id,
        "status": "accepted",
        "reason": deferred.reason,
        "status_url": base + status_url(instance_id),
        "result_url": base + result_url(instance_id),
    }
    if services.settings.expose_durable_urls:  # single-tenant deployments only: these URLs open every instance
        body.update(payload)
    out_headers = {
        "content-type": "application/json",
        "Location": body["status_url"],
        "Retry-After": POLL_AFTER_S,
        "x-request-id": deferred.request_id,
    }
    if prefers_async(deferred.inbound.headers.get("prefer", "")):
        out_headers["Preference-Applied"] = "respond-async"
    return Outbound(202, out_headers, json.dumps(body).encode())


async def accept(services: Services, deferred: Deferred) -> dict[str, Any]:
    """Stores a deferred request's body and returns the orchestration's small input (no body, no credential)."""
    inbound, route = deferred.inbound, deferred.route
    assert services.results is not None
    instance_id = uuid.uuid4().hex
    content_type = inbound.headers.get("content-type", "application/json")
    await services.results.put_request(instance_id, inbound.body, content_type)
    headers = forwarded_headers(inbound.headers, deferred.request_id, services.settings.forward_headers)
    headers.pop("accept-encoding", None)
    return {
        "id": instance_id,
        "request_id": deferred.request_id,
        "caller": deferred.caller,
        "profile": deferred.profile or None,
        "model": route.model,
        "api_style": route.api_style,
        "operation": route.operation,
        "path": inbound.path,
        "query": without_credentials(inbound.query),  # a key or SAS in the query string is never stored
        "headers": headers,
        # The async deadline is the smaller of GATEWAY_ASYNC_TTL_S and the request's own time to live.
        "deadline": min(time.time() + services.settings.async_ttl_s, deferred.lane.expires_at or math.inf),
        "tiers": sorted(deferred.lane.tiers) if deferred.lane.tiers is not None else None,
        "priority": deferred.lane.priority,
        "submitted_at": datetime.now(UTC).isoformat(),
        "max_attempts": services.settings.async_max_attempts,
        "reason": deferred.reason,
        # The deferred request's span, so each attempt of the async path continues its trace (W3C).
        "traceparent": tracing.traceparent() or inbound.headers.get("traceparent"),
    }


async def get_status(client: Any, services: Services, inbound: Inbound, instance_id: str) -> Outbound:
    """GET /status/{id}: the Durable status object (never its input) to the submitting caller only.

    202 with Retry-After while the work runs, 200 once it has ended, 404 to anyone else.
    """
    status, _ = await _owned(client, services, inbound, instance_id, "status")
    runtime = status.runtime_status.value
    body = {
        "name": status.name,
        "instanceId": status.instance_id,
        "runtimeStatus": runtime,
        "customStatus": status.custom_status,
        "output": status.output,
        "createdTime": _iso(status.created_time),
        "lastUpdatedTime": _iso(status.last_updated_time),
    }
    headers = {"content-type": "application/json"}
    if runtime in RUNNING:
        headers |= {"Retry-After": POLL_AFTER_S, "Location": inbound.path}
        return Outbound(202, headers, json.dumps(body).encode())
    return Outbound(200, headers, json.dumps(body).encode())


async def get_result(client: Any, services: Services, inbound: Inbound, instance_id: str) -> Outbound:
    """GET /results/{id}: the backend's answer as the sync call would have given it, to its caller only."""
    status, _ = await _owned(client, services, inbound, instance_id)
    runtime = status.runtime_status.name
    if runtime in RUNNING:
        body = {"id": instance_id, "status": "running", "progress": status.custom_status}
        headers = {"content-type": "application/json", "Retry-After": POLL_AFTER_S}
        return Outbound(202, headers, json.dumps(body).encode())
    output = status.output if isinstance(status.output, dict) else {}
    outcome = "cancelled" if runtime == "Terminated" else output.get("status", "failed")
    if outcome in ("succeeded", "failed") and output.get("http_status"):
        stored = await services.results.get_result(instance_id)
        if stored is not None:
            return Outbound(
                output["http_status"], {"content-type": stored.content_type, "x-gateway-status": outcome}, stored.body
            )
    error = output.get("error") or errors.error_object(f"The request ended as {outcome}.", code=outcome)
    return Outbound(
        _END_STATUS.get(outcome, 502),
        {"content-type": "application/json", "x-gateway-status": outcome},
        json.dumps({"error": error}).encode(),
    )


async def cancel(client: Any, services: Services, inbound: Inbound, instance_id: str) -> Outbound:
    """DELETE /results/{id}: ends running work (publishing a `cancelled` completion) or deletes a finished result."""
    status, request = await _owned(client, services, inbound, instance_id)
    if status.runtime_status.name in RUNNING:
        await client.terminate(instance_id, "cancelled by the client")
        await publish_cancelled(services, request)
        body = {"id": instance_id, "status": "cancelled"}
        return Outbound(202, {"content-type": "application/json"}, json.dumps(body).encode())
    await services.results.delete(instance_id)
    await client.purge_instance_history(instance_id)
    return Outbound(204, {}, b"")


async def publish_cancelled(services: Services, request: dict[str, Any]) -> bool:
    """The completion for terminated work; skipped when one was already published for this request."""
    outcome = ended("cancelled", "The request was cancelled.", "cancelled")
    if not await publish_once(services.completions, services.results, completion_message(request, outcome)):
        return False
    await services.results.delete_request(request["id"])
    record_unanswered(services, request, outcome)  # cancelled work is counted like every other outcome
    return True


async def housekeeping(client: Any, services: Services) -> dict[str, Any]:
    """Publishes `cancelled` for work terminated from outside (the durable terminate URL), then purges
    finished instances and their blobs (and a batch's index row) after GATEWAY_PURGE_AFTER_DAYS, expired
    response-affinity rows, and usage rows older than the usage API's longest window.

    Instances are read page by page (instance_query: the SDK's own query stops at the first 100), at most
    HOUSEKEEPING_PAGES pages per pass; `complete` is false when a pass stopped there: the next run goes on."""
    from azure.durable_functions.models.OrchestrationRuntimeStatus import OrchestrationRuntimeStatus as Status

    cutoff = datetime.now(UTC) - timedelta(days=services.settings.purge_after_days)
    terminated = await instance_query.query(
        client,
        services.upstream,
        max_pages=HOUSEKEEPING_PAGES,
        created_from=cutoff,
        runtime_status=[Status.Terminated],
        show_input=True,
    )
    cancelled = 0
    for status in terminated.items:
        request = _as_dict(status.input_)
        if request and request.get("caller") and await publish_cancelled(services, request):
            cancelled += 1
    purged, purged_all = await _purge_finished(client, services, cutoff)
    complete = terminated.complete and purged_all
    if not complete:
        log.warning(
            "Housekeeping stopped at its bound of %d pages (%d purged); the next run goes on",
            HOUSEKEEPING_PAGES,
            purged,
        )
    expired_responses = await services.affinity.purge_expired()  # rows of responses the backends no longer keep
    usage_rows = 0
    if services.usage_counters is not None:  # per-minute usage rows past the usage API's longest window
        before = int(time.time() // 60) - RETENTION_DAYS * 1440
        usage_rows = await services.usage_counters.table.purge(before)
    return {
        "cancelled_published": cancelled,
        "purged": purged,
        "expired_responses": expired_responses,
        "usage_rows_purged": usage_rows,
        "complete": complete,
    }


async def _purge_finished(client: Any, services: Services, cutoff: datetime) -> tuple[int, bool]:
    """Purges finished instances created before `cutoff` as their pages come; (how many, whether all were)."""
    from azure.durable_functions.models.OrchestrationRuntimeStatus import OrchestrationRuntimeStatus as Status

    finished = [Status.Completed, Status.Failed, Status.Terminated]
    purged = read = 0
    pages = instance_query.pages(client, services.upstream, created_to=cutoff, runtime_status=finished, show_input=True)
    async for page in pages:
        for status in page:
            await services.results.delete(status.instance_id)
            request = _as_dict(status.input_)
            if status.instance_id.startswith("batch_") and request and isinstance(request.get("caller"), str):
                await services.batch_index.remove(request["caller"], status.instance_id)
            await client.purge_instance_history(status.instance_id)
            purged += 1
        read += 1
        if read >= HOUSEKEEPING_PAGES:
            await pages.aclose()
            return purged, False
    return purged, True


async def _owned(
    client: Any, services: Services, inbound: Inbound, instance_id: str, what: str = "result"
) -> tuple[Any, dict[str, Any]]:
    """The instance's status and input, if it exists and belongs to this caller; else the 404 a malformed id gets
    (`ids.unknown(what)`), so nothing is revealed about what exists."""
    caller = await services.callers.authenticate(inbound.headers)
    services.governance.admit(caller, None)  # a suspended caller reads nothing either
    status = await client.get_status(instance_id, show_input=True)
    request = _as_dict(status.input_) if status.runtime_status is not None else None
    if not request or request.get("caller") != caller.name:
        raise ids.unknown(what)
    return status, request


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _as_dict(value: Any) -> dict[str, Any] | None:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return value if isinstance(value, dict) else None
