"""The synchronous request path: authenticate → resolve → defer? → attempts with failover → relay → record.

Independent of the hosting layer: it takes an `Inbound` and returns an `Outbound` whose body is either bytes
or an async iterator relayed chunk by chunk. Backend answers are passed through unchanged apart from the
headers the gateway owns; only the gateway's own errors use the OpenAI error shape. Every request routed to a
model leaves one usage record, whether or not an answer was relayed, and one server span (gateway.tracing).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from . import errors, tracing, translate
from .attempt import Attempt, Attempts, usage_record
from .callers import Callers
from .config import Settings
from .headers import forwarded_headers, relayed_headers
from .pool import Target
from .streaming import SseUsageTap
from .tokens import count_tokens, estimate_prompt_tokens
from .upstream import TransportError
from .usage import Usage, UsageRecord, UsageRecorder, response_model, usage_from_json_body

__all__ = [
    "Defer",
    "Deferred",
    "Inbound",
    "Outbound",
    "Pipeline",
    "Preference",
    "error_outbound",
    "prefers_async",
]

log = logging.getLogger("gateway.pipeline")


@dataclass(slots=True)
class Inbound:
    """A client request as the hosting layer received it (header names lower-case)."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes


@dataclass(slots=True)
class Outbound:
    """The answer: `body` bytes, or `stream` to relay chunk by chunk."""

    status: int
    headers: dict[str, str]
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None


@dataclass(slots=True)
class Deferred:
    """A request handed to the async path, with everything needed to run it later."""

    inbound: Inbound
    route: translate.Route
    request_id: str
    caller: str
    reason: str


Defer = Callable[[Deferred], Awaitable[Outbound]]


@dataclass(slots=True)
class _Tries:
    """What the failed attempts of one request taught us, to build the final error."""

    count: int = 0
    retry_after_s: list[float] = field(default_factory=list)
    all_throttled: bool = True
    last: Attempt | None = None


