"""Usage becomes GenAI-convention metrics; the Azure Monitor exporter is only touched when configured."""

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from gateway.telemetry import UsageMetrics, configure_exporter
from gateway.usage import Usage, UsageRecord


def record(**overrides) -> UsageRecord:
    values = dict(
        request_id="r1",
        api_style="v1",
        operation="chat/completions",
        model="gpt-4o-mini",
        deployment="gpt-4o-mini-weu",
        backend="weu",
        status=200,
        streaming=True,
        attempts=2,
        duration_ms=250.0,
        usage=Usage(11, 7, 18),
        caller="key:abc",
    )
    return UsageRecord(**{**values, **overrides})


def collect(reader: InMemoryMetricReader) -> dict[str, list]:
    points: dict[str, list] = {}
    for resource in reader.get_metrics_data().resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points.setdefault(metric.name, []).extend(metric.data.data_points)
    return points


def test_tokens_and_duration_are_recorded_with_genai_and_gateway_attributes():
    reader = InMemoryMetricReader()
    sink = UsageMetrics(MeterProvider(metric_readers=[reader]).get_meter("test"))
    sink(record())
    sink(record(usage=Usage(5, 0, 5), operation="embeddings", streaming=False))
    points = collect(reader)
    tokens = {
        (p.attributes["gen_ai.operation.name"], p.attributes["gen_ai.token.type"]): p.sum
        for p in points["gen_ai.client.token.usage"]
    }
    assert tokens == {("chat", "input"): 11, ("chat", "output"): 7, ("embeddings", "input"): 5}
    chat_input = next(
        p
        for p in points["gen_ai.client.token.usage"]
        if p.attributes["gen_ai.token.type"] == "input" and p.attributes["gen_ai.operation.name"] == "chat"
    )
    assert chat_input.attributes["gateway.backend"] == "weu" and chat_input.attributes["gateway.caller"] == "key:abc"
    assert chat_input.attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert chat_input.attributes["gateway.usage_estimated"] is False
    assert sum(p.sum for p in points["gen_ai.client.operation.duration"]) == 0.25 + 0.25


def test_failures_carry_an_error_type_and_no_token_counts():
    reader = InMemoryMetricReader()
    sink = UsageMetrics(MeterProvider(metric_readers=[reader]).get_meter("test"))
    sink(record(status=429, usage=None))
    points = collect(reader)
    assert "gen_ai.client.token.usage" not in points
    [duration] = points["gen_ai.client.operation.duration"]
    assert duration.attributes["error.type"] == "429"


def test_the_exporter_is_not_configured_without_a_connection_string():
    assert configure_exporter({}) is False
