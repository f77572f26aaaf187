"""Activities of a managed batch: submit the unfinished lines to a backend, poll, collect, cancel, finish.

Each round's answers are kept in Blob Storage as they arrive (`orchestrations/batch_store.py`), so a
resubmission sends only the lines no backend has answered yet, and the final files are the merge of every
round. Lines a backend rejected (a 4xx in its error file) are final; lines missing after an expired or failed
round are resubmitted (so are error-file lines without a response, such as `batch_expired`: they never ran);
lines still missing at the end are reported in the error file, honestly. Files are streamed through, never
held whole: memory grows with the number of custom ids, not with the size of the files.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from gateway.backend_batches import BackendBatchError, BackendBatches
from gateway.batch_files import file_object, rewrite_line
from gateway.bootstrap import Services
from gateway.completions import CompletionMessage, publish_once
from gateway.pool import Target
from gateway.usage import BatchLines, Usage, UsageRecord

from . import batch_store
from .batch_store import Tally

__all__ = ["batch_cancel_backend", "batch_collect", "batch_finish", "batch_poll", "batch_submit"]

TERMINAL = ("completed", "failed", "expired", "cancelled")
UNAVAILABLE_RETRY_S = 30.0
UPLOAD_CHUNK = 256 * 1024  # lines are sent to a backend in pieces of about this size


def _client(services: Services) -> BackendBatches:
    return BackendBatches(services.attempts, services.settings.api_version)


def _target(services: Services, payload: dict[str, Any]) -> Target:
    """The round's backend; a backend renamed or removed since the round started is unreachable."""
    target = services.pool.target_for(payload["backend"], payload.get("deployment") or "")
    if target is None:
        raise BackendBatchError(payload["backend"], "no backend has this name any more")
    return target


async def _remaining(services: Services, job: dict[str, Any], answered: set[str]) -> AsyncIterator[dict[str, Any]]:
    """The input lines no round has answered yet, read from the stored file as a stream."""
    async for _, line in batch_store.lines(services, f"files/{job['input_file_id']}"):
        if line.get("custom_id") not in answered:
            yield line


async def _rewritten(lines: AsyncIterator[dict[str, Any]], deployment: str) -> AsyncIterator[bytes]:
    pending = bytearray()
    async for line in lines:
        pending += rewrite_line(line, deployment) + b"\n"
        if len(pending) >= UPLOAD_CHUNK:
            yield bytes(pending)
            pending.clear()
    if pending:
        yield bytes(pending)


async def batch_submit(services: Services, payload: dict[str, Any]) -> dict[str, Any]:
    """Uploads the lines no round has answered yet to a backend serving the model's batches, creates the batch.

    The input is read twice (count and size, then the upload), so the upload has a Content-Length without
    the file ever being held: a rewritten line is its size with an empty model plus the deployment's JSON.
    """
    job, avoid = payload["job"], set(payload.get("avoid", ()))
    answered = (await batch_store.tally(services, job["id"])).answered
    count = size_without_model = 0
    async for line in _remaining(services, job, answered):
        count += 1
        size_without_model += len(rewrite_line(line, "")) + 1
    if not count:
        return {"status": "nothing_left"}
    attempts, now = services.attempts, time.time()
    await services.pool.refresh_if_due()
    # The model's strategy among the backends with a Global Batch deployment; another backend if there is one.
    tiers = frozenset(job["tiers"]) if job.get("tiers") else None
    target = await attempts.next_target(job["model"], avoid, batch=True, tiers=tiers)
    target = target or await attempts.next_target(job["model"], batch=True, tiers=tiers)
    if target is None:
        return {"status": "unavailable", "backend": None, "retry_at": now + UNAVAILABLE_RETRY_S}
    size = size_without_model + count * (len(json.dumps(target.deployment)) - 2)
    jsonl = _rewritten(_remaining(services, job, answered), target.deployment)
    client = _client(services)
    try:
        file_id = await client.upload_stream(target, jsonl, size, f"{job['id']}-round{payload['round']}.jsonl")
        created = await client.create(target, file_id, _azure_endpoint(job["endpoint"]), job["completion_window"])
    except BackendBatchError as exc:
        return {
            "status": "unavailable",
            "backend": target.backend.name,
            "retry_at": now + UNAVAILABLE_RETRY_S,
            "reason": str(exc),
        }
    return {
        "status": "submitted",
        "backend": target.backend.name,
        "deployment": target.deployment,
        "backend_batch_id": created["id"],
        "backend_file_id": file_id,
        "lines": count,
    }


