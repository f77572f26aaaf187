"""Token usage: parsing backend-reported usage, and the per-request usage record and its recorder.

Pure core module (stdlib only). Counting tokens ourselves, when a backend reported none, is `gateway.tokens`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "OUTCOMES",
    "BatchLines",
    "Usage",
    "UsageRecord",
    "UsageRecorder",
    "outcome_of",
    "response_model",
    "usage_from_json_body",
]

_log = logging.getLogger("gateway.usage")


def _int(value: Any) -> int | None:
    """A non-negative token count, or None for anything else (bools, strings, negatives, NaN...)."""
    if type(value) is int:
        return value if value >= 0 else None
    if type(value) is float and value.is_integer() and value >= 0:
        return int(value)
    return None


def _detail(obj: Mapping[str, Any], *keys_and_field: str) -> int | None:
    """Reads obj[<details key>][field] for the first details key present (e.g. prompt_tokens_details)."""
    *keys, fld = keys_and_field
    for key in keys:
        details = obj.get(key)
        if isinstance(details, Mapping):
            value = _int(details.get(fld))
            if value is not None:
                return value
    return None


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int | None = None  # prompt_tokens_details.cached_tokens (or input_tokens_details)
    reasoning_tokens: int | None = None  # completion_tokens_details.reasoning_tokens (or output_tokens_details)
    estimated: bool = False  # True when counted by us (tiktoken), not reported by the backend

    @classmethod
    def from_openai(cls, obj: Mapping[str, Any] | None) -> Usage | None:
        """Parses an OpenAI/Azure ``usage`` object.

        Accepts the chat/completions shape (prompt/completion/total_tokens), the embeddings shape
        (prompt_tokens + total_tokens only) and the Responses API shape (input/output_tokens).
        Returns None for null or anything that carries no token count.
        """
        if not isinstance(obj, Mapping):
            return None
        prompt = _int(obj.get("prompt_tokens"))
        if prompt is None:
            prompt = _int(obj.get("input_tokens"))
        completion = _int(obj.get("completion_tokens"))
        if completion is None:
            completion = _int(obj.get("output_tokens"))
        total = _int(obj.get("total_tokens"))
        if prompt is None and completion is None and total is None:
            return None
        prompt = prompt or 0
        completion = completion or 0
        if total is None:
            total = prompt + completion
        return cls(
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=total,
            cached_tokens=_detail(obj, "prompt_tokens_details", "input_tokens_details", "cached_tokens"),
            reasoning_tokens=_detail(obj, "completion_tokens_details", "output_tokens_details", "reasoning_tokens"),
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly dict; fields that are None are omitted."""
        out: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }
        if self.cached_tokens is not None:
            out["cached_tokens"] = self.cached_tokens
        if self.reasoning_tokens is not None:
            out["reasoning_tokens"] = self.reasoning_tokens
        out["estimated"] = self.estimated
        return out


def usage_from_json_body(body: bytes) -> Usage | None:
    """Usage of a non-streamed JSON answer (chat, completions, embeddings, Responses). Never raises."""
    if not body or b'"usage"' not in body:
        return None
    last = _last_member_usage(body)
    if last is not None:
        return Usage.from_openai(last)
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None
    if not isinstance(obj, dict):
        return None
    return Usage.from_openai(obj.get("usage"))


_USAGE_MEMBER = b'"usage":'
_DECODER = json.JSONDecoder()


def _last_member_usage(body: bytes) -> dict[str, Any] | None:
    """The top-level `usage` object when it is the body's last member (OpenAI/Azure put it there), parsing
    only that object; None when that cannot be proven from the bytes (the caller parses the whole body)."""
    i = body.rfind(_USAGE_MEMBER)
    if i <= 0:
        return None
    before = body[:i].rstrip()
    if not before.endswith((b",", b"{")):
        return None
    try:
        text = body[i + len(_USAGE_MEMBER) :].decode()
        value, end = _DECODER.raw_decode(text, len(text) - len(text.lstrip()))
    except (ValueError, RecursionError):
        return None
    # Only the closing brace of the outermost object may follow: then `usage` is one of its members.
    return value if isinstance(value, dict) and text[end:].strip() == "}" else None


_MODEL_MEMBER = b'"model":'


def response_model(body: bytes) -> str | None:
    """The `model` an OpenAI/Azure answer (or SSE block) names, read from its last `"model":` member.

    Inside JSON strings quotes are escaped, so an unescaped `"model":` is a member; the last one is the
    top-level one in Azure's answers (after `choices`). Never raises; None when there is none.
    """
    i = body.rfind(_MODEL_MEMBER)
    if i < 0:
        return None
    start = body.find(b'"', i + len(_MODEL_MEMBER))
    end = body.find(b'"', start + 1) if start >= 0 else -1
    if start < 0 or end < 0 or end - start > 200 or body[i + len(_MODEL_MEMBER) : start].strip():
        return None
    try:
        return body[start + 1 : end].decode() or None
    except UnicodeDecodeError:
        return None


# --- per-request record ------------------------------------------------------------------------

# How a request ended, for the request counter, the usage API and the queries: one value per record.
OUTCOMES = (
    "success",
    "throttled_backend",  # every backend answered 429 (or was cooling down)
    "throttled_caller",  # refused by the caller's own limit before any backend was tried
    "refused",  # refused by governance: a suspended caller, a model outside its profile's allow-list
    "content_filtered",  # the backend's content filter refused the prompt (400 content_filter)
    "client_error",  # any other 4xx from the backend: the request itself was wrong
    "failed",  # 5xx, timeouts, broken connections: no usable answer
    "expired",  # async work past its deadline
    "cancelled",  # async work cancelled by its caller
)


