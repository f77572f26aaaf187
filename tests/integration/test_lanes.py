"""Lanes and limits on the request path: real fakes over loopback; the limiter on Azurite.

A PTU backend and a PayGo backend: gold callers (tiers=ptu,paygo) spill to PayGo when PTU throttles, silver
callers (tiers=ptu) wait and are then answered 429 and never reach PayGo. Priority headers only lower, TTL expires,
required and forwarded headers follow the policy, backends keep their own timeouts. Limits answer 429 with
OpenAI's headers and show callers their own budget.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta

import pytest

from gateway.bootstrap import Services, build_services, leases_table
from gateway.config import load_settings
from gateway.credentials import storage_credential
from gateway.messages import Inbound, Outbound
from gateway.storage import storage_account
from gateway.usage import UsageRecord, outcome_of
from tests.support.fake_openai import FakeAzureOpenAI, Fault

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}
KEYS = "gold:gold-key,silver:silver-key,batch:batch-key,plain:plain-key"


@pytest.fixture
async def fakes() -> AsyncIterator[tuple[FakeAzureOpenAI, FakeAzureOpenAI]]:
    async with FakeAzureOpenAI(name="ptu") as ptu, FakeAzureOpenAI(name="paygo") as paygo:
        yield ptu, paygo
        ptu.release_stalls()


type Build = Callable[..., tuple[Services, list[UsageRecord]]]


@pytest.fixture
async def build(fakes, azurite) -> AsyncIterator[Build]:
    ptu, paygo = fakes
    async with AsyncExitStack() as stack:

        def make(limits: bool = False, **extra: str) -> tuple[Services, list[UsageRecord]]:
            env = {
                "GATEWAY_BACKEND_1": f"name=ptu;host={ptu.url};mode=direct;api-key=fake-key;tier=ptu;"
                "deployments=gpt-4o-mini,text-embedding-3-small",
                "GATEWAY_BACKEND_2": f"name=paygo;host={paygo.url};mode=direct;api-key=fake-key;tier=paygo;"
                "deployments=gpt-4o-mini,text-embedding-3-small",
                "GATEWAY_API_KEYS": KEYS,
                "GATEWAY_PROFILE_GOLD": "tiers=ptu,paygo;priority=1",
                "GATEWAY_PROFILE_SILVER": "tiers=ptu;priority=3;ttl=120",
                "GATEWAY_CALLER_PROFILES": "gold=gold,silver=silver",
                "GATEWAY_MAX_WAIT_S": "0.5",
                **extra,
            }
            leases = None
            if limits:
                account = storage_account({"AzureWebJobsStorage": azurite.connection_string}, "")
                table = leases_table("lanes" + uuid.uuid4().hex[:8])

                def leases() -> object:
                    return account.table_client(table, storage_credential)

            services = build_services(load_settings(env), leases=leases)
            stack.push_async_callback(services.close)
            records: list[UsageRecord] = []
            services.usage.add_sink(records.append)
            return services, records

        yield make


def chat(key: str, body: dict | None = None, **headers: str) -> Inbound:
    all_headers = {"content-type": "application/json", "api-key": key, **headers}
    return Inbound("POST", "/v1/chat/completions", "", all_headers, json.dumps(body or CHAT).encode())


async def answer(services: Services, request: Inbound) -> Outbound:
    out = await services.pipeline.handle(request)
    if out.stream is not None:
        out.body = b"".join([chunk async for chunk in out.stream])
    return out


async def test_ptu_first_gold_spills_to_paygo_silver_never_does(build, fakes):
    ptu, paygo = fakes
    services, records = build()
    assert (await answer(services, chat("silver-key"))).headers["x-gateway-backend"] == "ptu"  # PTU first
    ptu.always(Fault.status(429, retry_after=30))
    gold = await answer(services, chat("gold-key"))
    assert gold.status == 200 and gold.headers["x-gateway-backend"] == "paygo"  # spills
    paygo_seen = len(paygo.requests)
    silver = await answer(services, chat("silver-key"))  # waits (within GATEWAY_MAX_WAIT_S), then 429
    assert silver.status == 429 and int(silver.headers["Retry-After"]) > 20
    assert len(paygo.requests) == paygo_seen  # the PayGo fake never sees a silver request
    assert records[-1].caller == "silver" and records[-1].status == 429 and records[-1].priority == 3


async def test_a_ptu_only_caller_is_deferred_only_when_it_can_take_a_202(build, fakes):
    ptu, paygo = fakes
    services, _ = build()
    ptu.always(Fault.status(429, retry_after=30))
    deferred = []

    async def defer(request) -> Outbound:
        deferred.append(request)
        return Outbound(202, {}, b"")

    request = chat("silver-key", prefer="respond-async, wait=1")
    assert (await services.pipeline.handle(request, defer)).status == 202
    assert deferred[0].lane.tiers == frozenset({"ptu"}) and deferred[0].lane.priority == 3
    assert (await services.pipeline.handle(chat("silver-key"), defer)).status == 429  # a plain client: no 202
    assert paygo.requests == []


async def test_priority_is_lowered_never_raised_and_ttl_expires(build, fakes):
    ptu, _ = fakes
    services, records = build()
    await answer(services, chat("gold-key", **{"x-gateway-priority": "7"}))
    assert records[-1].priority == 7
    await answer(services, chat("silver-key", **{"x-gateway-priority": "1"}))
    assert records[-1].priority == 3  # silver is 3: a header cannot raise it
    bad = await answer(services, chat("gold-key", **{"x-gateway-priority": "high"}))
    assert bad.status == 400 and json.loads(bad.body)["error"]["param"] == "x-gateway-priority"

    ptu.always(Fault.status(429, retry_after=30))
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    sent = len(ptu.requests)
    expired = await answer(services, chat("silver-key", **{"x-gateway-ttl": past}))
    assert expired.status == 408 and json.loads(expired.body)["error"]["code"] == "request_expired"
    assert len(ptu.requests) == sent  # never forwarded after its time to live
    waiting = await answer(services, chat("silver-key", **{"x-gateway-ttl": "0.2"}))  # expires while cooling
    assert waiting.status == 408


async def test_required_and_forwarded_headers(build, fakes):
    ptu, _ = fakes
    services, _ = build(GATEWAY_REQUIRED_HEADERS="x-client-app", GATEWAY_FORWARD_HEADERS="x-client-app")
    missing = await answer(services, chat("gold-key"))
    assert missing.status == 400 and json.loads(missing.body)["error"]["param"] == "x-client-app"
    ok = await answer(services, chat("gold-key", **{"x-client-app": "billing", "x-secret-tracking": "1"}))
    assert ok.status == 200
    sent = ptu.requests[-1].headers
    assert sent["x-client-app"] == "billing" and "x-secret-tracking" not in sent  # allow-list only
    assert "api-key" in sent and sent["api-key"] == "fake-key"  # the backend's own credential, not the client's


async def test_a_backend_keeps_its_own_read_timeout(build, fakes):
    ptu, _ = fakes
    env = {
        "GATEWAY_BACKEND_1": f"name=ptu;host={ptu.url};mode=direct;api-key=fake-key;tier=ptu;timeout=0.2;"
        "deployments=gpt-4o-mini",
        "GATEWAY_READ_TIMEOUT_S": "30",
    }
    services, _ = build(**env)
    ptu.enqueue(Fault.stall())
    started = time.monotonic()
    out = await answer(services, chat("gold-key"))
    assert out.headers["x-gateway-backend"] == "paygo" and time.monotonic() - started < 10


async def test_limits_answer_429_with_openais_headers_and_show_callers_their_budget(build, fakes):
    services, records = build(
        limits=True,
        GATEWAY_PROFILE_GOLD="rpm=3;tpm=100000",
        GATEWAY_PROFILE_SILVER="tpm=120;reserve=40",
    )
    for remaining in (2, 1, 0):
        ok = await answer(services, chat("gold-key"))
        assert ok.status == 200 and ok.headers["x-ratelimit-limit-requests"] == "3"
        assert ok.headers["x-ratelimit-remaining-requests"] == str(remaining)
        assert ok.headers["x-ratelimit-limit-tokens"] == "100000"
    refused = await answer(services, chat("gold-key"))
    error = json.loads(refused.body)["error"]
    assert (
        refused.status == 429 and error["code"] == "rate_limit_exceeded" and "requests per minute" in error["message"]
    )
    assert int(refused.headers["Retry-After"]) >= 1 and refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert (records[-1].status, records[-1].error, records[-1].caller) == (429, "rate_limit_exceeded", "gold")
    assert (records[-1].limit, outcome_of(records[-1]), records[-1].backend) == ("rpm", "throttled_caller", None)
    # Plain callers (no profile) keep the backend's own headers.
    assert "x-ratelimit-limit-requests" not in (await answer(services, chat("plain-key"))).headers

    # TPM: the reservation (prompt + max_tokens) is settled against the reported usage, so small answers leave
    # room for more requests than the reservations alone would.
    admitted = 0
    for _ in range(8):
        out = await answer(services, chat("silver-key", {**CHAT, "max_tokens": 40}))
        if out.status != 200:
            assert out.status == 429 and "tokens per minute" in json.loads(out.body)["error"]["message"]
            break
        admitted += 1
    used = sum(r.usage.total_tokens for r in records if r.caller == "silver" and r.status == 200 and r.usage)
    assert admitted >= 2 and used <= 120
    # A reservation that would fit an unused minute, but not what is left of this one.
    out = await answer(services, chat("silver-key", {**CHAT, "max_tokens": 110}))
    assert out.status == 429 and "tokens per minute" in json.loads(out.body)["error"]["message"]
    refused = records[-1]
    assert (refused.caller, refused.limit, outcome_of(refused), refused.attempts) == ("silver", "tpm",
                                                                                      "throttled_caller", 0)


async def test_a_governance_refusal_is_recorded_with_what_refused_it(build, fakes):
    """A model outside the caller's allow-list, a suspended caller: 403, never forwarded, each recorded as refused
    by its own reason."""
    ptu, paygo = fakes
    services, records = build(GATEWAY_PROFILE_SILVER="tiers=ptu;models=text-embedding-3-small")
    not_allowed = await answer(services, chat("silver-key"))  # gpt-4o-mini is not in silver's allow-list
    assert (not_allowed.status, json.loads(not_allowed.body)["error"]["code"]) == (403, "model_not_allowed")
    await services.governance.set_suspended("gold", True)
    suspended = await answer(services, chat("gold-key"))
    assert (suspended.status, json.loads(suspended.body)["error"]["code"]) == (403, "caller_suspended")
    assert [(r.caller, r.error, r.limit, outcome_of(r), r.backend) for r in records] == [
        ("silver", "model_not_allowed", "models", "refused", None),
        ("gold", "caller_suspended", "suspended", "refused", None),
    ]
    assert not ptu.requests and not paygo.requests


async def test_backend_concurrency_admits_by_priority_and_spills_or_waits(build, fakes):
    """concurrency=2 on the PTU backend: a third request spills (gold) or waits (silver); waiting requests are
    admitted best priority first when a slot frees; reserved slots are for priority 1 only."""
    ptu, _ = fakes
    services, records = build(
        GATEWAY_BACKEND_1=f"name=ptu;host={ptu.url};mode=direct;api-key=fake-key;tier=ptu;concurrency=2;reserved=1;"
        "deployments=gpt-4o-mini",
        GATEWAY_MAX_WAIT_S="20",
    )
    stream = {**CHAT, "stream": True}
    holds = [ptu.hold_stream(), ptu.hold_stream()]
    first = await services.pipeline.handle(chat("gold-key", stream))  # priority 1: may use the reserved slot
    second = await services.pipeline.handle(chat("gold-key", stream))
    assert first.headers["x-gateway-backend"] == second.headers["x-gateway-backend"] == "ptu"
    readers = [asyncio.ensure_future(answer_stream(first)), asyncio.ensure_future(answer_stream(second))]
    for hold in holds:
        assert await hold.wait_reached()
    spilled = await answer(services, chat("gold-key"))
    assert spilled.headers["x-gateway-backend"] == "paygo"  # the PTU backend is at its concurrency
    # Silver (ptu only, priority 3) queues; one request lowered to priority 9 queues first, then one at 3.
    low = asyncio.ensure_future(answer(services, chat("silver-key", **{"x-gateway-priority": "9"})))
    high = asyncio.ensure_future(answer(services, chat("silver-key")))
    queue = services.pipeline.slots.queue("ptu")
    assert queue is not None
    await wait_for(lambda: queue.waiting == 2)
    holds[0].release()  # the dedicated slot frees: priority 1 only
    await readers[0]
    assert not low.done() and not high.done()
    holds[1].release()  # the general slot frees: one waiter runs at a time
    done, _ = await asyncio.wait({low, high}, return_when=asyncio.FIRST_COMPLETED)
    assert done == {high}  # the better priority went first, though it queued later
    assert (await low).status == 200 and (await high).status == 200
    await asyncio.gather(*readers)
    assert ptu.peak_inflight <= 2 and queue.peak <= 2  # never more than 2 at the PTU backend
    assert [r.priority for r in records if r.caller == "silver"] == [3, 9]


async def answer_stream(out: Outbound) -> bytes:
    assert out.stream is not None
    return b"".join([chunk async for chunk in out.stream])


async def wait_for(check, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "not reached in time"
        await asyncio.sleep(0.01)  # yield to the requests being tested; the condition is what is awaited


@pytest.mark.parametrize("limits", [False, True], ids=["this-instance", "leased-on-azurite"])
async def test_a_profiles_concurrency_caps_its_callers_requests_in_flight(build, fakes, limits):
    """concurrency=1: another request of the caller waits for the first one's end (a streamed answer ends with
    its stream), best priority first; past its wait it is answered 429 concurrency_limit_exceeded, never sent."""
    ptu, _ = fakes
    profile = "tiers=ptu;concurrency=1"
    services, records = build(limits=limits, GATEWAY_PROFILE_SILVER=profile, GATEWAY_MAX_WAIT_S="0.3")
    hold = ptu.hold_stream()
    first = await services.pipeline.handle(chat("silver-key", {**CHAT, "stream": True}))
    assert first.status == 200 and await hold.wait_reached()
    refused = await answer(services, chat("silver-key"))  # waits 0.3 s for the caller's slot, then 429
    error = json.loads(refused.body)["error"]
    assert refused.status == 429 and error["code"] == "concurrency_limit_exceeded" and "limit 1" in error["message"]
    assert refused.headers["Retry-After"] == "1" and len(ptu.requests) == 1  # never forwarded
    assert (records[-1].caller, records[-1].status, records[-1].error) == ("silver", 429, "concurrency_limit_exceeded")
    assert (records[-1].limit, outcome_of(records[-1])) == ("concurrency", "throttled_caller")  # not the backend's
    assert (await answer(services, chat("gold-key"))).status == 200  # another caller is not held up
    hold.release()
    assert b"[DONE]" in await answer_stream(first)  # the stream's end frees the caller's slot
    assert (await answer(services, chat("silver-key"))).status == 200

    # With time to wait: the waiters run one at a time as slots free, best priority first.
    services, records = build(limits=limits, GATEWAY_PROFILE_SILVER=profile, GATEWAY_MAX_WAIT_S="20")
    ptu.peak_inflight = 0  # the gold request above ran beside the silver stream
    hold = ptu.hold_stream()
    first = await services.pipeline.handle(chat("silver-key", {**CHAT, "stream": True}))
    assert await hold.wait_reached()
    low = asyncio.ensure_future(answer(services, chat("silver-key", **{"x-gateway-priority": "9"})))
    queue = services.quotas.caller_slots.queues["silver"]
    await wait_for(lambda: queue.waiting == 1)
    high = asyncio.ensure_future(answer(services, chat("silver-key")))
    await wait_for(lambda: queue.waiting == 2)
    sent = len(ptu.requests)
    hold.release()
    await answer_stream(first)
    assert (await high).status == (await low).status == 200
    assert [r.priority for r in records if r.caller == "silver"] == [5, 5, 9]  # the later, better one went first
    assert len(ptu.requests) == sent + 2 and ptu.peak_inflight == 1 and queue.in_flight == 0


async def test_a_request_deferred_to_the_async_path_gives_its_callers_slot_back(build, fakes):
    services, _ = build(GATEWAY_PROFILE_SILVER="tiers=ptu;concurrency=1;async=always")
    accepted = []

    async def defer(request) -> Outbound:
        accepted.append(request)
        return Outbound(202, {}, b"")

    for _ in range(3):  # each would wait for the previous one's slot (and time out) if it kept it
        assert (await services.pipeline.handle(chat("silver-key"), defer)).status == 202
    assert len(accepted) == 3 and services.quotas.caller_slots.queues["silver"].in_flight == 0


async def test_a_request_that_goes_away_gives_its_backend_slot_back_waiting_or_in_flight(build, fakes):
    """concurrency=1: a client that leaves while its request waits, or while its attempt is on the backend, must
    not keep a slot; else the backend's capacity shrinks by one for good on this instance."""
    ptu, _ = fakes
    services, _ = build(
        GATEWAY_BACKEND_1=f"name=ptu;host={ptu.url};mode=direct;api-key=fake-key;tier=ptu;concurrency=1;"
        "deployments=gpt-4o-mini",
        GATEWAY_MAX_WAIT_S="20",
    )
    queue = services.pipeline.slots.queue("ptu")
    assert queue is not None
    ptu.enqueue(Fault.stall())
    in_flight = asyncio.ensure_future(answer(services, chat("silver-key")))
    await asyncio.to_thread(ptu.wait_for_requests, 1)  # on the backend, holding the slot
    waiting = asyncio.ensure_future(answer(services, chat("silver-key")))
    await wait_for(lambda: queue.waiting == 1)
    waiting.cancel()  # the client leaves while it waits
    in_flight.cancel()  # and this one while the backend works on it
    await asyncio.gather(waiting, in_flight, return_exceptions=True)
    ptu.release_stalls()
    assert (queue.waiting, queue.in_flight) == (0, 0)
    assert (await answer(services, chat("silver-key"))).status == 200  # the one slot is free again
