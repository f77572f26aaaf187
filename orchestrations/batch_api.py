"""The Files and Batches API on both styles (`/v1/files…`, `/v1/batches…`, `/openai/files…`, `/openai/batches…`).

The gateway keeps uploaded files in Blob Storage under its own ids, so a batch is not tied to a backend at
upload time; creating a batch starts the `batch_job` orchestration, and the batch object clients poll is
built from that orchestration's state. Files and batches belong to the caller (gateway key) that made them.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

from gateway import errors
from gateway.batch_files import BATCH_ENDPOINTS, batch_object, file_object, parse_jsonl, validate_batch_jsonl
from gateway.bootstrap import Services
from gateway.callers import Caller
from gateway.messages import Inbound, Outbound, error_outbound
from gateway.translate import multipart_form

from .workflows import BATCH_ORCHESTRATOR, RUNNING

__all__ = ["handle"]

_PATH = re.compile(
    r"^/(?:v1|openai)/(?P<kind>files|batches)(?:/(?P<id>[A-Za-z0-9_.-]+))?(?:/(?P<action>content|cancel))?/?$"
)


async def handle(client: Any, services: Services, inbound: Inbound) -> Outbound:
    """Routes one Files/Batches request; every failure is an OpenAI-style error."""
    try:
        identity = await services.callers.authenticate(inbound.headers)
        profile = services.governance.admit(identity, None)
        caller = identity.name
        match = _PATH.match(inbound.path)
        if match is None:
            raise errors.not_found(f"No route for {inbound.method} {inbound.path}.", code="route_not_found")
        kind, item, action, method = match["kind"], match["id"], match["action"], inbound.method
        if kind == "files":
            if item is None and method == "POST":
                return await upload_file(services, inbound, caller)
            if item is not None and method == "GET":
                return await get_file(services, caller, item, content=action == "content")
        else:
            if item is None and method == "POST":
                if profile.async_mode == "deny":
                    raise errors.GatewayError(
                        403, "Batches run asynchronously, which this caller's profile does not allow.",
                        type="permission_error", code="async_not_allowed",
                    )  # fmt: skip
                return await create_batch(client, services, inbound, identity)
            if item is None and method == "GET":
                return await list_batches(client, caller)
            if item is not None and method == "GET" and action is None:
                return _json(200, await _batch_view(client, caller, item))
            if item is not None and method == "POST" and action == "cancel":
                return await cancel_batch(client, services, caller, item)
        raise errors.method_not_allowed(method, inbound.path, _allowed(kind, item, action))
    except errors.GatewayError as exc:
        return error_outbound(exc)


async def upload_file(services: Services, inbound: Inbound, caller: str) -> Outbound:
    """POST files (multipart: purpose=batch, file): validated before it is kept, so bad lines fail now."""
    settings = services.settings
    if len(inbound.body) > settings.batch_max_bytes + 64 * 1024:
        raise errors.too_large(settings.batch_max_bytes)
    form = multipart_form(inbound.headers.get("content-type", ""), inbound.body)
    purpose = form.get("purpose", (None, b""))[1].decode("utf-8", "replace").strip()
    if purpose != "batch":
        raise errors.bad_request("Only purpose=batch files are accepted.", code="invalid_purpose", param="purpose")
    if "file" not in form:
        raise errors.bad_request("Send the JSONL as the 'file' part.", code="missing_file", param="file")
    filename, data = form["file"]
    validate_batch_jsonl(data, max_bytes=settings.batch_max_bytes, max_lines=settings.batch_max_lines)
    file_id = "file-" + uuid.uuid4().hex
    meta = file_object(file_id, len(data), int(time.time()), filename or "batch.jsonl", "batch")
    await services.results.put_blob(
        f"files/{file_id}", data, "application/jsonl", {"caller": caller, "meta": json.dumps(meta)}
    )
    return _json(200, meta)


async def get_file(services: Services, caller: str, file_id: str, *, content: bool) -> Outbound:
    blob = await services.results.get_blob(f"files/{file_id}")
    if blob is None or blob.metadata.get("caller") != caller:
        raise errors.not_found(f"No file with id '{file_id}'.", code="file_not_found")
    if content:
        return Outbound(200, {"content-type": "application/jsonl"}, blob.body)
    return _json(200, json.loads(blob.metadata["meta"]))


async def create_batch(client: Any, services: Services, inbound: Inbound, identity: Caller) -> Outbound:
    caller = identity.name
    settings = services.settings
    try:
        request = json.loads(inbound.body or b"{}")
    except ValueError:
        raise errors.bad_request("The body must be JSON.", code="invalid_json") from None
    if not isinstance(request, dict):
        raise errors.bad_request("The body must be a JSON object.", code="invalid_json")
    file_id, endpoint = request.get("input_file_id"), request.get("endpoint")
    window = str(request.get("completion_window", "24h"))
    if endpoint not in BATCH_ENDPOINTS:
        raise errors.bad_request(f"'endpoint' must be one of {', '.join(sorted(BATCH_ENDPOINTS))}.", param="endpoint")
    hours = re.fullmatch(r"(\d{1,3})h", window)
    if hours is None or not 1 <= int(hours[1]) <= 168:
        raise errors.bad_request("'completion_window' must be like 24h.", param="completion_window")
    blob = await services.results.get_blob(f"files/{file_id}") if isinstance(file_id, str) else None
    if blob is None or blob.metadata.get("caller") != caller:
        raise errors.not_found(f"No file with id '{file_id}'.", code="file_not_found")
    lines = parse_jsonl(blob.body)
    model = lines[0]["body"]["model"]
    profile = services.governance.admit(identity, model)  # the model must be in the caller's allow-list
    if not services.pool.candidates(model, batch=True):
        raise errors.bad_request(
            f"No backend runs batches for model '{model}' (backend setting batch=).",
            code="model_not_found",
            param="model",
        )
    batch_id = "batch_" + uuid.uuid4().hex
    job = {
        "id": batch_id,
        "request_id": inbound.headers.get("x-request-id") or batch_id,
        "caller": caller,
        "profile": profile.name or None,
        "input_file_id": file_id,
        "endpoint": endpoint,
        "completion_window": window,
        "window_s": int(hours[1]) * 3600,
        "metadata": request.get("metadata"),
        "model": model,
        "lines": len(lines),
        "created_at": int(time.time()),
        "max_rounds": 1 + settings.batch_max_resubmits,
        "poll_min_s": settings.batch_poll_min_s,
        "poll_max_s": settings.batch_poll_max_s,
    }
    await client.start_new(BATCH_ORCHESTRATOR, batch_id, job)
    return _json(200, batch_object(job, {"status": "validating"}))


async def list_batches(client: Any, caller: str) -> Outbound:
    batches = []
    for status in await client.get_status_all():
        if status.name == BATCH_ORCHESTRATOR:
            try:
                batches.append(await _batch_view(client, caller, status.instance_id))
            except errors.GatewayError:
                continue  # someone else's
    batches.sort(key=lambda b: b["created_at"], reverse=True)
    return _json(
        200,
        {
            "object": "list",
            "data": batches,
            "first_id": batches[0]["id"] if batches else None,
            "last_id": batches[-1]["id"] if batches else None,
            "has_more": False,
        },
    )


async def cancel_batch(client: Any, services: Services, caller: str, batch_id: str) -> Outbound:
    """Marks the batch for cancellation; its orchestration cancels the backend batch at its next poll."""
    view = await _batch_view(client, caller, batch_id)
    if view["status"] in ("validating", "in_progress", "finalizing"):
        await services.results.put_blob(f"batches/{batch_id}/cancel", b"", "text/plain", {"caller": caller})
        view = {**view, "status": "cancelling", "cancelling_at": int(time.time())}
    return _json(200, view)


async def _batch_view(client: Any, caller: str, batch_id: str) -> dict[str, Any]:
    status = await client.get_status(batch_id, show_input=True)
    job = status.input_
    if isinstance(job, str):
        job = json.loads(job)
    if status.runtime_status is None or not isinstance(job, dict) or job.get("caller") != caller:
        raise errors.not_found(f"No batch with id '{batch_id}'.", code="batch_not_found")
    runtime = status.runtime_status.name
    if runtime in RUNNING:
        view = status.custom_status if isinstance(status.custom_status, dict) else {}
    elif runtime == "Completed" and isinstance(status.output, dict):
        view = status.output
    else:
        view = {"status": "cancelled" if runtime == "Terminated" else "failed"}
    return batch_object(job, view)


def _allowed(kind: str, item: str | None, action: str | None) -> str:
    """The methods a Files/Batches path takes, for the 405's Allow header."""
    if kind == "files":
        return "POST" if item is None else "GET"
    if item is None:
        return "GET, POST"
    return "POST" if action == "cancel" else "GET"


def _json(status: int, body: dict[str, Any]) -> Outbound:
    return Outbound(status, {"content-type": "application/json"}, json.dumps(body).encode())
