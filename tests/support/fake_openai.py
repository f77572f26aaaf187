"""A fake Azure OpenAI data-plane server for tests and local development.

It is a real aiohttp server on 127.0.0.1, so the gateway (and the official ``openai``
client) talk to it over real HTTP. Tests script faults on it (429s, resets, stalls, cut
streams, content filter) and assert on what it received in ``fake.requests``.

    fake = FakeAzureOpenAI(name="weu")
    async with fake:                     # or: with fake.threaded(): ... from sync code
        fake.enqueue(Fault.status(429, retry_after=30))
        ...
        assert fake.requests[0].deployment == "gpt-4o-mini"

Run it by hand: ``python -m tests.support.fake_openai --port 18080``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Self

from aiohttp import web

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
    "audio/speech": "AudioSpeech_Create",
    "images/generations": "ImageGenerations_Create",
}
_DATA_PLANE = re.compile(r"^/openai/deployments/(?P<deployment>[^/]+)/(?P<operation>.+?)/?$")
_STATUS_PATHS = ("/status", "/openai/status")

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


FaultKind = Literal["status", "reset", "stall", "cut_stream", "content_filter"]


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
        """The data-plane operation, e.g. ``"chat/completions"``; None outside ``/openai/deployments/``."""
        match = _DATA_PLANE.match(self.path)
        return match["operation"] if match else None


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
    stall_gate: _Gate = field(default_factory=_Gate)
    payload: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- the server


class FakeAzureOpenAI:
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
        self._stall_gate = _Gate()
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._requests: list[RecordedRequest] = []
        self._faults: deque[Fault] = deque()
        self._always: Fault | None = None
        self._holds: deque[StreamHold] = deque()
        self._operations = {
            "chat/completions": self._chat_completions,
            "completions": self._completions,
            "embeddings": self._embeddings,
            "audio/transcriptions": self._transcriptions,
            "audio/speech": self._speech,
            "images/generations": self._image_generations,
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
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._requested_port)
        await site.start()
        self._runner = runner
        self._port = runner.addresses[0][1]

    async def stop(self) -> None:
        """Stop like a dying server: requests in flight (stalled, held, streaming) get their connection reset."""
        if self._runner is None:
            return
        for transport in list(self._inflight):
            transport.abort()
        await self._runner.cleanup()
        self._runner = None
        self._port = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @contextlib.contextmanager
    def threaded(self) -> Iterator[Self]:
        """Run on a private event loop in a daemon thread, for sync tests (e.g. the sync openai client)."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name=f"fake-openai-{self.name}", daemon=True)
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.start(), loop).result(timeout=30)
            try:
                yield self
            finally:
                asyncio.run_coroutine_threadsafe(self.stop(), loop).result(timeout=30)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=30)
            loop.close()

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

    # ----------------------------------------------------------------- request handling

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        transport = request.transport
        if transport is None:  # the client is already gone
            return web.Response()
        self._inflight.add(transport)
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

        match = _DATA_PLANE.match(request.path)
        if match is None or "api-version" not in request.query:
            return _json(_NOT_FOUND, call.headers, status=404)
        if not self._authorized(request):
            return _json(_UNAUTHORIZED, call.headers, status=401)
        if self.deployments is not None and match["deployment"] not in self.deployments:
            return _json(_DEPLOYMENT_NOT_FOUND, call.headers, status=404)
        operation = self._operations.get(match["operation"])
        if operation is None or request.method != "POST":
            return _json(_NOT_FOUND, call.headers, status=404)
        if call.record.json is None and request.content_type == "application/json":
            return _json(_bad_request("Invalid JSON body."), call.headers, 400)
        call.payload = call.record.json or {}
        if call.cut_after is not None and not call.payload.get("stream"):
            return _abort(request)
        return await operation(call)

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
            deployment=match["deployment"] if match else None,
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

    async def _stream(self, call: _Call, events: list[dict[str, Any]]) -> web.StreamResponse:
        """Send ``events`` as SSE, one write per event, then ``[DONE]``; honours holds and cut faults."""
        response = web.StreamResponse(headers=call.headers)
        response.content_type = "text/event-stream"
        response.headers["Cache-Control"] = "no-cache"
        hold = self._next_hold()
        lines = [f"data: {_dumps(event)}\n\n" for event in events] + ["data: [DONE]\n\n"]
        try:
            await response.prepare(call.request)
            for index, line in enumerate(lines):
                if call.cut_after is not None and index == call.cut_after:
                    return _abort(call.request, response)
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

    async def _chat_completions(self, call: _Call) -> web.StreamResponse:
        messages = call.payload.get("messages") or []
        prompt_tokens = sum(_word_count(_message_text(m)) + 3 for m in messages if isinstance(m, dict))
        tool = _weather_tool(call.payload)
        pieces = _split(_dumps(_TOOL_ARGUMENTS) if tool else self.reply_text(), self.chunks)
        usage = _usage(prompt_tokens, len(pieces))
        usage["prompt_tokens_details"] = {"cached_tokens": 0}
        usage["completion_tokens_details"] = {"reasoning_tokens": 0}
        base = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "created": int(time.time()),
            "model": self._model(call),
            "system_fingerprint": _FINGERPRINT,
        }
        tool_call = None
        if tool is not None:
            tool_call = {"id": f"call_{hashlib.sha256(tool.encode()).hexdigest()[:24]}", "type": "function"}
        finish_reason = "tool_calls" if tool else "stop"

        if not call.payload.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
            if tool_call is not None:
                function = {"name": tool, "arguments": "".join(pieces)}
                message["tool_calls"] = [{**tool_call, "function": function}]
            else:
                message["content"] = "".join(pieces)
            choice = {
                "index": 0,
                "message": message,
                "finish_reason": finish_reason,
                "logprobs": None,
                "content_filter_results": _SAFE_RESULTS,
            }
            answer = {**base, "object": "chat.completion", "choices": [choice]}
            answer |= {"prompt_filter_results": _PROMPT_FILTER_RESULTS, "usage": usage}
            return _json(answer, call.headers)

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
        fields = _multipart_fields(call.request.headers.get("Content-Type", ""), call.record.body)
        if "file" not in fields:
            return _json(_bad_request("No file uploaded."), call.headers, 400)
        text = f"fake transcription of {len(fields['file'])} bytes"
        if fields.get("response_format", b"").decode() == "text":
            return web.Response(text=text, content_type="text/plain", headers=call.headers)
        return _json({"text": text}, call.headers)

    async def _speech(self, call: _Call) -> web.StreamResponse:
        audio = b"ID3" + str(call.payload.get("input", "")).encode()
        return web.Response(body=audio, content_type="audio/mpeg", headers=call.headers)

    async def _image_generations(self, call: _Call) -> web.StreamResponse:
        prompt = str(call.payload.get("prompt", ""))
        count = int(call.payload.get("n") or 1)
        data = [{"url": "https://fake/img.png", "revised_prompt": prompt} for _ in range(count)]
        return _json({"created": int(time.time()), "data": data}, call.headers)


