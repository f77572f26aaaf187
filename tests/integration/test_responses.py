"""The 2026 API surface through the pipeline in-process, over real HTTP to two stateful fake backends.

Inbound `/v1` and `/openai/v1` (and the Azure-native path) against backends of both `api=` styles; the
Responses API with its usage, its affinity (a response's follow-ups go to the backend that keeps it, whatever
the strategy) and its failure when that backend is down; realtime client secrets; models by id; image edits.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest

from gateway.bootstrap import Services, build_services
from gateway.config import load_settings
from gateway.messages import Inbound, Outbound
from gateway.usage import UsageRecord
from tests.support.fake_openai import FakeAzureOpenAI, Fault

KEY, OTHER = "client-key", "other-key"
CHAT = {"messages": [{"role": "user", "content": "Say hello"}]}


@pytest.fixture
async def fakes() -> AsyncIterator[tuple[FakeAzureOpenAI, FakeAzureOpenAI]]:
    async with FakeAzureOpenAI(name="weu") as weu, FakeAzureOpenAI(name="neu") as neu:
        yield weu, neu


@pytest.fixture
async def gateways() -> AsyncIterator:
    """`make(weu, neu, weu_api=..., **settings)` -> (services, usage records); closed at teardown."""
    async with AsyncExitStack() as built:

        def make(weu, neu, weu_api="deployments", neu_api="deployments", **extra: str):
            common = "mode=direct;api-key=fake-key;deployments=gpt-4o-mini=gpt-4o-mini,whisper,dall-e-3"
            env = {
                "GATEWAY_BACKEND_1": f"name=weu;host={weu.url};api={weu_api};{common}",
                "GATEWAY_BACKEND_2": f"name=neu;host={neu.url};api={neu_api};{common}",
                "GATEWAY_API_KEYS": f"team-a:{KEY},team-b:{OTHER}",
                "GATEWAY_STRATEGY": "round-robin",
                **extra,
            }
            services: Services = build_services(load_settings(env))
            built.push_async_callback(services.close)
            records: list[UsageRecord] = []
            services.usage.add_sink(records.append)
            return services, records

        yield make


def request(method: str, path: str, body: dict | bytes | None = None, *, key: str = KEY, query: str = "",
            content_type: str = "application/json") -> Inbound:  # fmt: skip
    raw = body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
    return Inbound(method, path, query, {"content-type": content_type, "api-key": key}, raw)


async def read(out: Outbound) -> bytes:
    return out.body if out.stream is None else b"".join([chunk async for chunk in out.stream])


async def answer(services: Services, inbound: Inbound) -> tuple[Outbound, dict]:
    out = await services.pipeline.handle(inbound)
    return out, json.loads(await read(out))


def sse_events(raw: bytes) -> list[dict]:
    return [json.loads(line[6:]) for line in raw.decode().splitlines() if line.startswith("data: {")]


@pytest.mark.parametrize("inbound", ["azure", "v1", "azure-v1"])
@pytest.mark.parametrize("api", ["deployments", "v1"])
async def test_chat_from_either_inbound_style_to_either_backend_style(fakes, gateways, inbound, api):
    weu, neu = fakes
    services, records = gateways(weu, neu, weu_api=api, neu_api=api, GATEWAY_STRATEGY="priority")
    if inbound == "azure":
        path, body = "/openai/deployments/gpt-4o-mini/chat/completions", CHAT
    else:
        path, body = (
            ("/v1" if inbound == "v1" else "/openai/v1") + "/chat/completions",
            {**CHAT, "model": "gpt-4o-mini"},
        )
    out, chat = await answer(services, request("POST", path, body))
    assert out.status == 200 and "weu" in chat["choices"][0]["message"]["content"]
    [sent] = weu.requests
    if api == "v1":
        assert (sent.path, sent.query, sent.json["model"]) == ("/openai/v1/chat/completions", {}, "gpt-4o-mini")
    else:
        assert sent.path == "/openai/deployments/gpt-4o-mini/chat/completions" and sent.query["api-version"]
        assert sent.body == json.dumps(body).encode()  # byte for byte
    assert records[0].usage.total_tokens == chat["usage"]["total_tokens"]


@pytest.mark.parametrize(("weu_api", "neu_api"), [("deployments", "v1"), ("v1", "deployments")])
async def test_a_retry_on_a_backend_of_the_other_style_is_translated_afresh(fakes, gateways, weu_api, neu_api):
    weu, neu = fakes
    services, _ = gateways(weu, neu, weu_api, neu_api, GATEWAY_STRATEGY="priority")
    weu.enqueue(Fault.status(503))
    out, chat = await answer(services, request("POST", "/openai/deployments/gpt-4o-mini/chat/completions", CHAT))
    assert out.status == 200 and "neu" in chat["choices"][0]["message"]["content"]
    expected = {"v1": "/openai/v1/chat/completions", "deployments": "/openai/deployments/gpt-4o-mini/chat/completions"}
    assert (weu.requests[0].path, neu.requests[0].path) == (expected[weu_api], expected[neu_api])
    assert ("model" in (neu.requests[0].json or {})) == (neu_api == "v1")


@pytest.mark.parametrize("api", ["deployments", "v1"])
async def test_a_responses_call_records_its_tokens_without_any_injection(fakes, gateways, api):
    weu, neu = fakes
    services, records = gateways(weu, neu, api, api, GATEWAY_STRATEGY="priority")
    body = {"model": "gpt-4o-mini", "input": "Hello there", "stream": True}
    out = await services.pipeline.handle(request("POST", "/openai/v1/responses", body))
    raw = await read(out)
    events = sse_events(raw)
    assert out.status == 200 and events[-1]["type"] == "response.completed" and b"[DONE]" not in raw
    [sent] = weu.requests
    assert "stream_options" not in sent.json  # the Responses API has no such option and reports usage itself
    assert sent.path == ("/openai/v1/responses" if api == "v1" else "/openai/responses")
    usage = events[-1]["response"]["usage"]
    record = records[0]
    assert (record.operation, record.streaming, record.usage.estimated) == ("responses", True, False)
    assert (record.usage.prompt_tokens, record.usage.completion_tokens) == (
        usage["input_tokens"],
        usage["output_tokens"],
    )
    assert record.usage.cached_tokens == 0 and record.usage.reasoning_tokens == 0
    # Not streamed: the same numbers from the body; a chained turn reports its cached tokens.
    chained = {"model": "gpt-4o-mini", "input": "More", "previous_response_id": events[0]["response"]["id"]}
    out, response = await answer(services, request("POST", "/v1/responses", chained))
    assert out.status == 200 and response["output"][0]["content"][0]["text"].endswith("(turn 2)")
    assert records[1].usage.prompt_tokens == response["usage"]["input_tokens"]
    assert records[1].usage.cached_tokens == usage["total_tokens"] > 0


async def test_an_incomplete_stream_records_the_tokens_of_its_final_event(fakes, gateways):
    weu, neu = fakes
    services, records = gateways(weu, neu)
    body = {"model": "gpt-4o-mini", "input": "Hi", "stream": True, "max_output_tokens": 2}
    events = sse_events(await read(await services.pipeline.handle(request("POST", "/v1/responses", body))))
    assert events[-1]["type"] == "response.incomplete"
    assert records[0].usage.completion_tokens == 2 and not records[0].usage.estimated


async def test_a_chain_stays_on_the_backend_that_made_its_first_response(fakes, gateways):
    weu, neu = fakes
    services, records = gateways(weu, neu)  # round-robin: without affinity every other turn would go elsewhere
    first = (await answer(services, request("POST", "/v1/responses", {"model": "gpt-4o-mini", "input": "1"})))[1]
    home = "weu" if first["output"][0]["content"][0]["text"].startswith("Hello from weu") else "neu"
    previous = first["id"]
    for turn in range(2, 6):
        body = {"model": "gpt-4o-mini", "input": str(turn), "previous_response_id": previous}
        out, response = await answer(services, request("POST", "/openai/v1/responses", body))
        assert out.status == 200 and out.headers["x-gateway-backend"] == home
        assert response["output"][0]["content"][0]["text"] == f"Hello from {home}. This is a fake reply (turn {turn})"
        previous = response["id"]
    assert {r.backend for r in records} == {home}
    # Chat is not pinned: round-robin goes on.
    chats = [await answer(services, request("POST", "/v1/chat/completions", {**CHAT, "model": "gpt-4o-mini"}))
             for _ in range(2)]  # fmt: skip
    assert {out.headers["x-gateway-backend"] for out, _ in chats} == {"weu", "neu"}


async def test_requests_naming_a_response_go_to_its_backend(fakes, gateways):
    weu, neu = fakes
    services, records = gateways(weu, neu)
    created = (await answer(services, request("POST", "/v1/responses", {"model": "gpt-4o-mini", "input": "Hi"})))[1]
    home = weu if created["id"] in weu.responses.ids else neu
    for _ in range(3):  # round-robin would alternate; affinity does not
        out, got = await answer(services, request("GET", f"/v1/responses/{created['id']}"))
        assert out.status == 200 and got["id"] == created["id"] and out.headers["x-gateway-backend"] == home.name
    out, items = await answer(services, request("GET", f"/openai/v1/responses/{created['id']}/input_items"))
    assert out.status == 200 and items["data"][0]["content"][0]["text"] == "Hi"
    out, _ = await answer(services, request("DELETE", f"/v1/responses/{created['id']}"))
    assert out.status == 200 and created["id"] not in home.responses.ids
    # Retrievals are governed and recorded, but cost no tokens: they were counted when the response was made.
    assert [r.operation for r in records[1:]] == ["responses/{id}"] * 3 + [
        "responses/{id}/input_items",
        "responses/{id}",
    ]
    assert all(r.usage is None and r.model == "gpt-4o-mini" for r in records[1:])


async def create_background(services: Services, home: FakeAzureOpenAI, how: str) -> tuple[str, list[dict]]:
    """A background response created `how`; its id and the events its create relayed (none when not streamed).

    "stream_dropped": the client goes away once it has the id; the response runs on at the backend."""
    body = {"model": "gpt-4o-mini", "input": "Hi", "background": True, "stream": how != "queued"}
    if how == "queued":
        out, queued = await answer(services, request("POST", "/v1/responses", body))
        assert out.status == 200 and queued["status"] == "queued"
        return queued["id"], []
    hold = home.hold_stream(after_chunks=2) if how == "stream_dropped" else None
    out = await services.pipeline.handle(request("POST", "/v1/responses", body))
    assert out.status == 200 and out.stream is not None
    if hold is None:
        events = sse_events(await read(out))
        assert events[-1]["type"] == "response.completed"
        return events[0]["response"]["id"], events
    received = b""
    while b"\n\n" not in received:  # up to the first whole event: response.created, with the id
        received += await anext(out.stream)
    await out.stream.aclose()
    hold.release()
    created = sse_events(received.split(b"\n\n")[0] + b"\n\n")
    assert created[0]["type"] == "response.created"
    return created[0]["response"]["id"], created


@pytest.mark.parametrize("how", ["queued", "streamed", "stream_dropped"])
async def test_a_background_response_counts_its_tokens_once_on_retrieval(fakes, gateways, how):
    weu, neu = fakes
    services, records = gateways(weu, neu, GATEWAY_STRATEGY="priority")
    response_id, _ = await create_background(services, weu, how)
    assert records[0].operation == "responses" and records[0].status == 200
    statuses = []
    while not statuses or statuses[-1] != "completed":
        out, got = await answer(services, request("GET", f"/v1/responses/{response_id}"))
        statuses.append(got["status"])
        assert len(statuses) <= 3 and out.headers["x-gateway-backend"] == "weu"
    assert statuses == (["in_progress", "completed"] if how == "queued" else ["completed"])
    await answer(services, request("GET", f"/v1/responses/{response_id}"))
    streamed = await services.pipeline.handle(request("GET", f"/v1/responses/{response_id}", query="stream=true"))
    assert sse_events(await read(streamed))[-1]["type"] == "response.completed"
    total = got["usage"]["total_tokens"]
    assert total > 0 and len(records) == 1 + len(statuses) + 2
    charged = [(index, r.usage.total_tokens) for index, r in enumerate(records) if r.usage is not None]
    # Once, by the first call that reported it: the create stream read to its end, else the first completed retrieval.
    assert charged == [(0 if how == "streamed" else len(statuses), total)]
    assert not any(r.usage and r.usage.estimated for r in records)  # a dropped stream is not estimated as well


async def test_a_background_response_is_cancelled_on_the_backend_that_keeps_it(fakes, gateways):
    weu, neu = fakes
    services, records = gateways(weu, neu, weu_api="v1")  # round-robin: the cancel would go elsewhere half the time
    for _ in range(2):  # one on each backend, so both styles are cancelled
        response_id, _ = await create_background(services, weu, "queued")
        home, other = (weu, neu) if response_id in weu.responses.ids else (neu, weu)
        seen = (len(home.requests), len(other.requests))
        out, cancelled = await answer(services, request("POST", f"/openai/v1/responses/{response_id}/cancel"))
        assert out.status == 200 and out.headers["x-gateway-backend"] == home.name
        assert (cancelled["id"], cancelled["status"]) == (response_id, "cancelled")
        [sent] = home.requests[seen[0] :]
        prefix = "/openai/v1" if home is weu else "/openai"
        assert (sent.method, sent.path) == ("POST", f"{prefix}/responses/{response_id}/cancel")
        assert ("api-version" in sent.query) == (home is neu)
        assert len(other.requests) == seen[1]  # the cancel reached the fake that created it, and no other
        out, got = await answer(services, request("GET", f"/v1/responses/{response_id}"))
        assert got["status"] == "cancelled" and got["usage"] is None
        assert records[-2].operation == "responses/{id}/cancel" and records[-2].backend == home.name
    assert {r.backend for r in records if r.operation == "responses/{id}/cancel"} == {"weu", "neu"}
    assert all(r.usage is None for r in records)  # a response cancelled before it ran costs nothing


async def test_someone_elses_or_an_unknown_response_is_not_found(fakes, gateways):
    weu, neu = fakes
    services, _ = gateways(weu, neu)
    created = (await answer(services, request("POST", "/v1/responses", {"model": "gpt-4o-mini", "input": "Hi"})))[1]
    out, error = await answer(services, request("GET", f"/v1/responses/{created['id']}", key=OTHER))
    assert (out.status, error["error"]["code"]) == (404, "response_not_found")
    body = {"model": "gpt-4o-mini", "input": "Hi", "previous_response_id": created["id"]}
    out, error = await answer(services, request("POST", "/v1/responses", body, key=OTHER))
    assert (out.status, error["error"]["param"]) == (404, "previous_response_id")
    out, error = await answer(services, request("POST", "/v1/responses/resp_unknown1/cancel"))
    assert (out.status, error["error"]["code"]) == (404, "response_not_found")
    assert len(weu.requests) + len(neu.requests) == 1  # none of these reached a backend


async def test_a_conversation_whose_backend_is_down_is_not_moved_elsewhere(fakes, gateways):
    weu, neu = fakes
    services, records = gateways(weu, neu, GATEWAY_MAX_WAIT_S="0")
    created = (await answer(services, request("POST", "/v1/responses", {"model": "gpt-4o-mini", "input": "Hi"})))[1]
    home, other = (weu, neu) if created["id"] in weu.responses.ids else (neu, weu)
    home.always(Fault.status(503))
    other_before = len(other.requests)
    body = {"model": "gpt-4o-mini", "input": "Next", "previous_response_id": created["id"]}
    out, error = await answer(services, request("POST", "/v1/responses", body))
    assert out.status == 503 and int(out.headers["Retry-After"]) >= 1
    assert error["error"]["code"] == "conversation_unavailable" and f"'{home.name}'" in error["error"]["message"]
    assert len(other.requests) == other_before  # never started a broken conversation elsewhere
    assert records[-1].status == 503 and records[-1].backend == home.name
    home.always(None)


async def test_realtime_secrets_are_minted_on_a_backend_and_say_where_to_connect(fakes, gateways):
    weu, neu = fakes
    profiles = {"GATEWAY_PROFILE_CHAT": "models=whisper", "GATEWAY_CALLER_PROFILES": "team-b=chat"}
    services, records = gateways(weu, neu, neu_api="v1", GATEWAY_STRATEGY="priority", **profiles)
    body = {"session": {"type": "realtime", "model": "gpt-4o-mini"}}
    out, secret = await answer(services, request("POST", "/openai/v1/realtime/client_secrets", body, query="x=1"))
    assert out.status == 200 and secret["value"] == weu.realtime_secrets[-1]["value"]
    assert out.headers["x-gateway-realtime-endpoint"] == f"{weu.url}/openai/v1/realtime"
    assert secret["gateway_realtime_endpoint"] == out.headers["x-gateway-realtime-endpoint"]
    assert weu.requests[-1].path == "/openai/v1/realtime/client_secrets"  # also from an api=deployments backend
    assert "weu-key" not in json.dumps(secret) and "fake-key" not in json.dumps(dict(out.headers))
    assert [(r.operation, r.backend, r.status) for r in records] == [("realtime/client_secrets", "weu", 200)]
    out, error = await answer(services, request("POST", "/v1/realtime/client_secrets", body, key=OTHER))
    assert (out.status, error["error"]["code"]) == (403, "model_not_allowed")
    assert len(weu.realtime_secrets) == 1


async def test_models_by_id_and_image_edits(fakes, gateways):
    weu, neu = fakes
    services, records = gateways(weu, neu, weu_api="v1", GATEWAY_STRATEGY="priority")
    out, model = await answer(services, request("GET", "/openai/v1/models/whisper"))
    assert out.status == 200 and (model["id"], model["object"]) == ("whisper", "model")
    out, error = await answer(services, request("GET", "/v1/models/gpt-5"))
    assert (out.status, error["error"]["code"]) == (404, "model_not_found")
    form = (b'--XyZ\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n\x89PNG\r\n'
            b'--XyZ\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nadd a hat\r\n'
            b'--XyZ\r\nContent-Disposition: form-data; name="model"\r\n\r\ndall-e-3\r\n--XyZ--\r\n')  # fmt: skip
    out, edit = await answer(
        services, request("POST", "/v1/images/edits", form, content_type="multipart/form-data; boundary=XyZ")
    )
    assert out.status == 200 and edit["data"][0]["b64_json"]
    assert (weu.requests[-1].path, weu.requests[-1].deployment) == ("/openai/v1/images/edits", "dall-e-3")
    assert records[-1].usage.total_tokens == edit["usage"]["total_tokens"]
