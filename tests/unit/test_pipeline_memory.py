"""The request path and the one attempt over an in-memory transport: no sockets, no aiohttp, no storage.

The real `Services` are built from settings (the pipeline, the attempt, the pool, the relay, the usage recorder)
with `tests.support.memory_transport` as the backends; each test scripts what the two backends answer and checks
what the client got, what each backend was sent, what the pool learnt and the usage record.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from gateway.bootstrap import Services, build_services
from gateway.config import load_settings
from gateway.messages import Inbound, Outbound
from gateway.usage import Usage, UsageRecord
from tests.support.clock import Clock
from tests.support.memory_transport import Answer, MemoryResponse, MemoryTransport

WEU, NEU = "https://weu.example.test", "https://neu.example.test"
KEY = "client-key"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}
EMBED = {"model": "text-embedding-3-small", "input": "hello"}
USAGE = {"prompt_tokens": 9, "completion_tokens": 20, "total_tokens": 29}


@dataclass
class Rig:
    services: Services
    transport: MemoryTransport
    records: list[UsageRecord]
    clock: Clock


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    settings = load_settings(
        {
            "GATEWAY_BACKEND_1": f"name=weu;host={WEU};mode=direct;api-key=weu-key;priority=1;"
            "deployments=gpt-4o-mini,text-embedding-3-small",
            "GATEWAY_BACKEND_2": f"name=neu;host={NEU};mode=direct;api-key=neu-key;priority=2;"
            "deployments=gpt-4o-mini,text-embedding-3-small",
            "GATEWAY_API_KEYS": KEY,
            "GATEWAY_BREAKER_FAILURES": "1",  # one host failure opens the backend: visible after one request
            "GATEWAY_MAX_WAIT_S": "0",
        }
    )
    transport, clock, records = MemoryTransport(), Clock(), []
    services = build_services(settings, transport=transport, clock=clock)
    services.usage.add_sink(records.append)
    try:
        yield Rig(services, transport, records, clock)
        assert transport.unused() == 0, "a scripted answer was never asked for"
    finally:
        await services.close()


def post(path: str, body: dict) -> Inbound:
    return Inbound("POST", path, "", {"content-type": "application/json", "api-key": KEY}, json.dumps(body).encode())


def completion(text: str) -> dict:
    message = {"role": "assistant", "content": text}
    return {"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}], "usage": USAGE}  # fmt: skip


def chunk(delta: dict, finish: str | None = None) -> dict:
    """A chat.completion.chunk as Azure sends it when include_usage is on: `"usage":null` last."""
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "gpt-4o-mini", "choices": [choice],
            "usage": None}  # fmt: skip


def only(sent: list, n: int = 1) -> MemoryResponse:
    assert len(sent) == n
    response = sent[-1].response
    assert response is not None
    return response


async def test_a_429_moves_the_request_to_the_next_backend_and_keeps_only_that_deployment_away(rig):
    throttled = {"error": {"code": "429", "message": "Rate limit reached"}}
    rig.transport.script(WEU, Answer.json(429, throttled, {"retry-after-ms": "1500"}))
    rig.transport.script(NEU, Answer.json(200, completion("from neu")))

    out = await rig.services.pipeline.handle(post("/v1/chat/completions", CHAT))

    assert out.status == 200 and json.loads(out.body)["choices"][0]["message"]["content"] == "from neu"
    assert (out.headers["x-gateway-backend"], out.headers["x-gateway-attempts"]) == ("neu", "2")
    weu_sent, neu_sent = rig.transport.to(WEU), rig.transport.to(NEU)
    assert only(weu_sent).released and only(neu_sent).released  # both connections go back to the pool
    assert weu_sent[0].url == f"{WEU}/openai/deployments/gpt-4o-mini/chat/completions?api-version=" + (
        rig.services.settings.api_version
    )
    # Each backend got its own key, never the client's.
    assert (weu_sent[0].headers["api-key"], neu_sent[0].headers["api-key"]) == ("weu-key", "neu-key")
    pool = rig.services.pool
    assert pool.status("weu", "gpt-4o-mini") == "open" and pool.status("weu") == "closed"
    assert pool.state.deployments["weu:gpt-4o-mini"].breaker.open_until == pytest.approx(rig.clock.now + 1.5)
    [record] = rig.records
    assert (record.status, record.backend, record.attempts, record.usage) == (200, "neu", 2, Usage(9, 20, 29))

    # The 429 was for one deployment: embeddings still go to the first backend.
    rig.transport.script(WEU, Answer.json(200, {"object": "list", "data": [], "usage": {"prompt_tokens": 1}}))
    out = await rig.services.pipeline.handle(post("/v1/embeddings", EMBED))
    assert (out.status, out.headers["x-gateway-backend"]) == (200, "weu")


async def test_a_stream_is_relayed_chunk_by_chunk_and_its_usage_counted(rig):
    pieces = ["Hel", "lo ", "there"]
    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": p}) for p in pieces]
    events += [chunk({}, "stop"), {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [],
                                    "usage": USAGE}, "[DONE]"]  # fmt: skip
    answer = Answer.stream(events)
    rig.transport.script(WEU, answer)

    out = await rig.services.pipeline.handle(post("/v1/chat/completions", {**CHAT, "stream": True}))

    assert out.status == 200 and out.stream is not None
    response = only(rig.transport.to(WEU))
    received = []  # each chunk the client got, with how many upstream reads the gateway had made by then
    async for data in out.stream:
        received.append((data, response.pulled))
    # The client's stream is the backend's, read for read: the usage the gateway asked for is taken out again
    # (the `"usage":null` members and the usage-only event), and nothing was read ahead of the client.
    usage_only = len(events) - 2
    expected = [(raw.replace(b',"usage":null}', b"}"), i + 1) for i, raw in enumerate(answer.chunks) if i != usage_only]
    assert received == expected
    assert response.released and not response.closed
    sent = json.loads(rig.transport.to(WEU)[0].body)
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    [record] = rig.records
    assert (record.status, record.streaming, record.usage, record.error) == (200, True, Usage(9, 20, 29), None)
    deployment = rig.services.pool.state.deployments["weu:gpt-4o-mini"]
    assert list(deployment.completion_tokens) == [20] and deployment.tokens_per_s is not None


async def test_a_connection_error_counts_against_the_whole_backend(rig):
    rig.transport.script(WEU, Answer.failure("connect"))
    rig.transport.script(NEU, Answer.json(200, completion("from neu")))

    out = await rig.services.pipeline.handle(post("/v1/chat/completions", CHAT))

    assert (out.status, out.headers["x-gateway-backend"], out.headers["x-gateway-attempts"]) == (200, "neu", "2")
    pool = rig.services.pool
    weu = pool.state.backends["weu"]
    assert pool.status("weu") == "open" and (weu.breaker.reason, weu.last_error) == ("1 failures", "connect")
    assert pool.status("weu", "gpt-4o-mini") == "closed"  # the host failed, not the deployment
    # So every model now avoids it, embeddings included.
    rig.transport.script(NEU, Answer.json(200, {"object": "list", "data": [], "usage": {"prompt_tokens": 1}}))
    out = await rig.services.pipeline.handle(post("/v1/embeddings", EMBED))
    assert (out.status, out.headers["x-gateway-backend"]) == (200, "neu")
    assert len(rig.transport.to(WEU)) == 1


async def test_a_stream_that_breaks_off_ends_with_an_error_event_and_blames_the_backend(rig):
    events = [chunk({"role": "assistant", "content": ""}), chunk({"content": "Hel"}), chunk({"content": "lo"})]
    rig.transport.script(WEU, Answer.stream([*events, "[DONE]"], break_after=2))

    out = await rig.services.pipeline.handle(post("/v1/chat/completions", {**CHAT, "stream": True}))
    assert out.stream is not None
    received = [data async for data in out.stream]

    assert len(received) == 3 and b'"content":"Hel"' in received[1]
    error = json.loads(received[2].removeprefix(b"data: "))["error"]
    assert (error["code"], error["type"]) == ("bad_gateway", "upstream_error")
    response = only(rig.transport.to(WEU))
    assert response.closed and not response.released  # a broken connection is never reused
    assert rig.services.pool.status("weu") == "open"
    assert len(rig.transport.to(NEU)) == 0  # the 200 was sent: the request is not re-sent elsewhere
    [record] = rig.records
    assert (record.status, record.backend, record.error) == (200, "weu", "connect")


async def test_every_backend_failing_is_one_error_and_one_record(rig):
    rig.transport.script(WEU, Answer.json(500, {"error": {"message": "boom"}}))
    rig.transport.script(NEU, Answer.json(503, {"error": {"message": "busy"}}, {"retry-after": "7"}))

    out: Outbound = await rig.services.pipeline.handle(post("/v1/chat/completions", CHAT))

    assert (out.status, out.headers["Retry-After"]) == (503, "7")
    assert json.loads(out.body)["error"]["type"] and b"boom" not in out.body  # the gateway's own error body
    assert only(rig.transport.to(WEU)).released and only(rig.transport.to(NEU)).released
    [record] = rig.records
    assert (record.status, record.backend, record.attempts, record.error) == (503, "neu", 2, "failed")
