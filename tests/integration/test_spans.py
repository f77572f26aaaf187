"""Spans of the synchronous path, in process: Pipeline → aiohttp → two fake backends, spans kept in memory.

What reaches Application Insights through the real exporter is tests/e2e/test_telemetry_export.py; this file
checks the span tree and its attributes precisely (parents, which span ends when, what a stream carries).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from gateway import tracing
from gateway.bootstrap import Services, build_services
from gateway.config import load_settings
from gateway.pipeline import Inbound
from tests.support.fake_openai import FakeAzureOpenAI, Fault

KEY = "span-key"
MODELS = "deployments=gpt-4o-mini"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}
CLIENT_TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.enable(provider.get_tracer("test"))
    try:
        yield exporter
    finally:
        tracing.disable()


@pytest.fixture
async def gateway(spans: InMemorySpanExporter) -> AsyncIterator[tuple[Services, FakeAzureOpenAI, FakeAzureOpenAI]]:
    async with FakeAzureOpenAI(name="weu") as weu, FakeAzureOpenAI(name="neu") as neu:
        services = build_services(
            load_settings(
                {
                    "GATEWAY_BACKEND_1": f"name=weu;host={weu.url};mode=direct;api-key=fake-key;priority=1;{MODELS}",
                    "GATEWAY_BACKEND_2": f"name=neu;host={neu.url};mode=direct;api-key=fake-key;priority=2;{MODELS}",
                    "GATEWAY_API_KEYS": f"team-a:{KEY}",
                }
            )
        )
        services.usage.add_sink(tracing.TraceSink())
        try:
            yield services, weu, neu
        finally:
            await services.close()


def post(body: dict, **headers: str) -> Inbound:
    return Inbound("POST", "/v1/chat/completions", "", {"api-key": KEY, **headers}, json.dumps(body).encode())


async def test_a_request_is_a_server_span_over_one_client_span_per_attempt(gateway, spans):
    services, weu, neu = gateway
    weu.enqueue(Fault.status(429, retry_after=30))
    out = await services.pipeline.handle(post(CHAT, traceparent=CLIENT_TRACEPARENT))
    assert out.status == 200 and out.headers["x-gateway-backend"] == "neu"
    finished = spans.get_finished_spans()
    [server] = [s for s in finished if s.kind == SpanKind.SERVER]
    clients = sorted((s for s in finished if s.kind == SpanKind.CLIENT), key=lambda s: s.attributes["gateway.attempt"])
    assert server.context.trace_id == int(CLIENT_TRACEPARENT.split("-")[1], 16)  # continues the client's trace
    assert [c.parent.span_id for c in clients] == [server.context.span_id] * 2
    throttled, answered = clients
    assert throttled.attributes["gateway.backend"] == "weu" and throttled.attributes["error.type"] == "throttled"
    assert throttled.attributes["http.response.status_code"] == 429
    assert answered.attributes["server.address"] == "127.0.0.1" and answered.attributes["gateway.attempt"] == 2
    assert answered.attributes["gen_ai.usage.output_tokens"] > 0  # ended with the record: it carries the usage
    assert answered.attributes["gen_ai.response.model"]
    attrs = server.attributes
    assert attrs["gen_ai.operation.name"] == "chat" and attrs["gen_ai.provider.name"] == "azure.ai.openai"
    assert attrs["gen_ai.request.model"] == "gpt-4o-mini" and attrs["gateway.caller"] == "team-a"
    assert attrs["gateway.backend"] == "neu" and attrs["gateway.attempt"] == 2 and attrs["gateway.outcome"] == "success"
    assert attrs["gen_ai.usage.input_tokens"] > 0 and attrs["http.response.status_code"] == 200
    # The backend saw the attempt's span as its parent, not the client's.
    sent = neu.requests[-1].headers["traceparent"]
    assert sent.split("-")[2] == f"{answered.context.span_id:016x}"


async def test_a_stream_span_ends_when_the_stream_ends_with_its_time_to_first_chunk(gateway, spans):
    services, _, _ = gateway
    out = await services.pipeline.handle(post({**CHAT, "stream": True}))
    assert out.stream is not None
    assert not [s for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER]  # still streaming
    async for _ in out.stream:
        pass
    [server] = [s for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert server.attributes["gateway.streaming"] is True and server.attributes["gateway.first_chunk_ms"] > 0
    assert server.attributes["gen_ai.usage.output_tokens"] > 0


async def test_requests_without_a_backend_answer_still_end_their_span(gateway, spans):
    services, weu, neu = gateway
    unauthorized = await services.pipeline.handle(Inbound("POST", "/v1/chat/completions", "", {}, b"{}"))
    weu.enqueue(Fault.status(429, retry_after=30))
    neu.enqueue(Fault.status(429, retry_after=30))
    throttled = await services.pipeline.handle(post(CHAT))
    assert (unauthorized.status, throttled.status) == (401, 429)
    servers = [s for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert [s.attributes["http.response.status_code"] for s in servers] == [401, 429]
    assert servers[1].attributes["gateway.outcome"] == "throttled_backend"
