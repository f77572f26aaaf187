"""Every way a request ends leaves one usage record with its outcome (and so a count in the request metric).

Sync outcomes go through the pipeline over real HTTP to fake backends; async ones through the activities
with Azurite (as the Durable runtime calls them); a batch through `batch_finish`. Each test reads the records
the gateway's own recorder fanned out, and the metric the real `UsageMetrics` sink made of them.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from gateway import translate
from gateway.bootstrap import Services, build_gateway
from gateway.metrics import UsageMetrics
from gateway.pipeline import Deferred, Inbound
from gateway.usage import UsageRecord, outcome_of
from orchestrations import activities, batch_activities, starter
from tests.support.fake_openai import FakeAzureOpenAI, Fault

KEY = "outcome-key"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture
async def stack(azurite) -> AsyncIterator[tuple[Services, FakeAzureOpenAI, FakeAzureOpenAI, list[UsageRecord], dict]]:
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


def requests_by_outcome(reader: InMemoryMetricReader) -> dict[str, int]:
    counts: dict[str, int] = {}
    for resource in reader.get_metrics_data().resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == "gateway.requests":
                    for point in metric.data.data_points:
                        outcome = point.attributes["gateway.outcome"]
                        counts[outcome] = counts.get(outcome, 0) + point.value
    return counts


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


async def test_a_caller_limit_refusal_is_a_record_with_its_own_outcome(stack):
    """What the callers module does when a caller is over its limit (issue 12): a record, no backend."""
    services, _, _, records, metrics = stack
    from gateway.attempt import usage_record

    route = translate.resolve("POST", "/v1/chat/completions", "", "application/json", json.dumps(CHAT).encode(),
                              services.settings.api_version)
    refusal = usage_record(route, None, "r-limit", 429, 0, "team-a")
    refusal.outcome = "throttled_caller"
    services.usage.record(refusal)
    assert requests_by_outcome(metrics["reader"]) == {"throttled_caller": 1}
    rows, _ = await services.usage_counters.query(0, int(time.time() // 60))
    assert [(counts.requests, counts.throttled) for _, counts in rows] == [(1, 1)]
    assert records == [refusal]


async def submit(services: Services) -> dict:
    raw = json.dumps(CHAT).encode()
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
