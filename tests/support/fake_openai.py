"""A fake Azure OpenAI data-plane server for tests and local development.

It is a real aiohttp server on 127.0.0.1, so the gateway (and the official ``openai``
client) talk to it over real HTTP. Tests script faults on it (429s, resets, stalls, cut
streams, content filter) and assert on what it received in ``fake.requests``.

    fake = FakeAzureOpenAI(name="weu")
    async with fake:                     # or: with fake.threaded(): ... from sync code
        fake.enqueue(Fault.status(429, retry_after=30))
        ...
        assert fake.requests[0].deployment == "gpt-4o-mini"

Bodies Azure would refuse (wrong types, missing required fields, not JSON) get Azure's 400, never a
500 (rules in ``fake_openai_requests.py``); audio answers follow ``response_format`` as Azure does
(``fake_openai_audio.py``). A test with a sloppy body fails here as it would against Azure.

It also serves the resource-level Files and Batches APIs (``/openai/files``, ``/openai/batches``), the Responses
API (``/openai/responses?api-version=``: kept per fake, see ``fake_openai_responses.py``), and Azure's v1 surface
(``/openai/v1/{operation}``: no dated api-version, the deployment named by the body's ``model``) for every
operation, Realtime client secrets (``/openai/v1/realtime/client_secrets``) included.
Batches only move when the test says so, never on a timer:

    batch_id = ...                       # the client uploaded a JSONL and created a batch: "validating"
    fake.advance_batch(batch_id, "in_progress")
    fake.advance_batch(batch_id, "completed", failed_custom_ids=["task-2"])   # output + error files
    fake.batch_script = ["validating", "in_progress", "completed"]  # or: one step per GET of a new batch
    fake.files[fake.batches[batch_id].output_file_id].jsonl()

Run it by hand: ``python -m tests.support.fake_openai --port 18080``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import copy
import email.parser
import email.policy
import hashlib
import json
import math
import re
import signal
import struct
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

from tests.support.fake_openai_audio import transcript
from tests.support.fake_openai_requests import (
    JSON_OPERATIONS,
    MULTIPART_OPERATIONS,
    check_image_edit,
    check_json,
    check_multipart,
    check_realtime_secret,
    invalid_json,
    parse_json,
    v1_version_problem,
)
from tests.support.fake_openai_responses import ResponseStore, not_found
from tests.support.local_server import LocalServer, serve_app

DEFAULT_DEPLOYMENTS = frozenset({"gpt-4o-mini", "text-embedding-3-small", "whisper", "tts", "dall-e-3"})

# Deployment name -> the versioned model name Azure reports; other deployments report their own name.
_MODEL_NAMES = {"gpt-4o-mini": "gpt-4o-mini-2024-07-18", "gpt-4o": "gpt-4o-2024-08-06"}
_FINGERPRINT = "fp_fake0000"
_EMBEDDING_DIMENSIONS = 8

# Operation path (after /openai/deployments/{deployment}/) -> Azure's operation name (used in 429 text).
_OPERATIONS = {
    "chat/completions": "ChatCompletions_Create",
    "completions": "Completions_Create",
    "embeddings": "Embeddings_Create",
    "audio/transcriptions": "AudioTranscriptions_Create",
    "audio/translations": "AudioTranslations_Create",
    "audio/speech": "AudioSpeech_Create",
    "images/generations": "ImageGenerations_Create",
    "images/edits": "ImageEdits_Create",
    "responses": "Responses_Create",
}
_DATA_PLANE = re.compile(r"^/openai/deployments/(?P<deployment>[^/]+)/(?P<operation>.+?)/?$")
_STATUS_PATHS = ("/status", "/openai/status")
# Azure's v1 surface: every operation, the deployment in the body. Responses: also on the resource (dated API).
_V1_PATH = re.compile(r"^/openai/v1/(?P<operation>.+?)/?$")
_RESPONSES_PATH = re.compile(r"^/openai/(?:v1/)?responses(?:/(?P<id>[^/]+)(?P<action>/cancel|/input_items)?)?/?$")
_RESPONSES_MIN_VERSION = "2025-03-01-preview"
# Files and Batches live at the resource level, not under a deployment.
_FILES_PATH = re.compile(r"^/openai/files(?:/(?P<file_id>[^/]+)(?P<content>/content)?)?/?$")
_BATCHES_PATH = re.compile(r"^/openai/batches(?:/(?P<batch_id>[^/]+)(?P<cancel>/cancel)?)?/?$")
_BATCH_URLS = frozenset({"/chat/completions", "/v1/chat/completions"})  # the batch input line urls served
_BATCH_WINDOW_S = 24 * 3600

_SAFE = {"filtered": False, "severity": "safe"}
_SAFE_RESULTS = {"hate": _SAFE, "self_harm": _SAFE, "sexual": _SAFE, "violence": _SAFE}
_PROMPT_FILTER_RESULTS = [
    {
        "prompt_index": 0,
        "content_filter_results": {**_SAFE_RESULTS, "jailbreak": {"filtered": False, "detected": False}},
    }
]

_NOT_FOUND = {"error": {"code": "404", "message": "Resource not found"}}
_UNAUTHORIZED = {
    "error": {
        "code": "401",
        "message": "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
        "provide a valid key for an active subscription and use a correct regional API endpoint "
        "for your resource.",
    }
}
_DEPLOYMENT_NOT_FOUND = {
    "error": {
        "code": "DeploymentNotFound",
        "message": "The API deployment for this resource does not exist. If you created the deployment "
        "within the last 5 minutes, please wait a moment and try again.",
    }
}
_SERVER_ERROR = {
    "error": {
        "message": "The server had an error processing your request. Sorry about that! You can retry your "
        "request, or contact us through an Azure support request at: "
        "https://go.microsoft.com/fwlink/?linkid=2213926 if you keep seeing this error.",
        "type": "server_error",
        "param": None,
        "code": None,
    }
}
_CONTENT_FILTERED = {
    "error": {
        "message": "The response was filtered due to the prompt triggering Azure OpenAI's content management "
        "policy. Please modify your prompt and retry. To learn more about our content filtering policies "
        "please read our documentation: https://go.microsoft.com/fwlink/?linkid=2198766",
        "type": None,
        "param": "prompt",
        "code": "content_filter",
        "status": 400,
        "innererror": {
            "code": "ResponsibleAIPolicyViolation",
            "content_filter_result": {
                "hate": {"filtered": False, "severity": "safe"},
                "jailbreak": {"filtered": False, "detected": False},
                "self_harm": {"filtered": False, "severity": "safe"},
                "sexual": {"filtered": False, "severity": "safe"},
                "violence": {"filtered": True, "severity": "medium"},
            },
        },
    }
}


# --------------------------------------------------------------------------- faults and records


FaultKind = Literal["status", "reset", "stall", "cut_stream", "error_event", "content_filter"]


@dataclass(frozen=True)
class Fault:
    """A scripted misbehaviour for one request (``enqueue``) or for all of them (``always``)."""

    kind: FaultKind
    code: int = 0
    retry_after: int | None = None
    retry_after_ms: int | None = None
    body: dict[str, Any] | None = None
    after_chunks: int = 0

    @classmethod
    def status(
        cls,
        code: int,
        retry_after: int | None = None,
        retry_after_ms: int | None = None,
        body: dict[str, Any] | None = None,
    ) -> Fault:
        """Answer ``code`` with Azure's error body (or ``body``) and optional retry headers."""
        return cls("status", code=code, retry_after=retry_after, retry_after_ms=retry_after_ms, body=body)

    @classmethod
    def reset(cls) -> Fault:
        """Close the TCP connection without answering (after the request was read)."""
        return cls("reset")

    @classmethod
    def stall(cls) -> Fault:
        """Never answer until ``release_stalls()`` (then answer normally) or the server stops (reset)."""
        return cls("stall")

    @classmethod
    def cut_stream(cls, after_chunks: int) -> Fault:
        """Send ``after_chunks`` SSE events, then abort the connection (a reset if not streamed)."""
        return cls("cut_stream", after_chunks=after_chunks)

    @classmethod
    def error_event(cls, after_chunks: int) -> Fault:
        """Send ``after_chunks`` SSE events, then an error event (Azure's server_error body) and end the
        stream without ``[DONE]``, as Azure does when generation fails mid-stream. A non-streamed request
        gets that error as a 500 answer."""
        return cls("error_event", after_chunks=after_chunks)

    @classmethod
    def content_filter(cls) -> Fault:
        """Answer 400 with Azure's real prompt content-filter error body."""
        return cls("content_filter")


