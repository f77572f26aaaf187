"""None lost: 1,000 async requests through the devhost while the Durable worker crashes and Service Bus refuses.

The Durable stand-in crashes 10 % of all activity executions (`DURABLE_STANDIN_CRASH_RATE`), each at random
before the activity runs or after it (its side effects done, its result lost), and the AMQP test broker
refuses 5 % of the completion messages sent to it (`refuse_sends`); both draw from generators seeded with SEED.
The refusal is Service Bus's quota exceeded (`amqp:resource-limit-exceeded`, an entity full until its consumers
catch up), which the azure-servicebus client does not retry itself: every refusal reaches the gateway's
publisher, so its own retry (the Durable retry of `publish_completion`, then the orchestrator's timer) is what
delivers the message. (A refusal the client retries, `amqp:internal-error`, was absorbed by its 4 tries and
never reached the gateway; refusing one message on all 4 costs about 15 s of the client's back-off while the
process's one sender waits, minutes for 50 messages.)

Every request must end in exactly one completion message and a result `GET /results/{id}` returns: 0 lost,
0 duplicated, and every refused message delivered later exactly once. The counts and the time taken are printed
(and recorded in docs/reliability.md). Faults are injected at the protocol boundaries only; the gateway's code
runs unpatched.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter

import httpx
import pytest

from tests.support.amqp_broker import QUOTA_EXCEEDED, AmqpBroker
from tests.support.devhost import DevHost
from tests.support.durable_standin import CRASH_REASON
from tests.support.fake_openai import FakeAzureOpenAI

REQUESTS = 1000
CONCURRENCY = 32  # requests in flight from the client at once
SEED = 11
CRASH_RATE = 0.10
REFUSE_RATE = 0.05
DEADLINE_S = 420.0
KEY = "none-lost-key"
OPERATOR_KEY = "devhost-function-key"
ENTITY = "completions"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Do not lose me"}]}
BACKEND = "mode=direct;api-key=fake-key;deployments=gpt-4o-mini"


async def submit_all(http: httpx.AsyncClient) -> list[str]:
    """POSTs every request with Prefer: respond-async; the instance ids, in request order."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def submit(number: int) -> str:
        headers = {"Prefer": "respond-async", "x-request-id": f"none-lost-{number:04d}"}
        async with gate:
            answer = await http.post("/v1/chat/completions", json=CHAT, headers=headers)
        assert answer.status_code == 202, f"request {number}: {answer.status_code} {answer.text}"
        return answer.headers["Location"].split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]

    return list(await asyncio.gather(*(submit(n) for n in range(REQUESTS))))


async def wait_for_completions(broker: AmqpBroker, wanted: set[str], deadline: float) -> None:
    """Until a completion arrived for every id, or the deadline: waits on the broker's record, not a clock."""
    while True:
        arrived = broker.messages(ENTITY)
        remaining = deadline - time.monotonic()
        if wanted <= {m.message_id for m in arrived} or remaining <= 0:
            return
        try:
            await asyncio.to_thread(broker.wait_for, ENTITY, len(arrived) + 1, min(remaining, 10.0))
        except TimeoutError:
            pass


