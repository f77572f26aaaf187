"""The lanes end to end: a PTU backend and a PayGo backend behind the devhost, three callers with profiles.

gold (`tiers=ptu,paygo`) spills to PayGo when PTU throttles. silver (`tiers=ptu`) waits its budget and is then
answered 429 with Retry-After, or 202 when it asked for async; its async work stays on PTU and completes there
once PTU recovers. nightly (`tiers=ptu;async=deny`) gets 429 even when it asks for async. The PayGo fake never
sees a request of silver or nightly: the lane travels with the request into the async path.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.test_async import Stack, running_stack
from tests.support.fake_openai import FakeAzureOpenAI, Fault

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Which lane am I in?"}]}
BACKEND = "mode=direct;api-key=fake-key;deployments=gpt-4o-mini"


@pytest.fixture(scope="module")
def lanes(azurite) -> Iterator[Stack]:
    ptu, paygo = FakeAzureOpenAI(name="ptu"), FakeAzureOpenAI(name="paygo")
    with ptu.threaded(), paygo.threaded():
        env = {
            "GATEWAY_BACKEND_1": f"name=ptu;host={ptu.url};{BACKEND};tier=ptu;priority=1",
            "GATEWAY_BACKEND_2": f"name=paygo;host={paygo.url};{BACKEND};tier=paygo;priority=2",
            "GATEWAY_API_KEYS": "gold:gold-key,silver:silver-key,nightly:nightly-key",
            "GATEWAY_PROFILE_GOLD": "tiers=ptu,paygo;priority=1",
            "GATEWAY_PROFILE_SILVER": "tiers=ptu;priority=5",
            "GATEWAY_PROFILE_NIGHTLY": "tiers=ptu;priority=9;async=deny",
            "GATEWAY_CALLER_PROFILES": "gold=gold,silver=silver,nightly=nightly",
        }
        with running_stack(azurite, ptu, paygo, **env) as stack:
            yield stack


def chat(stack: Stack, key: str, request_id: str, **headers: str):
    headers = {"api-key": key, "x-request-id": request_id, **headers}
    return stack.http.post("/v1/chat/completions", json=CHAT, headers=headers)


def test_gold_spills_to_paygo_silver_waits_then_429_or_202_and_never_reaches_paygo(lanes: Stack):
    ptu, paygo = lanes.weu, lanes.neu
    assert chat(lanes, "silver-key", "silver-first").headers["x-gateway-backend"] == "ptu"  # PTU first
    ptu.always(Fault.status(429, retry_after=2))  # PTU saturated for 2 s at a time

    gold = chat(lanes, "gold-key", "gold-1")
    assert gold.status_code == 200 and gold.headers["x-gateway-backend"] == "paygo"  # spills to PayGo

    silver = chat(lanes, "silver-key", "silver-sync")  # waits GATEWAY_MAX_WAIT_S (1 s), PTU frees in 2 s: 429
    assert silver.status_code == 429 and int(silver.headers["Retry-After"]) >= 1
    assert silver.json()["error"]["code"] == "backends_unavailable"

    nightly = chat(lanes, "nightly-key", "nightly-async", Prefer="respond-async")
    assert nightly.status_code == 429  # async=deny: no 202, whatever it asks

    accepted = chat(lanes, "silver-key", "silver-async", Prefer="respond-async")
    assert accepted.status_code == 202, accepted.text
    ptu.always(None)  # PTU recovers; the orchestration's next attempt is on PTU again
    lanes.http.headers["api-key"] = "silver-key"  # the status URL answers its submitter only
    status = lanes.poll(accepted.headers["Location"])
    assert status["runtimeStatus"] == "Completed" and status["output"]["status"] == "succeeded"
    assert status["output"]["backend"] == "ptu"
    message = lanes.wait_for_completion_message(accepted.json()["id"])  # exactly what any async request ends in
    assert (message["status"], message["backend"], message["caller"]) == ("succeeded", "ptu", "silver")

    seen_by_paygo = {r.headers.get("x-request-id") for r in paygo.requests}
    assert seen_by_paygo == {"gold-1"}  # silver and nightly never reached PayGo, sync or async
    assert "silver-async" in {r.headers.get("x-request-id") for r in ptu.requests}  # its async work ran on PTU