@dataclass(frozen=True)
class RecordedRequest:
    """What the fake received; ``headers`` keys are lower-cased, ``json`` is None unless the body is JSON."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    deployment: str | None
    json: dict[str, Any] | None

    @property
    def operation(self) -> str | None:
        """The data-plane operation, e.g. ``"chat/completions"`` or ``"responses/resp_1/cancel"``; None for the
        Files and Batches APIs and probes."""
        match = _DATA_PLANE.match(self.path) or _V1_PATH.match(self.path)
        if match:
            return match["operation"]
        return self.path.removeprefix("/openai/").rstrip("/") if _RESPONSES_PATH.match(self.path) else None


class _Gate:
    """A one-shot latch opened from any thread and awaited on the server's event loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open = False
        self._waiters: list[asyncio.Future[None]] = []

    def open(self) -> None:
        with self._lock:
            self._open = True
            waiters, self._waiters = self._waiters, []
        for future in waiters:
            with contextlib.suppress(RuntimeError):  # that loop is already closed: nobody waits any more
                future.get_loop().call_soon_threadsafe(_resolve, future)

    async def wait(self) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:
            if self._open:
                return
            self._waiters.append(future)
        await future


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class StreamHold:
    """Pauses the next streamed answer after ``after_chunks`` SSE events until ``release()``.

    ``reached`` is set once the pause point is reached, i.e. those events were written to the socket.
    """

    def __init__(self, after_chunks: int) -> None:
        self.after_chunks = after_chunks
        self.reached = threading.Event()
        self._gate = _Gate()

    def release(self) -> None:
        self._gate.open()

    async def wait_reached(self, timeout_s: float = 10.0) -> bool:
        """Async-friendly ``reached.wait`` (does not block the event loop the fake may run on)."""
        return await asyncio.to_thread(self.reached.wait, timeout_s)


@dataclass
class _Call:
    """Per-request context handed to the operation handlers."""

    request: web.Request
    record: RecordedRequest
    headers: dict[str, str]
    cut_after: int | None = None
    error_after: int | None = None  # error_event: the SSE event index where the error event replaces the rest
    stall_gate: _Gate = field(default_factory=_Gate)
    payload: dict[str, Any] = field(default_factory=dict)
    parts: dict[str, tuple[str | None, bytes]] = field(default_factory=dict)  # multipart operations only


@dataclass(frozen=True)
class _ChatPlan:
    """The parts of one chat answer, shared by the streamed, non-streamed and batch forms."""

    base: dict[str, Any]
    pieces: list[str]
    usage: dict[str, Any]
    tool: str | None
    tool_call: dict[str, Any] | None
    finish_reason: str


# --------------------------------------------------------------------------- files and batches

BatchStatus = Literal[
    "validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"
]
_TERMINAL: frozenset[str] = frozenset({"failed", "completed", "expired", "cancelled"})
_ADVANCE_TARGETS: frozenset[str] = frozenset(
    {"validating", "in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled"}
)
# What OpenAI writes to the error file for requests a batch never ran (BatchRequestOutputError codes).
_UNRUN = {
    "expired": ("batch_expired", "This request could not be executed before the completion window expired."),
    "cancelled": ("batch_cancelled", "This request could not be executed before the batch was cancelled."),
}


@dataclass(frozen=True)
class FakeFile:
    """An uploaded file (purpose ``batch``) or one the fake produced (purpose ``batch_output``)."""

    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: int

    def to_json(self) -> dict[str, Any]:
        """Azure's file object."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.content),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
        }

    def jsonl(self) -> list[dict[str, Any]]:
        """The content parsed as JSON lines (blank lines skipped)."""
        return [json.loads(line) for line in self.content.splitlines() if line.strip()]


@dataclass(frozen=True)
class BatchStep:
    """One step of ``FakeAzureOpenAI.batch_script``; a plain status string is shorthand for ``BatchStep(to)``."""

    to: BatchStatus
    completed_lines: int | None = None
    failed_custom_ids: tuple[str, ...] = ()


@dataclass
class FakeBatch:
    """A batch job's state. ``fake.batches`` hands out copies; ``requests`` are its valid input lines."""

    id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, Any] | None
    created_at: int
    expires_at: int
    requests: list[dict[str, Any]]
    # Validation problems of the input file: the batch fails with them when it leaves "validating".
    problems: list[dict[str, Any]] = field(default_factory=list)
    status: BatchStatus = "validating"
    errors: dict[str, Any] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: dict[str, int] = field(default_factory=lambda: {"total": 0, "completed": 0, "failed": 0})
    script: deque[BatchStep] = field(default_factory=deque)  # auto steps left, one per GET of this batch

    def to_json(self) -> dict[str, Any]:
        """Azure's batch object."""
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "errors": copy.deepcopy(self.errors),
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "in_progress_at": self.in_progress_at,
            "expires_at": self.expires_at,
            "finalizing_at": self.finalizing_at,
            "completed_at": self.completed_at,
            "failed_at": self.failed_at,
            "expired_at": self.expired_at,
            "cancelling_at": self.cancelling_at,
            "cancelled_at": self.cancelled_at,
            "request_counts": dict(self.request_counts),
            "metadata": copy.deepcopy(self.metadata),
        }


# --------------------------------------------------------------------------- the server