async def final_results(http: httpx.AsyncClient, ids: list[str], deadline: float) -> dict[str, httpx.Response]:
    """GET /results/{id} for every request until it is no longer 202 (the orchestration has ended)."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def result(instance_id: str) -> httpx.Response:
        while True:
            async with gate:
                answer = await http.get(f"/results/{instance_id}")
            if answer.status_code != 202 or time.monotonic() > deadline:
                return answer
            await asyncio.sleep(0.2)  # a client polling; the answer, not the pause, decides

    answers = await asyncio.gather(*(result(i) for i in ids))
    return dict(zip(ids, answers, strict=True))


async def activity_failures(http: httpx.AsyncClient, ids: list[str]) -> Counter[str]:
    """The activity executions that failed, from each orchestration's history: injected crashes (before or
    after running) and real failures (by activity)."""
    gate = asyncio.Semaphore(CONCURRENCY)
    counts: Counter[str] = Counter()

    async def count(instance_id: str) -> None:
        async with gate:
            status = await http.get(
                f"/runtime/webhooks/durabletask/instances/{instance_id}",
                params={"code": OPERATOR_KEY, "showHistory": "true"},
            )
        for event in status.json()["historyEvents"]:
            if event["EventType"] != "TaskFailed":
                continue
            if event["Reason"] == CRASH_REASON:
                counts["crash before" if "died before" in event["Details"] else "crash after"] += 1
            else:
                counts[f"{event['FunctionName']} failed"] += 1

    await asyncio.gather(*(count(i) for i in ids))
    return counts


@pytest.mark.slow
@pytest.mark.timeout(DEADLINE_S + 120)
async def test_none_lost(azurite, capsys: pytest.CaptureFixture[str]) -> None:
    weu, neu = FakeAzureOpenAI(name="weu"), FakeAzureOpenAI(name="neu")
    broker = AmqpBroker(refuse_sends=REFUSE_RATE, seed=SEED, refuse_condition=QUOTA_EXCEEDED)
    with broker, weu.threaded(), neu.threaded():
        env = {
            "AzureWebJobsStorage": azurite.connection_string,
            "GATEWAY_STATE_TABLE": "nonelost",
            "GATEWAY_RESULTS_CONTAINER": "none-lost",
            "GATEWAY_API_KEYS": KEY,
            "GATEWAY_BACKEND_1": f"name=weu;host={weu.url};{BACKEND};priority=1;weight=1",
            "GATEWAY_BACKEND_2": f"name=neu;host={neu.url};{BACKEND};priority=1;weight=1",
            "GATEWAY_STRATEGY": "round-robin",
            "COMPLETIONS_SERVICEBUS": broker.connection_string,
            "GATEWAY_COMPLETIONS_ENTITY": ENTITY,
            "DURABLE_STANDIN_TIME_SCALE": "0.01",  # the 2 s between activity retries takes 20 ms
            "DURABLE_STANDIN_CRASH_RATE": str(CRASH_RATE),
            "DURABLE_STANDIN_CRASH_SEED": str(SEED),
        }
        with DevHost(env=env) as host:
            limits = httpx.Limits(max_connections=CONCURRENCY)
            async with httpx.AsyncClient(
                base_url=host.url, headers={"api-key": KEY}, timeout=60, limits=limits
            ) as http:
                started = time.monotonic()
                deadline = started + DEADLINE_S
                ids = await submit_all(http)
                await wait_for_completions(broker, set(ids), deadline)
                results = await final_results(http, ids, deadline)
                seconds = time.monotonic() - started
                failures = await activity_failures(http, ids)

    messages = broker.messages(ENTITY)
    per_id = Counter(m.message_id for m in messages)
    lost = [i for i in ids if per_id[i] == 0]
    duplicated = [i for i in ids if per_id[i] > 1]
    strays = set(per_id) - set(ids)
    statuses = Counter(json.loads(m.body)["status"] for m in messages)
    unretrievable = {i: r.status_code for i, r in results.items() if r.status_code in (202, 404)}
    # The result says how the request ended (x-gateway-status); its completion message must say the same.
    mismatched = [
        m.message_id
        for m in messages
        if m.message_id in results
        and results[m.message_id].headers.get("x-gateway-status") != json.loads(m.body)["status"]
    ]
    crashes = failures["crash before"] + failures["crash after"]
    publish_failed = failures["publish_completion failed"]  # the gateway's publish retry path, per execution
    refused_not_delivered_once = [i for i in broker.refused_ids if per_id[i] != 1]
    with capsys.disabled():
        print(
            f"\n  none lost | requests {REQUESTS} | completions {len(per_id)} {dict(statuses)} | lost {len(lost)}"
            f" | duplicated {len(duplicated)} | crashes injected {crashes} (before {failures['crash before']},"
            f" after {failures['crash after']}) | publish refusals injected {broker.refused} (failed publish"
            f" activities: {publish_failed}; refused then delivered once:"
            f" {len(broker.refused_ids) - len(refused_not_delivered_once)}) | other activity failures"
            f" {sum(failures.values()) - crashes - publish_failed}"
            f" | backend calls {len(weu.requests) + len(neu.requests)} | {seconds:.1f} s"
        )
    assert (lost, duplicated, strays) == ([], [], set())
    assert unretrievable == {} and mismatched == []
    assert crashes > 0 and failures["crash before"] > 0 and failures["crash after"] > 0
    # Every refusal reached the gateway's publish activity (unless an injected crash after it took its place) and
    # the gateway's own retry delivered that message, once.
    assert broker.refused > 0 and 0 < publish_failed <= broker.refused and refused_not_delivered_once == []
