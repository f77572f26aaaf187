"""The synchronous request path: authorize → resolve → choose backends → send with failover → relay → record.

Independent of the hosting layer: it takes an `Inbound` and returns an `Outbound` whose body is either bytes
or an async iterator relayed chunk by chunk. Backend answers are passed through unchanged apart from the
headers the gateway owns; only the gateway's own errors use the OpenAI error shape.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

import aiohttp

from . import errors, translate
from .completions import CompletionPublisher
from .config import Settings
from .credentials import BackendAuth
from .results import ResultStore
from .routing import BackendPool, Target
from .state_store import StateStore
from .streaming import SseUsageTap, prepare_stream_request
from .upstream import Upstream
from .usage import Usage, UsageRecord, UsageRecorder, count_tokens, estimate_prompt_tokens, usage_from_json_body

__all__ = [
    "Attempt",
    "Defer",
    "Deferred",
    "Gateway",
    "Inbound",
    "Outbound",
    "error_outbound",
    "forwarded_headers",
    "prefers_async",
    "retry_after_seconds",
    "usage_record",
]

log = logging.getLogger("gateway.pipeline")

# Answers that say "this backend, not this request": try the next backend.
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# Hop-by-hop headers (RFC 9110 §7.6.1) and headers the gateway sets itself; never copied across.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
# Client credentials for the gateway (or the Functions host): never forwarded to a backend.
_CLIENT_AUTH = frozenset({"api-key", "authorization", "x-functions-key", "cookie"})
# What the App Service / Functions front end adds about itself: not the backend's business.
_PLATFORM = frozenset(
    {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-port", "x-forwarded-tlsversion",
     "x-original-url", "x-arr-log-id", "x-arr-ssl", "arr-ssl", "x-site-deployment-id", "was-default-hostname",
     "disguised-host", "client-ip", "x-client-ip", "x-client-port", "x-appservice-proto", "x-waws-unencoded-url",
     "max-forwards"}
)  # fmt: skip
_REQUEST_DROP = _HOP_BY_HOP | _CLIENT_AUTH | _PLATFORM | {"accept-encoding", "x-request-id", "prefer"}
_RESPONSE_DROP = _HOP_BY_HOP | {"set-cookie", "x-request-id"}


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
class Attempt:
    """The outcome of one try on one backend: an answer to relay, or why it failed."""

    target: Target
    resp: aiohttp.ClientResponse | None = None  # a non-retryable answer (success or the client's 4xx)
    injected: bool = False  # include_usage was added to a streamed request
    status: int | None = None
    retry_after_s: float | None = None
    failure: str | None = None  # "throttled" | "failed" (5xx/408) | "timeout" | "connect"


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
class _Attempts:
    """What the failed attempts of one request taught us, to build the final error."""

    count: int = 0
    retry_after_s: list[float] = field(default_factory=list)
    all_throttled: bool = True
    last_transport_error: str | None = None  # "timeout" | "connect" when the last failure had no answer


class Gateway:
    """Holds the process-wide parts (settings, pool, upstream session, credentials, usage) and handles requests."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: StateStore | None = None,
        results: ResultStore | None = None,
        completions: CompletionPublisher | None = None,
        credential=None,
        clock=time.time,
    ) -> None:
        self.settings = settings
        self.results = results  # the async path's blobs (None: no async path, e.g. in unit tests)
        self.completions = completions
        self.pool = BackendPool(settings, store, instance_id=store.instance_id if store else "local", clock=clock)
        self.upstream = Upstream(settings.connect_timeout_s, settings.read_timeout_s)
        self.auth = BackendAuth(self.upstream.get_json, credential)
        self.usage = UsageRecorder(settings.usage_file)
        self._keys = [k.encode() for k in settings.api_keys]
        # The caller identity of each key, computed once (a sha256 per request cost ~1.5 % of the CPU): its name,
        # or a fingerprint of an unnamed key.
        self._callers = {
            k.encode(): name or "key:" + hashlib.sha256(k.encode()).hexdigest()[:12]
            for k, name in settings.api_keys.items()
        }
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
        try:
            return await self._handle(inbound, request_id, defer)
        except errors.GatewayError as exc:
            error = exc
        except Exception:
            log.exception("Unexpected failure (request %s)", request_id)  # the trace goes to logs, not the client
            error = errors.GatewayError(
                500, "The gateway failed to process the request.", type="server_error", code="internal_error"
            )
        return error_outbound(error, request_id)

    async def close(self) -> None:
        for part in (self.results, self.completions):
            if part is not None:
                await part.close()
        await self.pool.settle()
        if self.pool.store is not None:
            await self.pool.store.close()
        await self.upstream.close()
        await self.auth.close()

    def authorize(self, headers: Mapping[str, str]) -> str:
        """Accepts a configured key as `api-key` or `Authorization: Bearer`; secure by default.

        Returns the caller's identity for records and result ownership: the key's name from GATEWAY_API_KEYS, or a
        fingerprint of an unnamed key; never the key.
        """
        if self.settings.auth_disabled:
            return "anonymous"
        presented = headers.get("api-key") or ""
        if not presented:
            scheme, _, token = headers.get("authorization", "").partition(" ")
            presented = token.strip() if scheme.lower() == "bearer" else ""
        candidate = presented.encode()
        # Compare against every key, in constant time each, so timing reveals neither key nor position.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(candidate, key)
        if not (matched and candidate):
            raise errors.unauthorized()
        return self._callers[candidate]

    async def _handle(self, inbound: Inbound, request_id: str, defer: Defer | None) -> Outbound:
        started = time.monotonic()
        caller = self.authorize(inbound.headers)
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
            if defer is None or route.streaming:  # a stream is never silently turned async
                raise
            reason = "every backend is cooling down past the sync budget"
            return await defer(Deferred(inbound, route, request_id, caller, reason))

    def defer_reason(
        self, inbound: Inbound, route: translate.Route, targets: tuple[Target, ...], caller: str = ""
    ) -> str:
        """Why this request should run asynchronously ("" = it should not)."""
        if inbound.method != "POST":
            return ""
        if prefers_async(inbound.headers.get("prefer", "")):
            return "the client sent Prefer: respond-async"
        if route.model in self.settings.async_models:
            return "the model is configured to run asynchronously (GATEWAY_ASYNC_MODELS)"
        if caller in self.settings.async_callers:
            return "the caller is configured to run asynchronously (GATEWAY_ASYNC_CALLERS)"
        if route.streaming or not route.json:
            return ""
        max_tokens = route.json.get("max_completion_tokens") or route.json.get("max_tokens")
        if isinstance(max_tokens, int) and max_tokens > 0:
            rate = self.pool.tokens_per_second(targets) or self.settings.tokens_per_second
            if max_tokens / rate > self.settings.sync_budget_s:
                return f"{max_tokens} tokens at ~{rate:.0f} tokens/s would not finish inside the sync budget"
        return ""

    async def _forward(
        self,
        inbound: Inbound,
        route: translate.Route,
        targets: tuple[Target, ...],
        request_id: str,
        caller: str,
        started: float,
    ) -> Outbound:
        """Tries backends as the pool chooses them, moving on after a retryable answer or a transport failure.

        A backend is not tried twice in one request, unless it is the only one and it frees up within the
        budget. When every backend is cooling down the request waits (jittered) for the first to free up, if
        that fits the sync budget and GATEWAY_MAX_WAIT_S; otherwise it is answered 429 with Retry-After.
        """
        deadline = started + self.settings.sync_budget_s
        await self.pool.refresh_if_due()
        headers = forwarded_headers(inbound.headers, request_id)
        attempts = _Attempts()
        tried: set[str] = set()
        while attempts.count < self.settings.max_attempts:
            target = self.pool.choose(route.model, tried)
            if target is None:
                if not await self._wait_for_backend(route.model, targets, tried, deadline):
                    break
                continue
            if not await self.pool.acquire(target):
                tried.add(target.backend.name)  # another instance holds this backend's half-open trial
                continue
            tried.add(target.backend.name)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            attempts.count += 1
            outcome = await self.attempt(inbound, route, target, headers, request_id, remaining)
            if outcome.resp is not None:
                record = usage_record(route, target, request_id, outcome.resp.status, attempts.count, caller)
                return await self._relay(outcome.resp, route, target, record, started, outcome.injected)
            if outcome.failure in ("timeout", "connect"):
                attempts.all_throttled, attempts.last_transport_error = False, outcome.failure
            else:
                attempts.retry_after_s.append(
                    outcome.retry_after_s if outcome.retry_after_s is not None else self.settings.default_retry_after_s
                )
                attempts.all_throttled &= outcome.failure == "throttled"
                attempts.last_transport_error = None
        raise self._exhausted(attempts)

    async def attempt(
        self,
        inbound: Inbound,
        route: translate.Route,
        target: Target,
        headers: dict[str, str],
        request_id: str,
        remaining_s: float | None,
    ) -> Attempt:
        """One try on one backend. The pool learns from the outcome (latency, capacity, breaker transitions).

        Shared by the synchronous path and the async activity: both go through the same pool, breakers,
        credentials and upstream session. A returned `resp` is the caller's to read and release.
        """
        backend = target.backend
        body, injected = inbound.body, False
        if route.streaming and backend.parses_usage and route.operation in ("chat/completions", "completions"):
            body, injected = prepare_stream_request(inbound.body, route.json or {})
        headers = headers | await self.auth.headers(backend)
        url = backend.host + translate.upstream_path(route, target.deployment)
        sent_at = time.monotonic()
        try:
            resp = await self.upstream.send(
                inbound.method, url, headers, body, total_s=None if route.streaming else remaining_s
            )
        except (TimeoutError, aiohttp.ServerTimeoutError):
            log.warning("Backend %s timed out (request %s)", backend.name, request_id)
            self.pool.on_transport_error(target, "timeout")
            return Attempt(target, failure="timeout")
        except aiohttp.ClientError as exc:
            log.warning("Backend %s failed: %s (request %s)", backend.name, type(exc).__name__, request_id)
            self.pool.on_transport_error(target, type(exc).__name__)
            return Attempt(target, failure="connect")
        retry_after = retry_after_seconds(resp.headers) if resp.status in RETRYABLE_STATUS else None
        self.pool.on_answer(target, resp.status, (time.monotonic() - sent_at) * 1000, resp.headers, retry_after)
        if resp.status in RETRYABLE_STATUS:
            log.info("Backend %s answered %d (request %s)", backend.name, resp.status, request_id)
            resp.release()
            return Attempt(
                target,
                retry_after_s=retry_after,
                failure="throttled" if resp.status == 429 else "failed",
                status=resp.status,
            )
        return Attempt(target, resp=resp, injected=injected, status=resp.status)

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

    async def _relay(
        self,
        resp: aiohttp.ClientResponse,
        route: translate.Route,
        target: Target,
        record: UsageRecord,
        started: float,
        injected: bool,
    ) -> Outbound:
        headers = {k: v for k, v in resp.headers.items() if k.lower() not in _RESPONSE_DROP}
        headers["x-request-id"] = record.request_id
        headers["x-gateway-backend"] = target.backend.name
        headers["x-gateway-attempts"] = str(record.attempts)
        content_type = resp.headers.get("content-type", "")
        if content_type.startswith("text/event-stream"):
            record.streaming = True
            tap = SseUsageTap(strip_injected_usage=injected) if target.backend.parses_usage else None
            return Outbound(resp.status, headers, stream=self._relay_stream(resp, tap, route, record, started))
        if not content_type.startswith("application/json"):
            # Audio, images as bytes, anything large: relay as it comes, nothing to count.
            return Outbound(resp.status, headers, stream=self._relay_stream(resp, None, route, record, started))
        try:
            body = await resp.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            resp.close()
            status = 504 if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError) else 502
            raise errors.upstream_failure(status, f"Backend {target.backend.name} failed while answering.") from None
        finally:
            resp.release()
        if target.backend.parses_usage:
            record.usage = usage_from_json_body(body)
            if record.usage is not None and resp.status == 200:
                self.pool.observe_generation(target, record.usage.completion_tokens, time.monotonic() - started)
        self._finish(record, started)
        return Outbound(resp.status, headers, body)

    async def _relay_stream(
        self,
        resp: aiohttp.ClientResponse,
        tap: SseUsageTap | None,
        route: translate.Route,
        record: UsageRecord,
        started: float,
    ) -> AsyncIterator[bytes]:
        """Yields each upstream read as it arrives; records usage once, when the stream ends, however it ends.

        The record is written as soon as `[DONE]` is seen, before that last chunk goes out, so whoever reads
        usage after the client has its whole answer finds it there.
        """
        complete = recorded = False
        try:
            async for data in resp.content.iter_any():
                if tap is not None:
                    data = tap.feed(data)
                    if tap.done and not recorded:
                        recorded = await self._finish_stream(record, tap, route, started)
                if data:
                    yield data
            if tap is not None and (rest := tap.flush()):
                yield rest
            complete = True
        except (TimeoutError, aiohttp.ClientError) as exc:
            log.warning(
                "Stream from %s broke off: %s (request %s)", record.backend, type(exc).__name__, record.request_id
            )
        finally:
            if complete:
                resp.release()
            else:
                resp.close()  # cut by the backend or the client went away: do not reuse this connection
            if not recorded:
                await self._finish_stream(record, tap, route, started)

    async def _finish_stream(
        self, record: UsageRecord, tap: SseUsageTap | None, route: translate.Route, started: float
    ) -> bool:
        if tap is not None and record.status < 400:
            # Counting loads the tokenizer on first use (~0.2 s): keep it off the event loop.
            record.usage = tap.usage or await asyncio.to_thread(_estimate, route, tap)
        self._finish(record, started)
        return True

    def _finish(self, record: UsageRecord, started: float) -> None:
        record.duration_ms = round((time.monotonic() - started) * 1000, 3)
        self.usage.record(record)

    def _exhausted(self, attempts: _Attempts) -> errors.GatewayError:
        """The error for a request no backend answered: 429/503 with Retry-After, or 502/504."""
        retry_after = round(min(attempts.retry_after_s)) if attempts.retry_after_s else None
        if attempts.last_transport_error == "timeout":
            return errors.upstream_failure(504, "The backend did not answer in time.")
        if attempts.last_transport_error == "connect":
            return errors.upstream_failure(502, "The backend could not be reached.")
        if not attempts.count:
            return errors.unavailable(
                503,
                "No backend for this model is available (disabled, down or busy); retry later.",
                round(self.settings.default_retry_after_s),
            )
        if attempts.all_throttled:
            return errors.unavailable(429, "Every backend for this model is rate limited; retry later.", retry_after)
        return errors.unavailable(503, "No backend could serve the request; retry later.", retry_after)


