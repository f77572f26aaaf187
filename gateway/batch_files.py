"""Pure helpers of the Batch API: validating JSONL input, rewriting it for one backend, merging results,
and the OpenAI `file` and `batch` object shapes.

Validation happens before anything is sent anywhere: a bad file is refused with a 400 that names the first
bad line, so a user fixes it once instead of learning about it from a failed batch a day later.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from . import errors

__all__ = [
    "BATCH_ENDPOINTS",
    "batch_object",
    "file_object",
    "parse_jsonl",
    "rewrite_for_backend",
    "validate_batch_jsonl",
]

# Endpoints a batch line may target, as OpenAI spells them and as Azure accepts them.
BATCH_ENDPOINTS = {
    "/v1/chat/completions": "/chat/completions",
    "/chat/completions": "/chat/completions",
    "/v1/embeddings": "/embeddings",
    "/embeddings": "/embeddings",
    "/v1/completions": "/completions",
    "/completions": "/completions",
}


def validate_batch_jsonl(data: bytes, *, max_bytes: int, max_lines: int) -> list[dict[str, Any]]:
    """Every line valid JSON with custom_id, method, url and body; unique custom_ids; one model; within limits."""
    if len(data) > max_bytes:
        raise _bad(f"The file is {len(data)} bytes; the limit is {max_bytes}.")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad("The file is not UTF-8 text.") from None
    lines: list[dict[str, Any]] = []
    seen: set[str] = set()
    model: str | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        if len(lines) >= max_lines:
            raise _bad(f"The file has more than {max_lines} requests.")
        try:
            line = json.loads(raw)
        except ValueError:
            raise _bad(f"Line {number} is not valid JSON.") from None
        if not isinstance(line, dict):
            raise _bad(f"Line {number} must be a JSON object.")
        for key in ("custom_id", "method", "url", "body"):
            if key not in line:
                raise _bad(f"Line {number} has no '{key}'.")
        custom_id = line["custom_id"]
        if not isinstance(custom_id, str) or not custom_id:
            raise _bad(f"Line {number}: 'custom_id' must be a non-empty string.")
        if custom_id in seen:
            raise _bad(f"Line {number}: custom_id '{custom_id[:64]}' is used more than once.")
        seen.add(custom_id)
        if line["method"] != "POST":
            raise _bad(f"Line {number}: 'method' must be POST.")
        if line["url"] not in BATCH_ENDPOINTS:
            raise _bad(f"Line {number}: 'url' must be one of {', '.join(sorted(set(BATCH_ENDPOINTS)))}.")
        body = line["body"]
        if not isinstance(body, dict) or not isinstance(body.get("model"), str) or not body["model"]:
            raise _bad(f"Line {number}: 'body' must be an object with a 'model'.")
        if model is None:
            model = body["model"]
        elif body["model"] != model:
            raise _bad(
                f"Line {number}: every line must use the same model ('{model}'), as a batch runs on one deployment."
            )
        lines.append(line)
    if not lines:
        raise _bad("The file holds no requests.")
    return lines


def rewrite_for_backend(lines: Iterable[Mapping[str, Any]], deployment: str) -> bytes:
    """The JSONL a backend gets: its own deployment name as `model`, Azure's spelling of the url."""
    out = []
    for line in lines:
        body = {**line["body"], "model": deployment}
        out.append(json.dumps({**line, "url": BATCH_ENDPOINTS[line["url"]], "body": body}, separators=(",", ":")))
    return ("\n".join(out) + "\n").encode()


def parse_jsonl(data: bytes) -> list[dict[str, Any]]:
    """Lines of a backend's output or error file; lines that are not JSON objects are skipped."""
    result = []
    for raw in data.decode("utf-8", "replace").splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict):
            result.append(line)
    return result


def file_object(file_id: str, size: int, created_at: int, filename: str, purpose: str) -> dict[str, Any]:
    return {
        "id": file_id,
        "object": "file",
        "bytes": size,
        "created_at": created_at,
        "filename": filename,
        "purpose": purpose,
        "status": "processed",
        "status_details": None,
    }


def batch_object(job: Mapping[str, Any], view: Mapping[str, Any]) -> dict[str, Any]:
    """The OpenAI batch object from the job's input and its current view (custom status or final output)."""
    counts = view.get("request_counts") or {"total": job.get("lines", 0), "completed": 0, "failed": 0}
    return {
        "id": job["id"],
        "object": "batch",
        "endpoint": job["endpoint"],
        "errors": view.get("errors"),
        "input_file_id": job["input_file_id"],
        "completion_window": job["completion_window"],
        "status": view.get("status", "validating"),
        "output_file_id": view.get("output_file_id"),
        "error_file_id": view.get("error_file_id"),
        "created_at": job["created_at"],
        "in_progress_at": view.get("in_progress_at"),
        "expires_at": job["created_at"] + job["window_s"],
        "finalizing_at": view.get("finalizing_at"),
        "completed_at": view.get("completed_at"),
        "failed_at": view.get("failed_at"),
        "expired_at": view.get("expired_at"),
        "cancelling_at": view.get("cancelling_at"),
        "cancelled_at": view.get("cancelled_at"),
        "request_counts": counts,
        "metadata": job.get("metadata"),
    }


def _bad(message: str) -> errors.GatewayError:
    return errors.bad_request(message, code="invalid_batch_file", param="file")