async def batch_poll(services: Services, payload: dict[str, Any]) -> dict[str, Any]:
    """The backend batch's status, and whether the client asked to cancel."""
    job = payload["job"]
    cancel = await services.results.get_blob(f"batches/{job['id']}/cancel") is not None
    try:
        batch = await _client(services).get(_target(services, payload), payload["backend_batch_id"])
    except BackendBatchError as exc:
        return {"status": "unreachable", "reason": str(exc), "cancel_requested": cancel}
    return {
        "status": batch.get("status"),
        "request_counts": batch.get("request_counts") or {},
        "output_file_id": batch.get("output_file_id"),
        "error_file_id": batch.get("error_file_id"),
        "errors": batch.get("errors"),
        "cancel_requested": cancel,
    }


async def batch_cancel_backend(services: Services, payload: dict[str, Any]) -> dict[str, Any]:
    try:
        batch = await _client(services).cancel(_target(services, payload), payload["backend_batch_id"])
    except BackendBatchError as exc:
        return {"status": "unreachable", "reason": str(exc)}
    return {"status": batch.get("status")}


async def batch_collect(services: Services, payload: dict[str, Any]) -> dict[str, Any]:
    """Streams this round's output and error files into the batch's blobs, then counts every round's answers."""
    job, poll = payload["job"], payload["poll"]
    client = _client(services)
    for kind, file_key in (("results", "output_file_id"), ("errors", "error_file_id")):
        if not poll.get(file_key):
            continue
        # An error line without a response (batch_expired, batch_cancelled, ...) was never run: not final.
        keep = _any if kind == "results" else _answered
        name = batch_store.round_blob(job["id"], payload["backend_batch_id"], kind)
        try:
            chunks = client.content(_target(services, payload), poll[file_key])
            await batch_store.store_round(services, name, chunks, keep)
        except BackendBatchError:
            continue  # its lines stay unanswered and go to the next round
    counted = await batch_store.tally(services, job["id"])
    return {
        "succeeded": counted.succeeded,
        "failed": counted.failed,
        "remaining": job["lines"] - counted.succeeded - counted.failed,
        "usage": counted.usage,
    }


async def batch_finish(services: Services, payload: dict[str, Any]) -> dict[str, Any]:
    """Writes the merged output and error files, publishes the completion once, returns the final view."""
    job, end = payload["job"], payload["end"]
    now = int(time.time())
    status = end["status"]
    counted = await batch_store.tally(services, job["id"])
    output_id = await _store_output(services, job, counted)
    error_id, inputs, unanswered = await _store_errors(services, job, counted, status)
    if status == "completed" and unanswered:
        status = "failed"  # never claim completion with lines missing
    view: dict[str, Any] = {
        "status": status,
        "output_file_id": output_id,
        "error_file_id": error_id,
        "errors": end.get("errors"),
        "in_progress_at": end.get("in_progress_at"),
        "finalizing_at": end.get("finalizing_at"),
        "cancelling_at": end.get("cancelling_at"),
        f"{status}_at": now,
    }
    view["request_counts"] = {"total": inputs, "completed": counted.succeeded, "failed": inputs - counted.succeeded}
    view["usage"] = counted.usage
    message = CompletionMessage(
        id=job["id"],
        request_id=job["request_id"],
        status="succeeded" if status == "completed" else status,
        model=job["model"],
        caller=job["caller"],
        profile=job.get("profile"),
        attempts=int(end.get("rounds", 1)),
        usage=view["usage"],
        result_url=f"/v1/batches/{job['id']}",
        submitted_at=str(job["created_at"]),
        kind="batch",
        extra={
            "request_counts": view["request_counts"],
            "output_file_id": view["output_file_id"],
            "error_file_id": view["error_file_id"],
            "batch_status": status,
        },
    )
    if await publish_once(services.completions, services.results, message):  # once, even if this is retried
        _record_batch(services, job, status, int(end.get("rounds", 1)), inputs, counted.succeeded, view["usage"])
    return view


