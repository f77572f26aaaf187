"""docs/queries/*.kql and the telemetry the code emits agree, both ways.

What the code emits is observed, not declared: representative records go through the real `UsageMetrics` sink
into an in-memory reader, a breaker transition through `breaker_transition`, callers' limits through the
`CallerLimits` gauge, and requests, attempts and an async attempt through `gateway.tracing` into an in-memory
span exporter. Then:
- every metric name and every `customDimensions["..."]` a query reads is one the code emits (for spans, one
  the Azure Monitor exporter keeps as a custom dimension: `http.*`, `server.*`, `url.*` and `error.type`
  become columns, not dimensions);
- every metric the code emits, and every metric attribute, is read by some query (nothing is emitted that
  no query or workbook uses);
- no query reads token usage from spans: spans may be sampled, usage comes from metrics.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from gateway import tracing
from gateway.limit_terms import limit_key
from gateway.metrics import CallerLimits, UsageMetrics, breaker_transition
from gateway.usage import BatchLines, Usage, UsageRecord

ROOT = Path(__file__).resolve().parents[2]
QUERIES = sorted((ROOT / "docs" / "queries").glob("*.kql"))
TABLE = re.compile(r"(?m)^(?:\s*let\s+\w+\s*=\s*)?(customMetrics|requests|dependencies)\s*$")
NAME_EQUALS = re.compile(r'\bname\s*==\s*"([^"]+)"')
NAME_IN = re.compile(r"\bname\s+in\s*\(([^)]*)\)")
DIMENSION = re.compile(r'customDimensions\["([^"]+)"\]')
# Span attributes the Azure Monitor exporter maps to columns (target, resultCode, url...), not customDimensions.
NOT_DIMENSIONS = re.compile(r"^(http\.|server\.|client\.|url\.|network\.|user_agent\.|error\.type$)")


def record(**overrides) -> UsageRecord:
    values = dict(request_id="r1", api_style="v1", operation="chat/completions", model="gpt-4o-mini",
                  deployment="gpt-4o-mini", backend="weu", status=200, streaming=False, attempts=1,
                  duration_ms=120.0, usage=Usage(10, 5, 15, cached_tokens=2), caller="team-a")
    return UsageRecord(**{**values, **overrides})


def representative_records() -> list[UsageRecord]:
    """One of each kind of request the gateway records (optional attributes present)."""
    return [
        record(response_model="gpt-4o-mini-2024-07-18", profile="gold", priority="high"),
        record(streaming=True, first_chunk_ms=80.0, usage=Usage(10, 5, 15, estimated=True)),
        record(status=429, usage=None, error="throttled"),
        record(is_async=True, status=504, usage=None, error="expired", backend=None, deployment=None),
        record(operation="batch", is_async=True, batch=BatchLines(3, 2, 1), backend=None, deployment=None),
        record(status=429, usage=None, error="rate_limit_exceeded", limit="rpm", attempts=0, backend=None,
               deployment=None),
    ]


@pytest.fixture(scope="module")
def emitted_metrics() -> dict[str, set[str]]:
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("contract")
    sink = UsageMetrics(meter)
    for r in representative_records():
        sink(r)
    breaker_transition("weu:gpt-4o-mini", "open", "429", meter=meter)
    limits = [("rpm", "team-a", 600), ("tpm", "team-a", 200000), ("tpm", limit_key("team-b", "gpt-4o-mini"), 1000)]
    CallerLimits(lambda: limits, meter)  # as Limiter.active_limits gives them
    emitted: dict[str, set[str]] = {}
    for resource in reader.get_metrics_data().resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    emitted.setdefault(metric.name, set()).update(point.attributes)
    return emitted


@pytest.fixture(scope="module")
def emitted_span_dimensions() -> dict[str, set[str]]:
    """Custom dimensions of the `requests` rows (server and async spans) and `dependencies` rows (attempts)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.enable(provider.get_tracer("contract"))
    try:
        for r in representative_records()[:4]:
            rt = tracing.start_request("POST", "/v1/chat/completions", {}, r.request_id)
            span = tracing.start_attempt("https://weu.openai.azure.com", "POST", "https://weu/x", "weu",
                                         "gpt-4o-mini", r.operation, r.model or "")
            tracing.end_attempt(span, r.status, r.error, relayed=True)
            r.trace = tracing.hold()
            tracing.TraceSink()(r)
            tracing.leave(rt, r.status)
        rt = tracing.start_activity({"operation": "chat/completions", "model": "gpt-4o-mini", "caller": "team-a"}, 2)
        tracing.leave(rt, None, attributes={"gateway.outcome": "retry"})
    finally:
        tracing.disable()
    dimensions: dict[str, set[str]] = {"requests": set(), "dependencies": set()}
    for span in exporter.get_finished_spans():
        table = "dependencies" if span.kind == SpanKind.CLIENT else "requests"
        dimensions[table].update(k for k in span.attributes if not NOT_DIMENSIONS.match(k))
    return dimensions


