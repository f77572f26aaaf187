"""Spans: one server span per gateway request, one client span per backend attempt, one per async attempt.

The server span is the request's `requests` row in Application Insights (host.json turns the host's own off),
continuing the client's W3C `traceparent` when it sent one. Each backend attempt is a client span under it
(a `dependencies` row; its `traceparent` goes to the backend). An async activity's attempt continues the trace
of the request that was deferred: the starter puts that request's `traceparent` into the orchestration input.

A request's spans end when its usage record is finished (`TraceSink`, a usage-recorder sink), so they carry
the outcome and the tokens; for a stream that is when the stream ends, after the handler has returned. Spans
that never get a record (401, 404, 202, ...) end when the handler returns (`leave`).

Attributes follow the OpenTelemetry GenAI conventions plus `gateway.*`. Spans may be sampled (the distro's
default is 5 traces per second): usage figures come from metrics, never from spans.

Off (no exporter configured) every function here returns after one check of a module global.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .metrics import METER_NAME, PROVIDER, operation_name
from .usage import UsageRecord, outcome_of

__all__ = [
    "RequestTrace",
    "TraceSink",
    "current",
    "disable",
    "enable",
    "enabled",
    "hold",
    "leave",
    "record_attributes",
    "start_activity",
    "start_attempt",
    "start_request",
    "traceparent",
]

_PROPAGATOR = TraceContextTextMapPropagator()
_KEY = otel_context.create_key("gateway-request-trace")
_tracer: trace.Tracer | None = None

AttributeValue = str | bool | int | float


def enable(tracer: trace.Tracer | None = None) -> None:
    """Turns spans on (the exporter has set the tracer provider up, or a test gives its own tracer)."""
    global _tracer
    _tracer = tracer or trace.get_tracer(METER_NAME)


def disable() -> None:
    global _tracer
    _tracer = None


def enabled() -> bool:
    return _tracer is not None


class RequestTrace:
    """The open spans of one request (or one async attempt): its own, and the attempt whose answer it relays."""

    __slots__ = ("attempt", "attempts", "ended", "held", "span", "token")

    def __init__(self, span: Span) -> None:
        self.span = span
        self.attempt: Span | None = None  # the client span of the answer being relayed, ended with the record
        self.attempts = 0  # backend attempts started under this request
        self.held = False  # a usage record will end these spans
        self.ended = False
        self.token: object | None = None

    def end(self, attributes: Mapping[str, AttributeValue], error: bool) -> None:
        if self.ended:
            return
        self.ended = True
        for span in (self.attempt, self.span):
            if span is not None and span.is_recording():
                span.set_attributes(attributes)
                if error:
                    span.set_status(Status(StatusCode.ERROR))
            if span is not None:
                span.end()


def _attach(span: Span, parent: otel_context.Context | None) -> RequestTrace:
    rt = RequestTrace(span)
    ctx = otel_context.set_value(_KEY, rt, trace.set_span_in_context(span, parent))
    rt.token = otel_context.attach(ctx)
    return rt


def _parent(carrier: Mapping[str, str]) -> otel_context.Context | None:
    """The context of a W3C `traceparent` (and `tracestate`) in `carrier`, None when there is none."""
    return _PROPAGATOR.extract(carrier) if carrier.get("traceparent") else None


def start_request(method: str, path: str, headers: Mapping[str, str], request_id: str) -> RequestTrace | None:
    """Opens the server span of a gateway request and makes it current; None when spans are off."""
    tracer = _tracer
    if tracer is None:
        return None
    span = tracer.start_span(
        f"{method} {path}",
        context=_parent(headers),
        kind=SpanKind.SERVER,
        attributes={"http.request.method": method, "url.path": path, "gateway.request_id": request_id},
    )
    return _attach(span, None)


def start_activity(request: Mapping[str, Any], attempt: int) -> RequestTrace | None:
    """Opens the span of one async attempt in the trace of the request that was deferred."""
    tracer = _tracer
    if tracer is None:
        return None
    parent = _parent({"traceparent": request.get("traceparent") or ""})
    span = tracer.start_span(
        "attempt_backend",
        context=parent or otel_context.Context(),  # never a child of whatever happens to be current
        kind=SpanKind.CONSUMER,
        attributes={
            "http.request.method": "POST",
            "gen_ai.operation.name": operation_name(str(request.get("operation", ""))),
            "gen_ai.request.model": str(request.get("model") or ""),
            "gateway.caller": str(request.get("caller") or ""),
            "gateway.request_id": str(request.get("request_id") or ""),
            "gateway.async": True,
            "gateway.attempt": attempt,
        },
    )
    rt = _attach(span, parent)
    rt.attempts = attempt - 1  # this activity makes the request's attempt number `attempt`
    return rt


def current() -> RequestTrace | None:
    """The request trace of the running request, if spans are on and there is one."""
    if _tracer is None:
        return None
    value = otel_context.get_value(_KEY)
    return value if isinstance(value, RequestTrace) else None


def hold() -> RequestTrace | None:
    """The running request's trace, for its usage record: the record's sink ends its spans from now on."""
    rt = current()
    if rt is not None:
        rt.held = True
    return rt


def leave(
    rt: RequestTrace | None,
    status: int | None,
    *,
    streaming: bool = False,
    attributes: Mapping[str, AttributeValue] | None = None,
) -> None:
    """The handler returns: detach its context; end its spans unless a record will (or a stream still runs)."""
    if rt is None:
        return
    if rt.token is not None:
        otel_context.detach(rt.token)  # type: ignore[arg-type]  # the token attach() gave
        rt.token = None
    if rt.ended or (rt.held and streaming):
        return
    final = dict(attributes or {})
    if status is not None:
        final["http.response.status_code"] = status
    rt.end(final, error=status is None or status >= 500)


@functools.lru_cache(maxsize=256)
def _server(base_url: str) -> tuple[str, int]:
    """`server.address` and `server.port` of a backend's base URL."""
    parts = urlsplit(base_url)
    return parts.hostname or base_url, parts.port or (80 if parts.scheme == "http" else 443)


