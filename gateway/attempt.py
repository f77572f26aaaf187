"""The one way to make a backend attempt: choose → credential → send → learn → hand back the answer.

The synchronous pipeline, the async activity, the batch activities (through `BackendBatches`) and the probes
all send through `Attempts`, so a fault teaches the pool the same thing whichever path saw it: a 429 opens
the deployment, a 5xx or a broken connection (before or during the answer) counts against the backend, a
finished answer feeds the generation speed. Choosing (`choose`, `queue`) also takes a slot of a backend that has
a `concurrency=`, in the request's priority, so the sync and async paths share one admission. What each path does
with the answer (relay it, store it, merge it) stays with that path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from . import surface, tracing, translate
from .config import Settings
from .credentials import BackendAuth
from .lanes import Lane
from .pool import BackendPool, Target
from .slots import Slot, Slots
from .streaming import prepare_stream_request
from .upstream import Body, Transport, TransportError, UpstreamResponse
from .usage import Usage, UsageRecord

__all__ = ["RETRYABLE_STATUS", "Attempt", "Attempts", "answer_wait_s", "retry_after_seconds", "usage_record"]

log = logging.getLogger("gateway.attempt")

# Answers that say "this backend, not this request": try the next backend.
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(slots=True)
class Attempt:
    """The outcome of one try on one target: an answer to read, or why there is none."""

    target: Target
    response: UpstreamResponse | None = None  # a non-retryable answer (success or the client's own 4xx)
    status: int | None = None
    injected: bool = False  # include_usage was added to a streamed request
    retry_after_s: float | None = None
    failure: str | None = None  # "throttled" (429) | "failed" (5xx/408) | "timeout" | "connect"
    sent_at: float = 0.0  # time.monotonic() when it was sent


class Attempts:
    def __init__(
        self, pool: BackendPool, transport: Transport, auth: BackendAuth, settings: Settings, slots: Slots
    ) -> None:
        self.pool = pool
        self.slots = slots  # backends' concurrency: a choice holds one of its slots
        self.transport = transport
        self.auth = auth
        self.settings = settings
        self.in_flight: dict[str, int] = {}  # backend name -> answers being awaited or read on this instance
        self.unexpected_errors = 0  # bugs met while probing (gateway/health.py logs each with its traceback)

    async def next_target(
        self,
        model: str,
        exclude: set[str] | None = None,
        *,
        batch: bool = False,
        tiers: frozenset[str] | None = None,
    ) -> Target | None:
        """The pool's choice among the caller's tiers, with the half-open trial claimed; a backend whose trial
        another instance holds is added to `exclude` and the next choice is taken."""
        exclude = set() if exclude is None else exclude
        while (target := self.pool.choose(model, exclude, batch=batch, tiers=tiers)) is not None:
            if await self.pool.acquire(target):
                return target
            exclude.add(target.backend.name)
        return None

    async def choose(
        self, model: str, exclude: set[str], full: set[str], lane: Lane
    ) -> tuple[Target | None, Slot | None]:
        """The pool's next choice for the lane that has a slot free now (None when none has); the backends found
        at their concurrency are added to `full`, so the request spills to the next one its tiers allow.
        The sync path and the async activity both choose here."""
        while (target := await self.next_target(model, exclude | full, tiers=lane.tiers)) is not None:
            if not self.slots.limited(target.backend.name):
                return target, None
            if (slot := self.slots.try_acquire(target.backend.name, lane.priority)) is not None:
                return target, slot
            full.add(target.backend.name)
        return None, None

    async def queue(
        self, model: str, full: set[str], wait_until: float, lane: Lane
    ) -> tuple[Target | None, Slot | None]:
        """Waits in priority order (with aging) for a slot on the best backend of `full` until `wait_until`
        (monotonic); (None, None) when it passes first."""
        for target in self.pool.candidates(model):
            if target.backend.name in full:
                if (slot := await self.slots.acquire(target.backend.name, lane.priority, wait_until)) is not None:
                    return target, slot
                break
        return None, None

    async def forward(
        self,
        target: Target,
        method: str,
        route: translate.Route,
        body: bytes,
        headers: Mapping[str, str],
        *,
        total_s: float | None,
    ) -> Attempt:
        """A client's request on one target, in that backend's API style (`translate.outgoing`); streams are asked
        for usage when we can count it."""
        backend = target.backend
        upstream = translate.outgoing(route, backend.api, target.deployment, body, headers.get("content-type", ""))
        body, injected = upstream.body, False
        if route.streaming and backend.parses_usage and surface.OPERATIONS[route.operation].counted:
            body, injected = prepare_stream_request(body, upstream.json or {})
        attempt = await self.send(target, method, upstream.path, headers, body, total_s=total_s, route=route)
        attempt.injected = injected
        return attempt

    async def send(
        self,
        target: Target,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: Body = b"",
        *,
        total_s: float | None,
        probe: bool = False,
        route: translate.Route | None = None,
    ) -> Attempt:
        """Sends to the target's backend with its credential and learns from what comes back.

        A retryable answer is released here and reported as a failure; any other answer is returned for the
        caller to read (`read`, or chunk by chunk with `broke` on a break). A probe teaches latency only.
        Every attempt but a probe is a client span; the span of an answer to relay ends with its usage record.
        """
        backend = target.backend
        url = backend.host + path
        headers = {**headers, **await self.auth.headers(backend)}
        span = None
        if not probe and tracing.enabled():
            operation, model = (route.operation, route.model) if route else (path.rsplit("/", 1)[-1], "")
            span = tracing.start_attempt(backend.host, method, url, backend.name, target.deployment, operation, model)
            if span is not None:
                tracing.inject(span, headers)
        read_s = self.read_timeout_s(target, route, total_s)
        sent_at = time.monotonic()
        counted = not probe
        if counted:
            self.in_flight[backend.name] = self.in_flight.get(backend.name, 0) + 1
        try:
            response = await self.transport.send(
                method,
                url,
                headers,
                body,
                total_s=total_s,
                connect_s=backend.connect_timeout_s,
                read_s=read_s,
            )
        except TransportError as exc:
            if counted:
                self.in_flight[backend.name] -= 1
            log.warning("Backend %s: %s", backend.name, exc)
            tracing.end_attempt(span, None, exc.kind)
            # A request whose own deadline (sync budget, TTL) ran out did not find the backend failing.
            own_deadline = exc.kind == "timeout" and total_s is not None and time.monotonic() - sent_at >= total_s
            if not probe and not own_deadline:
                self.pool.on_transport_error(target, exc.kind)
            return Attempt(target, failure=exc.kind, sent_at=sent_at)
        ttfb_ms = (time.monotonic() - sent_at) * 1000
        status = response.status
        if probe:
            self.pool.on_probe(target, ttfb_ms)
            return Attempt(target, response, status, sent_at=sent_at)
        retryable = status in RETRYABLE_STATUS
        retry_after = retry_after_seconds(response.headers) if retryable else None
        self.pool.on_answer(target, status, ttfb_ms, response.headers, retry_after)
        if not retryable:
            tracing.end_attempt(span, status, None, relayed=route is not None)
            return Attempt(target, _InFlight(response, self.in_flight, backend.name), status, sent_at=sent_at)
        self.in_flight[backend.name] -= 1
        log.info("Backend %s answered %d", backend.name, status)
        response.release()
        failure = "throttled" if status == 429 else "failed"
        tracing.end_attempt(span, status, failure)
        return Attempt(target, None, status, retry_after_s=retry_after, failure=failure, sent_at=sent_at)

    def read_timeout_s(self, target: Target, route: translate.Route | None, total_s: float | None) -> float:
        """The silence allowed while waiting for the answer: the backend's read timeout, stretched for a client's
        non-streamed request with a completion cap (`answer_wait_s`) at the slower of the deployment's observed
        generation speed and GATEWAY_TOKENS_PER_SECOND. Streams keep the read timeout between chunks."""
        backend = target.backend
        read_s = backend.timeout_s if backend.timeout_s is not None else self.settings.read_timeout_s
        if route is None or route.streaming:
            return read_s
        assumed = self.settings.tokens_per_second
        observed = self.pool.tokens_per_second((target,))
        speed = min(observed, assumed) if observed else assumed
        return answer_wait_s(read_s, route.completion_cap, speed, total_s)

    async def read(self, attempt: Attempt) -> bytes:
        """The whole answer. A read that breaks off counts against the backend and raises TransportError."""
        response = attempt.response
        assert response is not None
        try:
            data = await response.read()
        except TransportError as exc:
            self.broke(attempt, exc)
            raise
        response.release()
        return data

    def broke(self, attempt: Attempt, exc: TransportError) -> None:
        """An answer that broke off while being read (whole or streamed): the connection is dropped and the
        host is charged with a transport failure."""
        assert attempt.response is not None
        attempt.response.close()
        log.warning("Answer from %s broke off: %s", attempt.target.backend.name, exc)
        self.pool.on_transport_error(attempt.target, exc.kind)

    def finished(self, attempt: Attempt, usage: Usage | None) -> None:
        """A complete successful answer: its completion tokens over its duration is the generation speed."""
        if usage is not None and attempt.status == 200:
            self.pool.observe_generation(attempt.target, usage.completion_tokens, time.monotonic() - attempt.sent_at)


class _InFlight:
    """An answer that counts as in flight on its backend until it is released or closed (once)."""

    __slots__ = ("_counts", "_inner", "_name", "headers", "status")

    def __init__(self, inner: UpstreamResponse, counts: dict[str, int], name: str) -> None:
        self._inner, self._name = inner, name
        self._counts: dict[str, int] | None = counts
        self.status, self.headers = inner.status, inner.headers

    async def read(self) -> bytes:
        return await self._inner.read()

    def chunks(self) -> AsyncIterator[bytes]:
        return self._inner.chunks()

    def release(self) -> None:
        self._done()
        self._inner.release()

    def close(self) -> None:
        self._done()
        self._inner.close()

    def _done(self) -> None:
        if self._counts is not None:
            self._counts[self._name] -= 1
            self._counts = None


def usage_record(
    route: translate.Route,
    target: Target | None,
    request_id: str,
    status: int,
    attempts: int,
    caller: str | None,
    error: str | None = None,
) -> UsageRecord:
    """The usage record of a request; usage, streaming and duration are filled in when it ends."""
    return UsageRecord(
        request_id=request_id,
        api_style=route.api_style,
        operation=route.operation,
        model=route.model,
        deployment=target.deployment if target else None,
        backend=target.backend.name if target else None,
        status=status,
        streaming=False,  # set when the answer turns out to be a stream
        attempts=attempts,
        duration_ms=0.0,
        usage=None,
        caller=caller,
        error=error,
        trace=tracing.hold(),
    )


def answer_wait_s(read_s: float, cap: int | None, tokens_per_s: float, total_s: float | None) -> float:
    """How long a non-streamed answer's headers may take: they come only after the whole generation, so a cap
    of `cap` tokens may legitimately take cap / tokens_per_s, within the request's own total (sync budget, async
    attempt). Never less than the read timeout; without a cap just that, so a stalled backend still fails over."""
    if cap is None:
        return read_s
    generation = cap / tokens_per_s
    return max(read_s, generation if total_s is None else min(generation, total_s))


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
