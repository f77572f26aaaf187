"""The Files and Batches API on every surface (`/v1/files…`, `/v1/batches…`, `/openai/files…`, `/openai/batches…`,
and Azure's v1 spellings `/openai/v1/files…`, `/openai/v1/batches…`).

The gateway keeps uploaded files in Blob Storage under its own ids, so a batch is not tied to a backend at
upload time; creating a batch starts the `batch_job` orchestration, and the batch object clients poll is
built from that orchestration's state. Files and batches belong to the caller (gateway key) that made them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

from gateway import errors, guard, ids, validate
from gateway.batch_files import BATCH_ENDPOINTS, BatchFileChecker, batch_object, file_object
from gateway.bodies import check_declared_length, read_capped
from gateway.bootstrap import Services
from gateway.callers import Caller
from gateway.headers import client_request_id
from gateway.messages import Inbound, Outbound, error_outbound
from gateway.multipart import Data, End, MultipartReader, PartStart
from gateway.state_sync import STORAGE_ERRORS
from gateway.translate import multipart_boundary, parse_body

from . import instance_query
from .workflows import BATCH_ORCHESTRATOR, RUNNING

__all__ = ["handle"]

log = logging.getLogger("orchestrations.batch_api")
_PATH = re.compile(
    r"^/(?:v1|openai|openai/v1)/(?P<kind>files|batches)(?:/(?P<id>[^/]+))?(?:/(?P<action>content|cancel))?/?$"
)
MAX_JSON_BODY = 64 * 1024  # a batch create body: ids, endpoint, window, metadata (16 pairs of 512 characters)
MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around an upload
MAX_FIELD = 1024  # a text field of the upload form (purpose)
DEFAULT_LIMIT, MAX_LIMIT = 20, 100
# A batch's instance is created a moment after its id (which carries the time, from the same host's clock) is
# made: the page's query reaches a little before its oldest id and well after its newest. Older batches would
# come first in the query's id order; newer ones come after the page's and cost nothing.
_BEFORE, _AFTER = timedelta(seconds=1), timedelta(seconds=60)


async def handle(
    client: Any, services: Services, inbound: Inbound, body: AsyncIterable[bytes] | None = None
) -> Outbound:
    """Routes one Files/Batches request; every failure is an OpenAI-style error. `body` is read only here,
    as each route needs it (an upload is streamed to Blob Storage, never held whole)."""
    try:
        guard.check_path(inbound.path, inbound.raw_path)
        identity = await services.callers.authenticate(inbound.headers)
        profile = services.governance.admit(identity, None)
        caller = identity.name
        match = _PATH.match(inbound.path)
        if match is None:
            raise errors.not_found("No such Files or Batches route.", code="route_not_found")
        kind, item, action, method = match["kind"], match["id"], match["action"], inbound.method
        if kind == "files":
            if item is None and method == "POST":
                return await upload_file(services, inbound, body or _empty(), caller)
            if item is not None and method == "GET":
                return await get_file(services, caller, ids.file_id(item), content=action == "content")
        else:
            if item is None and method == "POST":
                if profile.async_mode == "deny":
                    raise errors.GatewayError(
                        403, "Batches run asynchronously, which this caller's profile does not allow.",
                        type="permission_error", code="async_not_allowed",
                    )  # fmt: skip
                request = await _json_body(inbound, body or _empty())
                return await create_batch(client, services, inbound, request, identity)
            if item is None and method == "GET":
                return await list_batches(client, services, caller, inbound.query)
            if item is not None and method == "GET" and action is None:
                return _json(200, await _batch_view(client, caller, ids.batch_id(item)))
            if item is not None and method == "POST" and action == "cancel":
                return await cancel_batch(client, services, caller, ids.batch_id(item))
        raise errors.method_not_allowed(method[:16], "this route", _allowed(kind, item, action))
    except errors.GatewayError as exc:
        return error_outbound(exc)
    except STORAGE_ERRORS:  # Blob Storage, or the Durable client's call to the host
        log.warning("Storage failed during %s %s", inbound.method, inbound.path[:100], exc_info=True)
        return error_outbound(errors.storage_unavailable())
    except Exception:
        log.exception("Unexpected failure in the Files/Batches API")  # the trace goes to logs, not the client
        return error_outbound(errors.internal_error())


async def upload_file(services: Services, inbound: Inbound, body: AsyncIterable[bytes], caller: str) -> Outbound:
    """POST files (multipart: purpose=batch, file): validated line by line as it streams to Blob Storage.

    Nothing is kept unless the whole file is valid: the blob's blocks are committed only at the end.
    """
    settings = services.settings
    limit = settings.batch_max_bytes + MULTIPART_OVERHEAD
    check_declared_length(inbound.headers, limit)
    reader = MultipartReader(multipart_boundary(inbound.headers.get("content-type", "")))
    checker = BatchFileChecker(
        max_bytes=settings.batch_max_bytes,
        max_lines=settings.batch_max_lines,
        max_line_bytes=settings.max_body_bytes,
    )
    file_id = "file-" + uuid.uuid4().hex
    writer = await services.results.writer(f"files/{file_id}")
    fields: dict[str, bytearray] = {}
    current: PartStart | None = None
    filename: str | None = None
    received = 0
    async for chunk in body:
        received += len(chunk)
        if received > limit:
            raise errors.too_large(settings.batch_max_bytes)
        for event in reader.feed(chunk):
            if isinstance(event, PartStart):
                current = event
                if event.name == "file":
                    if filename is not None:
                        raise errors.bad_request("Send one 'file' part.", code="invalid_multipart", param="file")
                    filename = event.filename or "batch.jsonl"
                fields.setdefault(event.name, bytearray())
            elif isinstance(event, Data) and current is not None:
                if current.name == "file":
                    checker.feed(event.data)
                    await writer.write(event.data)
                elif len(fields[current.name]) + len(event.data) > MAX_FIELD:
                    raise errors.bad_request(
                        f"The form field '{current.name[:64]}' is too long.", code="invalid_multipart"
                    )
                else:
                    fields[current.name] += event.data
            elif isinstance(event, End) and current is not None:
                if current.name == "purpose":
                    _check_purpose(fields["purpose"])
                current = None
    reader.close()
    _check_purpose(fields.get("purpose", bytearray()))
    if filename is None:
        raise errors.bad_request("Send the JSONL as the 'file' part.", code="missing_file", param="file")
    checker.finish()
    meta = file_object(file_id, checker.size, int(time.time()), _safe_filename(filename), "batch")
    metadata = {"caller": caller, "meta": json.dumps(meta), "model": checker.model or "", "lines": str(checker.lines)}
    await writer.commit("application/jsonl", metadata)
    return _json(200, meta)


async def get_file(services: Services, caller: str, file_id: str, *, content: bool) -> Outbound:
    """The file object, or its bytes streamed from Blob Storage (never read whole)."""
    if not content:
        metadata = await services.results.blob_metadata(f"files/{file_id}")
        if metadata is None or metadata.get("caller") != caller:
            raise _no_file()
        return _json(200, json.loads(metadata["meta"]))
    blob = await services.results.open_blob(f"files/{file_id}")
    if blob is None or blob.metadata.get("caller") != caller:
        raise _no_file()
    headers = {"content-type": "application/jsonl", "content-length": str(blob.size)}
    return Outbound(200, headers, stream=blob.chunks)


async def create_batch(
    client: Any, services: Services, inbound: Inbound, request: dict[str, Any], identity: Caller
) -> Outbound:
    caller = identity.name
    settings = services.settings
    validate.check_body("batches", request)
    file_id, endpoint = request["input_file_id"], request["endpoint"]
    window = request.get("completion_window") or "24h"
    if endpoint not in BATCH_ENDPOINTS:
        raise errors.bad_request(
            f"'endpoint' must be one of {', '.join(sorted(BATCH_ENDPOINTS))}.", code="invalid_value", param="endpoint"
        )
    hours = re.fullmatch(r"(\d{1,3})h", window)
    if hours is None or not 1 <= int(hours[1]) <= 168:
        raise errors.bad_request(
            "'completion_window' must be like 24h.", code="invalid_value", param="completion_window"
        )
    try:
        ids.file_id(file_id)
    except errors.GatewayError:
        raise _no_file() from None
    # The upload recorded its model and line count: the file is never read here.
    metadata = await services.results.blob_metadata(f"files/{file_id}")
    if metadata is None or metadata.get("caller") != caller or not metadata.get("model"):
        raise _no_file()
    model = metadata["model"]
    profile = services.governance.admit(identity, model)  # the model must be in the caller's allow-list
    if not services.pool.candidates(model, batch=True):
        raise errors.bad_request(
            f"No backend runs batches for model '{model}' (backend setting batch=).",
            code="model_not_found",
            param="model",
        )
    batch_id = ids.new_batch_id(caller, time.time_ns() // 1_000_000, uuid.uuid4().hex)
    job = {
        "id": batch_id,
        "request_id": client_request_id(inbound.headers) or batch_id,
        "caller": caller,
        "profile": profile.name or None,
        "tiers": sorted(profile.tiers) if profile.tiers is not None else None,  # resubmissions stay in them
        "input_file_id": file_id,
        "endpoint": endpoint,
        "completion_window": window,
        "window_s": int(hours[1]) * 3600,
        "metadata": request.get("metadata"),
        "model": model,
        "lines": int(metadata.get("lines") or 0),
        "created_at": int(time.time()),
        "max_rounds": 1 + settings.batch_max_resubmits,
        "poll_min_s": settings.batch_poll_min_s,
        "poll_max_s": settings.batch_poll_max_s,
    }
    await services.batch_index.add(caller, batch_id)  # first: a batch that runs is always listed
    try:
        await client.start_new(BATCH_ORCHESTRATOR, batch_id, job)
    except Exception:
        log.exception("Could not start the batch orchestration %s", batch_id)
        with contextlib.suppress(*STORAGE_ERRORS):  # else the listing skips the row: its instance does not exist
            await services.batch_index.remove(caller, batch_id)
        raise errors.unavailable(503, "The gateway could not start the batch; retry later.", 5) from None
    return _json(200, batch_object(job, {"status": "validating"}))


async def list_batches(client: Any, services: Services, caller: str, query: str) -> Outbound:
    """The caller's batches, newest first, `limit` at a time after `after`: the ids come from the caller's
    partition of the batch index (one range query), their state from the instance query over the page's
    creation times (see `_statuses`). Never a scan of every instance, never another caller's batch."""
    params = dict(parse_qsl(query, keep_blank_values=True))
    limit = _limit(params.get("limit"))
    cursor = params.get("after") or None
    if cursor is not None:
        ids.batch_id(cursor)
    views: list[dict[str, Any]] = []
    more = True
    while more and len(views) <= limit:  # a second round only when rows had no instance (a start that failed)
        batch_ids, more = await services.batch_index.newest(caller, cursor, limit + 1 - len(views))
        found = await _statuses(client, services, caller, batch_ids)
        views += [_view(*found[batch_id]) for batch_id in batch_ids if batch_id in found]
        cursor = batch_ids[-1] if batch_ids else cursor
    data = views[:limit]
    return _json(
        200,
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": len(views) > limit,
        },
    )


