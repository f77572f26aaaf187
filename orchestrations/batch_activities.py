"""Activities of a managed batch: submit the unfinished lines to a backend, poll, collect, cancel, finish.

Results are merged in Blob Storage as they arrive (`batches/{id}/results.jsonl` and `errors.jsonl`), so a
resubmission sends only the lines no backend has answered yet, and the final files are the merge of every
round. Lines a backend rejected (a 4xx in its error file) are final; lines missing after an expired or failed
round are resubmitted (so are error-file lines without a response, such as `batch_expired`: they never ran);
lines still missing at the end are reported in the error file, honestly.
"""

from __future__ import annotations

import json
import time
from typing import Any

from gateway.backend_batches import BackendBatchError, BackendBatches
from gateway.batch_files import file_object, parse_jsonl, rewrite_for_backend
from gateway.bootstrap import Services
from gateway.completions import CompletionMessage, publish_once
from gateway.pool import Target
from gateway.usage import BatchLines, Usage, UsageRecord

__all__ = ["batch_cancel_backend", "batch_collect", "batch_finish", "batch_poll", "batch_submit", "input_lines"]

TERMINAL = ("completed", "failed", "expired", "cancelled")
UNAVAILABLE_RETRY_S = 30.0


def _client(services: Services) -> BackendBatches:
    return BackendBatches(services.attempts, services.settings.api_version)


def _target(services: Services, payload: dict[str, Any]) -> Target:
    """The round's backend; a backend renamed or removed since the round started is unreachable."""
    target = services.pool.target_for(payload["backend"], payload.get("deployment") or "")
    if target is None:
        raise BackendBatchError(payload["backend"], "no backend has this name any more")
    return target


def _jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines).encode()


async def input_lines(services: Services, file_id: str) -> list[dict[str, Any]]:
    blob = await services.results.get_blob(f"files/{file_id}")
    return parse_jsonl(blob.body) if blob else []


async def _merged(services: Services, batch_id: str, kind: str) -> list[dict[str, Any]]:
    blob = await services.results.get_blob(f"batches/{batch_id}/{kind}.jsonl")
    return parse_jsonl(blob.body) if blob else []


async def batch_submit(services: Services, payload: dict[str, Any]) -> dict[str, Any]:
    """Uploads the lines no round has answered yet to a backend serving the model's batches, creates the batch."""
    job, avoid = payload["job"], set(payload.get("avoid", ()))
    answered = {
        line["custom_id"] for kind in ("results", "errors") for line in await _merged(services, job["id"], kind)
    }
    remaining = [
        line for line in await input_lines(services, job["input_file_id"]) if line["custom_id"] not in answered
    ]
    if not remaining:
        return {"status": "nothing_left"}
    attempts, now = services.attempts, time.time()
    await services.pool.refresh_if_due()
    # The model's strategy among the backends with a Global Batch deployment; another backend if there is one.
    target = await attempts.next_target(job["model"], avoid, batch=True) or await attempts.next_target(
        job["model"], batch=True
    )
    if target is None:
        return {"status": "unavailable", "backend": None, "retry_at": now + UNAVAILABLE_RETRY_S}
    jsonl = rewrite_for_backend(remaining, target.deployment)
    client = _client(services)
    try:
        file_id = await client.upload(target, jsonl, f"{job['id']}-round{payload['round']}.jsonl")
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
        "lines": len(remaining),
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
    """Downloads this round's output and error files and merges them into the batch's results so far."""
    job, poll = payload["job"], payload["poll"]
    client = _client(services)
    merged = {
        kind: {line["custom_id"]: line for line in await _merged(services, job["id"], kind)}
        for kind in ("results", "errors")
    }
    for kind, file_key in (("results", "output_file_id"), ("errors", "error_file_id")):
        if not poll.get(file_key):
            continue
        try:
            data = await client.content(_target(services, payload), poll[file_key])
        except BackendBatchError:
            continue  # its lines stay unanswered and go to the next round
        for line in parse_jsonl(data):
            # An error line without a response (batch_expired, batch_cancelled, ...) was never run: not final.
            if "custom_id" in line and (kind == "results" or line.get("response")):
                merged[kind][line["custom_id"]] = line
    for custom_id in merged["results"]:
        merged["errors"].pop(custom_id, None)  # a later success replaces an earlier failure
    for kind, lines in merged.items():
        await services.results.put_blob(
            f"batches/{job['id']}/{kind}.jsonl", _jsonl(list(lines.values())), "application/jsonl", {}
        )
    total = job["lines"]
    succeeded = sum(1 for line in merged["results"].values() if _status(line) < 400)
    failed = len(merged["results"]) - succeeded + len(merged["errors"])
    return {
        "succeeded": succeeded,
        "failed": failed,
        "remaining": total - succeeded - failed,
        "usage": _usage(merged["results"].values()),
    }


