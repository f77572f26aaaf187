"""A long plain generation is waited for, not cut at the read timeout and billed again elsewhere.

A non-streamed answer's headers come only after the whole generation. With a completion cap the gateway waits
for them as long as that cap may take (at GATEWAY_TOKENS_PER_SECOND here, nothing being observed yet), within the
sync budget; without a cap, or for a stream, a silent backend is left at the read timeout as before. Real aiohttp
against two fake backends, the first answering after 2 s, with a 1 s read timeout.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from gateway.bootstrap import Services, build_services
from gateway.config import load_settings
from gateway.messages import Inbound, Outbound
from gateway.usage import UsageRecord
from tests.support.fake_openai import FakeAzureOpenAI

KEY = "client-key"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Write at length"}]}
READ_TIMEOUT_S = 1
ANSWER_AFTER_MS = 2000  # past the read timeout: only a stretched wait sees this answer


@pytest.fixture
async def stack() -> AsyncIterator[tuple[FakeAzureOpenAI, FakeAzureOpenAI, Services, list[UsageRecord]]]:
    async with (
        FakeAzureOpenAI(name="weu", api_key="weu-key", latency_ms=ANSWER_AFTER_MS) as weu,
        FakeAzureOpenAI(name="neu", api_key="neu-key") as neu,
    ):
        settings = load_settings(
            {
                "GATEWAY_BACKEND_1": f"name=weu;host={weu.url};mode=direct;api-key=weu-key;priority=1;"
                "deployments=gpt-4o-mini",
                "GATEWAY_BACKEND_2": f"name=neu;host={neu.url};mode=direct;api-key=neu-key;priority=2;"
                "deployments=gpt-4o-mini",
                "GATEWAY_API_KEYS": KEY,
                "GATEWAY_READ_TIMEOUT_S": str(READ_TIMEOUT_S),
                "GATEWAY_TOKENS_PER_SECOND": "40",
            }
        )
        services = build_services(settings)
        records: list[UsageRecord] = []
        services.usage.add_sink(records.append)
        try:
            yield weu, neu, services, records
        finally:
            await services.close()


async def send(services: Services, body: dict) -> tuple[Outbound, bytes]:
    headers = {"content-type": "application/json", "api-key": KEY}
    inbound = Inbound("POST", "/v1/chat/completions", "", headers, json.dumps(body).encode())
    out = await services.pipeline.handle(inbound)
    raw = out.body if out.stream is None else b"".join([chunk async for chunk in out.stream])
    return out, raw


async def test_a_capped_plain_request_gets_its_answer_from_the_first_backend(stack):
    """4,000 tokens at 40 tokens/s may take 100 s: the 2 s answer is waited for, with one backend request."""
    weu, neu, services, records = stack
    out, raw = await send(services, {**CHAT, "max_tokens": 4000})
    assert out.status == 200 and json.loads(raw)["object"] == "chat.completion"
    assert out.headers["x-gateway-backend"] == "weu" and out.headers["x-gateway-attempts"] == "1"
    assert len(weu.requests) == 1 and neu.requests == []  # one billed call
    assert [(r.backend, r.attempts, r.status) for r in records] == [("weu", 1, 200)]
    assert services.pool.backend("weu").last_error is None and len(services.pool.backend("weu").failures) == 0


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({}, id="no cap"),
        pytest.param({"max_tokens": 20}, id="a cap that fits the read timeout"),  # 0.5 s at 40 tokens/s
        pytest.param({"max_tokens": 4000, "stream": True}, id="a stream"),  # read timeout between chunks
    ],
)
async def test_otherwise_a_silent_backend_is_left_at_the_read_timeout(stack, extra):
    weu, neu, services, records = stack
    out, raw = await send(services, {**CHAT, **extra})
    assert out.status == 200 and raw
    assert out.headers["x-gateway-backend"] == "neu" and out.headers["x-gateway-attempts"] == "2"
    assert len(weu.requests) == 1 and len(neu.requests) == 1
    assert [(r.backend, r.attempts, r.status) for r in records] == [("neu", 2, 200)]
    assert services.pool.backend("weu").last_error == "timeout"