async def _statuses(
    client: Any, services: Services, caller: str, batch_ids: list[str]
) -> dict[str, tuple[dict[str, Any], Any]]:
    """Job and status of each of the caller's `batch_ids` that exists: the instance query over the caller's id
    prefix and the span of the ids' creation times, page by page until every id is found (usually one page)."""
    wanted = set(batch_ids)
    created = [ms for batch_id in batch_ids if (ms := ids.batch_created_ms(batch_id)) is not None]
    found: dict[str, tuple[dict[str, Any], Any]] = {}
    if not created:
        return found
    pages = instance_query.pages(
        client,
        services.upstream,
        created_from=datetime.fromtimestamp(min(created) / 1000, UTC) - _BEFORE,
        created_to=datetime.fromtimestamp(max(created) / 1000, UTC) + _AFTER,
        prefix="batch_" + ids.caller_tag(caller),
        show_input=True,
        top=len(batch_ids) + 1,
    )
    async for page in pages:
        for status in page:
            if status.instance_id in wanted and (job := _job(status, caller)) is not None:
                found[status.instance_id] = (job, status)
        if len(found) == len(wanted):
            await pages.aclose()
            break
    return found


async def cancel_batch(client: Any, services: Services, caller: str, batch_id: str) -> Outbound:
    """Marks the batch for cancellation; its orchestration cancels the backend batch at its next poll."""
    view = await _batch_view(client, caller, batch_id)
    if view["status"] in ("validating", "in_progress", "finalizing"):
        await services.results.put_blob(f"batches/{batch_id}/cancel", b"", "text/plain", {"caller": caller})
        view = {**view, "status": "cancelling", "cancelling_at": int(time.time())}
    return _json(200, view)


