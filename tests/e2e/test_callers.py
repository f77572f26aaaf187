"""Callers end to end: gateway keys and Entra ID tokens on every route, profiles, and live governance.

The devhost runs the real validator against a local Entra ID (OpenID configuration and JWKS on loopback, keys
generated here). Live governance is checked across two devhosts sharing one Azurite: an operator's suspension or
profile override at instance A reaches instance B within GATEWAY_STATE_REFRESH_MS + 1 s. Clients wait by polling
with a deadline, as real ones would; nothing sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.devhost import DevHost
from tests.support.fake_entra import AUDIENCE, CLIENT_ID, TENANT, FakeEntra
from tests.support.fake_openai import FakeAzureOpenAI

KEY_A, KEY_B = "team-a-secret-key", "team-b-secret-key"
OPERATOR = {"x-functions-key": "devhost-function-key"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
REFRESH_MS = 1000


@pytest.fixture(scope="module")
def entra() -> Iterator[FakeEntra]:
    """The local Entra ID on its own event loop in a thread (the tests and the devhost are synchronous)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    fake = FakeEntra()
    asyncio.run_coroutine_threadsafe(fake.__aenter__(), loop).result(timeout=30)
    try:
        yield fake
    finally:
        asyncio.run_coroutine_threadsafe(fake.__aexit__(None, None, None), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()


@pytest.fixture(scope="module")
def backends() -> Iterator[tuple[FakeAzureOpenAI, FakeAzureOpenAI]]:
    weu, neu = FakeAzureOpenAI(name="weu"), FakeAzureOpenAI(name="neu")
    with weu.threaded(), neu.threaded():
        yield weu, neu


def gateway_env(azurite, weu: FakeAzureOpenAI, neu: FakeAzureOpenAI, entra: FakeEntra, **extra: str) -> dict:
    return {
        "AzureWebJobsStorage": azurite.connection_string,
        "GATEWAY_STATE_TABLE": "callers" + uuid.uuid4().hex[:8],
        "GATEWAY_STATE_REFRESH_MS": str(REFRESH_MS),
        "GATEWAY_API_KEYS": f"team-a:{KEY_A},team-b:{KEY_B}",
        "GATEWAY_BACKEND_1": f"name=weu;host={weu.url};mode=direct;api-key=fake-key;priority=1;"
        "deployments=gpt-4o-mini,text-embedding-3-small;batch=gpt-4o-mini=gpt-4o-mini-batch",
        "GATEWAY_BACKEND_2": f"name=neu;host={neu.url};mode=direct;api-key=fake-key;priority=2;"
        "deployments=gpt-4o-mini,text-embedding-3-small",
        "GATEWAY_ENTRA_TENANT_ID": TENANT,
        "GATEWAY_ENTRA_AUDIENCE": f"{AUDIENCE},{CLIENT_ID}",
        "GATEWAY_ENTRA_ISSUER": entra.issuer,
        "GATEWAY_ENTRA_JWKS_URL": entra.jwks_url,
        "GATEWAY_PROFILE_GOLD": "models=gpt-4o-mini",
        "GATEWAY_PROFILE_BATCH": "async=always",
        "GATEWAY_CALLER_PROFILES": f"team-a=gold,app:{CLIENT_ID}=gold,role:Batch.Submit=batch",
        **extra,
    }


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def usage(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_entra_tokens_and_keys_work_on_every_route(azurite, backends, entra, tmp_path):
    weu, neu = backends
    usage_file = tmp_path / "usage.jsonl"
    env = gateway_env(azurite, weu, neu, entra, GATEWAY_USAGE_FILE=str(usage_file))
    app = entra.token()
    other_app = entra.token({"azp": str(uuid.uuid4())})
    with DevHost(env=env) as host, httpx.Client(base_url=host.url, timeout=30) as http:
        # Sync: the application is the caller, its profile is gold.
        answer = http.post("/v1/chat/completions", json=CHAT, headers=bearer(app))
        assert answer.status_code == 200, answer.text
        record = usage(usage_file)[-1]
        assert (record["caller"], record["profile"], record["status"]) == (f"app:{CLIENT_ID}", "gold", 200)

        # Outside the allow-list: refused, and recorded as refused.
        refused = http.post(
            "/v1/embeddings", json={"model": "text-embedding-3-small", "input": "x"}, headers=bearer(app)
        )
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "model_not_allowed"
        record = usage(usage_file)[-1]
        assert (record["status"], record["error"], record["limit"], record["outcome"]) == (
            403, "model_not_allowed", "models", "refused")
        models = http.get("/v1/models", headers=bearer(app)).json()["data"]
        assert [m["id"] for m in models] == ["gpt-4o-mini"]

        # Async: the token's caller owns the work; another application's token does not see it.
        accepted = http.post("/v1/chat/completions", json=CHAT, headers={**bearer(app), "Prefer": "respond-async"})
        assert accepted.status_code == 202
        deadline = time.monotonic() + 30
        while (status := http.get(accepted.headers["Location"], headers=bearer(app))).status_code == 202:
            assert time.monotonic() < deadline
        assert status.status_code == 200 and status.json()["output"]["status"] == "succeeded"
        assert http.get(accepted.headers["Location"], headers=bearer(other_app)).status_code == 404
        assert http.get(accepted.json()["result_url"], headers={"api-key": KEY_B}).status_code == 404

        # Batch: files and batches with the token, invisible to a key holder.
        with openai.OpenAI(base_url=host.url + "/v1", api_key=app, max_retries=0) as client:
            line = {"custom_id": "1", "method": "POST", "url": "/v1/chat/completions", "body": CHAT}
            uploaded = client.files.create(file=("in.jsonl", io.BytesIO(json.dumps(line).encode())), purpose="batch")
            batch = client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            assert client.batches.retrieve(batch.id).id == batch.id
        assert http.get(f"/v1/batches/{batch.id}", headers={"api-key": KEY_B}).status_code == 404

        # A user with the Batch.Submit app role gets the batch profile: every POST runs async.
        user = entra.token({"idtyp": "user", "scp": "Gateway.Use", "azp": None, "roles": ["Batch.Submit"]})
        deferred = http.post("/v1/chat/completions", json=CHAT, headers=bearer(user))
        assert deferred.status_code == 202 and "async=always" in deferred.json()["reason"]

        # Keys keep working beside tokens; bad tokens are refused, naming the check, never echoing the token.
        assert http.post("/v1/chat/completions", json=CHAT, headers={"api-key": KEY_A}).status_code == 200
        expired = entra.token({"exp": int(time.time()) - 3600, "nbf": int(time.time()) - 7200})
        for bad in (expired, entra.token({"aud": "api://someone-else"}), "not.a.token"):
            answer = http.post("/v1/chat/completions", json=CHAT, headers=bearer(bad))
            assert answer.status_code == 401 and answer.json()["error"]["code"] in ("invalid_token", "invalid_api_key")
            assert bad not in answer.text


def wait_until(check, timeout_s: float) -> float:
    """Seconds until `check()` holds (polling, as a client would), or a failure after `timeout_s`."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout_s, "not seen in time"
    return time.monotonic() - started


def test_suspension_and_profile_overrides_reach_every_instance(azurite, backends, entra, capsys):
    weu, neu = backends
    env = gateway_env(azurite, weu, neu, entra)
    limit_s = REFRESH_MS / 1000 + 1
    with DevHost(env=env) as a, DevHost(env=env) as b, httpx.Client(timeout=30) as http:

        def chat_on_b(key: str = KEY_A, model: str = "gpt-4o-mini") -> httpx.Response:
            body = {**CHAT, "model": model}
            return http.post(f"{b.url}/v1/chat/completions", json=body, headers={"api-key": key})

        assert chat_on_b().status_code == 200  # B is warm and has loaded the shared state

        suspended = http.post(f"{a.url}/gateway/callers/team-a/suspend", headers=OPERATOR)
        assert suspended.status_code == 200 and suspended.json()["suspended"] is True
        assert http.post(f"{a.url}/v1/chat/completions", json=CHAT, headers={"api-key": KEY_A}).status_code == 403
        delay = wait_until(lambda: chat_on_b().status_code == 403, limit_s)
        assert chat_on_b().json()["error"]["code"] == "caller_suspended"
        assert chat_on_b(KEY_B).status_code == 200  # only that caller
        view = {c["caller"]: c for c in http.get(f"{b.url}/gateway/callers", headers=OPERATOR).json()["callers"]}
        assert view["team-a"]["suspended"] is True and view["team-b"]["suspended"] is False

        assert http.post(f"{a.url}/gateway/callers/team-a/resume", headers=OPERATOR).status_code == 200
        resumed = wait_until(lambda: chat_on_b().status_code == 200, limit_s)

        override = http.put(f"{a.url}/gateway/profiles/gold", headers=OPERATOR, json={"models": ["o3-mini"]})
        assert override.status_code == 200 and override.json()["models"] == ["o3-mini"]
        overridden = wait_until(lambda: chat_on_b().status_code == 403, limit_s)
        assert chat_on_b().json()["error"]["code"] == "model_not_allowed"
        profiles = http.get(f"{b.url}/gateway/profiles", headers=OPERATOR).json()["profiles"]
        assert profiles["gold"]["overridden"] is True
        assert http.delete(f"{a.url}/gateway/profiles/gold", headers=OPERATOR).status_code == 200
        reverted = wait_until(lambda: chat_on_b().status_code == 200, limit_s)

        for bad, status in (("no such caller!", 400), ("team-a", 404)):
            path = f"/gateway/callers/{bad}/suspend" if status == 400 else "/gateway/profiles/platinum"
            method = "POST" if status == 400 else "PUT"
            answer = http.request(method, a.url + path, headers=OPERATOR, json={"rpm": 1})
            assert answer.status_code == status, answer.text
        with capsys.disabled():
            print(
                f"\n[governance] instance B applied: suspension {delay * 1000:.0f} ms, resume {resumed * 1000:.0f} ms, "
                f"profile override {overridden * 1000:.0f} ms, revert {reverted * 1000:.0f} ms "
                f"(refresh {REFRESH_MS} ms, bound {limit_s * 1000:.0f} ms)"
            )