_BATCH_OUTCOMES = {"completed": "success", "expired": "expired", "cancelled": "cancelled"}


def _record_batch(
    services: Services, job: dict[str, Any], status: str, rounds: int, total: int, succeeded: int, usage: dict
) -> None:
    """One usage record per finished batch: its lines by outcome and its tokens, for its caller and model."""
    record = UsageRecord(
        request_id=job["request_id"],
        api_style="v1",
        operation="batch",
        model=job["model"],
        deployment=None,
        backend=None,
        status=200 if status == "completed" else 500,
        streaming=False,
        attempts=rounds,
        duration_ms=max(0.0, (time.time() - float(job["created_at"])) * 1000),
        usage=Usage(usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]),
        caller=job["caller"],
        outcome=_BATCH_OUTCOMES.get(status, "failed"),
        is_async=True,
        batch=BatchLines(total=total, succeeded=succeeded, failed=total - succeeded),
    )
    services.usage.record(record)


async def _store_output(services: Services, job: dict[str, Any], counted: Tally) -> str | None:
    """The merged output file (each custom id once), streamed round after round; None when nothing succeeded."""
    if not counted.results:
        return None
    file_id = f"{job['id']}-output"
    writer = await services.results.writer(f"files/{file_id}")
    written: set[str] = set()
    async for raw, line in batch_store.answers(services, job["id"], "results"):
        custom_id = line.get("custom_id")
        if isinstance(custom_id, str) and custom_id not in written:
            written.add(custom_id)
            await writer.write(raw + b"\n")
    await _commit_file(writer, job, file_id)
    return file_id


async def _store_errors(
    services: Services, job: dict[str, Any], counted: Tally, status: str
) -> tuple[str | None, int, int]:
    """The error file: final errors of every round, then one line per input line nobody answered.

    Returns its id (None when empty), the number of input lines and how many of them went unanswered.
    """
    code = {"completed": "batch_failed", "cancelled": "batch_cancelled", "expired": "batch_expired"}.get(
        status, "batch_failed"
    )
    file_id = f"{job['id']}-errors"
    writer = await services.results.writer(f"files/{file_id}")
    written: set[str] = set()
    async for raw, line in batch_store.answers(services, job["id"], "errors"):
        custom_id = line.get("custom_id")
        if custom_id in counted.errors and custom_id not in written:
            written.add(custom_id)
            await writer.write(raw + b"\n")
    inputs = unanswered = 0
    answered = counted.answered
    async for _, line in batch_store.lines(services, f"files/{job['input_file_id']}"):
        inputs += 1
        if line.get("custom_id") not in answered:  # never answered by any backend: say so per line
            unanswered += 1
            error = {"code": code, "message": f"The request was not completed ({status})."}
            record = {"id": None, "custom_id": line.get("custom_id"), "response": None, "error": error}
            await writer.write(json.dumps(record, separators=(",", ":")).encode() + b"\n")
    if not writer.size:
        return None, inputs, unanswered
    await _commit_file(writer, job, file_id)
    return file_id, inputs, unanswered


async def _commit_file(writer: Any, job: dict[str, Any], file_id: str) -> None:
    meta = file_object(file_id, writer.size, int(time.time()), f"{file_id}.jsonl", "batch_output")
    await writer.commit("application/jsonl", {"caller": job["caller"], "meta": json.dumps(meta)})


def _any(line: dict[str, Any]) -> bool:
    return True


def _answered(line: dict[str, Any]) -> bool:
    return bool(line.get("response"))


def _azure_endpoint(endpoint: str) -> str:
    return endpoint.removeprefix("/v1")
