"""The async path's activities on real parts: Azurite blobs and queue, fake backends, the shared pool.

The orchestrator is covered by replay tests and end to end through the devhost; here each activity is
called as the Durable runtime would call it, to pin down what it returns and stores.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from azure.storage.queue.aio import QueueClient

from gateway import errors, translate
from gateway.bootstrap import Services, build_gateway, build_services
from gateway.deferral import Deferred
from gateway.messages import Inbound
from orchestrations import activities, starter
from tests.support.fake_openai import FakeAzureOpenAI, Fault, StreamHold

KEY = "gw-secret-key-7f3c9a"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}]}


@pytest.fixture
async def backends() -> AsyncIterator[tuple[FakeAzureOpenAI, FakeAzureOpenAI]]:
    async with FakeAzureOpenAI(name="weu") as weu, FakeAzureOpenAI(name="neu") as neu:
        yield weu, neu


@pytest.fixture
async def make_gateway(azurite) -> AsyncIterator[Callable[..., Services]]:
    """`make_gateway(**settings)`: a gateway on Azurite with its own table, container and queue; closed at teardown."""
    made: list[Services] = []

    def make(**settings: str) -> Services:
        suffix = uuid.uuid4().hex[:8]
        gw = build_gateway(
            {
                "GATEWAY_API_KEYS": KEY,
                "AzureWebJobsStorage": azurite.connection_string,
                "GATEWAY_STATE_TABLE": "act" + suffix,
                "GATEWAY_RESULTS_CONTAINER": "results-" + suffix,
                "GATEWAY_COMPLETIONS_QUEUE": "completions-" + suffix,
                **settings,
            }
        )
        made.append(gw)
        return gw

    yield make
    for gw in made:
        await gw.close()


@pytest.fixture
def gateway(backends, make_gateway) -> Services:
    weu, neu = backends
    return make_gateway(
        GATEWAY_BACKEND_1=f"name=weu;host={weu.url};mode=direct;api-key=fake-key;priority=1;deployments=gpt-4o-mini",
        GATEWAY_BACKEND_2=f"name=neu;host={neu.url};mode=direct;api-key=fake-key;priority=2;deployments=gpt-4o-mini",
    )


async def submit(
    gw: Services, body: dict, *, deadline_in: float = 3600, caller: str = "key:abc", profile: str = ""
) -> dict:
    """What starter.start stores and passes to the orchestration (its own code), without the Durable client."""
    raw = json.dumps(body).encode()
    headers = {"content-type": "application/json", "api-key": KEY, "prefer": "respond-async"}
    inbound = Inbound("POST", "/v1/chat/completions", "", headers, raw)
    route = translate.resolve("POST", inbound.path, "", "application/json", raw, gw.settings.api_version)
    request_id = "client-" + uuid.uuid4().hex[:6]
    request = await starter.accept(gw, Deferred(inbound, route, request_id, caller, "the test asked", profile))
    assert KEY not in json.dumps(request)  # no client credential in the orchestration input
    request["deadline"] = time.time() + deadline_in
    return request


async def queued_messages(gw: Services) -> list[dict]:
    queue = QueueClient.from_connection_string(gw.completions._account.connection_string, gw.settings.completions_queue)
    async with queue:
        return [json.loads(base64.b64decode(m.content)) async for m in queue.receive_messages(max_messages=32)]


async def test_a_successful_attempt_stores_the_result_and_reports_usage(gateway, backends):
    weu, _ = backends
    request = await submit(gateway, CHAT)
    result = await activities.attempt_backend(gateway, {"request": request, "attempt": 1, "avoid": []})
    assert (result["status"], result["http_status"], result["backend"]) == ("succeeded", 200, "weu")
    assert result["usage"]["total_tokens"] > 0 and result["result"]["object"] == "chat.completion"
    stored = await gateway.results.get_result(request["id"])
    assert stored.metadata["http_status"] == "200" and json.loads(stored.body) == result["result"]
    assert weu.requests[0].headers["x-request-id"] == request["request_id"]


async def test_a_streamed_request_is_stored_as_the_non_streamed_object(gateway, backends):
    weu, _ = backends
    request = await submit(gateway, {**CHAT, "stream": True})
    result = await activities.attempt_backend(gateway, {"request": request, "attempt": 1, "avoid": []})
    completion = result["result"]
    assert completion["object"] == "chat.completion" and completion["choices"][0]["finish_reason"] == "stop"
    assert completion["choices"][0]["message"]["content"] == weu.reply_text()
    assert completion["usage"]["total_tokens"] == result["usage"]["total_tokens"] > 0
    assert weu.requests[0].json["stream_options"] == {"include_usage": True}


async def test_throttled_attempts_say_when_to_try_again(gateway, backends):
    weu, neu = backends
    request = await submit(gateway, CHAT)
    weu.enqueue(Fault.status(429, retry_after=20))
    result = await activities.attempt_backend(gateway, {"request": request, "attempt": 1, "avoid": []})
    assert (result["status"], result["backend"], result["http_status"]) == ("retry", "weu", 429)
    assert result["retry_at"] <= time.time()  # the other backend can take it right away
    neu.enqueue(Fault.status(429, retry_after=40))
    result = await activities.attempt_backend(gateway, {"request": request, "attempt": 2, "avoid": ["weu"]})
    assert result["backend"] == "neu"
    # Both cooling: the next try is when the first breaker re-opens (weu, ~20 s).
    assert 15 < result["retry_at"] - time.time() <= 20.5


async def test_a_client_error_is_final_and_kept_as_the_answer(gateway, backends):
    weu, neu = backends
    request = await submit(gateway, CHAT)
    weu.enqueue(Fault.content_filter())
    result = await activities.attempt_backend(gateway, {"request": request, "attempt": 1, "avoid": []})
    assert (result["status"], result["http_status"]) == ("failed", 400)
    assert result["error"]["code"] == "content_filter" and neu.requests == []


async def test_expired_work_is_never_sent(gateway, backends):
    weu, neu = backends
    request = await submit(gateway, CHAT, deadline_in=-1)
    result = await activities.attempt_backend(gateway, {"request": request, "attempt": 1, "avoid": []})
    assert result["status"] == "expired" and weu.requests == [] and neu.requests == []


async def test_the_completion_is_published_once_even_when_the_activity_runs_again(gateway):
    request = await submit(gateway, CHAT)
    outcome = {
        "status": "succeeded",
        "http_status": 200,
        "backend": "weu",
        "deployment": "gpt-4o-mini",
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
        "attempts": 2,
        "result": {"object": "chat.completion"},
    }
    first = await activities.publish_completion(gateway, {"request": request, "outcome": outcome})
    again = await activities.publish_completion(gateway, {"request": request, "outcome": outcome})
    assert first == again and first["result"] == {"object": "chat.completion"}
    [message] = await queued_messages(gateway)
    assert message["id"] == request["id"] and message["request_id"] == request["request_id"]
    assert (message["status"], message["backend"], message["attempts"]) == ("succeeded", "weu", 2)
    assert message["usage"]["total_tokens"] == 7 and message["result_url"] == f"/results/{request['id']}"
    assert await gateway.results.get_request(request["id"]) is None  # the body is not kept after the end


async def test_storage_down_at_submission_is_a_fast_503_not_a_500():
    """Nothing was accepted, so nothing is lost: the client is told to come back, quickly."""
    from gateway.config import load_settings
    from gateway.credentials import storage_credential
    from gateway.results import ResultStore
    from gateway.storage import storage_account
    from tests.support.ports import closed_port

    with closed_port() as port:
        connection = (
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
            f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"
        )
        settings = load_settings({"GATEWAY_BACKEND_1": "host=https://a.example;deployments=gpt-4o-mini"})
        results = ResultStore(storage_account({"AzureWebJobsStorage": connection}, ""), "gone", storage_credential)
        services = build_services(settings, results=results)
        raw = json.dumps(CHAT).encode()
        inbound = Inbound("POST", "/v1/chat/completions", "", {"content-type": "application/json"}, raw)
        route = translate.resolve("POST", inbound.path, "", "application/json", raw, settings.api_version)
        started = time.monotonic()
        try:
            with pytest.raises(errors.GatewayError) as refused:
                await starter.start(object(), services, Deferred(inbound, route, "r1", "c", "test"))
        finally:
            await services.close()
        assert refused.value.status == 503 and refused.value.headers["Retry-After"] == "5"
        assert time.monotonic() - started < 10  # the SDK's retries are short (fail-fast client options)


async def held_stream(gw: Services, backend: FakeAzureOpenAI) -> tuple[AsyncIterator[bytes], StreamHold]:
    """A sync stream of KEY's caller, held by `backend` after its first event: it keeps its slots until its end."""
    hold = backend.hold_stream()
    body = json.dumps({**CHAT, "stream": True}).encode()
    headers = {"content-type": "application/json", "api-key": KEY}
    streaming = await gw.pipeline.handle(Inbound("POST", "/v1/chat/completions", "", headers, body))
    assert streaming.status == 200 and streaming.stream is not None and await hold.wait_reached()
    return streaming.stream, hold


