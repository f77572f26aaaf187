"""Every way a request ends leaves one usage record with its outcome (and so a count in the request metric).

Sync outcomes go through the pipeline over real HTTP to fake backends; async ones through the activities
with Azurite (as the Durable runtime calls them); a batch through `batch_finish`. Each test reads the records
the gateway's own recorder fanned out, and the metric the real `UsageMetrics` sink made of them.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator

import azure.durable_functions as df
import azure.functions as func
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from gateway import translate
from gateway.bootstrap import Services, build_gateway
from gateway.metrics import UsageMetrics
from gateway.pipeline import Deferred, Inbound
from gateway.usage import UsageRecord, outcome_of
from orchestrations import activities, batch_activities, starter
from orchestrations.blueprint import build_async_blueprint
from orchestrations.workflows import RELAY_ORCHESTRATOR
from tests.support.durable_standin import DurableEngine, RuntimeStatus, discover_durable_functions
from tests.support.fake_openai import FakeAzureOpenAI, Fault

KEY = "outcome-key"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture
async def stack(
    azurite, request
) -> AsyncIterator[tuple[Services, FakeAzureOpenAI, FakeAzureOpenAI, list[UsageRecord], dict]]:
    """The gateway on Azurite over two fakes; a test adds settings: `parametrize("stack", [{...}], indirect=True)`."""
    extra: dict[str, str] = getattr(request, "param", {})
    async with FakeAzureOpenAI(name="weu") as weu, FakeAzureOpenAI(name="neu") as neu:
        suffix = uuid.uuid4().hex[:8]
        services = build_gateway({
            "GATEWAY_BACKEND_1": f"name=weu;host={weu.url};mode=direct;api-key=fake-key;priority=1;"
            "deployments=gpt-4o-mini",
            "GATEWAY_BACKEND_2": f"name=neu;host={neu.url};mode=direct;api-key=fake-key;priority=2;"
            "deployments=gpt-4o-mini",
            "GATEWAY_API_KEYS": f"team-a:{KEY}",
            "GATEWAY_MAX_WAIT_S": "0",
            "AzureWebJobsStorage": azurite.connection_string,
            "GATEWAY_STATE_TABLE": "outcomes" + suffix,
            "GATEWAY_USAGE_TABLE": "outcomeusage" + suffix,
            "GATEWAY_RESULTS_CONTAINER": "outcomes-" + suffix,
            "GATEWAY_COMPLETIONS_QUEUE": "outcomes-" + suffix,
            **extra,
        })
        records: list[UsageRecord] = []
        services.usage.add_sink(records.append)
        reader = InMemoryMetricReader()
        services.usage.add_sink(UsageMetrics(MeterProvider(metric_readers=[reader]).get_meter("test")))
        metrics = {"reader": reader}
        try:
            yield services, weu, neu, records, metrics
        finally:
            await services.close()


def requests_by(reader: InMemoryMetricReader, attribute: str) -> dict[str, int]:
    """The `gateway.requests` counter summed by one of its attributes (points without it left out)."""
    counts: dict[str, int] = {}
    for resource in reader.get_metrics_data().resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == "gateway.requests":
                    for point in metric.data.data_points:
                        if value := point.attributes.get(attribute):
                            counts[value] = counts.get(value, 0) + point.value
    return counts


def requests_by_outcome(reader: InMemoryMetricReader) -> dict[str, int]:
    return requests_by(reader, "gateway.outcome")


def post(body: dict, **headers: str) -> Inbound:
    return Inbound("POST", "/v1/chat/completions", "", {"api-key": KEY, **headers}, json.dumps(body).encode())


async def test_sync_outcomes(stack):
    services, weu, neu, records, metrics = stack
    handle = services.pipeline.handle
    assert (await handle(post(CHAT))).status == 200
    weu.enqueue(Fault.content_filter())
    assert (await handle(post(CHAT))).status == 400
    weu.enqueue(Fault.status(400))
    assert (await handle(post(CHAT))).status == 400
    weu.enqueue(Fault.status(500))  # both fail: weu, then neu
    neu.enqueue(Fault.status(500))
    assert (await handle(post(CHAT))).status == 503
    weu.enqueue(Fault.status(429, retry_after=30))
    neu.enqueue(Fault.status(429, retry_after=30))
    assert (await handle(post(CHAT))).status == 429  # every backend throttled
    assert (await handle(post(CHAT))).status == 429  # every backend still cooling down: no attempt at all
    out = await handle(post({**CHAT, "stream": True}))
    assert out.status == 429
    outcomes = [outcome_of(r) for r in records]
    assert outcomes == ["success", "content_filtered", "client_error", "failed", "throttled_backend",
                        "throttled_backend", "throttled_backend"]
    assert records[-1].backend is None and records[-1].attempts == 0  # refused before any attempt
    assert requests_by_outcome(metrics["reader"]) == {"success": 1, "content_filtered": 1, "client_error": 1,
                                                      "failed": 1, "throttled_backend": 3}


async def test_a_stream_cut_by_the_backend_is_failed(stack):
    services, weu, _, records, _ = stack
    weu.enqueue(Fault.cut_stream(after_chunks=2))
    out = await services.pipeline.handle(post({**CHAT, "stream": True}))
    assert out.stream is not None
    async for _ in out.stream:
        pass
    [record] = records
    assert (record.status, record.error, outcome_of(record)) == (200, "connect", "failed")


@pytest.mark.parametrize("stack", [{"GATEWAY_PROFILE_ONE": "rpm=1", "GATEWAY_CALLER_PROFILES": "team-a=one"}],
                         indirect=True)
async def test_a_caller_limit_refusal_is_a_record_with_its_own_outcome_and_limit(stack):
    """Over its own RPM (issue 12): one record, no backend, throttled by the caller's limit, naming it; in the
    request metric and the usage counters too."""
    services, weu, neu, records, metrics = stack
    assert (await services.pipeline.handle(post(CHAT))).status == 200
    assert (await services.pipeline.handle(post(CHAT))).status == 429
    refusal = records[-1]
    assert (refusal.backend, refusal.attempts, refusal.limit, outcome_of(refusal)) == (None, 0, "rpm",
                                                                                       "throttled_caller")
    assert len(weu.requests) + len(neu.requests) == 1  # never forwarded
    assert requests_by_outcome(metrics["reader"]) == {"success": 1, "throttled_caller": 1}
    assert refused_by_limit(metrics["reader"]) == {"rpm": 1}
    rows, _ = await services.usage_counters.query(0, int(time.time() // 60))
    assert (sum(c.requests for _, c in rows), sum(c.throttled for _, c in rows)) == (2, 1)


def refused_by_limit(reader: InMemoryMetricReader) -> dict[str, int]:
    return requests_by(reader, "gateway.limit")


async def submit(services: Services, body: dict = CHAT) -> dict:
    raw = json.dumps(body).encode()
    inbound = Inbound("POST", "/v1/chat/completions", "", {"content-type": "application/json"}, raw)
    route = translate.resolve("POST", inbound.path, "", "application/json", raw, services.settings.api_version)
    return await starter.accept(services, Deferred(inbound, route, "req-" + uuid.uuid4().hex[:6], "team-a", "test"))


async def test_async_outcomes(stack):
    services, weu, _, records, metrics = stack
    answered = await submit(services)
    result = await activities.attempt_backend(services, {"request": answered, "attempt": 1, "avoid": []})
    assert result["status"] == "succeeded"
    filtered = await submit(services)
    weu.enqueue(Fault.content_filter())
    result = await activities.attempt_backend(services, {"request": filtered, "attempt": 1, "avoid": []})
    assert (result["status"], result["http_status"]) == ("failed", 400)
    expired = await submit(services)
    expired["deadline"] = time.time() - 1
    outcome = await activities.attempt_backend(services, {"request": expired, "attempt": 1, "avoid": []})
    assert outcome["status"] == "expired"
    await activities.publish_completion(services, {"request": expired, "outcome": {**outcome, "attempts": 0}})
    exhausted = await submit(services)
    failed = activities.ended("failed", "No backend served the request in 20 attempts.", "attempts_exhausted")
    await activities.publish_completion(services, {"request": exhausted, "outcome": {**failed, "attempts": 20}})
    assert await starter.publish_cancelled(services, await submit(services))

    assert [outcome_of(r) for r in records] == ["success", "content_filtered", "expired", "failed", "cancelled"]
    assert all(r.is_async and r.caller == "team-a" for r in records)
    assert all(r.duration_ms >= 0 for r in records) and records[2].duration_ms > 0  # since submission
    assert requests_by_outcome(metrics["reader"]) == {"success": 1, "content_filtered": 1, "expired": 1,
                                                      "failed": 1, "cancelled": 1}


async def test_an_async_stream_that_ends_in_an_error_event_is_recorded_as_the_sync_path_records_it(stack):
    services, weu, _, records, _ = stack
    request = await submit(services, {**CHAT, "stream": True})
    weu.enqueue(Fault.error_event(after_chunks=2))
    result = await activities.attempt_backend(services, {"request": request, "attempt": 1, "avoid": []})
    assert (result["status"], result["http_status"], result["backend"]) == ("failed", 502, "weu")
    [record] = records
    assert (record.error, outcome_of(record), record.streaming, record.backend) == ("stream_error", "failed", True,
                                                                                     "weu")


async def run_relay(services: Services, request: dict) -> dict:
    """The real relay orchestrator and activities of the app's async blueprint, on the in-process Durable stand-in
    (timers scaled down): the completion message it returns."""
    app = df.DFApp(http_auth_level=func.AuthLevel.ANONYMOUS)
    app.register_functions(build_async_blueprint(services))
    functions = discover_durable_functions(app)
    engine = DurableEngine(functions.orchestrators, functions.activities, time_scale=0.001)
    try:
        instance = engine.start_new(RELAY_ORCHESTRATOR, json.dumps(json.dumps(request)), request["id"])
        async with asyncio.timeout(30):
            await engine.wait(instance.instance_id)
    finally:
        await engine.stop()
    assert instance.runtime_status == RuntimeStatus.COMPLETED, instance.output
    return instance.output


@pytest.mark.parametrize("stack", [{"GATEWAY_ASYNC_MAX_ATTEMPTS": "2"}], indirect=True)
async def test_async_work_out_of_attempts_is_recorded_with_the_last_backend_tried(stack):
    services, weu, neu, records, _ = stack
    weu.always(Fault.status(500))
    neu.always(Fault.status(500))
    message = await run_relay(services, await submit(services))
    assert (message["status"], message["attempts"], message["backend"]) == ("failed", 2, "neu")
    assert len(weu.requests) == len(neu.requests) == 1  # weu first (priority 1), then neu
    [record] = records  # the attempts that failed left no record of their own: the request's end is the record
    assert (record.backend, record.deployment, record.attempts, record.error, outcome_of(record)) == (
        "neu", "gpt-4o-mini", 2, "attempts_exhausted", "failed")
    assert record.is_async and record.caller == "team-a"


async def test_a_finished_batch_is_one_record_with_its_lines(stack):
    services, _, _, records, _ = stack
    job_id = "batch_" + uuid.uuid4().hex[:8]
    lines = [{"custom_id": f"l{i}", "method": "POST", "url": "/v1/chat/completions", "body": CHAT} for i in range(3)]
    await services.results.put_blob(f"files/file-{job_id}", "".join(json.dumps(x) + "\n" for x in lines).encode(),
                                    "application/jsonl", {"caller": "team-a"})
    answered = [{"custom_id": f"l{i}", "response": {"status_code": 200, "body": {
        "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14}}}} for i in range(2)]
    await services.results.put_blob(f"batches/{job_id}/results.jsonl",
                                    "".join(json.dumps(x) + "\n" for x in answered).encode(), "application/jsonl", {})
    job = {"id": job_id, "request_id": "req-batch", "caller": "team-a", "model": "gpt-4o-mini",
           "input_file_id": f"file-{job_id}", "created_at": int(time.time()) - 60}
    end = {"status": "expired", "rounds": 2}
    await batch_activities.batch_finish(services, {"job": job, "end": end})
    await batch_activities.batch_finish(services, {"job": job, "end": end})  # retried by the runtime: once
    [record] = records
    assert (record.operation, outcome_of(record), record.caller, record.model) == (
        "batch", "expired", "team-a", "gpt-4o-mini")
    assert (record.batch.total, record.batch.succeeded, record.batch.failed) == (3, 2, 1)
    assert (record.usage.prompt_tokens, record.usage.completion_tokens) == (20, 8)