class FakeAzureOpenAI(LocalServer):
    """Fake Azure OpenAI resource; see the module docstring. ``deployments=None`` accepts any name."""

    def __init__(
        self,
        name: str = "weu",
        api_key: str = "fake-key",
        deployments: Iterable[str] | None = DEFAULT_DEPLOYMENTS,
        latency_ms: int = 0,
        chunks: int = 5,
        chunk_delay_ms: int = 0,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.name = name
        self.thread_name = f"fake-openai-{name}"
        self.api_key = api_key
        self.deployments = None if deployments is None else frozenset(deployments)
        self.latency_ms = latency_ms
        self.chunks = chunks
        self.chunk_delay_ms = chunk_delay_ms
        self.host = host
        self.ratelimit_headers: dict[str, str] | None = None
        self._requested_port = port
        self._port: int | None = None
        self._runner: web.AppRunner | None = None
        self._inflight: set[asyncio.BaseTransport] = set()  # connections with a request being answered
        self.peak_inflight = 0  # the most requests answered at once (tests of concurrency limits)
        self._stall_gate = _Gate()
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._requests: list[RecordedRequest] = []
        self._faults: deque[Fault] = deque()
        self._always: Fault | None = None
        self._holds: deque[StreamHold] = deque()
        # Auto progress for batches created from now on: one step per GET of the batch (None: none).
        self.batch_script: list[BatchStatus | BatchStep] | None = None
        self._files: dict[str, FakeFile] = {}
        self._batches: dict[str, FakeBatch] = {}
        self.responses = ResponseStore()  # this fake's responses: an id made elsewhere is a 404 here
        self.realtime_secrets: list[dict[str, Any]] = []  # the client secrets minted, as answered
        self._operations = {
            "chat/completions": self._chat_completions,
            "completions": self._completions,
            "embeddings": self._embeddings,
            "audio/transcriptions": self._transcriptions,
            "audio/translations": self._translations,
            "audio/speech": self._speech,
            "images/generations": self._image_generations,
            "images/edits": self._image_edits,
            "realtime/client_secrets": self._realtime_client_secret,
        }

    # ----------------------------------------------------------------- lifecycle

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the fake is not running")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        """Start listening on the current event loop."""
        app = web.Application(client_max_size=100 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: a dropped connection ends its handler, as in a real server.
        self._runner, self._port = await serve_app(
            app, host=self.host, port=self._requested_port, handler_cancellation=True, shutdown_timeout=1.0
        )

    async def stop(self) -> None:
        """Stop like a dying server: requests in flight (stalled, held, streaming) get their connection reset."""
        if self._runner is None:
            return
        for transport in list(self._inflight):
            transport.abort()
        await self._runner.cleanup()
        self._runner = None
        self._port = None

    # ----------------------------------------------------------------- scripting (thread-safe)

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    def wait_for_requests(self, count: int, timeout_s: float = 10.0) -> list[RecordedRequest]:
        """Block until at least ``count`` requests arrived (raises TimeoutError); returns the snapshot."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self._requests) >= count, timeout_s):
                raise TimeoutError(f"fake {self.name!r} got {len(self._requests)} of {count} requests")
            return list(self._requests)

    async def wait_for_requests_async(self, count: int, timeout_s: float = 10.0) -> list[RecordedRequest]:
        """``wait_for_requests`` without blocking the event loop (the fake may share it)."""
        return await asyncio.to_thread(self.wait_for_requests, count, timeout_s)

    def enqueue(self, *faults: Fault) -> None:
        """The next data-plane requests consume these faults, one per request, first in first out."""
        with self._lock:
            self._faults.extend(faults)

    def always(self, fault: Fault | None) -> None:
        """Apply ``fault`` to every request (health probes included) until cleared with None.

        Queued faults win over it, and unlike them it also hits ``/status``: it models the backend's state.
        """
        with self._lock:
            self._always = fault

    def hold_stream(self, after_chunks: int = 1) -> StreamHold:
        """Pause the next streamed answer after ``after_chunks`` SSE events (Azure's initial
        prompt-filter event counts as the first) until ``release()`` on the returned hold."""
        hold = StreamHold(after_chunks)
        with self._lock:
            self._holds.append(hold)
        return hold

    def release_stalls(self) -> None:
        """Let the currently stalled requests answer normally."""
        with self._lock:
            gate, self._stall_gate = self._stall_gate, _Gate()
        gate.open()

    def clear(self) -> None:
        """Forget queued and persistent faults, pending holds and recorded requests."""
        with self._lock:
            self._faults.clear()
            self._always = None
            self._holds.clear()
            self._requests.clear()

    def _next_hold(self) -> StreamHold | None:
        with self._lock:
            return self._holds.popleft() if self._holds else None

    # ----------------------------------------------------------------- files and batches (thread-safe)

    @property
    def files(self) -> dict[str, FakeFile]:
        """A snapshot of the stored files (uploaded and produced), by id, in creation order."""
        with self._lock:
            return dict(self._files)

    @property
    def batches(self) -> dict[str, FakeBatch]:
        """A snapshot (copies) of every batch's state, by id, in creation order."""
        with self._lock:
            return {batch_id: copy.deepcopy(batch) for batch_id, batch in self._batches.items()}

    def add_file(self, content: bytes, filename: str = "input.jsonl", purpose: str = "batch") -> FakeFile:
        """Store a file as if it had been uploaded (no request is recorded)."""
        with self._lock:
            return self._add_file_locked(content, filename, purpose)

    def advance_batch(
        self,
        batch_id: str | None = None,
        to: BatchStatus = "completed",
        *,
        completed_lines: int | None = None,
        failed_custom_ids: Iterable[str] = (),
        errors: Iterable[dict[str, Any]] | None = None,
    ) -> FakeBatch:
        """Move a batch (the latest created one when ``batch_id`` is None) to status ``to``; returns a copy.

        ``completed`` writes an output file (one line per succeeded request) and, when some failed, an
        error file: ``failed_custom_ids`` fail with a 400 and lines naming an unknown deployment with a 404.
        ``expired``/``cancelled``/``failed`` ran only the first ``completed_lines`` lines (default 0): the
        output file holds those that succeeded; for ``expired``/``cancelled`` the error file also lists the
        never-run requests with ``batch_expired``/``batch_cancelled``. ``failed`` sets ``errors`` (the input
        file's validation problems, else ``errors`` or a default ``invalid_request``). A batch whose input
        file has problems fails when it leaves ``validating``, whatever ``to`` is; a ``cancelling`` batch
        becomes ``cancelled`` on any advance; advancing to the current status changes nothing. Terminal
        batches cannot move, nor go back (ValueError).
        """
        step = BatchStep(to, completed_lines, tuple(failed_custom_ids))
        with self._lock:
            if batch_id is None:
                if not self._batches:
                    raise LookupError(f"fake {self.name!r} has no batch")
                batch = next(reversed(self._batches.values()))
            elif (batch := self._batches.get(batch_id)) is None:
                raise KeyError(f"fake {self.name!r} has no batch {batch_id!r}")
            self._advance_locked(batch, step, None if errors is None else list(errors))
            return copy.deepcopy(batch)

    def _add_file_locked(self, content: bytes, filename: str, purpose: str) -> FakeFile:
        stored = FakeFile(f"file-{uuid.uuid4().hex}", filename, purpose, bytes(content), int(time.time()))
        self._files[stored.id] = stored
        return stored

    def _advance_locked(self, batch: FakeBatch, step: BatchStep, errors: list[dict[str, Any]] | None = None) -> None:
        to = step.to
        if to not in _ADVANCE_TARGETS:
            raise ValueError(f"unknown batch status {to!r}")
        if batch.status in _TERMINAL:
            raise ValueError(f"batch {batch.id} is already {batch.status}")
        if batch.status == "cancelling":
            to = "cancelled"
        if to == batch.status:  # e.g. a script polling twice while in progress
            return
        if to == "validating":
            raise ValueError(f"batch {batch.id} is {batch.status}; it cannot go back to validating")
        now = int(time.time())
        if batch.status == "validating" and batch.problems and to != "cancelling":
            self._finish_locked(batch, BatchStep("failed"), batch.problems, now)
        elif to == "in_progress":
            if batch.status != "validating":
                raise ValueError(f"batch {batch.id} is {batch.status}; only a validating batch starts")
            batch.status, batch.in_progress_at = "in_progress", now
            batch.request_counts["total"] = len(batch.requests)
        elif to == "finalizing":
            batch.in_progress_at = batch.in_progress_at or now
            batch.status, batch.finalizing_at = "finalizing", now
            batch.request_counts["total"] = len(batch.requests)
        elif to == "cancelling":
            batch.status, batch.cancelling_at = "cancelling", now
        else:
            self._finish_locked(batch, BatchStep(to, step.completed_lines, step.failed_custom_ids), errors, now)

    def _finish_locked(self, batch: FakeBatch, step: BatchStep, errors: list[dict[str, Any]] | None, now: int) -> None:
        """Move ``batch`` to a terminal status and write its output and error files."""
        lines = batch.requests
        if step.to == "completed":
            if step.completed_lines is not None:
                raise ValueError("completed_lines is for expired, failed or cancelled batches")
            ran = len(lines)
        else:
            ran = min(step.completed_lines or 0, len(lines))
            if ran < 0:
                raise ValueError("completed_lines cannot be negative")
        failing = set(step.failed_custom_ids)
        unknown = failing - {line["custom_id"] for line in lines}
        if unknown:
            raise ValueError(f"batch {batch.id} has no custom_id {sorted(unknown)}")

        outputs: list[dict[str, Any]] = []
        failures: list[dict[str, Any]] = []
        for line in lines[:ran]:
            custom_id, body = line["custom_id"], line["body"]
            if custom_id in failing:
                message = f"Fake failure of request {custom_id!r}."
                failures.append(_batch_line(custom_id, 400, _bad_request(message)))
            elif self.deployments is not None and body["model"] not in self.deployments:
                failures.append(_batch_line(custom_id, 404, _DEPLOYMENT_NOT_FOUND))
            else:
                answer = self._chat_answer(self._chat_plan(body, body["model"]))
                outputs.append(_batch_line(custom_id, 200, answer))
        unrun: list[dict[str, Any]] = []
        if step.to in _UNRUN:
            code, message = _UNRUN[step.to]
            unrun = [_unrun_line(line["custom_id"], code, message) for line in lines[ran:]]

        if outputs:
            batch.output_file_id = self._add_file_locked(_jsonl(outputs), f"{batch.id}_output.jsonl", "batch_output").id
        if failures or unrun:
            batch.error_file_id = self._add_file_locked(
                _jsonl(failures + unrun), f"{batch.id}_error.jsonl", "batch_output"
            ).id
        batch.request_counts = {"total": len(lines), "completed": len(outputs), "failed": len(failures)}
        batch.status = step.to
        if step.to == "completed":
            batch.in_progress_at = batch.in_progress_at or now
            batch.finalizing_at = batch.finalizing_at or now
            batch.completed_at = now
        elif step.to == "failed":
            default = [{"code": "invalid_request", "message": "The batch failed (scripted by the test)."}]
            data = [{"param": None, "line": None, **error} for error in (errors or default)]
            batch.errors = {"object": "list", "data": data}
            batch.failed_at = now
        elif step.to == "expired":
            batch.expired_at = now
        else:  # cancelled
            batch.cancelling_at = batch.cancelling_at or now
            batch.cancelled_at = now

    # ----------------------------------------------------------------- request handling

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        transport = request.transport
        if transport is None:  # the client is already gone
            return web.Response()
        self._inflight.add(transport)
        self.peak_inflight = max(self.peak_inflight, len(self._inflight))
        try:
            return await self._answer(request)
        finally:
            self._inflight.discard(transport)

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        is_probe = request.method == "GET" and request.path in _STATUS_PATHS
        call, fault = self._admit(request, await request.read(), use_queue=not is_probe)
        if is_probe:
            if fault is not None and (faulted := await self._apply_fault(fault, call)) is not None:
                return faulted
            return _json({"status": "ok", "name": self.name}, call.headers)

        if self.latency_ms:
            await asyncio.sleep(self.latency_ms / 1000)
        if fault is not None and (faulted := await self._apply_fault(fault, call)) is not None:
            return faulted

        if (resource := _FILES_PATH.match(request.path) or _BATCHES_PATH.match(request.path)) is not None:
            return self._resource_api(call, resource)
        if (responses := _RESPONSES_PATH.match(request.path)) is not None:
            return await self._responses_api(call, responses)
        if (v1 := _V1_PATH.match(request.path)) is not None:
            return await self._v1_operation(call, v1["operation"])

        match = _DATA_PLANE.match(request.path)
        if match is None or "api-version" not in request.query:
            return _json(_NOT_FOUND, call.headers, status=404)
        if not self._authorized(request):
            return _json(_UNAUTHORIZED, call.headers, status=401)
        if self.deployments is not None and match["deployment"] not in self.deployments:
            return _json(_DEPLOYMENT_NOT_FOUND, call.headers, status=404)
        operation = self._operations.get(match["operation"])
        if operation is None or request.method != "POST" or match["operation"] == "realtime/client_secrets":
            return _json(_NOT_FOUND, call.headers, status=404)
        if (problem := self._read_body(call, match["operation"])) is not None:
            return _json(problem, call.headers, 400)
        if call.cut_after is not None and not _streamed(call, match["operation"]):
            return _abort(request)
        if call.error_after is not None and not call.payload.get("stream"):
            return _json(_SERVER_ERROR, call.headers, status=500)
        return await operation(call)

    @staticmethod
    def _read_body(call: _Call, operation: str) -> dict[str, Any] | None:
        """Parse the body into ``call``; Azure's 400 body when Azure would refuse it (see fake_openai_requests)."""
        if operation in MULTIPART_OPERATIONS or operation == "images/edits":
            content_type = call.request.headers.get("Content-Type", "")
            call.parts = _multipart_parts(content_type, call.record.body)
            check = check_image_edit if operation == "images/edits" else check_multipart
            return check(content_type, call.parts)
        payload = parse_json(call.record.body)
        if payload is None:
            return invalid_json()
        call.payload = payload
        if operation == "realtime/client_secrets":
            return check_realtime_secret(payload)
        return check_json(operation, payload) if operation in JSON_OPERATIONS else None

    async def _v1_operation(self, call: _Call, operation: str) -> web.StreamResponse:
        """``/openai/v1/{operation}``: the deployment is the body's ``model``; a dated api-version is refused."""
        request = call.request
        if (problem := v1_version_problem(request.query.get("api-version"))) is not None:
            return _json(problem, call.headers, 400)
        if not self._authorized(request):
            return _json(_UNAUTHORIZED, call.headers, status=401)
        handler = self._operations.get(operation)
        if handler is None or request.method != "POST":
            return _json(_NOT_FOUND, call.headers, status=404)
        if (problem := self._read_body(call, operation)) is not None:
            return _json(problem, call.headers, 400)
        if not call.record.deployment:
            return _json(_bad_request("Missing required parameter: 'model'."), call.headers, 400)
        if self.deployments is not None and call.record.deployment not in self.deployments:
            return _json(_DEPLOYMENT_NOT_FOUND, call.headers, status=404)
        if call.cut_after is not None and not _streamed(call, operation):
            return _abort(request)
        return await handler(call)

    def _admit(self, request: web.Request, body: bytes, *, use_queue: bool) -> tuple[_Call, Fault | None]:
        """Record the request and pick its fault in one step, so a concurrent ``release_stalls()``
        either precedes the request or releases it."""
        match = _DATA_PLANE.match(request.path)
        parsed: dict[str, Any] | None = None
        if request.content_type == "application/json":
            with contextlib.suppress(ValueError):
                loaded = json.loads(body)
                parsed = loaded if isinstance(loaded, dict) else None
        record = RecordedRequest(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers={key.lower(): value for key, value in request.headers.items()},
            body=body,
            deployment=match["deployment"] if match else _body_deployment(request, body, parsed),
            json=parsed,
        )
        call = _Call(request, record, self._answer_headers(request))
        with self._arrived:
            fault = self._faults.popleft() if use_queue and self._faults else self._always
            call.stall_gate = self._stall_gate
            self._requests.append(record)
            self._arrived.notify_all()
        return call, fault

    def _authorized(self, request: web.Request) -> bool:
        if request.headers.get("api-key") == self.api_key:
            return True
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and bool(token.strip())

    def _answer_headers(self, request: web.Request) -> dict[str, str]:
        request_id = request.headers.get("x-request-id") or str(uuid.uuid4())
        headers = {"apim-request-id": request_id, "x-request-id": request_id, "x-ms-region": self.name}
        headers.update(self.ratelimit_headers or {})
        return headers

    async def _apply_fault(self, fault: Fault, call: _Call) -> web.StreamResponse | None:
        """Answer (or not) according to ``fault``; None means "carry on with the normal answer"."""
        if fault.kind == "status":
            headers = dict(call.headers)
            if fault.retry_after is not None:
                headers["Retry-After"] = str(fault.retry_after)
            if fault.retry_after_ms is not None:
                headers["retry-after-ms"] = str(fault.retry_after_ms)
            return _json(fault.body or self._status_body(fault, call.record), headers, status=fault.code)
        if fault.kind == "content_filter":
            return _json(_CONTENT_FILTERED, call.headers, status=400)
        if fault.kind == "reset":
            return _abort(call.request)
        if fault.kind == "stall":
            await call.stall_gate.wait()
            return None
        if fault.kind == "error_event":
            call.error_after = fault.after_chunks  # applied while streaming
            return None
        call.cut_after = fault.after_chunks  # cut_stream: applied while streaming
        return None

    @staticmethod
    def _status_body(fault: Fault, record: RecordedRequest) -> dict[str, Any]:
        if fault.code == 429:
            seconds = fault.retry_after
            if seconds is None:
                seconds = math.ceil(fault.retry_after_ms / 1000) if fault.retry_after_ms is not None else 60
            operation = _OPERATIONS.get(record.operation or "", "ChatCompletions_Create")
            api_version = record.query.get("api-version", "2024-10-21")
            message = (
                f"Requests to the {operation} Operation under Azure OpenAI API version {api_version} have "
                "exceeded token rate limit of your current OpenAI S0 pricing tier. "
                f"Please retry after {seconds} seconds. Please go here: https://aka.ms/oai/quotaincrease "
                "if you would like to further increase the default rate limit."
            )
            return {"error": {"code": "429", "message": message}}
        if fault.code >= 500:
            return _SERVER_ERROR
        return {"error": {"code": str(fault.code), "message": "Fake error."}}

    # ----------------------------------------------------------------- streaming

    async def _stream(self, call: _Call, events: list[dict[str, Any]], *, named: bool = False) -> web.StreamResponse:
        """Send ``events`` as SSE, one write per event, then ``[DONE]``; honours holds and cut faults.

        ``named``: the Responses API's form, each event with its ``event:`` line and no ``[DONE]`` at the end.
        """
        response = web.StreamResponse(headers=call.headers)
        response.content_type = "text/event-stream"
        response.headers["Cache-Control"] = "no-cache"
        hold = self._next_hold()
        if named:
            lines = [f"event: {event['type']}\ndata: {_dumps(event)}\n\n" for event in events]
        else:
            lines = [f"data: {_dumps(event)}\n\n" for event in events] + ["data: [DONE]\n\n"]
        try:
            await response.prepare(call.request)
            for index, line in enumerate(lines):
                if call.cut_after is not None and index == call.cut_after:
                    return _abort(call.request, response)
                if call.error_after is not None and index == call.error_after:
                    await response.write(f"data: {_dumps(_SERVER_ERROR)}\n\n".encode())
                    break
                if hold is not None and index == hold.after_chunks:
                    hold.reached.set()
                    await hold._gate.wait()
                if index and self.chunk_delay_ms:
                    await asyncio.sleep(self.chunk_delay_ms / 1000)
                await response.write(line.encode())
            await response.write_eof()
        except ConnectionResetError:  # the client went away mid-stream; nothing to do
            pass
        return response

    # ----------------------------------------------------------------- operations

    def _model(self, call: _Call) -> str:
        deployment = call.record.deployment or ""
        return _MODEL_NAMES.get(deployment, deployment)

    def reply_text(self) -> str:
        """The deterministic chat reply; it names this fake so tests can tell backends apart."""
        return f"Hello from {self.name}. This is a fake reply."

    def _chat_plan(self, payload: dict[str, Any], deployment: str) -> _ChatPlan:
        """Everything a chat answer (streamed, non-streamed or in a batch output line) is made of."""
        messages = payload.get("messages") or []
        prompt_tokens = sum(_word_count(_message_text(m)) + 3 for m in messages if isinstance(m, dict))
        tool = _weather_tool(payload)
        pieces = _split(_dumps(_TOOL_ARGUMENTS) if tool else self.reply_text(), self.chunks)
        usage = _usage(prompt_tokens, len(pieces))
        usage["prompt_tokens_details"] = {"cached_tokens": 0}
        usage["completion_tokens_details"] = {"reasoning_tokens": 0}
        base = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "created": int(time.time()),
            "model": _MODEL_NAMES.get(deployment, deployment),
            "system_fingerprint": _FINGERPRINT,
        }
        tool_call = None
        if tool is not None:
            tool_call = {"id": f"call_{hashlib.sha256(tool.encode()).hexdigest()[:24]}", "type": "function"}
        return _ChatPlan(base, pieces, usage, tool, tool_call, "tool_calls" if tool else "stop")

    @staticmethod
    def _chat_answer(plan: _ChatPlan) -> dict[str, Any]:
        """The non-streamed ``chat.completion`` object."""
        message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
        if plan.tool_call is not None:
            function = {"name": plan.tool, "arguments": "".join(plan.pieces)}
            message["tool_calls"] = [{**plan.tool_call, "function": function}]
        else:
            message["content"] = "".join(plan.pieces)
        choice = {
            "index": 0,
            "message": message,
            "finish_reason": plan.finish_reason,
            "logprobs": None,
            "content_filter_results": _SAFE_RESULTS,
        }
        answer = {**plan.base, "object": "chat.completion", "choices": [choice]}
        return answer | {"prompt_filter_results": _PROMPT_FILTER_RESULTS, "usage": plan.usage}

    async def _chat_completions(self, call: _Call) -> web.StreamResponse:
        plan = self._chat_plan(call.payload, call.record.deployment or "")
        if not call.payload.get("stream"):
            return _json(self._chat_answer(plan), call.headers)
        base, pieces, usage, tool, tool_call = plan.base, plan.pieces, plan.usage, plan.tool, plan.tool_call
        finish_reason = plan.finish_reason

        include_usage = _include_usage(call.payload)

        def chunk(delta: dict[str, Any], finish: str | None = None, filters: dict[str, Any] | None = None):
            choice = {
                "index": 0,
                "delta": delta,
                "finish_reason": finish,
                "logprobs": None,
                "content_filter_results": filters or {},
            }
            event = {**base, "object": "chat.completion.chunk", "choices": [choice]}
            return event | ({"usage": None} if include_usage else {})

        if tool_call is not None:
            first = {**tool_call, "index": 0, "function": {"name": tool, "arguments": ""}}
            role = chunk({"role": "assistant", "content": None, "refusal": None, "tool_calls": [first]})
            body = [chunk({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}) for p in pieces]
        else:
            role = chunk({"role": "assistant", "content": "", "refusal": None})
            body = [chunk({"content": p}, filters=_SAFE_RESULTS) for p in pieces]
        prompt_filter = {"choices": [], "created": 0, "id": "", "model": "", "object": ""}
        prompt_filter |= {"prompt_filter_results": _PROMPT_FILTER_RESULTS}
        if include_usage:
            prompt_filter["usage"] = None
        events = [prompt_filter, role, *body, chunk({}, finish=finish_reason)]
        if include_usage:
            events.append({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage})
        return await self._stream(call, events)

    async def _completions(self, call: _Call) -> web.StreamResponse:
        prompt = call.payload.get("prompt", "")
        prompts = prompt if isinstance(prompt, list) else [prompt]
        pieces = _split(f"Hello from {self.name}. This is a fake completion.", self.chunks)
        usage = _usage(sum(_word_count(str(p)) for p in prompts), len(pieces))
        base = {
            "id": f"cmpl-{uuid.uuid4().hex[:24]}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": self._model(call),
        }

        def choice(text: str, finish: str | None) -> dict[str, Any]:
            return {"text": text, "index": 0, "finish_reason": finish, "logprobs": None}

        if not call.payload.get("stream"):
            return _json({**base, "choices": [choice("".join(pieces), "stop")], "usage": usage}, call.headers)
        events = [{**base, "choices": [choice(p, None)]} for p in pieces]
        events.append({**base, "choices": [choice("", "stop")]})
        if _include_usage(call.payload):
            events = [event | {"usage": None} for event in events]
            events.append({**base, "choices": [], "usage": usage})
        return await self._stream(call, events)

    async def _embeddings(self, call: _Call) -> web.StreamResponse:
        inputs = _embedding_inputs(call.payload.get("input", ""))
        as_base64 = call.payload.get("encoding_format") == "base64"
        data = []
        for index, text in enumerate(inputs):
            vector = embedding_for(text)
            encoded: Any = _float32_base64(vector) if as_base64 else vector
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        tokens = sum(_word_count(text) for text in inputs)
        answer = {"object": "list", "data": data, "model": self._model(call)}
        answer["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
        return _json(answer, call.headers)

    async def _transcriptions(self, call: _Call) -> web.StreamResponse:
        return self._transcript(call, "transcribe", "fake transcription")

    async def _translations(self, call: _Call) -> web.StreamResponse:
        return self._transcript(call, "translate", "fake translation")

    @staticmethod
    def _transcript(call: _Call, task: Literal["transcribe", "translate"], what: str) -> web.StreamResponse:
        """The answer in the requested ``response_format``: text, srt and vtt as text/plain, as Azure sends them."""
        audio = call.parts["file"][1]
        response_format = call.parts.get("response_format", (None, b"json"))[1].decode()
        body, content_type = transcript(f"{what} of {len(audio)} bytes", response_format, task, 1.5)
        return web.Response(text=body, content_type=content_type, headers=call.headers)

    async def _speech(self, call: _Call) -> web.StreamResponse:
        """Audio as Azure streams it (chunked, no Content-Length), in 4 pieces; `cut_stream` aborts after N."""
        audio = b"ID3" + str(call.payload.get("input", "")).encode()
        response = web.StreamResponse(headers=call.headers)
        response.content_type = "audio/mpeg"
        response.enable_chunked_encoding()
        step = max(1, -(-len(audio) // 4))
        try:
            await response.prepare(call.request)
            for index, start in enumerate(range(0, len(audio), step)):
                if call.cut_after is not None and index == call.cut_after:
                    return _abort(call.request, response)
                await response.write(audio[start : start + step])
            await response.write_eof()
        except ConnectionResetError:  # the client went away mid-answer; nothing to do
            pass
        return response

    async def _image_generations(self, call: _Call) -> web.StreamResponse:
        prompt = str(call.payload.get("prompt", ""))
        count = int(call.payload.get("n") or 1)
        data = [{"url": "https://fake/img.png", "revised_prompt": prompt} for _ in range(count)]
        return _json({"created": int(time.time()), "data": data}, call.headers)

    async def _image_edits(self, call: _Call) -> web.StreamResponse:
        images = [data for name, (filename, data) in call.parts.items() if name.startswith("image") and filename]
        prompt = call.parts["prompt"][1].decode(errors="replace")
        data = [{"b64_json": base64.b64encode(f"edited {len(images[0])} bytes: {prompt}".encode()).decode()}]
        tokens = _word_count(prompt)
        usage = {"input_tokens": tokens + 100, "output_tokens": 200, "total_tokens": tokens + 300}
        usage["input_tokens_details"] = {"text_tokens": tokens, "image_tokens": 100}
        return _json({"created": int(time.time()), "data": data, "usage": usage}, call.headers)

    async def _realtime_client_secret(self, call: _Call) -> web.StreamResponse:
        session = dict(call.payload["session"])
        seconds = int((call.payload.get("expires_after") or {}).get("seconds", 600))
        session |= {"object": "realtime.session", "id": f"sess_{uuid.uuid4().hex[:20]}", "expires_at": 0}
        answer = {"value": f"ek_{uuid.uuid4().hex}", "expires_at": int(time.time()) + seconds, "session": session}
        with self._lock:
            self.realtime_secrets.append(answer)
        return _json(answer, call.headers)

    # ----------------------------------------------------------------- responses

    async def _responses_api(self, call: _Call, match: re.Match[str]) -> web.StreamResponse:
        """``/openai/responses…?api-version=`` (dated, from 2025-03-01-preview) or ``/openai/v1/responses…``."""
        request = call.request
        version = request.query.get("api-version")
        if request.path.startswith("/openai/v1/"):
            if (problem := v1_version_problem(version)) is not None:
                return _json(problem, call.headers, 400)
        elif version is None:
            return _json(_NOT_FOUND, call.headers, status=404)
        elif version < _RESPONSES_MIN_VERSION:
            message = f"Azure OpenAI Responses API is enabled only for api-version {_RESPONSES_MIN_VERSION} and later"
            return _json(_bad_request(message), call.headers, 400)
        if not self._authorized(request):
            return _json(_UNAUTHORIZED, call.headers, status=401)
        response_id, action, method = match["id"], match["action"], request.method
        if response_id is None:
            return await self._create_response(call) if method == "POST" else _json(_NOT_FOUND, call.headers, 404)
        if action == "/cancel" and method == "POST":
            status, body = self.responses.cancel(response_id)
            return _json(body, call.headers, status)
        if action == "/input_items" and method == "GET":
            items = self.responses.input_items(response_id)
            return _json(items or not_found(response_id), call.headers, 200 if items else 404)
        if action is None and method == "DELETE":
            if not self.responses.delete(response_id):
                return _json(not_found(response_id), call.headers, 404)
            return _json({"id": response_id, "object": "response", "deleted": True}, call.headers)
        if action is not None or method != "GET":
            return _json(_NOT_FOUND, call.headers, status=404)
        stored = self.responses.retrieve(response_id)
        if stored is None:
            return _json(not_found(response_id), call.headers, 404)
        if request.query.get("stream") == "true":
            self.responses.finish(stored)
            after = int(request.query.get("starting_after", "-1"))
            return await self._stream(call, [e for e in stored.events if e["sequence_number"] > after], named=True)
        return _json(stored.current(), call.headers)

    async def _create_response(self, call: _Call) -> web.StreamResponse:
        payload = parse_json(call.record.body)
        if payload is None:
            return _json(invalid_json(), call.headers, 400)
        call.payload = payload
        deployment = call.record.deployment
        if not deployment:
            return _json(_bad_request("Missing required parameter: 'model'."), call.headers, 400)
        if self.deployments is not None and deployment not in self.deployments:
            return _json(_DEPLOYMENT_NOT_FOUND, call.headers, status=404)
        if call.cut_after is not None and not payload.get("stream"):
            return _abort(call.request)
        model = _MODEL_NAMES.get(deployment, deployment)
        status, answer, stored = self.responses.create(payload, model, self.reply_text().rstrip("."), self.chunks)
        if stored is None or payload.get("stream") is not True:
            return _json(answer, call.headers, status)
        return await self._stream(call, stored.events, named=True)

    # ----------------------------------------------------------------- files and batches

    def _resource_api(self, call: _Call, resource: re.Match[str]) -> web.StreamResponse:
        """``/openai/files...`` and ``/openai/batches...``: resource-level, not under a deployment."""
        request = call.request
        if "api-version" not in request.query:
            return _json(_NOT_FOUND, call.headers, status=404)
        if not self._authorized(request):
            return _json(_UNAUTHORIZED, call.headers, status=401)
        if call.cut_after is not None:  # nothing is streamed here: a cut is a reset
            return _abort(request)
        if resource.re is _FILES_PATH:
            return self._files_api(call, resource["file_id"], bool(resource["content"]))
        return self._batches_api(call, resource["batch_id"], bool(resource["cancel"]))

    def _files_api(self, call: _Call, file_id: str | None, content: bool) -> web.StreamResponse:
        method = call.request.method
        if file_id is None and method == "POST":
            return self._upload_file(call)
        if file_id is None and method == "GET":
            purpose = call.request.query.get("purpose")
            with self._lock:
                data = [f.to_json() for f in self._files.values() if purpose in (None, f.purpose)]
            return _json({"object": "list", "data": data, "has_more": False}, call.headers)
        if file_id is None or (content and method != "GET") or method not in ("GET", "DELETE"):
            return _json(_NOT_FOUND, call.headers, status=404)
        with self._lock:
            stored = self._files.pop(file_id, None) if method == "DELETE" else self._files.get(file_id)
        if stored is None:
            return _json(_not_found("File", file_id), call.headers, status=404)
        if method == "DELETE":
            return _json({"id": stored.id, "object": "file", "deleted": True}, call.headers)
        if content:
            return web.Response(body=stored.content, content_type="application/octet-stream", headers=call.headers)
        return _json(stored.to_json(), call.headers)

    def _upload_file(self, call: _Call) -> web.StreamResponse:
        parts = _multipart_parts(call.request.headers.get("Content-Type", ""), call.record.body)
        if "file" not in parts:
            return _json(_bad_request("No file uploaded."), call.headers, 400)
        purpose = parts.get("purpose", (None, b""))[1].decode(errors="replace")
        if purpose not in ("batch", "fine-tune", "assistants"):
            message = f"Invalid value for purpose: {purpose!r}. Supported values are batch, fine-tune, assistants."
            return _json(_bad_request(message), call.headers, 400)
        filename, data = parts["file"]
        with self._lock:
            stored = self._add_file_locked(data, filename or "file", purpose)
        return _json(stored.to_json(), call.headers)

    def _batches_api(self, call: _Call, batch_id: str | None, cancel: bool) -> web.StreamResponse:
        method = call.request.method
        if batch_id is None and method == "POST":
            return self._create_batch(call)
        if batch_id is None and method == "GET":
            return self._list_batches(call)
        if batch_id is None or method != ("POST" if cancel else "GET"):
            return _json(_NOT_FOUND, call.headers, status=404)
        with self._lock:
            batch = self._batches.get(batch_id)
            if batch is None:
                return _json(_not_found("Batch", batch_id), call.headers, status=404)
            if cancel:
                if batch.status in ("validating", "in_progress", "finalizing"):
                    self._advance_locked(batch, BatchStep("cancelling"))
                elif batch.status not in ("cancelling", "cancelled"):
                    message = f"Cannot cancel a batch with status '{batch.status}'."
                    return _json(_bad_request(message), call.headers, 400)
            elif batch.script:  # auto mode: this poll consumes one step
                step = batch.script.popleft()
                if batch.status in _TERMINAL:
                    batch.script.clear()
                else:
                    try:
                        self._advance_locked(batch, step)
                    except ValueError as error:  # a script the batch cannot follow: tell the test loudly
                        body = {"error": {"code": "FakeBatchScriptError", "message": str(error)}}
                        return _json(body, call.headers, status=500)
            answer = batch.to_json()
        return _json(answer, call.headers)

    def _create_batch(self, call: _Call) -> web.StreamResponse:
        payload = call.record.json
        if payload is None:
            return _json(_bad_request("Invalid JSON body."), call.headers, 400)
        for name in ("input_file_id", "endpoint", "completion_window"):
            if not isinstance(payload.get(name), str) or not payload[name]:
                return _json(_bad_request(f"Missing required parameter '{name}'."), call.headers, 400)
        endpoint = payload["endpoint"]
        if endpoint not in _BATCH_URLS:
            message = f"Unsupported endpoint {endpoint!r}; the fake serves /chat/completions batches."
            return _json(_bad_request(message), call.headers, 400)
        metadata = payload.get("metadata")
        script = [s if isinstance(s, BatchStep) else BatchStep(s) for s in self.batch_script or ()]
        with self._lock:
            source = self._files.get(payload["input_file_id"])
            if source is None:
                return _json(_not_found("File", payload["input_file_id"]), call.headers, status=404)
            if source.purpose != "batch":
                message = f"File {source.id!r} has purpose {source.purpose!r}; a batch input needs 'batch'."
                return _json(_bad_request(message), call.headers, 400)
            requests, problems = _parse_batch_input(source.content)
            now = int(time.time())
            batch = FakeBatch(
                id=f"batch_{uuid.uuid4().hex}",
                input_file_id=source.id,
                endpoint=endpoint,
                completion_window=payload["completion_window"],
                metadata=dict(metadata) if isinstance(metadata, dict) else None,
                created_at=now,
                expires_at=now + _BATCH_WINDOW_S,
                requests=requests,
                problems=problems,
                script=deque(script),
            )
            self._batches[batch.id] = batch
            answer = batch.to_json()
        return _json(answer, call.headers)

    def _list_batches(self, call: _Call) -> web.StreamResponse:
        query = call.request.query
        try:
            limit = max(1, min(100, int(query.get("limit", "20"))))
        except ValueError:
            return _json(_bad_request("limit must be an integer."), call.headers, 400)
        with self._lock:
            batches = list(self._batches.values())
            after = query.get("after")
            if after is not None:
                ids = [b.id for b in batches]
                batches = batches[ids.index(after) + 1 :] if after in ids else []
            page = [b.to_json() for b in batches[:limit]]
            has_more = len(batches) > limit
        answer = {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": has_more,
        }
        return _json(answer, call.headers)


# --------------------------------------------------------------------------- helpers


_TOOL_ARGUMENTS = {"location": "Seattle", "unit": "celsius"}


def embedding_for(text: str) -> list[float]:
    """The deterministic embedding of ``text`` (exactly representable as float32, so base64 round-trips)."""
    digest = hashlib.sha256(text.encode()).digest()
    return [(byte - 128) / 128 for byte in digest[:_EMBEDDING_DIMENSIONS]]


def _float32_base64(vector: list[float]) -> str:
    """What Azure sends for ``encoding_format: "base64"``: little-endian float32s, base64-encoded."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def _body_deployment(request: web.Request, body: bytes, parsed: dict[str, Any] | None) -> str | None:
    """The deployment a v1 or Responses request names in its body (``model``; a realtime ``session.model``)."""
    if not (_V1_PATH.match(request.path) or _RESPONSES_PATH.match(request.path)):
        return None
    if parsed is not None:
        session = parsed.get("session")
        if isinstance(session, dict):
            nested = session.get("audio", {}).get("input", {}).get("transcription", {})
            model = session.get("model") or (nested.get("model") if isinstance(nested, dict) else None)
        else:
            model = parsed.get("model")
        return model if isinstance(model, str) else None
    if request.content_type == "multipart/form-data":
        value = _multipart_parts(request.headers.get("Content-Type", ""), body).get("model")
        return value[1].decode(errors="replace") if value and value[0] is None else None
    return None


def _bad_request(message: str) -> dict[str, Any]:
    return {"error": {"code": "BadRequest", "message": message}}


def _not_found(kind: str, resource_id: str) -> dict[str, Any]:
    return {"error": {"code": "404", "message": f"{kind} with id '{resource_id}' was not found."}}


def _jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(_dumps(line) + "\n" for line in lines).encode()


def _batch_line(custom_id: str, status_code: int, body: dict[str, Any]) -> dict[str, Any]:
    """One line of a batch output or error file: a request that got an answer."""
    response = {"status_code": status_code, "request_id": str(uuid.uuid4()), "body": body}
    return {"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": custom_id, "response": response, "error": None}


def _unrun_line(custom_id: str, code: str, message: str) -> dict[str, Any]:
    """One line of a batch error file: a request the batch never ran."""
    error = {"code": code, "message": message}
    return {"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": custom_id, "response": None, "error": error}


def _parse_batch_input(content: bytes) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The valid request lines of a batch input file, and its problems (Azure's batch error codes)."""
    requests: list[dict[str, Any]] = []
    problems: list[dict[str, Any]] = []
    seen: set[str] = set()

    def problem(code: str, message: str, number: int | None) -> None:
        problems.append({"code": code, "message": message, "param": None, "line": number})

    for number, raw in enumerate(content.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            line = None
        if not isinstance(line, dict):
            problem("invalid_json_line", f"Line {number} of the input file is not a valid JSON object.", number)
            continue
        custom_id, body = line.get("custom_id"), line.get("body")
        if (
            not isinstance(custom_id, str)
            or not custom_id
            or line.get("method") != "POST"
            or not isinstance(body, dict)
            or not isinstance(body.get("model"), str)
        ):
            problem("invalid_request", f"Line {number}: the schema of the input line is invalid.", number)
        elif line.get("url") not in _BATCH_URLS:
            problem("url_mismatch", f"Line {number}: the url {line.get('url')!r} does not match the endpoint.", number)
        elif custom_id in seen:
            problem("duplicate_custom_id", f"Line {number}: the custom_id {custom_id!r} is a duplicate.", number)
        else:
            seen.add(custom_id)
            requests.append(line)
    if not requests and not problems:
        problem(
            "empty_file", "The input file is empty. Please ensure that the batch contains at least one request.", None
        )
    return requests, problems


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _json(value: Any, headers: dict[str, str], status: int = 200) -> web.Response:
    return web.Response(text=_dumps(value), status=status, content_type="application/json", headers=headers)


def _streamed(call: _Call, operation: str) -> bool:
    """The answer goes out in pieces (a cut falls between them): asked-for streams, and speech, which always is."""
    return bool(call.payload.get("stream")) or operation == "audio/speech"


def _abort(request: web.Request, response: web.StreamResponse | None = None) -> web.StreamResponse:
    """Drop the TCP connection without (finishing) an answer; aiohttp then discards ``response``."""
    if request.transport is not None:
        request.transport.abort()
    return response if response is not None else web.Response()


def _split(text: str, parts: int) -> list[str]:
    """``text`` in ``parts`` nearly equal, non-empty pieces that concatenate back to it."""
    count = max(1, min(parts, len(text)))
    return [text[i * len(text) // count : (i + 1) * len(text) // count] for i in range(count)]


def _word_count(text: str) -> int:
    return len(text.split())


def _message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):  # multimodal parts: count the text ones
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return content if isinstance(content, str) else ""


def _weather_tool(payload: dict[str, Any]) -> str | None:
    """The tool to "call": the first function tool, when the last user message mentions the weather."""
    tools = payload.get("tools") or []
    users = [m for m in payload.get("messages") or [] if isinstance(m, dict) and m.get("role") == "user"]
    if not tools or not users or "weather" not in _message_text(users[-1]).lower():
        return None
    function = tools[0].get("function", {}) if isinstance(tools[0], dict) else {}
    return str(function.get("name", "get_weather"))


def _include_usage(payload: dict[str, Any]) -> bool:
    options = payload.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _embedding_inputs(value: Any) -> list[str]:
    """Azure accepts a string, a list of strings, a token list or a list of token lists."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return [" ".join(map(str, value))]
    if isinstance(value, list):
        return [v if isinstance(v, str) else " ".join(map(str, v)) for v in value]
    return [str(value)]


def _multipart_parts(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """Field name -> (file name, raw bytes) of a multipart/form-data body.

    The body was already read (to record it), so aiohttp's ``request.post()`` cannot re-read the
    stream; the stdlib MIME parser handles the recorded bytes instead.
    """
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    if not message.is_multipart():
        return {}
    parts: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            parts[name] = (part.get_filename(), payload)
    return parts


# --------------------------------------------------------------------------- CLI


async def _serve(fake: FakeAzureOpenAI) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with fake:
        deployments = "any name" if fake.deployments is None else ", ".join(sorted(fake.deployments))
        print(
            "=" * 72,
            "FAKE Azure OpenAI for local development and tests - NOT a real model.",
            f"  name/region : {fake.name}",
            f"  endpoint    : {fake.url}   (AZURE_OPENAI_ENDPOINT)",
            f"  api key     : {fake.api_key}   (or any 'Authorization: Bearer <token>')",
            f"  deployments : {deployments}",
            f"  latency     : {fake.latency_ms} ms, {fake.chunks} chunks per stream",
            "Stop with Ctrl+C.",
            "=" * 72,
            sep="\n",
            flush=True,
        )
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run a FAKE Azure OpenAI server for local development.")
    parser.add_argument("--port", type=int, default=18080)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--name", default="local-fake")
    parser.add_argument("--api-key", default="fake-key")
    parser.add_argument("--latency-ms", type=int, default=0)
    parser.add_argument("--chunks", type=int, default=5)
    parser.add_argument("--chunk-delay-ms", type=int, default=0)
    parser.add_argument("--deployments", help="comma-separated names to accept (default: any name)")
    args = parser.parse_args(argv)
    deployments = [d.strip() for d in args.deployments.split(",") if d.strip()] if args.deployments else None
    fake = FakeAzureOpenAI(
        name=args.name,
        api_key=args.api_key,
        deployments=deployments,
        latency_ms=args.latency_ms,
        chunks=args.chunks,
        chunk_delay_ms=args.chunk_delay_ms,
        host=args.host,
        port=args.port,
    )
    asyncio.run(_serve(fake))


if __name__ == "__main__":
    main()