async def test_an_attempt_takes_a_slot_of_a_backend_at_its_concurrency_like_the_sync_path(backends, make_gateway):
    """concurrency=1: while a sync stream holds the slot, the async attempt queues (here until its deadline),
    then says to retry; it runs once the slot is free. The backend never has two requests at once."""
    weu, _ = backends
    gw = make_gateway(
        GATEWAY_BACKEND_1=f"name=weu;host={weu.url};mode=direct;api-key=fake-key;concurrency=1;deployments=gpt-4o-mini"
    )
    stream, hold = await held_stream(gw, weu)
    request = await submit(gw, CHAT, deadline_in=0.5)
    result = await activities.attempt_backend(gw, {"request": request, "attempt": 1, "avoid": []})
    assert (result["status"], result["reason"], result["backend"]) == ("retry", "backends at their concurrency", None)
    assert len(weu.requests) == 1  # the async attempt did not reach the backend
    hold.release()
    assert b"[DONE]" in b"".join([chunk async for chunk in stream])  # its end frees the slot
    request["deadline"] = time.time() + 60
    result = await activities.attempt_backend(gw, {"request": request, "attempt": 2, "avoid": []})
    assert (result["status"], result["backend"]) == ("succeeded", "weu")
    assert weu.peak_inflight == 1 and gw.pipeline.slots.queue("weu").in_flight == 0  # and it gave it back


