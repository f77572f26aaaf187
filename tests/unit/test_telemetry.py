"""Usage becomes GenAI-convention metrics; the Azure Monitor exporter is only touched when configured."""

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from gateway.metrics import UsageMetrics, breaker_transition
from gateway.telemetry import AUTO_INSTRUMENTATIONS, configure_exporter, exporter_options
from gateway.usage import BatchLines, Usage, UsageRecord, outcome_of, response_model


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


def sink_and_reader() -> tuple[UsageMetrics, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    return UsageMetrics(MeterProvider(metric_readers=[reader]).get_meter("test")), reader


def test_tokens_and_duration_are_recorded_with_genai_and_gateway_attributes():
    sink, reader = sink_and_reader()
    sink(record(response_model="gpt-4o-mini-2024-07-18", profile="gold", priority="high"))
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
    assert chat_input.attributes["gen_ai.response.model"] == "gpt-4o-mini-2024-07-18"
    assert chat_input.attributes["gen_ai.provider.name"] == "azure.ai.openai"
    assert chat_input.attributes["gateway.profile"] == "gold" and chat_input.attributes["gateway.priority"] == "high"
    assert chat_input.attributes["gateway.usage_estimated"] is False
    assert sum(p.sum for p in points["gen_ai.client.operation.duration"]) == 0.25 + 0.25
    assert [(p.attributes["gateway.outcome"], p.value) for p in points["gateway.requests"]] == [("success", 1)] * 2


def test_failures_carry_an_error_type_an_outcome_and_no_token_counts():
    sink, reader = sink_and_reader()
    sink(record(status=429, usage=None, error="throttled"))
    sink(record(status=503, usage=None, error="failed"))
    sink(record(status=400, usage=None, outcome="throttled_caller"))
    points = collect(reader)
    assert "gen_ai.client.token.usage" not in points
    assert {p.attributes["error.type"] for p in points["gen_ai.client.operation.duration"]} == {
        "throttled", "failed", "400"}
    assert {p.attributes["gateway.outcome"]: p.value for p in points["gateway.requests"]} == {
        "throttled_backend": 1, "failed": 1, "throttled_caller": 1}


def test_streams_record_their_time_to_first_chunk():
    sink, reader = sink_and_reader()
    sink(record(first_chunk_ms=120.0))
    sink(record(streaming=False))
    [point] = collect(reader)["gen_ai.client.operation.time_to_first_chunk"]
    assert point.count == 1 and point.sum == 0.12 and point.attributes["gateway.backend"] == "weu"


def test_a_finished_batch_counts_its_lines_and_tokens_per_caller():
    sink, reader = sink_and_reader()
    sink(record(operation="batch", caller="team-a", usage=Usage(100, 40, 140), is_async=True,
                batch=BatchLines(total=5, succeeded=4, failed=1)))
    points = collect(reader)
    assert {p.attributes["gateway.outcome"]: p.value for p in points["gateway.batch.lines"]} == {
        "success": 4, "failed": 1}
    assert {p.attributes["gen_ai.token.type"]: p.value for p in points["gateway.batch.tokens"]} == {
        "input": 100, "output": 40}
    assert {p.attributes["gateway.caller"] for p in points["gateway.batch.lines"]} == {"team-a"}
    assert "gateway.requests" not in points and "gen_ai.client.token.usage" not in points  # not a request


def test_breaker_transitions_are_counted_by_backend_deployment_and_state():
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    breaker_transition("weu:gpt-4o", "open", "429", meter=meter)
    breaker_transition("weu", "open", "5 failures", meter=meter)
    breaker_transition("weu", "closed", "trial succeeded", meter=meter)
    points = collect(reader)["gateway.breaker.transitions"]
    seen = {(p.attributes["gateway.backend"], p.attributes["gateway.deployment"], p.attributes["gateway.breaker.state"],
             p.attributes["gateway.breaker.reason"]): p.value for p in points}
    assert seen == {("weu", "gpt-4o", "open", "429"): 1, ("weu", "", "open", "failures"): 1,
                    ("weu", "", "closed", "trial succeeded"): 1}


def test_outcomes_are_read_from_status_and_error_unless_set():
    assert outcome_of(record()) == "success"
    assert outcome_of(record(status=429, error="throttled")) == "throttled_backend"
    assert outcome_of(record(status=503, error="throttled")) == "failed"  # throttling mixed with failures
    assert outcome_of(record(status=200, error="connect")) == "failed"  # a stream that broke off
    assert outcome_of(record(status=404)) == "client_error"
    assert outcome_of(record(status=504, error="expired")) == "expired"
    assert outcome_of(record(status=499, error="cancelled")) == "cancelled"
    assert outcome_of(record(status=400, outcome="content_filtered")) == "content_filtered"
    assert record(status=429, outcome="throttled_caller").as_dict()["outcome"] == "throttled_caller"


def test_response_model_is_read_from_the_last_model_member():
    body = b'{"choices":[{"message":{"content":"say \\"model\\": no"}}],"model":"gpt-4o-2024-08-06","usage":{}}'
    assert response_model(body) == "gpt-4o-2024-08-06"
    assert response_model(b'{"choices":[]}') is None
    assert response_model(b'{"model": 42}') is None


def test_the_exporter_is_not_configured_without_a_connection_string():
    assert configure_exporter({}) is False
    assert exporter_options({"APPLICATIONINSIGHTS_CONNECTION_STRING": "  "}) is None


def test_exporter_options_turn_auto_instrumentation_off_and_use_the_identity_bicep_sets():
    env = {
        "APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=00000000-0000-0000-0000-000000000000",
        "APPLICATIONINSIGHTS_AUTHENTICATION_STRING": "Authorization=AAD;ClientId=11111111-2222-3333-4444-555555555555",
    }
    options = exporter_options(env)
    assert options["instrumentation_options"] == {name: {"enabled": False} for name in AUTO_INSTRUMENTATIONS}
    assert {"fastapi", "azure_sdk"} <= set(AUTO_INSTRUMENTATIONS)  # a second server span; a span per refresh
    assert options["enable_live_metrics"] is False
    credential = options["credential"]
    assert type(credential).__name__ == "ManagedIdentityCredential"
    # That it asks for a token with this client id is proven through the ingestion endpoint (tests/e2e).
    connection = env["APPLICATIONINSIGHTS_CONNECTION_STRING"]
    without_auth = exporter_options({"APPLICATIONINSIGHTS_CONNECTION_STRING": connection})
    assert "credential" not in without_auth