class Pipeline:
    """The request path only; the services it uses are built once per process by `gateway.bootstrap`."""

    def __init__(self, settings: Settings, attempts: Attempts, callers: Callers, usage: UsageRecorder) -> None:
        self.settings = settings
        self.attempts = attempts
        self.pool = attempts.pool
        self.callers = callers
        self.usage = usage
        self.requests = 0  # handled by this instance (the stats view divides storage operations by it)
        self._models_body = json.dumps(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": 0, "owned_by": "azure-ai-gateway"}
                    for m in settings.models()
                ],
            }
        ).encode()

    async def handle(self, inbound: Inbound, defer: Defer | None = None) -> Outbound:
        """Answers one request; every gateway-made failure becomes an OpenAI-style error body.

        `defer`, when the hosting layer can start orchestrations, takes over requests that should run
        asynchronously (see `defer_reason`) and answers them 202.
        """
        request_id = inbound.headers.get("x-request-id") or os.urandom(16).hex()
        self.requests += 1
        span = tracing.start_request(inbound.method, inbound.path, inbound.headers, request_id)
        try:
            out = await self._handle(inbound, request_id, defer)
        except errors.GatewayError as exc:
            out = error_outbound(exc, request_id)
        except Exception:
            log.exception("Unexpected failure (request %s)", request_id)  # the trace goes to logs, not the client
            out = error_outbound(errors.internal_error(), request_id)
        tracing.leave(span, out.status, streaming=out.stream is not None)
        return out

    async def _handle(self, inbound: Inbound, request_id: str, defer: Defer | None) -> Outbound:
        started = time.monotonic()
        caller = self.callers.authenticate(inbound.headers)
        limit = self.settings.max_body_bytes
        if len(inbound.body) > limit:
            raise errors.too_large(limit)
        route = translate.resolve(
            inbound.method,
            inbound.path,
            inbound.query,
            inbound.headers.get("content-type", ""),
            inbound.body,
            self.settings.api_version,
        )
        if route.api_style == "models":
            return Outbound(200, {"content-type": "application/json", "x-request-id": request_id}, self._models_body)
        targets = self.pool.candidates(route.model)
        if not targets:
            if route.api_style == "azure":
                raise errors.not_found(
                    f"The API deployment '{route.model}' is not served by this gateway.", code="DeploymentNotFound"
                )
            raise errors.not_found(
                f"The model '{route.model}' does not exist or is not served by this gateway.",
                code="model_not_found",
            )
        if defer is not None and (reason := self.defer_reason(inbound, route, targets, caller)):
            return await defer(Deferred(inbound, route, request_id, caller, reason))
        try:
            return await self._forward(inbound, route, targets, request_id, caller, started)
        except errors.CoolingDown:
            # Only a client that said it can take a 202 gets one; everyone else gets 429 with Retry-After.
            if defer is None or not Preference.of(inbound.headers).respond_async:
                self._finish(usage_record(route, None, request_id, 429, 0, caller, "throttled"), started)
                raise
            reason = "every backend is cooling down past the client's wait"
            return await defer(Deferred(inbound, route, request_id, caller, reason))

    def defer_reason(
        self, inbound: Inbound, route: translate.Route, targets: tuple[Target, ...], caller: str = ""
    ) -> str:
        """Why this request should run asynchronously ("" = it should not).

        Only clients that can take a 202 are deferred: those that sent `Prefer: respond-async` (with `wait=N`,
        only when the request is not expected to finish within N seconds), and those an operator configured
        as async by model or caller. A plain request is never answered 202, however long it may take.
        """
        if inbound.method != "POST":
            return ""
        preference = Preference.of(inbound.headers)
        if preference.respond_async and preference.wait_s is None:
            return "the client sent Prefer: respond-async"
        if route.model in self.settings.async_models:
            return "the model is configured to run asynchronously (GATEWAY_ASYNC_MODELS)"
        if caller in self.settings.async_callers:
            return "the caller is configured to run asynchronously (GATEWAY_ASYNC_CALLERS)"
        if preference.respond_async and preference.wait_s is not None:
            expected = self.expected_seconds(route, targets)
            if expected > preference.wait_s:
                return f"expected to take ~{expected:.0f} s, more than the client's wait={preference.wait_s:g}"
        return ""

    def expected_seconds(self, route: translate.Route, targets: tuple[Target, ...]) -> float:
        """How long the answer is expected to take: the model's observed completion length (p95), capped by
        `max_tokens`, at the observed generation speed. Without observations, `max_tokens` is the estimate."""
        body = route.json or {}
        cap = body.get("max_completion_tokens") or body.get("max_tokens")
        cap = cap if isinstance(cap, int) and cap > 0 else None
        observed = self.pool.completion_tokens_p95(targets)
        tokens = min(observed, cap) if observed is not None and cap is not None else observed or cap or 0
        rate = self.pool.tokens_per_second(targets) or self.settings.tokens_per_second
        return tokens / rate

    async def _forward(
        self,
        inbound: Inbound,
        route: translate.Route,
        targets: tuple[Target, ...],
        request_id: str,
        caller: str,
        started: float,
    ) -> Outbound:
        """Tries targets as the pool chooses them, moving on after a retryable answer or a transport failure.

        A backend is not tried twice in one request, unless it is the only one and it frees up within the
        budget. When every backend is cooling down the request waits (jittered) for the first to free up, if
        that fits the sync budget and GATEWAY_MAX_WAIT_S; otherwise it is answered 429 with Retry-After.
        """
        deadline = started + self.settings.sync_budget_s
        await self.pool.refresh_if_due()
        headers = forwarded_headers(inbound.headers, request_id)
        tries = _Tries()
        tried: set[str] = set()
        while tries.count < self.settings.max_attempts:
            target = await self.attempts.next_target(route.model, tried)
            if target is None:
                if not await self._wait_for_backend(route.model, targets, tried, deadline):
                    break
                continue
            tried.add(target.backend.name)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            tries.count += 1
            attempt = await self.attempts.forward(
                target,
                inbound.method,
                route,
                inbound.body,
                headers,
                total_s=None if route.streaming else remaining,
            )
            if attempt.response is not None:
                record = usage_record(route, target, request_id, attempt.response.status, tries.count, caller)
                return await self._relay(attempt, route, record, started)
            tries.last = attempt
            if attempt.failure in ("timeout", "connect"):
                tries.all_throttled = False
            else:
                wait = attempt.retry_after_s
                tries.retry_after_s.append(wait if wait is not None else self.settings.default_retry_after_s)
                tries.all_throttled &= attempt.failure == "throttled"
        error = self._exhausted(tries)
        # Throttled, failed and unavailable traffic is recorded too (with the last backend tried, if any).
        last = tries.last
        failure = last.failure if last else "unavailable"
        target = last.target if last else None
        record = usage_record(route, target, request_id, error.status, tries.count, caller, failure)
        self._finish(record, started)
        raise error

    async def _wait_for_backend(
        self, model: str, targets: tuple[Target, ...], tried: set[str], deadline: float
    ) -> bool:
        """Nothing is available now: waits for the first cooling backend if that fits, else answers 429.

        Returns False when there is nothing worth waiting for (every backend tried, disabled or down).
        """
        only_one = len(targets) == 1
        free_at = self.pool.earliest_open_until(model, frozenset() if only_one else tried)
        if free_at is None:
            return False
        now = self.pool.clock()
        delay = max(0.0, free_at - now) + random.uniform(0, 0.1)  # jitter: instances do not return in lockstep
        if delay > min(deadline - time.monotonic(), self.settings.max_wait_s):
            raise errors.cooling_down(math.ceil(free_at - now))
        log.info("Every backend for %s is cooling down; waiting %.2f s", model, delay)
        await asyncio.sleep(delay)
        if only_one:
            tried.clear()  # the only backend may be tried again once it has freed up
        return True

    async def _relay(self, attempt: Attempt, route: translate.Route, record: UsageRecord, started: float) -> Outbound:
        response = attempt.response
        assert response is not None
        target = attempt.target
        headers = relayed_headers(response.headers)
        headers["x-request-id"] = record.request_id
        headers["x-gateway-backend"] = target.backend.name
        headers["x-gateway-attempts"] = str(record.attempts)
        content_type = response.headers.get("content-type", "")
        if content_type.startswith("text/event-stream"):
            record.streaming = True
            tap = SseUsageTap(strip_injected_usage=attempt.injected) if target.backend.parses_usage else None
            return Outbound(response.status, headers, stream=self._relay_stream(attempt, tap, route, record, started))
        if not content_type.startswith("application/json"):
            # Audio, images as bytes, anything large: relay as it comes, nothing to count.
            return Outbound(response.status, headers, stream=self._relay_stream(attempt, None, route, record, started))
        try:
            body = await self.attempts.read(attempt)
        except TransportError as exc:
            status = 504 if exc.kind == "timeout" else 502
            record.status, record.error = status, exc.kind
            self._finish(record, started)
            raise errors.upstream_failure(status, f"Backend {target.backend.name} failed while answering.") from None
        if target.backend.parses_usage:
            record.usage = usage_from_json_body(body)
            record.response_model = response_model(body)
            if response.status == 400 and body.find(b'"content_filter"') >= 0:
                record.outcome = "content_filtered"
            self.attempts.finished(attempt, record.usage)
        self._finish(record, started)
        return Outbound(response.status, headers, body)

    async def _relay_stream(
        self,
        attempt: Attempt,
        tap: SseUsageTap | None,
        route: translate.Route,
        record: UsageRecord,
        started: float,
    ) -> AsyncIterator[bytes]:
        """Yields each upstream read as it arrives; records usage once, when the stream ends, however it ends.

        The record is written as soon as `[DONE]` is seen, before that last chunk goes out, so whoever reads
        usage after the client has its whole answer finds it there.
        """
        response = attempt.response
        assert response is not None
        complete = recorded = False
        try:
            async for data in response.chunks():
                if record.first_chunk_ms is None:  # time to first chunk, from the start of the request
                    record.first_chunk_ms = round((time.monotonic() - started) * 1000, 3)
                if tap is not None:
                    data = tap.feed(data)
                    if tap.done and not recorded:
                        recorded = await self._finish_stream(record, tap, route, started)
                if data:
                    yield data
            if tap is not None and (rest := tap.flush()):
                yield rest
            complete = True
        except TransportError as exc:
            record.error = exc.kind
            self.attempts.broke(attempt, exc)
        finally:
            if complete:
                response.release()
            else:
                response.close()  # cut by the backend or the client went away: do not reuse this connection
            if not recorded:
                await self._finish_stream(record, tap, route, started)

    async def _finish_stream(
        self, record: UsageRecord, tap: SseUsageTap | None, route: translate.Route, started: float
    ) -> bool:
        if tap is not None and record.status < 400:
            # Counting loads the tokenizer on first use (~0.2 s): keep it off the event loop.
            record.usage = tap.usage or await asyncio.to_thread(_estimate, route, record.deployment, tap)
            record.response_model = tap.response_model()
        self._finish(record, started)
        return True

    def _finish(self, record: UsageRecord, started: float) -> None:
        record.duration_ms = round((time.monotonic() - started) * 1000, 3)
        self.usage.record(record)

    def _exhausted(self, tries: _Tries) -> errors.GatewayError:
        """The error for a request no backend answered: 429/503 with Retry-After, or 502/504."""
        retry_after = round(min(tries.retry_after_s)) if tries.retry_after_s else None
        last_failure = tries.last.failure if tries.last else None
        if last_failure == "timeout":
            return errors.upstream_failure(504, "The backend did not answer in time.")
        if last_failure == "connect":
            return errors.upstream_failure(502, "The backend could not be reached.")
        if not tries.count:
            return errors.unavailable(
                503,
                "No backend for this model is available (disabled, down or busy); retry later.",
                round(self.settings.default_retry_after_s),
            )
        if tries.all_throttled:
            return errors.unavailable(429, "Every backend for this model is rate limited; retry later.", retry_after)
        return errors.unavailable(503, "No backend could serve the request; retry later.", retry_after)


