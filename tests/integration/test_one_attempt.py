"""Same fault, same learned state, whichever path saw it: the sync pipeline and the async activity share one attempt.

Each fault kind is sent once through the synchronous pipeline and once through the async path's activity, each
with its own pool (same settings, same frozen clock), against a real fake backend over loopback; the async side
stores its body and result in Azurite. Afterwards the two pools must have learnt exactly the same thing:
breaker status, open-until, reason, last status and error per backend and per deployment, failure counts,
capacity, the completion lengths seen and whether a generation speed was measured.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway import translate
from gateway.bootstrap import Services, build_services
from gateway.config import load_settings
from gateway.credentials import storage_credential
from gateway.deferral import Deferred
from gateway.messages import Inbound
from gateway.pool import BackendPool
from gateway.results import ResultStore
from gateway.storage import storage_account
from orchestrations import activities, starter
from tests.support.clock import Clock
from tests.support.fake_openai import FakeAzureOpenAI, Fault

KEY = "one-attempt-key"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "tell me something"}]}

FAULTS: dict[str, tuple[Fault | None, bool]] = {
    "success": (None, False),
    "streamed success": (None, True),
    "429 with Retry-After": (Fault.status(429, retry_after=30), False),
    "429 with retry-after-ms": (Fault.status(429, retry_after_ms=1500), False),
    "500": (Fault.status(500), False),
    "503": (Fault.status(503), False),
    "connection reset": (Fault.reset(), False),
    "stall past the read timeout": (Fault.stall(), False),
    "stream cut mid-way": (Fault.cut_stream(2), True),
    "content filter": (Fault.content_filter(), False),
    "capacity headers": (None, False),
}


@pytest.fixture
async def backend() -> AsyncIterator[FakeAzureOpenAI]:
    # 20 pieces: 20 completion tokens, past learning.MIN_TOKENS_FOR_SPEED, so a success teaches a speed too.
    async with FakeAzureOpenAI(name="weu", chunks=20) as fake:
        yield fake
        fake.release_stalls()


def settings_for(fake: FakeAzureOpenAI):
    return load_settings(
        {
            "GATEWAY_BACKEND_1": f"name=weu;host={fake.url};mode=direct;api-key=fake-key;"
            "deployments=gpt-4o-mini,text-embedding-3-small",
            "GATEWAY_API_KEYS": KEY,
            "GATEWAY_BREAKER_FAILURES": "1",  # one host failure opens the backend: visible in one attempt
            "GATEWAY_MAX_ATTEMPTS": "1",
            "GATEWAY_MAX_WAIT_S": "0",
            "GATEWAY_READ_TIMEOUT_S": "0.5",
        }
    )


def learned(pool: BackendPool) -> dict[str, Any]:
    """Everything a pool learnt that must not depend on the path (latencies and speeds are measured: only whether
    a speed was learnt is compared)."""
    now, view = pool.clock(), {}
    for backend in pool.state.backends.values():
        b = backend.breaker
        view[backend.key] = (b.status(now), b.open_until, b.reason, backend.last_status, backend.last_error,
                             len(backend.failures))  # fmt: skip
    for deployment in pool.state.deployments.values():
        b = deployment.breaker
        view[deployment.key] = (b.status(now), b.open_until, b.reason, deployment.last_status,
                                deployment.last_error, deployment.capacity(now, 60), list(deployment.completion_tokens),
                                deployment.tokens_per_s is not None)  # fmt: skip
    return view


async def through_sync(services: Services, body: dict) -> None:
    headers = {"content-type": "application/json", "api-key": KEY}
    out = await services.pipeline.handle(
        Inbound("POST", "/v1/chat/completions", "", headers, json.dumps(body).encode())
    )
    if out.stream is not None:
        async for _ in out.stream:
            pass


async def through_async(services: Services, body: dict) -> dict:
    raw = json.dumps(body).encode()
    headers = {"content-type": "application/json", "api-key": KEY}
    inbound = Inbound("POST", "/v1/chat/completions", "", headers, raw)
    route = translate.resolve("POST", inbound.path, "", "application/json", raw, services.settings.api_version)
    request = await starter.accept(services, Deferred(inbound, route, uuid.uuid4().hex, "one-attempt", "test"))
    return await activities.attempt_backend(services, {"request": request, "attempt": 1})


@pytest.mark.parametrize("name", list(FAULTS))
async def test_each_fault_teaches_both_paths_the_same(name, backend, azurite):
    fault, stream = FAULTS[name]
    body = {**CHAT, "stream": True} if stream else CHAT
    settings = settings_for(backend)
    account = storage_account({"AzureWebJobsStorage": azurite.connection_string}, "")
    results = ResultStore(account, "one-" + uuid.uuid4().hex[:12], storage_credential)
    clock = Clock()
    sync = build_services(settings, clock=clock)
    background = build_services(settings, results=results, clock=clock)
    if name == "capacity headers":
        backend.ratelimit_headers = {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-remaining-requests": "5"}
    try:
        for services, path in ((sync, through_sync), (background, through_async)):
            if fault is not None:
                backend.enqueue(fault)
            await path(services, body)
        assert learned(sync.pool) == learned(background.pool)
        # The fault did teach something: a success its completion length and speed; a client error nothing.
        assert learned(sync.pool) != learned(build_services(settings, clock=clock).pool) or name == "content filter"
        if name in ("success", "streamed success", "capacity headers"):
            assert learned(sync.pool)["weu:gpt-4o-mini"][-2:] == ([20], True)
    finally:
        backend.release_stalls()
        await sync.close()
        await background.close()


async def test_a_request_out_of_its_own_time_does_not_blame_the_backend(backend):
    """The attempt's total timeout is the request's remaining budget: running out of it is not a backend fault."""
    settings = settings_for(backend)
    services = build_services(settings)
    try:
        target = services.pool.candidates("gpt-4o-mini")[0]
        backend.enqueue(Fault.stall())
        attempt = await services.attempts.send(target, "POST", "/openai/deployments/gpt-4o-mini/chat/completions",
                                               {"content-type": "application/json"}, json.dumps(CHAT).encode(),
                                               total_s=0.2)  # fmt: skip
        assert attempt.failure == "timeout"
        assert services.pool.status("weu") == "closed" and len(services.pool.state.backends["weu"].failures) == 0
    finally:
        backend.release_stalls()
        await services.close()