def usage_record(
    route: translate.Route, target: Target, request_id: str, status: int, attempts: int, caller: str | None
) -> UsageRecord:
    """The usage record of a request a backend answered; usage, streaming and duration are filled in later."""
    return UsageRecord(
        request_id=request_id,
        api_style=route.api_style,
        operation=route.operation,
        model=route.model,
        deployment=target.deployment,
        backend=target.backend.name,
        status=status,
        streaming=False,
        attempts=attempts,
        duration_ms=0.0,
        usage=None,
        caller=caller,
    )


def error_outbound(error: errors.GatewayError, request_id: str | None = None) -> Outbound:
    """A gateway error as an answer: its status, its headers (Retry-After), the OpenAI error body."""
    headers = {"content-type": "application/json", **error.headers}
    if request_id:
        headers["x-request-id"] = request_id
    return Outbound(error.status, headers, error.body())


def prefers_async(prefer: str) -> bool:
    """RFC 7240: `Prefer: respond-async` among possibly several comma-separated preferences."""
    return any(p.split(";", 1)[0].strip().lower() == "respond-async" for p in prefer.split(","))


def forwarded_headers(inbound: Mapping[str, str], request_id: str) -> dict[str, str]:
    """The client's headers a backend may see: no credentials, no hop-by-hop, our request id, identity encoding."""
    headers = {k: v for k, v in inbound.items() if k not in _REQUEST_DROP}
    headers["x-request-id"] = request_id
    headers["accept-encoding"] = "identity"  # we read usage from the bytes we relay
    return headers


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from `retry-after-ms` (Azure OpenAI), or `Retry-After` in seconds or as an HTTP date."""
    if ms := headers.get("retry-after-ms"):
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _estimate(route: translate.Route, tap: SseUsageTap) -> Usage | None:
    """Counts tokens ourselves when a stream ended without usage; the record says it is an estimate."""
    prompt = estimate_prompt_tokens(route.json)
    completion = count_tokens(tap.completion_text())
    if not prompt and not completion:
        return None
    return Usage(prompt, completion, prompt + completion, estimated=True)