def error_outbound(error: errors.GatewayError, request_id: str | None = None) -> Outbound:
    """A gateway error as an answer: its status, its headers (Retry-After), the OpenAI error body."""
    headers = {"content-type": "application/json", **error.headers}
    if request_id:
        headers["x-request-id"] = request_id
    return Outbound(error.status, headers, error.body())


@dataclass(frozen=True, slots=True)
class Preference:
    """What a client's `Prefer` header (RFC 7240) says about answering asynchronously."""

    respond_async: bool = False
    wait_s: float | None = None  # `wait=N`: how long the client is willing to wait for a synchronous answer

    @classmethod
    def of(cls, headers: Mapping[str, str]) -> Preference:
        respond_async, wait = False, None
        for preference in headers.get("prefer", "").split(","):
            token, _, value = preference.split(";", 1)[0].strip().partition("=")
            token = token.strip().lower()
            if token == "respond-async":
                respond_async = True
            elif token == "wait":
                try:
                    wait = max(0.0, float(value.strip().strip('"')))
                except ValueError:
                    pass  # a malformed preference is ignored, as RFC 7240 asks
        return cls(respond_async, wait)


def prefers_async(prefer: str) -> bool:
    """RFC 7240: `Prefer: respond-async` among possibly several comma-separated preferences."""
    return Preference.of({"prefer": prefer}).respond_async


def _estimate(route: translate.Route, deployment: str | None, tap: SseUsageTap) -> Usage | None:
    """Counts tokens ourselves when a stream ended without usage, with the deployment's model's encoding (an
    Azure-style body names no model); the record says it is an estimate."""
    prompt = estimate_prompt_tokens(route.json, deployment)
    completion = count_tokens(tap.completion_text(), deployment)
    if not prompt and not completion:
        return None
    return Usage(prompt, completion, prompt + completion, estimated=True)
