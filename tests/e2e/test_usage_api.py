"""`GET /gateway/usage` summed over two instances: two devhosts (separate processes) sharing one Azurite.

Known traffic goes through each instance; the API on either one must answer the totals of both, exactly, by
caller and model and by backend and deployment. The tokens expected are the ones the backends reported in the
answers the clients got. Instances flush every second here (GATEWAY_USAGE_FLUSH_S; 10 s by default), so the
test polls the API until the other instance's counters are in, with a deadline.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter

import httpx

from tests.support.devhost import DevHost
from tests.support.fake_openai import FakeAzureOpenAI, Fault

KEYS = {"team-a": "usage-key-a", "team-b": "usage-key-b"}
OPERATOR = {"x-functions-key": "devhost-function-key"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Count my tokens"}]}


def test_usage_totals_are_summed_over_instances(azurite):
    weu, neu = FakeAzureOpenAI(name="weu"), FakeAzureOpenAI(name="neu")
    expected: Counter[tuple[str, str, str]] = Counter()  # (caller, model, what) -> count
    by_backend: Counter[tuple[str, str, str]] = Counter()  # (backend, deployment, what) -> count

    def call(http: httpx.Client, caller: str, path: str, body: dict) -> httpx.Response:
        answer = http.post(path, json=body, headers={"api-key": KEYS[caller]})
        model = body["model"]
        expected[(caller, model, "requests")] += 1
        # The backend that answered; a request every backend throttled counts on the last one tried (neu).
        backend = answer.headers.get("x-gateway-backend", "neu")
        deployment = "gpt-4o-mini-neu" if backend == "neu" else model
        by_backend[(backend, deployment, "requests")] += 1
        if answer.status_code == 200:
            usage = _usage(answer)
            expected[(caller, model, "input_tokens")] += usage["prompt_tokens"]
            expected[(caller, model, "output_tokens")] += usage.get("completion_tokens", 0)
        elif answer.status_code == 429:
            expected[(caller, model, "throttled")] += 1
            by_backend[(backend, deployment, "throttled")] += 1
        return answer

    with weu.threaded(), neu.threaded():
        suffix = uuid.uuid4().hex[:8]
        env = {
            "AzureWebJobsStorage": azurite.connection_string,
            "GATEWAY_STATE_TABLE": "state" + suffix,
            "GATEWAY_USAGE_TABLE": "usage" + suffix,
            "GATEWAY_USAGE_FLUSH_S": "1",
            "GATEWAY_MAX_WAIT_S": "0",
            "GATEWAY_API_KEYS": ",".join(f"{name}:{key}" for name, key in KEYS.items()),
            "GATEWAY_BACKEND_1": f"name=weu;host={weu.url};mode=direct;api-key=fake-key;priority=1;"
            "deployments=gpt-4o-mini,text-embedding-3-small",
            "GATEWAY_BACKEND_2": f"name=neu;host={neu.url};mode=direct;api-key=fake-key;priority=2;"
            "deployments=gpt-4o-mini=gpt-4o-mini-neu",
        }
        with (
            DevHost(env=env) as a,
            DevHost(env=env) as b,
            httpx.Client(base_url=a.url, timeout=30) as on_a,
            httpx.Client(base_url=b.url, timeout=30) as on_b,
        ):
            before = on_a.get("/gateway/stats", headers=OPERATOR).json()
            for _ in range(3):
                assert call(on_a, "team-a", "/v1/chat/completions", CHAT).status_code == 200
            embedding = {"model": "text-embedding-3-small", "input": "hello there"}
            assert call(on_a, "team-b", "/v1/embeddings", embedding).status_code == 200
            for _ in range(2):
                assert call(on_b, "team-a", "/v1/chat/completions", CHAT).status_code == 200
            stream = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
            assert call(on_b, "team-b", "/v1/chat/completions", stream).status_code == 200
            # Throttling that lasts a millisecond (retry-after-ms: 1), so no breaker outlives its request.
            weu.enqueue(Fault.status(429, retry_after_ms=1))
            assert call(on_b, "team-b", "/v1/chat/completions", CHAT).headers["x-gateway-backend"] == "neu"
            weu.enqueue(Fault.status(429, retry_after_ms=1))
            neu.enqueue(Fault.status(429, retry_after_ms=1))
            assert call(on_b, "team-a", "/v1/chat/completions", CHAT).status_code == 429
            after = on_a.get("/gateway/stats", headers=OPERATOR).json()
            # Five requests on A and no usage write per request: at most one background flush per second.
            assert after["usage_storage_operations"] - before["usage_storage_operations"] <= 4

            want = {
                (caller, model): {what: n for (c, m, what), n in expected.items() if (c, m) == (caller, model)}
                for caller, model, _ in expected
            }
            deadline = time.monotonic() + 20
            while True:  # until B's counters are in (it flushes within a second of its last request)
                answer = on_a.get("/gateway/usage", params={"window": "1h", "by": "caller,model"}, headers=OPERATOR)
                assert answer.status_code == 200, answer.text
                view = answer.json()
                got = {(r["caller"], r["model"]): r for r in view["rows"]}
                if view["instances"] == 2 and all(got.get(k, {}).get("requests") == v["requests"]
                                                  for k, v in want.items()):
                    break
                assert time.monotonic() < deadline, f"wanted {want}, got {view}"
            for key, figures in want.items():
                for what, n in figures.items():
                    assert got[key][what] == n, (key, what, got[key])
            assert view["totals"]["requests"] == sum(n for (_, _, w), n in expected.items() if w == "requests") == 9
            assert view["by"] == ["caller", "model"] and view["window"] == "1h"

            # The same totals from the other instance, by backend and deployment.
            view_b = on_b.get("/gateway/usage", params={"window": "1h", "by": "backend,deployment"},
                              headers=OPERATOR).json()
            got_b = {(r["backend"], r["deployment"], what): r[what]
                     for r in view_b["rows"] for what in ("requests", "throttled") if r[what]}
            assert got_b == dict(by_backend)
            assert view_b["totals"] == view["totals"]

            # Operator routes only: a client key is not a function key, and nonsense is a 400.
            assert on_a.get("/gateway/usage", headers={"api-key": KEYS["team-a"]}).status_code == 401
            assert on_a.get("/gateway/usage", params={"window": "forever"}, headers=OPERATOR).status_code == 400
            assert on_a.get("/gateway/usage", params={"by": "secret"}, headers=OPERATOR).status_code == 400


def _usage(answer: httpx.Response) -> dict:
    if answer.headers["content-type"].startswith("text/event-stream"):
        payloads = [line[6:] for line in answer.text.splitlines() if line.startswith("data: {")]
        return next(json.loads(p)["usage"] for p in reversed(payloads) if json.loads(p).get("usage"))
    return answer.json()["usage"]