@dataclass(frozen=True, slots=True)
class BatchLines:
    """How the lines of a finished batch ended (a batch is one record: its usage is the sum of its lines)."""

    total: int
    succeeded: int
    failed: int


@dataclass(slots=True)
class UsageRecord:
    request_id: str
    api_style: str  # "azure" | "v1"
    operation: str  # e.g. "chat/completions", "embeddings"
    model: str | None  # model alias the client asked for (v1) or the deployment it named (azure)
    deployment: str | None  # backend deployment actually used
    backend: str | None  # backend name
    status: int
    streaming: bool
    attempts: int
    duration_ms: float
    usage: Usage | None
    caller: str | None = None  # client key name / identity; never the secret itself
    error: str | None = None  # why no backend answer was relayed: throttled, failed, timeout, connect, ...
    profile: str | None = None  # the caller's profile
    priority: int | None = None  # the request's lane priority (1 highest .. 9)
    timestamp: float = field(default_factory=time.time)  # completion time, epoch seconds
    # Set by whoever knows better than status/error (a caller-limit refusal: "throttled_caller"); see outcome_of.
    outcome: str | None = None
    # A refusal by the caller's own limit or governance: which one (rpm, tpm, concurrency, models, suspended).
    limit: str | None = None
    is_async: bool = False  # served by the durable async path (an activity) or a batch
    first_chunk_ms: float | None = None  # streams: from the start of the request to the first chunk relayed
    response_model: str | None = None  # the model the backend says answered (gen_ai.response.model)
    batch: BatchLines | None = None  # a finished batch: its lines
    # The request's open spans (gateway.tracing.RequestTrace), ended by the tracing sink; never serialized.
    trace: Any = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        """Flat JSON-friendly dict with a stable key set (token fields are None when usage is unknown)."""
        u = self.usage
        return {
            "timestamp": datetime.fromtimestamp(self.timestamp, UTC).isoformat(timespec="milliseconds"),
            "request_id": self.request_id,
            "api_style": self.api_style,
            "operation": self.operation,
            "model": self.model,
            "deployment": self.deployment,
            "backend": self.backend,
            "caller": self.caller,
            "profile": self.profile,
            "priority": self.priority,
            "status": self.status,
            "error": self.error,
            "streaming": self.streaming,
            "attempts": self.attempts,
            "duration_ms": round(self.duration_ms, 3),
            "prompt_tokens": u.prompt_tokens if u else None,
            "completion_tokens": u.completion_tokens if u else None,
            "total_tokens": u.total_tokens if u else None,
            "cached_tokens": u.cached_tokens if u else None,
            "reasoning_tokens": u.reasoning_tokens if u else None,
            "usage_estimated": u.estimated if u else None,
            "outcome": outcome_of(self),
            **{k: v for k in _OPTIONAL if (v := getattr(self, k)) is not None and v is not False},
            **(
                {"batch_total": b.total, "batch_succeeded": b.succeeded, "batch_failed": b.failed}
                if (b := self.batch)
                else {}
            ),
        }


# Fields that appear in the JSON record only when they carry something.
_OPTIONAL = ("limit", "is_async", "first_chunk_ms", "response_model")
_ERROR_OUTCOMES = {
    "content_filter": "content_filtered",
    "expired": "expired",
    "request_expired": "expired",  # its time to live passed on the sync path (408)
    "cancelled": "cancelled",
    "rate_limit_exceeded": "throttled_caller",  # a caller's own RPM/TPM limit refused it
    "concurrency_limit_exceeded": "throttled_caller",  # so did its `concurrency=` (its requests in flight)
    "caller_suspended": "refused",
    "model_not_allowed": "refused",
}


def outcome_of(record: UsageRecord) -> str:
    """How the request ended (one of OUTCOMES): the record's own `outcome`, else read from error and status."""
    if record.outcome:
        return record.outcome
    if record.error in _ERROR_OUTCOMES:
        return _ERROR_OUTCOMES[record.error]
    status = record.status
    if status == 429:
        return "throttled_backend"
    if record.error or status >= 500:
        return "failed"  # no usable answer: 5xx, a timeout, a broken stream, or throttling mixed with failures
    return "success" if status < 400 else "client_error"


class UsageRecorder:
    """Fans a finished request's record out to its sinks; a sink failure is logged, never raised into the request."""

    __slots__ = ("_file_path", "_lock", "_sinks")

    def __init__(self, file_path: str | None = None) -> None:
        self._file_path = file_path or None
        self._sinks: list[Callable[[UsageRecord], None]] = []
        self._lock = threading.Lock()

    def add_sink(self, sink: Callable[[UsageRecord], None]) -> None:
        self._sinks.append(sink)

    def record(self, rec: UsageRecord) -> None:
        line = None
        # Serialize only for a consumer: the JSON log line when INFO is enabled, or the file.
        if self._file_path or _log.isEnabledFor(logging.INFO):
            try:
                line = json.dumps(rec.as_dict(), separators=(",", ":"), ensure_ascii=False, default=str)
            except Exception:
                _log.warning("could not serialize usage record", exc_info=True)
        if line is not None:
            _log.info("%s", line)
            if self._file_path:
                try:
                    self._append(self._file_path, line)
                except Exception:
                    _log.warning("could not write usage record to %s", self._file_path, exc_info=True)
        for sink in self._sinks:
            try:
                sink(rec)
            except Exception:
                _log.warning("usage sink %r failed", sink, exc_info=True)

    def _append(self, path: str, line: str) -> None:
        # One os.write of the whole line on an O_APPEND descriptor: concurrent records (threads or
        # processes) never interleave mid-line. The lock also covers the rare short write.
        data = (line + "\n").encode("utf-8", "replace")
        with self._lock:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
            finally:
                os.close(fd)
