"""Usage, outcomes, breakers and batches as OpenTelemetry metrics: what chargeback and the workbook read.

Metrics are the record of usage because they are never sampled: the exporter aggregates each interval (60 s
by default, OTEL_METRIC_EXPORT_INTERVAL) per attribute set and sends sums and counts, whatever the trace
sampler drops. Names follow the OpenTelemetry GenAI semantic conventions where one exists
(`gen_ai.client.token.usage`, `gen_ai.client.operation.duration`, `gen_ai.client.operation.time_to_first_chunk`);
the gateway's own are under `gateway.*`, and so are its attributes. docs/queries/*.kql read exactly these
names and attributes (tests/unit/test_kql_contract.py checks both ways).

Without an exporter the global meter provider is the API's no-op, so each instrument call costs a method
call and nothing is kept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from opentelemetry import metrics

from .limit_terms import split_limit_key
from .usage import UsageRecord, outcome_of

__all__ = [
    "BATCH_LINES",
    "BATCH_TOKENS",
    "BREAKER_TRANSITIONS",
    "CALLER_LIMIT",
    "METER_NAME",
    "OPERATION_DURATION",
    "PROVIDER",
    "REQUESTS",
    "TIME_TO_FIRST_CHUNK",
    "TOKEN_USAGE",
    "CallerLimits",
    "UsageMetrics",
    "breaker_transition",
    "operation_name",
]

METER_NAME = "azure-ai-gateway"
PROVIDER = "azure.ai.openai"  # gen_ai.provider.name of Azure OpenAI / AI Foundry
TOKEN_USAGE = "gen_ai.client.token.usage"
OPERATION_DURATION = "gen_ai.client.operation.duration"
TIME_TO_FIRST_CHUNK = "gen_ai.client.operation.time_to_first_chunk"
REQUESTS = "gateway.requests"
BREAKER_TRANSITIONS = "gateway.breaker.transitions"
BATCH_LINES = "gateway.batch.lines"
BATCH_TOKENS = "gateway.batch.tokens"
CALLER_LIMIT = "gateway.caller.limit"

LimitSource = Callable[[], Iterable[tuple[str, str, int]]]  # (kind, limit key, limit) of the keys used lately

# gen_ai.operation.name values for the operations the gateway forwards.
_OPERATIONS = {
    "chat/completions": "chat",
    "completions": "text_completion",
    "embeddings": "embeddings",
    "images/generations": "generate_content",
    "images/edits": "generate_content",
    "responses": "chat",  # the semantic conventions' name for the Responses API's create call
}


def operation_name(operation: str) -> str:
    """The GenAI convention's name for a forwarded operation (the operation itself when it has none)."""
    return _OPERATIONS.get(operation, operation)


