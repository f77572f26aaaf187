"""The synchronous path through real HTTP: Pipeline → aiohttp → two fake Azure OpenAI backends.

The hosting layer is left out here (the e2e tests cover it through the development host), so each test can
look at the usage records and at exactly what every backend received.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack

import pytest

from gateway.bootstrap import Services, build_services
from gateway.config import load_settings
from gateway.messages import Inbound, Outbound
from gateway.usage import UsageRecord
from tests.support.fake_identity import FakeIdentityEndpoint
from tests.support.fake_openai import FakeAzureOpenAI, Fault
from tests.support.ports import closed_port

KEY = "client-key"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}


@pytest.fixture
async def backends() -> AsyncIterator[tuple[FakeAzureOpenAI, FakeAzureOpenAI]]:
    async with (
        FakeAzureOpenAI(name="weu", api_key="weu-key") as weu,
        FakeAzureOpenAI(name="neu", api_key="neu-key") as neu,
    ):
        yield weu, neu


type BuildGateway = Callable[[Mapping[str, str]], Services]
type MakeGateway = Callable[..., tuple[Services, list[UsageRecord]]]


@pytest.fixture
async def build_gateway() -> AsyncIterator[BuildGateway]:
    """Builds gateways from settings; every one is closed at teardown, whether the test passed or not."""
    async with AsyncExitStack() as built:

        def build(env: Mapping[str, str]) -> Services:
            gateway = build_services(load_settings(dict(env)))  # the one place the tests construct the class
            built.push_async_callback(gateway.close)
            return gateway

        yield build


@pytest.fixture
def make_gateway(build_gateway: BuildGateway) -> MakeGateway:
    """``make_gateway(weu, neu, **extra_settings)``: a gateway over both fakes, and the usage records it makes."""

    def make(weu: FakeAzureOpenAI, neu: FakeAzureOpenAI, **extra: str) -> tuple[Services, list[UsageRecord]]:
        env = {
            "GATEWAY_BACKEND_1": f"name=weu;host={weu.url};mode=direct;api-key=weu-key;priority=1;"
            "deployments=gpt-4o-mini=gpt-4o-mini,text-embedding-3-small,whisper,tts",
            "GATEWAY_BACKEND_2": f"name=neu;host={neu.url};mode=direct;api-key=neu-key;priority=2;"
            "deployments=gpt-4o-mini,text-embedding-3-small",
            "GATEWAY_API_KEYS": f"other-key,{KEY}",
            **extra,
        }
        gateway = build_gateway(env)
        records: list[UsageRecord] = []
        gateway.usage.add_sink(records.append)
        return gateway, records

    return make


def post(
    path: str, body: dict | bytes, *, key: str | None = KEY, headers: dict | None = None, query: str = ""
) -> Inbound:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    h = {"content-type": "application/json", **(headers or {})}
    if key:
        h["api-key"] = key
    return Inbound("POST", path, query, h, raw)


async def collect(out: Outbound) -> bytes:
    if out.stream is None:
        return out.body
    return b"".join([chunk async for chunk in out.stream])


def sse_payloads(raw: bytes) -> list[str]:
    return [line[6:] for line in raw.decode().split("\n") if line.startswith("data: ")]


async def test_v1_chat_goes_to_the_best_priority_with_its_own_credentials(backends, make_gateway):
    weu, neu = backends
    gateway, records = make_gateway(weu, neu)
    platform = {"x-arr-log-id": "abc", "disguised-host": "app.azurewebsites.net", "x-forwarded-for": "10.0.0.1"}
    out = await gateway.pipeline.handle(
        post("/v1/chat/completions", CHAT, headers={"x-request-id": "req-1", **platform})
    )
    body = json.loads(await collect(out))
    assert out.status == 200 and "weu" in body["choices"][0]["message"]["content"]
    assert out.headers["x-gateway-backend"] == "weu" and out.headers["x-gateway-attempts"] == "1"
    assert out.headers["x-request-id"] == "req-1"
    [sent] = weu.requests
    assert sent.path == "/openai/deployments/gpt-4o-mini/chat/completions"
    assert sent.query["api-version"] == "2024-10-21"
    assert sent.headers["api-key"] == "weu-key"  # the backend's key, never the client's
    assert KEY not in json.dumps(sent.headers)
    assert sent.headers["x-request-id"] == "req-1"
    assert not set(platform) & set(sent.headers)  # the front end's headers stay at the front end
    assert sent.body == json.dumps(CHAT).encode()  # byte for byte
    assert neu.requests == []
    [record] = records
    assert (record.backend, record.deployment, record.model, record.status, record.streaming) == (
        "weu",
        "gpt-4o-mini",
        "gpt-4o-mini",
        200,
        False,
    )
    assert record.usage is not None and not record.usage.estimated
    assert record.usage.total_tokens == body["usage"]["total_tokens"] > 0
    assert record.caller.startswith("key:") and KEY not in record.caller  # who, for chargeback; never the key


@pytest.mark.parametrize(
    "fault",
    [Fault.status(429, retry_after=30), Fault.status(500), Fault.status(503), Fault.reset()],
    ids=["429", "500", "503", "reset"],
)
async def test_retryable_failures_move_on_to_the_next_backend(backends, fault, make_gateway):
    weu, neu = backends
    gateway, records = make_gateway(weu, neu)
    weu.enqueue(fault)
    out = await gateway.pipeline.handle(post("/v1/chat/completions", CHAT))
    assert out.status == 200
    assert out.headers["x-gateway-backend"] == "neu" and out.headers["x-gateway-attempts"] == "2"
    assert len(weu.requests) == 1 and len(neu.requests) == 1
    assert records[0].attempts == 2 and records[0].backend == "neu"


async def test_content_filter_400_is_returned_unchanged_and_never_retried(backends, make_gateway):
    weu, neu = backends
    gateway, _ = make_gateway(weu, neu)
    weu.enqueue(Fault.content_filter())
    out = await gateway.pipeline.handle(post("/v1/chat/completions", CHAT))
    error = json.loads(await collect(out))["error"]
    assert out.status == 400 and error["code"] == "content_filter"
    assert error["innererror"]["code"] == "ResponsibleAIPolicyViolation"
    assert neu.requests == []


async def test_every_backend_throttled_gives_429_with_the_earliest_retry_after(backends, make_gateway):
    weu, neu = backends
    gateway, _ = make_gateway(weu, neu)
    weu.enqueue(Fault.status(429, retry_after=30))
    neu.enqueue(Fault.status(429, retry_after_ms=7000))
    out = await gateway.pipeline.handle(post("/v1/chat/completions", CHAT))
    assert out.status == 429 and out.headers["Retry-After"] == "7"
    assert json.loads(out.body)["error"]["code"] == "backends_unavailable"


async def test_failing_backends_give_503_and_unreachable_ones_502(backends, make_gateway, build_gateway):
    weu, neu = backends
    gateway, _ = make_gateway(weu, neu)
    weu.enqueue(Fault.status(500))
    neu.enqueue(Fault.status(503, retry_after=2))
    out = await gateway.pipeline.handle(post("/v1/chat/completions", CHAT))
    assert out.status == 503 and out.headers["Retry-After"] == "2"

    with closed_port() as closed:  # refuses connections while the block lasts
        env = {
            "GATEWAY_BACKEND_1": f"name=gone;host=http://127.0.0.1:{closed};deployments=gpt-4o-mini",
            "GATEWAY_API_KEYS": KEY,
        }
        gone = build_gateway(env)
        out = await gone.pipeline.handle(post("/v1/chat/completions", CHAT))
    error = json.loads(out.body)["error"]
    assert out.status == 502 and error["type"] == "upstream_error"
    assert str(closed) not in error["message"]  # no backend address leaks to clients


async def test_a_stalled_backend_times_out_with_504(backends, make_gateway):
    weu, neu = backends
    gateway, _ = make_gateway(weu, neu, GATEWAY_READ_TIMEOUT_S="0.2", GATEWAY_MAX_ATTEMPTS="1")
    weu.always(Fault.stall())
    out = await gateway.pipeline.handle(post("/v1/chat/completions", CHAT))
    assert out.status == 504 and json.loads(out.body)["error"]["code"] == "timeout"
    assert neu.requests == []  # attempts are capped by the setting
    weu.release_stalls()


async def test_stream_usage_is_injected_recorded_and_the_extra_chunk_removed(backends, make_gateway):
    weu, neu = backends
    gateway, records = make_gateway(weu, neu)
    client_body = {**CHAT, "stream": True}
    out = await gateway.pipeline.handle(post("/v1/chat/completions", client_body))
    assert out.status == 200 and out.stream is not None
    relayed = await collect(out)
    # What the backend was sent: include_usage injected.
    assert weu.requests[0].json["stream_options"] == {"include_usage": True}
    # What the client got: exactly the stream it would have got without include_usage.
    direct = FakeAzureOpenAI(name="weu", api_key="weu-key")
    async with direct:
        import aiohttp

        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"{direct.url}/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21",
                json=client_body,
                headers={"api-key": "weu-key"},
            ) as resp:
                expected = await resp.read()
    strip_ids = [json.loads(p) if p != "[DONE]" else p for p in sse_payloads(relayed)]
    want = [json.loads(p) if p != "[DONE]" else p for p in sse_payloads(expected)]
    for event in strip_ids + want:
        if isinstance(event, dict):  # ids and timestamps differ between two calls
            event.pop("id", None)
            event.pop("created", None)
    assert strip_ids == want
    assert all("usage" not in e for e in strip_ids if isinstance(e, dict))
    [record] = records
    assert record.streaming and record.usage is not None and not record.usage.estimated
    assert record.usage.completion_tokens > 0 and record.usage.prompt_tokens > 0


async def test_stream_client_that_asked_for_usage_still_gets_it(backends, make_gateway):
    weu, neu = backends
    gateway, records = make_gateway(weu, neu)
    out = await gateway.pipeline.handle(
        post("/v1/chat/completions", {**CHAT, "stream": True, "stream_options": {"include_usage": True}})
    )
    events = [json.loads(p) for p in sse_payloads(await collect(out)) if p != "[DONE]"]
    usage_events = [e for e in events if e.get("usage")]
    assert len(usage_events) == 1 and usage_events[0]["choices"] == []
    assert records[0].usage.total_tokens == usage_events[0]["usage"]["total_tokens"]


async def test_a_cut_stream_still_records_an_estimated_usage(backends, make_gateway):
    weu, neu = backends
    gateway, records = make_gateway(weu, neu)
    weu.enqueue(Fault.cut_stream(after_chunks=4))
    out = await gateway.pipeline.handle(post("/v1/chat/completions", {**CHAT, "stream": True}))
    relayed = await collect(out)
    assert b"[DONE]" not in relayed
    [record] = records
    assert record.usage is not None and record.usage.estimated and record.usage.prompt_tokens > 0


async def test_client_auth_is_secure_by_default(backends, make_gateway, build_gateway):
    weu, neu = backends
    gateway, _ = make_gateway(weu, neu)
    for key, headers in [
        (None, {}),
        ("wrong", {}),
        (None, {"authorization": "Bearer wrong"}),
        (None, {"authorization": f"Basic {KEY}"}),
    ]:
        out = await gateway.pipeline.handle(post("/v1/chat/completions", CHAT, key=key, headers=headers))
        assert out.status == 401 and json.loads(out.body)["error"]["code"] == "invalid_api_key"
    out = await gateway.pipeline.handle(
        post("/v1/chat/completions", CHAT, key=None, headers={"authorization": f"Bearer {KEY}"})
    )
    assert out.status == 200
    assert "authorization" not in weu.requests[-1].headers

    no_keys = build_gateway({"GATEWAY_BACKEND_1": f"host={weu.url};deployments=gpt-4o-mini"})
    assert (await no_keys.pipeline.handle(post("/v1/chat/completions", CHAT, key=None))).status == 401
    assert (await no_keys.pipeline.handle(post("/v1/chat/completions", CHAT, key="anything"))).status == 401
    open_gateway = build_gateway(
        {"GATEWAY_BACKEND_1": f"host={weu.url};api-key=weu-key;deployments=gpt-4o-mini", "GATEWAY_AUTH": "none"}
    )
    assert (await open_gateway.pipeline.handle(post("/v1/chat/completions", CHAT, key=None))).status == 200


async def test_gateway_errors_have_the_openai_shape(backends, make_gateway):
    weu, neu = backends
    gateway, _ = make_gateway(weu, neu, GATEWAY_MAX_BODY_BYTES="2048")
    cases = [
        (post("/v1/chat/completions", {"model": "gpt-5-ultra", "messages": []}), 404, "model_not_found"),
        (
            post("/openai/deployments/nope/chat/completions", CHAT, query="api-version=2024-10-21"),
            404,
            "DeploymentNotFound",
        ),
        (post("/v1/chat/completions", b"{oops"), 400, "invalid_json"),
        (post("/v1/chat/completions", {"messages": []}), 400, "missing_model"),
        (post("/v1/chat/completions", {**CHAT, "pad": "x" * 4096}), 413, "request_too_large"),
    ]
    for inbound, status, code in cases:
        out = await gateway.pipeline.handle(inbound)
        error = json.loads(out.body)["error"]
        assert (out.status, error["code"]) == (status, code)
        assert out.headers["content-type"] == "application/json" and error["message"]
    assert weu.requests == [] and neu.requests == []


async def test_models_lists_what_the_backends_serve(backends, make_gateway):
    weu, neu = backends
    gateway, _ = make_gateway(weu, neu)
    out = await gateway.pipeline.handle(Inbound("GET", "/v1/models", "", {"api-key": KEY}, b""))
    ids = [m["id"] for m in json.loads(out.body)["data"]]
    assert ids == ["gpt-4o-mini", "text-embedding-3-small", "tts", "whisper"]


async def test_azure_native_passthrough_of_multipart_and_binary(backends, make_gateway):
    weu, neu = backends
    gateway, records = make_gateway(weu, neu)
    boundary = "b0undary"
    audio = bytes(range(256)) * 4
    form = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
            f"Content-Type: audio/wav\r\n\r\n"
        ).encode()
        + audio
        + (
            f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper\r\n--{boundary}--\r\n'
        ).encode()
    )
    out = await gateway.pipeline.handle(
        post(
            "/openai/deployments/whisper/audio/transcriptions",
            form,
            query="api-version=2024-06-01",
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        )
    )
    assert out.status == 200 and json.loads(await collect(out))["text"] == f"fake transcription of {len(audio)} bytes"
    assert weu.requests[-1].body == form  # byte for byte
    assert weu.requests[-1].query["api-version"] == "2024-06-01"

    out = await gateway.pipeline.handle(post("/v1/audio/speech", {"model": "tts", "input": "hello", "voice": "alloy"}))
    assert out.status == 200 and out.headers["Content-Type"].startswith("audio/mpeg")
    assert (await collect(out)).endswith(b"hello")
    assert [r.operation for r in records] == ["audio/transcriptions", "audio/speech"]


async def test_embeddings_usage_is_recorded(backends, make_gateway):
    weu, neu = backends
    gateway, records = make_gateway(weu, neu)
    out = await gateway.pipeline.handle(
        post("/v1/embeddings", {"model": "text-embedding-3-small", "input": ["a b", "c"]})
    )
    assert out.status == 200 and len(json.loads(out.body)["data"]) == 2
    assert records[0].usage.prompt_tokens > 0 and records[0].usage.completion_tokens == 0


async def test_usage_file_gets_one_json_line_per_request(backends, tmp_path, make_gateway):
    weu, neu = backends
    path = tmp_path / "usage.jsonl"
    gateway, _ = make_gateway(weu, neu, GATEWAY_USAGE_FILE=str(path))
    await collect(await gateway.pipeline.handle(post("/v1/chat/completions", {**CHAT, "stream": True})))
    await gateway.pipeline.handle(post("/v1/chat/completions", CHAT))
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["streaming"] for line in lines] == [True, False]
    assert all(line["total_tokens"] > 0 and line["backend"] == "weu" for line in lines)


async def test_managed_identity_token_is_fetched_once_and_sent_as_bearer(backends, monkeypatch, build_gateway):
    weu, _ = backends
    async with FakeIdentityEndpoint() as identity:
        for name, value in identity.env.items():
            monkeypatch.setenv(name, value)
        for name in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_FEDERATED_TOKEN_FILE"):
            monkeypatch.delenv(name, raising=False)
        gateway = build_gateway(
            {
                "GATEWAY_BACKEND_1": f"name=weu;host={weu.url};usemi=true;deployments=gpt-4o-mini",
                "GATEWAY_API_KEYS": KEY,
            }
        )
        for _ in range(3):
            assert (await gateway.pipeline.handle(post("/v1/chat/completions", CHAT))).status == 200
        assert len(identity.requests) == 1
        assert identity.requests[0]["resource"] == "https://cognitiveservices.azure.com"
        assert [r.headers["authorization"] for r in weu.requests] == ["Bearer fake-token-1"] * 3
        assert all("api-key" not in r.headers for r in weu.requests)


async def test_the_only_backend_is_retried_when_its_retry_after_fits(backends, build_gateway):
    weu, _ = backends
    gateway = build_gateway({"GATEWAY_BACKEND_1": f"name=weu;host={weu.url};api-key=weu-key", "GATEWAY_API_KEYS": KEY})
    weu.enqueue(Fault.status(429, retry_after_ms=200))
    out = await gateway.pipeline.handle(post("/v1/chat/completions", CHAT))
    assert out.status == 200 and out.headers["x-gateway-attempts"] == "2" and len(weu.requests) == 2


async def test_a_wait_beyond_the_limit_is_answered_429_with_retry_after_instead(backends, make_gateway):
    weu, neu = backends
    gateway, _ = make_gateway(weu, neu, GATEWAY_MAX_WAIT_S="5")
    weu.enqueue(Fault.status(429, retry_after=120))
    neu.enqueue(Fault.status(429, retry_after=90))
    out = await gateway.pipeline.handle(post("/v1/chat/completions", CHAT))
    assert out.status == 429 and out.headers["Retry-After"] == "90"
    # While both cool down, requests are answered at once, without touching a backend.
    again = await gateway.pipeline.handle(post("/v1/chat/completions", CHAT))
    assert again.status == 429 and 88 <= int(again.headers["Retry-After"]) <= 90
    assert json.loads(again.body)["error"]["code"] == "backends_unavailable"
    assert len(weu.requests) == 1 and len(neu.requests) == 1


async def test_408_and_timeouts_count_toward_the_breaker(backends, make_gateway):
    weu, neu = backends
    gateway, _ = make_gateway(weu, neu, GATEWAY_BREAKER_FAILURES="2", GATEWAY_READ_TIMEOUT_S="0.2")
    weu.enqueue(Fault.status(408))
    assert (await gateway.pipeline.handle(post("/v1/chat/completions", CHAT))).headers["x-gateway-backend"] == "neu"
    weu.enqueue(Fault.stall())
    assert (await gateway.pipeline.handle(post("/v1/chat/completions", CHAT))).headers["x-gateway-backend"] == "neu"
    assert gateway.pool.status("weu") == "open"
    weu.release_stalls()


async def test_named_keys_identify_callers_and_async_callers_are_deferred(backends, make_gateway):
    weu, neu = backends
    gateway, records = make_gateway(
        weu, neu, GATEWAY_API_KEYS="batch-team:bt-key,interactive:ia-key", GATEWAY_ASYNC_CALLERS="batch-team"
    )
    deferred = []

    async def defer(request):
        deferred.append(request)
        return Outbound(202, {}, b"")

    assert (await gateway.pipeline.handle(post("/v1/chat/completions", CHAT, key="ia-key"), defer)).status == 200
    assert records[-1].caller == "interactive"
    assert (await gateway.pipeline.handle(post("/v1/chat/completions", CHAT, key="bt-key"), defer)).status == 202
    [request] = deferred
    assert request.caller == "batch-team" and "async=always" in request.reason  # GATEWAY_ASYNC_CALLERS: an alias
    assert len(weu.requests) == 1  # the deferred one was not sent synchronously


async def test_audio_the_backend_cuts_off_is_cut_off_for_the_client_too(backends, make_gateway):
    """No error event exists for bytes: the relay raises into the server, which ends the response without its
    last chunk (a broken transfer, not a short file taken for whole); the record says what happened."""
    from gateway.relay import BrokenAnswer

    weu, neu = backends
    gateway, records = make_gateway(weu, neu)
    speech = {"model": "tts", "input": "a sentence long enough to come in four pieces", "voice": "alloy"}
    weu.enqueue(Fault.cut_stream(2))
    out = await gateway.pipeline.handle(post("/v1/audio/speech", speech))
    assert out.status == 200 and out.stream is not None
    received = b""
    with pytest.raises(BrokenAnswer):
        async for chunk in out.stream:
            received += chunk
    assert received.startswith(b"ID3") and not received.endswith(b"pieces")  # what came before the cut, no more
    assert (records[-1].operation, records[-1].error) == ("audio/speech", "connect")  # the connection broke
    whole = await gateway.pipeline.handle(post("/v1/audio/speech", speech))
    assert (await collect(whole)).endswith(b"four pieces")  # uncut, the same answer arrives whole