# --------------------------------------------------------------------------- helpers


_TOOL_ARGUMENTS = {"location": "Seattle", "unit": "celsius"}


def embedding_for(text: str) -> list[float]:
    """The deterministic embedding of ``text`` (exactly representable as float32, so base64 round-trips)."""
    digest = hashlib.sha256(text.encode()).digest()
    return [(byte - 128) / 128 for byte in digest[:_EMBEDDING_DIMENSIONS]]


def _float32_base64(vector: list[float]) -> str:
    """What Azure sends for ``encoding_format: "base64"``: little-endian float32s, base64-encoded."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def _bad_request(message: str) -> dict[str, Any]:
    return {"error": {"code": "BadRequest", "message": message}}


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _json(value: Any, headers: dict[str, str], status: int = 200) -> web.Response:
    return web.Response(text=_dumps(value), status=status, content_type="application/json", headers=headers)


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


def _multipart_fields(content_type: str, body: bytes) -> dict[str, bytes]:
    """Field name -> raw bytes of a multipart/form-data body.

    The body was already read (to record it), so aiohttp's ``request.post()`` cannot re-read the
    stream; the stdlib MIME parser handles the recorded bytes instead.
    """
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    if not message.is_multipart():
        return {}
    fields: dict[str, bytes] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            fields[name] = payload
    return fields


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