async def _batch_view(client: Any, caller: str, batch_id: str) -> dict[str, Any]:
    status = await client.get_status(batch_id, show_input=True)
    job = _job(status, caller)
    if job is None:
        raise ids.unknown("batch")
    return _view(job, status)


def _job(status: Any, caller: str) -> dict[str, Any] | None:
    """The batch's job (its orchestration input) when the instance exists and belongs to the caller."""
    job = status.input_
    if isinstance(job, str):
        try:
            job = json.loads(job)
        except ValueError:
            return None
    if status.runtime_status is None or not isinstance(job, dict) or job.get("caller") != caller:
        return None
    return job


def _view(job: dict[str, Any], status: Any) -> dict[str, Any]:
    runtime = status.runtime_status.name
    if runtime in RUNNING:
        view = status.custom_status if isinstance(status.custom_status, dict) else {}
    elif runtime == "Completed" and isinstance(status.output, dict):
        view = status.output
    else:
        view = {"status": "cancelled" if runtime == "Terminated" else "failed"}
    return batch_object(job, view)


async def _json_body(inbound: Inbound, body: AsyncIterable[bytes]) -> dict[str, Any]:
    """A small JSON object body: 413 over MAX_JSON_BODY, 400 for anything that is not a JSON object."""
    check_declared_length(inbound.headers, MAX_JSON_BODY)
    data = await read_capped(body, MAX_JSON_BODY)  # at most 64 KB, whatever the content type says
    return parse_body(inbound.headers.get("content-type", ""), data)  # the data plane's checks and wording