async def test_a_callers_async_attempts_count_against_its_concurrency_with_its_sync_requests(backends, make_gateway):
    """Profile concurrency=1: while the caller's sync stream runs, its async attempt waits (here until its
    deadline) and says to retry; once the stream ends, the attempt runs."""
    weu, _ = backends
    gw = make_gateway(
        GATEWAY_BACKEND_1=f"name=weu;host={weu.url};mode=direct;api-key=fake-key;deployments=gpt-4o-mini",
        GATEWAY_API_KEYS=f"team:{KEY}",
        GATEWAY_PROFILE_TEAM="concurrency=1",
        GATEWAY_CALLER_PROFILES="team=team",
    )
    stream, hold = await held_stream(gw, weu)
    request = await submit(gw, CHAT, deadline_in=0.5, caller="team", profile="team")
    result = await activities.attempt_backend(gw, {"request": request, "attempt": 1, "avoid": []})
    assert (result["status"], result["reason"]) == ("retry", "caller at its concurrency")
    assert len(weu.requests) == 1  # the async attempt did not reach the backend
    hold.release()
    assert b"[DONE]" in b"".join([chunk async for chunk in stream])
    request["deadline"] = time.time() + 60
    result = await activities.attempt_backend(gw, {"request": request, "attempt": 2, "avoid": []})
    assert (result["status"], result["backend"]) == ("succeeded", "weu")
    assert gw.quotas.caller_slots.queues["team"].in_flight == 0  # given back after the attempt


@pytest.mark.parametrize(
    ("extra", "outcome"),
    [
        pytest.param({"max_tokens": 4000}, ("succeeded", "weu", 200), id="capped: waited for"),
        pytest.param({}, ("retry", "weu", None), id="no cap: left at the read timeout"),
    ],
)
async def test_an_attempt_waits_for_a_long_plain_generation_as_the_sync_path_does(
    backends, make_gateway, extra, outcome
):
    """weu answers after 2 s, past the 1 s read timeout: a capped request (4,000 tokens may take 100 s at 40 tokens/s)
    gets that answer in one attempt; an uncapped one is cut at the read timeout and retried, as before."""
    weu, neu = backends
    gw = make_gateway(
        GATEWAY_BACKEND_1=f"name=weu;host={weu.url};mode=direct;api-key=fake-key;priority=1;deployments=gpt-4o-mini",
        GATEWAY_BACKEND_2=f"name=neu;host={neu.url};mode=direct;api-key=fake-key;priority=2;deployments=gpt-4o-mini",
        GATEWAY_READ_TIMEOUT_S="1",
        GATEWAY_TOKENS_PER_SECOND="40",
    )
    weu.latency_ms = 2000
    request = await submit(gw, {**CHAT, **extra})
    result = await activities.attempt_backend(gw, {"request": request, "attempt": 1, "avoid": []})
    assert (result["status"], result["backend"], result["http_status"]) == outcome
    assert len(weu.requests) == 1 and neu.requests == []
    if result["status"] == "retry":
        assert result["reason"] == "timeout"