async def batch_finish(services: Services, payload: dict[str, Any]) -> dict[str, Any]:
    """Writes the merged output and error files, publishes the completion once, returns the final view."""
    job, end = payload["job"], payload["end"]
    now = int(time.time())
    inputs = await input_lines(services, job["input_file_id"])
    results = await _merged(services, job["id"], "results")
    errors = await _merged(services, job["id"], "errors")
    answered = {line["custom_id"] for line in results + errors}
    status = end["status"]
    code = {"completed": "batch_failed", "cancelled": "batch_cancelled", "expired": "batch_expired"}.get(
        status, "batch_failed"
    )
    for line in inputs:
        if line["custom_id"] not in answered:  # never answered by any backend: say so per line
            errors.append(
                {
                    "id": None,
                    "custom_id": line["custom_id"],
                    "response": None,
                    "error": {"code": code, "message": f"The request was not completed ({status})."},
                }
            )
    if status == "completed" and len(answered) < len(inputs):
        status = "failed"  # never claim completion with lines missing
    view: dict[str, Any] = {
        "status": status,
        "output_file_id": None,
        "error_file_id": None,
        "errors": end.get("errors"),
        "in_progress_at": end.get("in_progress_at"),
        "finalizing_at": end.get("finalizing_at"),
        "cancelling_at": end.get("cancelling_at"),
        f"{status}_at": now,
    }
    if results:
        view["output_file_id"] = await _store_file(
            services, job, f"{job['id']}-output", _jsonl(results), "batch_output"
        )
    if errors:
        view["error_file_id"] = await _store_file(services, job, f"{job['id']}-errors", _jsonl(errors), "batch_output")
    succeeded = sum(1 for line in results if _status(line) < 400)
    view["request_counts"] = {"total": len(inputs), "completed": succeeded, "failed": len(inputs) - succeeded}
    view["usage"] = _usage(results)
    message = CompletionMessage(
        id=job["id"],
        request_id=job["request_id"],
        status="succeeded" if status == "completed" else status,
        model=job["model"],
        caller=job["caller"],
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
        _record_batch(services, job, status, int(end.get("rounds", 1)), len(inputs), succeeded, view["usage"])
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


async def _store_file(services: Services, job: dict[str, Any], file_id: str, data: bytes, purpose: str) -> str:
    meta = file_object(file_id, len(data), int(time.time()), f"{file_id}.jsonl", purpose)
    await services.results.put_blob(
        f"files/{file_id}", data, "application/jsonl", {"caller": job["caller"], "meta": json.dumps(meta)}
    )
    return file_id


def _status(line: dict[str, Any]) -> int:
    response = line.get("response") or {}
    return int(response.get("status_code") or 500)


def _usage(lines: Any) -> dict[str, int]:
    total = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    for line in lines:
        usage = ((line.get("response") or {}).get("body") or {}).get("usage") or {}
        for key in total:
            if isinstance(usage.get(key), int):
                total[key] += usage[key]
    return total


def _azure_endpoint(endpoint: str) -> str:
    return endpoint.removeprefix("/v1")
