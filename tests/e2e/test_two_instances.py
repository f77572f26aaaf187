"""Two development hosts (separate processes, as two scaled-out instances) sharing one Azurite.

After instance A sees a 429 for `gpt-4o-mini` from backend 1, instance B must stop sending `gpt-4o-mini` to
backend 1 once its next refresh has run (at most one GATEWAY_STATE_REFRESH_MS after A's write): with the
default 1000 ms, within 1.5 s of A's answer. Its embeddings keep going to backend 1: Azure throttles per
deployment. The measured delay is asserted and printed.
"""

from __future__ import annotations

import time
import uuid

import httpx

from tests.support.devhost import DevHost
from tests.support.fake_openai import FakeAzureOpenAI, Fault

KEY = "two-instances-key"
OPERATOR = {"x-functions-key": "devhost-function-key"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
REFRESH_MS = 1000  # the default
PROPAGATION_LIMIT_S = 1.5  # one refresh interval, plus A's write, B's read and a request


def test_a_429_seen_by_one_instance_stops_the_other(azurite, capsys):
    weu, neu = FakeAzureOpenAI(name="weu"), FakeAzureOpenAI(name="neu")
    with weu.threaded(), neu.threaded():
        env = {
            "AzureWebJobsStorage": azurite.connection_string,
            "GATEWAY_STATE_TABLE": "two" + uuid.uuid4().hex[:10],
            "GATEWAY_STATE_REFRESH_MS": str(REFRESH_MS),
            "GATEWAY_API_KEYS": KEY,
            "GATEWAY_BACKEND_1": f"name=weu;host={weu.url};mode=direct;api-key=fake-key;priority=1;"
            "deployments=gpt-4o-mini,text-embedding-3-small",
            "GATEWAY_BACKEND_2": f"name=neu;host={neu.url};mode=direct;api-key=fake-key;priority=2;"
            "deployments=gpt-4o-mini,text-embedding-3-small",
        }
        with DevHost(env=env) as a, DevHost(env=env) as b, httpx.Client(headers={"api-key": KEY}) as client:
            instances = {client.get(f"{h.url}/gateway/stats", headers=OPERATOR).json()["instance"] for h in (a, b)}
            assert len(instances) == 2  # two instances, not one twice
            for host in (a, b):  # both warm, both have loaded the (empty) shared state
                assert client.post(f"{host.url}/v1/chat/completions", json=CHAT).headers["x-gateway-backend"] == "weu"

            weu.enqueue(Fault.status(429, retry_after=30))
            answer = client.post(f"{a.url}/v1/chat/completions", json=CHAT)
            assert answer.headers["x-gateway-backend"] == "neu"
            seen_at = time.monotonic()
            weu_before = len(weu.requests)

            # B keeps serving traffic; record where each request went until it has clearly switched.
            routed: list[tuple[float, str]] = []
            deadline = seen_at + PROPAGATION_LIMIT_S + 2  # a later switch fails anyway; 2 s to see 20 requests after it
            while time.monotonic() < deadline and len(routed) < 5000:
                r = client.post(f"{b.url}/v1/chat/completions", json=CHAT)
                assert r.status_code == 200
                routed.append((time.monotonic() - seen_at, r.headers["x-gateway-backend"]))
                if len(routed) >= 20 and all(name == "neu" for _, name in routed[-20:]):
                    break
            switched = next((i for i, (_, name) in enumerate(routed) if name == "neu"), None)
            assert switched is not None, f"B still sent everything to weu {routed[-1][0]:.2f} s after A saw the 429"
            assert all(name == "neu" for _, name in routed[switched:])  # and never back while open
            delay = routed[switched][0]
            assert len(weu.requests) - weu_before == switched  # B's only weu requests came before it knew
            view = client.get(f"{b.url}/gateway/backends", headers=OPERATOR).json()
            weu_view = view["backends"][0]
            assert weu_view["breaker"] == "closed"  # the host is fine
            chat_view = next(d for d in weu_view["deployments"] if d["deployment"] == "gpt-4o-mini")
            assert chat_view["breaker"] == "open" and chat_view["reason"] == "429"
            embedding = client.post(f"{b.url}/v1/embeddings", json={"model": "text-embedding-3-small", "input": "x"})
            assert embedding.status_code == 200 and embedding.headers["x-gateway-backend"] == "weu"
            with capsys.disabled():
                print(
                    f"\n[propagation] B stopped sending to the 429'd backend {delay * 1000:.0f} ms after A saw it "
                    f"(refresh interval {REFRESH_MS} ms; {switched} request(s) reached it meanwhile)"
                )
            assert delay < PROPAGATION_LIMIT_S, f"B switched {delay:.2f} s after A saw the 429"
