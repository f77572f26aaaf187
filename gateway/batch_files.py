"""Pure helpers of the Batch API: validating JSONL input, rewriting it for one backend, merging results,
and the OpenAI `file` and `batch` object shapes.

Validation happens before anything is sent anywhere: a bad file is refused with a 400 that names the first
bad line, so a user fixes it once instead of learning about it from a failed batch a day later.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from . import errors, validate

__all__ = [
    "BATCH_ENDPOINTS",
    "BatchFileChecker",
    "batch_object",
    "file_object",
    "parse_jsonl",
    "parse_line",
    "rewrite_for_backend",
    "rewrite_line",
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


class BatchFileChecker:
    """Validates a batch input file as its bytes arrive: `feed` chunks, then `finish`.

    Every line valid JSON with custom_id, method, url and a body that passes the endpoint's field checks;
    unique custom_ids; one model; within the size, line count and line length limits. Holds one line and
    the set of custom_ids seen, never the file.
    """

    def __init__(self, *, max_bytes: int, max_lines: int, max_line_bytes: int) -> None:
        self.max_bytes, self.max_lines, self.max_line_bytes = max_bytes, max_lines, max_line_bytes
        self.size = 0
        self.lines = 0  # requests (non-blank lines) so far
        self.model: str | None = None
        self._number = 0
        self._seen: set[str] = set()
        self._pending = bytearray()

    def feed(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.max_bytes:
            raise _bad(f"The file exceeds the size limit; the limit is {self.max_bytes} bytes.")
        start = 0
        while (end := data.find(b"\n", start)) != -1:
            self._pending += data[start:end]
            self._line(bytes(self._pending.removesuffix(b"\r")))
            self._pending.clear()
            start = end + 1
        self._pending += data[start:]
        if len(self._pending) > self.max_line_bytes:
            raise _bad(f"Line {self._number + 1} is longer than {self.max_line_bytes} bytes.")

    def finish(self) -> None:
        if self._pending:
            self._line(bytes(self._pending.removesuffix(b"\r")))
            self._pending.clear()
        if not self.lines:
            raise _bad("The file holds no requests.")

    def _line(self, raw: bytes) -> None:
        self._number += 1
        number = self._number
        if len(raw) > self.max_line_bytes:
            raise _bad(f"Line {number} is longer than {self.max_line_bytes} bytes.")
        if not raw.strip():
            return
        if self.lines >= self.max_lines:
            raise _bad(f"The file has more than {self.max_lines} requests.")
        try:
            line = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise _bad(f"Line {number} is not UTF-8 text.") from None
        except (ValueError, RecursionError):
            raise _bad(f"Line {number} is not valid JSON.") from None
        if not isinstance(line, dict):
            raise _bad(f"Line {number} must be a JSON object.")
        for key in ("custom_id", "method", "url", "body"):
            if key not in line:
                raise _bad(f"Line {number} has no '{key}'.")
        custom_id = line["custom_id"]
        if not isinstance(custom_id, str) or not custom_id:
            raise _bad(f"Line {number}: 'custom_id' must be a non-empty string.")
        if custom_id in self._seen:
            raise _bad(f"Line {number}: custom_id '{_shown(custom_id)}' is used more than once.")
        self._seen.add(custom_id)
        if line["method"] != "POST":
            raise _bad(f"Line {number}: 'method' must be POST.")
        url = line["url"]
        if not isinstance(url, str) or url not in BATCH_ENDPOINTS:
            raise _bad(f"Line {number}: 'url' must be one of {', '.join(sorted(set(BATCH_ENDPOINTS)))}.")
        body = line["body"]
        if not isinstance(body, dict) or not isinstance(body.get("model"), str) or not body["model"]:
            raise _bad(f"Line {number}: 'body' must be an object with a 'model'.")
        if not validate.is_name(body["model"]):
            raise _bad(f"Line {number}: 'model' must be a deployment name: {validate.NAME_RULE}.")
        if self.model is None:
            self.model = body["model"]
        elif body["model"] != self.model:
            raise _bad(
                f"Line {number}: every line must use the same model ('{_shown(self.model)}'), "
                "as a batch runs on one deployment."
            )
        try:
            validate.check_body(BATCH_ENDPOINTS[url].lstrip("/"), body)
        except errors.GatewayError as exc:
            raise _bad(f"Line {number}: {exc.message}") from None
        self.lines += 1


def validate_batch_jsonl(data: bytes, *, max_bytes: int, max_lines: int) -> BatchFileChecker:
    """A whole file through `BatchFileChecker` (tests, small files); the checker tells the model and count."""
    checker = BatchFileChecker(max_bytes=max_bytes, max_lines=max_lines, max_line_bytes=max_bytes)
    checker.feed(data)
    checker.finish()
    return checker


def rewrite_line(line: Mapping[str, Any], deployment: str) -> bytes:
    """One line as a backend gets it: its own deployment name as `model`, Azure's spelling of the url."""
    body = {**line["body"], "model": deployment}
    return json.dumps({**line, "url": BATCH_ENDPOINTS[line["url"]], "body": body}, separators=(",", ":")).encode()


def rewrite_for_backend(lines: Iterable[Mapping[str, Any]], deployment: str) -> bytes:
    """The JSONL a backend gets for these lines."""
    return b"".join(rewrite_line(line, deployment) + b"\n" for line in lines)


def parse_line(raw: bytes) -> dict[str, Any] | None:
    """One line of a stored or backend file as an object; None for a line that is not a JSON object."""
    try:
        line = json.loads(raw.decode("utf-8", "replace"))
    except (ValueError, RecursionError):
        return None
    return line if isinstance(line, dict) else None


def parse_jsonl(data: bytes) -> list[dict[str, Any]]:
    """Lines of a small file; lines that are not JSON objects are skipped."""
    return [line for raw in data.split(b"\n") if (line := parse_line(raw)) is not None]


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


def _shown(text: str) -> str:
    """Client text safe to quote in an error: visible ASCII, at most 64 characters."""
    return "".join(c if " " <= c <= "~" else "?" for c in text[:64])