class UsageMetrics:
    """A usage-recorder sink: per request, its outcome, duration, time to first chunk and tokens by direction;
    per finished batch, its lines and tokens by caller."""

    def __init__(self, meter: metrics.Meter | None = None) -> None:
        meter = meter or metrics.get_meter(METER_NAME)
        self._tokens = meter.create_histogram(TOKEN_USAGE, unit="{token}", description="Tokens used per request")
        self._duration = meter.create_histogram(
            OPERATION_DURATION, unit="s", description="Gateway request duration, attempts included"
        )
        self._first_chunk = meter.create_histogram(
            TIME_TO_FIRST_CHUNK, unit="s", description="Time from the request to the first streamed chunk relayed"
        )
        # Counted here and observed at each export: a counter the SDK fed per request would clean and hash
        # every attribute of every request, the largest part of the metrics' cost per request.
        self._request_counts: dict[tuple[tuple[str, str | bool | int], ...], int] = {}
        meter.create_observable_counter(
            REQUESTS, callbacks=[self._observe_requests], unit="{request}", description="Requests by outcome"
        )
        self._batch_lines = meter.create_counter(BATCH_LINES, unit="{line}", description="Finished batch lines")
        self._batch_tokens = meter.create_counter(BATCH_TOKENS, unit="{token}", description="Tokens of batch lines")

    def __call__(self, record: UsageRecord) -> None:
        if record.batch is not None:
            self._batch(record)
            return
        attributes = request_attributes(record)
        key = tuple(attributes.items())
        counts = self._request_counts
        counts[key] = counts.get(key, 0) + 1
        self._duration.record(record.duration_ms / 1000, attributes)
        if record.first_chunk_ms is not None:
            self._first_chunk.record(record.first_chunk_ms / 1000, attributes)
        usage = record.usage
        if usage is None:
            return
        # Tokens carry what chargeback splits by, not how the request went: every attribute costs the SDK
        # work per measurement, and this is the one metric recorded twice per request.
        tokens = token_attributes(record, attributes)
        tokens["gateway.usage_estimated"] = usage.estimated
        self._tokens.record(usage.prompt_tokens, {**tokens, "gen_ai.token.type": "input"})
        if usage.completion_tokens or record.operation != "embeddings":
            self._tokens.record(usage.completion_tokens, {**tokens, "gen_ai.token.type": "output"})

    def _observe_requests(self, options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        """Requests so far per attribute set (cumulative; the exporter sends the difference each interval)."""
        return [metrics.Observation(n, dict(key)) for key, n in self._request_counts.copy().items()]

    def _batch(self, record: UsageRecord) -> None:
        lines = record.batch
        assert lines is not None
        attributes: dict[str, str | bool | int] = {
            "gen_ai.request.model": record.model or "",
            "gateway.caller": record.caller or "",
        }
        self._batch_lines.add(lines.succeeded, {**attributes, "gateway.outcome": "success"})
        self._batch_lines.add(lines.failed, {**attributes, "gateway.outcome": "failed"})
        if record.usage is not None:
            self._batch_tokens.add(record.usage.prompt_tokens, {**attributes, "gen_ai.token.type": "input"})
            self._batch_tokens.add(record.usage.completion_tokens, {**attributes, "gen_ai.token.type": "output"})


class CallerLimits:
    """An observable gauge of each active caller's RPM and TPM limit, as its profile applied to its latest request
    (operator overrides included), so queries compare usage with the real limits (docs/queries/tokens-per-minute.kql).

    `source()` gives (kind, limit key, limit) for the keys this instance used lately (`Limiter.active_limits`); read
    at each export, never per request. `gateway.limit.per` says whether the limit counts per caller or per caller
    and model; per-model keys of one caller share one series.
    """

    def __init__(self, source: LimitSource, meter: metrics.Meter | None = None) -> None:
        self._source = source
        meter = meter or metrics.get_meter(METER_NAME)
        meter.create_observable_gauge(
            CALLER_LIMIT, callbacks=[self._observe], unit="1/min", description="Callers' RPM and TPM limits"
        )

    def _observe(self, options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        series: dict[tuple[str, str, str], int] = {}
        for kind, key, limit in self._source():
            caller, model = split_limit_key(key)
            series[(caller, kind, "caller" if model is None else "caller,model")] = limit
        return [
            metrics.Observation(limit, {"gateway.caller": caller, "gateway.limit": kind, "gateway.limit.per": per})
            for (caller, kind, per), limit in series.items()
        ]


def request_attributes(record: UsageRecord) -> dict[str, str | bool | int]:
    """The attributes of a request's metrics: GenAI conventions plus `gateway.*` (optional ones when present)."""
    attributes: dict[str, str | bool | int] = {
        "gen_ai.provider.name": PROVIDER,
        "gen_ai.operation.name": operation_name(record.operation),
        "gen_ai.request.model": record.model or "",
        "gateway.caller": record.caller or "",
        "gateway.backend": record.backend or "",
        "gateway.deployment": record.deployment or "",
        "gateway.streaming": record.streaming,
        "gateway.async": record.is_async,
        "gateway.outcome": outcome_of(record),
    }
    if record.response_model:
        attributes["gen_ai.response.model"] = record.response_model
    if record.profile:
        attributes["gateway.profile"] = record.profile
    if record.priority:
        attributes["gateway.priority"] = record.priority
    if record.limit:  # a refusal: which of the caller's limits (or governance) refused it
        attributes["gateway.limit"] = record.limit
    if record.error or record.status >= 400:
        attributes["error.type"] = record.error or str(record.status)
    return attributes


_NOT_ON_TOKENS = ("gateway.outcome", "gateway.streaming", "gateway.async", "gateway.limit", "error.type")


def token_attributes(record: UsageRecord, attributes: dict[str, str | bool | int]) -> dict[str, str | bool | int]:
    """The request's attributes that chargeback and tokens-per-minute group by (see docs/queries)."""
    return {k: v for k, v in attributes.items() if k not in _NOT_ON_TOKENS}


_transitions: metrics.Counter | None = None


def breaker_transition(scope_key: str, state: str, reason: str, meter: metrics.Meter | None = None) -> None:
    """Counts a breaker opening or closing (`scope_key` is `backend` or `backend:deployment`); `meter` for tests."""
    global _transitions
    counter = _transitions
    if counter is None or meter is not None:  # created on first use, bound to the provider the exporter set up
        counter = (meter or metrics.get_meter(METER_NAME)).create_counter(
            BREAKER_TRANSITIONS, unit="{transition}", description="Breaker openings and closings"
        )
        if meter is None:
            _transitions = counter
    backend, _, deployment = scope_key.partition(":")
    counter.add(
        1,
        {
            "gateway.backend": backend,
            "gateway.deployment": deployment,
            "gateway.breaker.state": state,
            "gateway.breaker.reason": _reason(reason),
        },
    )


def _reason(reason: str) -> str:
    """A low-cardinality reason: "429", "failures", "trial failed", "closed"..."""
    if reason.startswith("trial failed"):
        return "trial failed"
    if reason.endswith("failures"):
        return "failures"
    return reason[:40]