def metric_names(text: str) -> set[str]:
    names = set(NAME_EQUALS.findall(text))
    for group in NAME_IN.findall(text):
        names.update(re.findall(r'"([^"]+)"', group))
    return names


@pytest.mark.parametrize("path", QUERIES, ids=lambda p: p.name)
def test_a_query_reads_only_what_the_code_emits(path: Path, emitted_metrics, emitted_span_dimensions):
    text = path.read_text(encoding="utf-8")
    assert text.startswith("//"), f"{path.name}: start with a comment saying what the query answers"
    tables = set(TABLE.findall(text))
    assert tables, f"{path.name} reads none of customMetrics, requests, dependencies"
    names = metric_names(text)
    assert names <= set(emitted_metrics), f"{path.name}: metrics the code never emits: {names - set(emitted_metrics)}"
    if "customMetrics" in tables:
        assert names, f"{path.name} reads customMetrics without naming a metric"
    allowed = set().union(*(emitted_metrics[n] for n in names)) if names else set()
    for table in tables - {"customMetrics"}:
        allowed |= emitted_span_dimensions[table]
    used = set(DIMENSION.findall(text))
    assert used <= allowed, f"{path.name}: dimensions the code does not emit there: {sorted(used - allowed)}"
    if tables & {"requests", "dependencies"}:
        assert "gen_ai.usage." not in text, f"{path.name}: token usage comes from metrics, never from sampled spans"


def test_every_metric_and_metric_attribute_is_read_by_a_query(emitted_metrics):
    texts = [p.read_text(encoding="utf-8") for p in QUERIES]
    assert len(texts) >= 6
    used_names = set().union(*(metric_names(t) for t in texts))
    used_dimensions = set().union(*(set(DIMENSION.findall(t)) for t in texts))
    assert set(emitted_metrics) - used_names == set(), "metrics no query reads"
    unread = set().union(*emitted_metrics.values()) - used_dimensions
    assert unread == set(), f"metric attributes no query reads: {sorted(unread)}"


def test_the_contract_sees_what_it_checks(emitted_metrics, emitted_span_dimensions):
    """Guards the checks above against an empty observation."""
    assert {"gen_ai.client.token.usage", "gen_ai.client.operation.duration", "gateway.requests",
            "gen_ai.client.operation.time_to_first_chunk", "gateway.breaker.transitions", "gateway.batch.lines",
            "gateway.batch.tokens", "gateway.caller.limit"} == set(emitted_metrics)
    assert "gateway.limit" in emitted_metrics["gateway.requests"]  # a refusal names the limit that refused it
    assert {"gateway.backend", "gateway.first_chunk_ms", "gen_ai.usage.input_tokens"} <= emitted_span_dimensions[
        "requests"]
    assert {"gateway.attempt", "gen_ai.request.model"} <= emitted_span_dimensions["dependencies"]