def _check_purpose(value: bytearray) -> None:
    if value.decode("utf-8", "replace").strip() != "batch":
        raise errors.bad_request("Only purpose=batch files are accepted.", code="invalid_purpose", param="purpose")


def _safe_filename(name: str) -> str:
    """The client's file name as shown back: printable, no path, short (it goes into blob metadata)."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    return "".join(c for c in name if c.isprintable())[:200] or "batch.jsonl"


def _limit(value: str | None) -> int:
    if value is None or value == "":
        return DEFAULT_LIMIT
    if not value.isdigit() or not 1 <= int(value) <= MAX_LIMIT:
        raise errors.bad_request(f"'limit' must be between 1 and {MAX_LIMIT}.", code="invalid_value", param="limit")
    return int(value)


def _no_file() -> errors.GatewayError:
    return ids.unknown("file")


async def _empty() -> AsyncIterator[bytes]:
    return
    yield b""


def _allowed(kind: str, item: str | None, action: str | None) -> str:
    """The methods a Files/Batches path takes, for the 405's Allow header."""
    if kind == "files":
        return "POST" if item is None else "GET"
    if item is None:
        return "GET, POST"
    return "POST" if action == "cancel" else "GET"


def _json(status: int, body: dict[str, Any]) -> Outbound:
    return Outbound(status, {"content-type": "application/json"}, json.dumps(body).encode())
