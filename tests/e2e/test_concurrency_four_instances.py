"""Backend concurrency and priority admission across four instances: four devhosts on one Azurite.

The backend allows `concurrency=16` with `reserved=8` (dedicated to priority 1); each answer takes 300 ms. First
priority-1 traffic alone at about half the backend's capacity; then the same priority-1 traffic mixed with
priority-9 traffic that pushes the total to about twice the capacity. The fake counts how many requests it
answers at once: never more than N x 1.1 + 1. Priority 1's p50 mixed stays within 1.3x of its p50 alone, priority 9
absorbs the wait (it is the one that expires), and no request is answered after its time to live. Traffic is paced
by a schedule (a load generator).
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from itertools import cycle

import httpx

from tests.support.devhost import DevHost
from tests.support.fake_openai import FakeAzureOpenAI

N = 16
LATENCY_S = 0.3
CAPACITY = N / LATENCY_S  # requests per second the backend can take
TTL_S = 3.0
PHASE_S = 6.0
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


async def drive(
    client: httpx.AsyncClient, hosts: list[str], priority: int, rate: float, results: list[tuple[int, float]]
) -> None:
    """`rate` requests/s for PHASE_S, round-robin over the hosts, each request its own task."""
    headers = {"api-key": "team-key", "x-gateway-priority": str(priority), "x-gateway-ttl": str(TTL_S)}

    async def one(host: str) -> None:
        sent = time.monotonic()
        answer = await client.post(f"{host}/v1/chat/completions", json=CHAT, headers=headers)
        results.append((answer.status_code, time.monotonic() - sent))

    start, tasks = time.monotonic(), []
    for n, host in zip(range(int(PHASE_S * rate)), cycle(hosts), strict=False):
        if (wait := start + n / rate - time.monotonic()) > 0:
            await asyncio.sleep(wait)  # pacing the load generator, not synchronisation
        tasks.append(asyncio.ensure_future(one(host)))
    await asyncio.gather(*tasks)


def test_backend_concurrency_and_priority_hold_across_four_instances(azurite, capsys):
    backend = FakeAzureOpenAI(name="ptu", latency_ms=int(LATENCY_S * 1000))
    with backend.threaded():
        env = {
            "AzureWebJobsStorage": azurite.connection_string,
            "GATEWAY_STATE_TABLE": "slots" + uuid.uuid4().hex[:8],
            "GATEWAY_API_KEYS": "team:team-key",
            # Priority 1 by profile: a header can only lower it (priority-9 requests send x-gateway-priority: 9).
            "GATEWAY_PROFILE_TEAM": "priority=1",
            "GATEWAY_CALLER_PROFILES": "team=team",
            "GATEWAY_BACKEND_1": f"name=ptu;host={backend.url};mode=direct;api-key=fake-key;tier=ptu;"
            f"concurrency={N};reserved={N // 2};deployments=gpt-4o-mini",
            "GATEWAY_MAX_WAIT_S": "30",
        }
        with DevHost(env=env) as a, DevHost(env=env) as b, DevHost(env=env) as c, DevHost(env=env) as d:
            hosts = [h.url for h in (a, b, c, d)]
            alone: list[tuple[int, float]] = []
            mixed_p1: list[tuple[int, float]] = []
            mixed_p9: list[tuple[int, float]] = []

            async def load() -> None:
                limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200)
                async with httpx.AsyncClient(timeout=30, limits=limits) as client:
                    await drive(client, hosts, 1, 0.5 * CAPACITY, [])  # warm-up: slots leased, connections open
                    await drive(client, hosts, 1, 0.5 * CAPACITY, alone)
                    backend.peak_inflight = 0
                    await asyncio.gather(
                        drive(client, hosts, 9, 1.5 * CAPACITY, mixed_p9),
                        drive(client, hosts, 1, 0.5 * CAPACITY, mixed_p1),
                    )

            asyncio.run(load())

            def p50(results: list[tuple[int, float]]) -> float:
                return statistics.median(t for status, t in results if status == 200)

            def p90(results: list[tuple[int, float]]) -> float:  # every answer, 408s included: how long one waits
                return statistics.quantiles([t for _, t in results], n=10)[-1]

            late = [t for _, t in alone + mixed_p1 + mixed_p9 if t > TTL_S + 1.0]
            with capsys.disabled():
                print(
                    f"\n[concurrency, 4 instances, N={N}] peak in flight at the backend {backend.peak_inflight} "
                    f"(bound {N * 1.1 + 1:.1f}); p1 p50 alone {p50(alone) * 1000:.0f} ms, mixed "
                    f"{p50(mixed_p1) * 1000:.0f} ms (p90 of all answers {p90(mixed_p1) * 1000:.0f} ms); p9 p90 of all "
                    f"answers {p90(mixed_p9) * 1000:.0f} ms, {sum(s == 408 for s, _ in mixed_p9)} of {len(mixed_p9)} "
                    f"expired (p1: {sum(s == 408 for s, _ in mixed_p1)} of {len(mixed_p1)}); "
                    f"p9 answers {sorted({s for s, _ in mixed_p9})}; answered past TTL: {len(late)}"
                )
            assert backend.peak_inflight <= N * 1.1 + 1

            assert p50(mixed_p1) <= 1.3 * p50(alone)  # priority 1 keeps its latency under twice the capacity

            def expired(results: list[tuple[int, float]]) -> float:
                return sum(status == 408 for status, _ in results) / len(results)

            assert expired(mixed_p9) > expired(mixed_p1)  # priority 9 absorbs the wait: it is the one that expires
            assert late == []  # no request waits past its deadline
            assert all(status in (200, 408, 429) for status, _ in mixed_p9)


def test_a_callers_concurrency_holds_across_instances(azurite, capsys):
    """Profile `concurrency=4` on three devhosts sharing one Azurite: 36 requests of the caller at once, spread
    over the instances, are all answered, and the backend never sees more than 4 of them at a time."""
    limit, requests = 4, 36
    backend = FakeAzureOpenAI(name="paygo", latency_ms=200)
    with backend.threaded():
        env = {
            "AzureWebJobsStorage": azurite.connection_string,
            "GATEWAY_STATE_TABLE": "callerslots" + uuid.uuid4().hex[:8],
            "GATEWAY_API_KEYS": "team:team-key",
            "GATEWAY_PROFILE_TEAM": f"concurrency={limit}",
            "GATEWAY_CALLER_PROFILES": "team=team",
            "GATEWAY_BACKEND_1": f"name=paygo;host={backend.url};mode=direct;api-key=fake-key;deployments=gpt-4o-mini",
            "GATEWAY_MAX_WAIT_S": "60",
        }
        with DevHost(env=env) as a, DevHost(env=env) as b, DevHost(env=env) as c:
            hosts = [h.url for h in (a, b, c)]

            async def burst() -> list[int]:
                async with httpx.AsyncClient(timeout=90, headers={"api-key": "team-key"}) as client:
                    answers = await asyncio.gather(
                        *(client.post(f"{host}/v1/chat/completions", json=CHAT) for _, host in zip(
                            range(requests), cycle(hosts), strict=False
                        ))
                    )  # fmt: skip
                return [answer.status_code for answer in answers]

            started = time.monotonic()
            statuses = asyncio.run(burst())
            elapsed = time.monotonic() - started
            with capsys.disabled():
                print(
                    f"\n[caller concurrency, 3 instances] limit {limit}: peak in flight at the backend "
                    f"{backend.peak_inflight}; {requests} requests answered in {elapsed:.1f} s "
                    f"(at least {requests / limit * 0.2:.1f} s at the limit)"
                )
            assert statuses == [200] * requests
            assert 2 <= backend.peak_inflight <= limit  # shared, and used by more than one request at a time