def start_attempt(
    base_url: str, method: str, url: str, backend: str, deployment: str, operation: str, model: str
) -> Span | None:
    """Opens the client span of one backend attempt under the current span; None when spans are off."""
    tracer = _tracer
    if tracer is None:
        return None
    rt = current()
    attempt = 1
    if rt is not None:
        rt.attempts += 1
        attempt = rt.attempts
        if not rt.span.is_recording():
            return None  # the request's trace was sampled out: its attempts would be too
    address, port = _server(base_url)
    return tracer.start_span(
        f"{operation_name(operation)} {deployment}".strip(),
        kind=SpanKind.CLIENT,
        attributes={
            "http.request.method": method,
            "url.full": url,
            "server.address": address,
            "server.port": port,
            "gen_ai.provider.name": PROVIDER,
            "gen_ai.operation.name": operation_name(operation),
            "gen_ai.request.model": model,
            "gateway.backend": backend,
            "gateway.deployment": deployment,
            "gateway.attempt": attempt,
        },
    )


def inject(span: Span, headers: MutableMapping[str, str]) -> None:
    """The attempt's `traceparent` for the backend (replacing the client's): APIM and Azure can correlate."""
    if span.is_recording():
        _PROPAGATOR.inject(headers, context=trace.set_span_in_context(span))


def end_attempt(span: Span | None, status: int | None, error: str | None, *, relayed: bool = False) -> None:
    """An attempt's answer is in: a failure ends its span now; the answer to relay stays open for its record."""
    if span is None:
        return
    if span.is_recording():
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        if error or (status is not None and status >= 400):
            span.set_attribute("error.type", error or str(status))
            span.set_status(Status(StatusCode.ERROR))
    rt = current() if relayed else None
    if rt is not None:
        rt.attempt = span
    else:
        span.end()


def traceparent() -> str | None:
    """The current span as a W3C `traceparent` (for the orchestration input), None when spans are off."""
    if _tracer is None:
        return None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent")


def record_attributes(record: UsageRecord) -> dict[str, AttributeValue]:
    """A finished request's span attributes: GenAI conventions plus `gateway.*` (optional ones when present)."""
    attributes: dict[str, AttributeValue] = {
        "gen_ai.provider.name": PROVIDER,
        "gen_ai.operation.name": operation_name(record.operation),
        "gen_ai.request.model": record.model or "",
        "gateway.request_id": record.request_id,
        "gateway.caller": record.caller or "",
        "gateway.backend": record.backend or "",
        "gateway.deployment": record.deployment or "",
        "gateway.attempt": record.attempts,
        "gateway.async": record.is_async,
        "gateway.streaming": record.streaming,
        "gateway.outcome": outcome_of(record),
        "http.response.status_code": record.status,
    }
    optional: dict[str, AttributeValue | None] = {
        "gen_ai.response.model": record.response_model,
        "gateway.profile": record.profile,
        "gateway.priority": record.priority,
        "gateway.first_chunk_ms": record.first_chunk_ms,
        "gateway.limit": record.limit,
        "error.type": record.error or (str(record.status) if record.status >= 400 else None),
    }
    attributes.update({k: v for k, v in optional.items() if v is not None})
    if (usage := record.usage) is not None:
        attributes["gen_ai.usage.input_tokens"] = usage.prompt_tokens
        attributes["gen_ai.usage.output_tokens"] = usage.completion_tokens
        attributes["gateway.usage_estimated"] = usage.estimated
    return attributes


class TraceSink:
    """A usage-recorder sink: ends the spans a record holds, with the record's attributes."""

    def __call__(self, record: UsageRecord) -> None:
        rt = record.trace
        if isinstance(rt, RequestTrace) and not rt.ended:
            recording = rt.span.is_recording()  # a sampled-out request: end its spans, skip its attributes
            attributes = record_attributes(record) if recording else {}
            rt.end(attributes, error=recording and (record.status >= 500 or outcome_of(record) == "failed"))
