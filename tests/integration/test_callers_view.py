"""`GET /gateway/callers` (operations.callers_view): each caller's profile, limits and use of them in the current
window, from the instance's own limiter and caller slots, with no storage call. The same limiter feeds the
`gateway.caller.limit` gauge that docs/queries/tokens-per-minute.kql compares usage with.

Real parts: the gateway's services with the limiter on Azurite, a fake Azure OpenAI on loopback, and a local Entra
ID whose token maps an application to its profile by app role only.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from gateway.bootstrap import Services, build_services, leases_table
from gateway.config import load_settings
from gateway.credentials import storage_credential
from gateway.leases import BUCKETS_PER_S, WINDOW_S
from gateway.messages import Inbound
from gateway.metrics import CALLER_LIMIT, CallerLimits
from gateway.operations import callers_view
from gateway.storage import storage_account
from gateway.usage import UsageRecord
from tests.support.fake_entra import AUDIENCE, CLIENT_ID, TENANT, FakeEntra
from tests.support.fake_openai import FakeAzureOpenAI

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "How much have I used?"}], "max_tokens": 40}
EMBED = {"model": "text-embedding-3-small", "input": "count me"}


@pytest.fixture
async def gateway(azurite) -> AsyncIterator[tuple[Services, FakeAzureOpenAI, FakeEntra, list[UsageRecord]]]:
    async with FakeAzureOpenAI(name="weu") as weu, FakeEntra() as entra:
        env = {
            "GATEWAY_BACKEND_1": f"name=weu;host={weu.url};mode=direct;api-key=fake-key;"
            "deployments=gpt-4o-mini,text-embedding-3-small",
            "GATEWAY_API_KEYS": "team-a:key-a,silver:key-s,plain:key-p",
            "GATEWAY_PROFILE_GOLD": "rpm=10;tpm=5000;concurrency=3",
            "GATEWAY_PROFILE_SILVER": "tpm=1000;per=caller,model",
            "GATEWAY_PROFILE_BATCH": "rpm=50",
            "GATEWAY_CALLER_PROFILES": "team-a=gold,silver=silver,role:Batch.Submit=batch",
            "GATEWAY_ENTRA_TENANT_ID": TENANT,
            "GATEWAY_ENTRA_AUDIENCE": AUDIENCE,
            "GATEWAY_ENTRA_ISSUER": entra.issuer,
            "GATEWAY_ENTRA_JWKS_URL": entra.jwks_url,
        }
        account = storage_account({"AzureWebJobsStorage": azurite.connection_string}, "")
        table = leases_table("callers" + uuid.uuid4().hex[:8])
        services = build_services(load_settings(env), leases=lambda: account.table_client(table, storage_credential))
        records: list[UsageRecord] = []
        services.usage.add_sink(records.append)
        try:
            yield services, weu, entra, records
        finally:
            await services.close()
            weu.release_stalls()


def post(path: str, body: dict, **headers: str) -> Inbound:
    all_headers = {"content-type": "application/json", **headers}
    return Inbound("POST", path, "", all_headers, json.dumps(body).encode())


async def send(services: Services, request: Inbound) -> int:
    out = await services.pipeline.handle(request)
    if out.stream is not None:
        out.body = b"".join([chunk async for chunk in out.stream])
    return out.status


def tokens_of(records: list[UsageRecord], caller: str, model: str | None = None) -> int:
    return sum(
        r.usage.total_tokens or r.usage.prompt_tokens + r.usage.completion_tokens
        for r in records
        if r.caller == caller and r.usage is not None and (model is None or r.model == model)
    )


async def test_the_callers_view_shows_each_callers_use_of_its_limits_in_the_window(gateway):
    services, _, entra, records = gateway
    for _ in range(3):
        assert await send(services, post("/v1/chat/completions", CHAT, **{"api-key": "key-a"})) == 200
    assert await send(services, post("/v1/chat/completions", CHAT, **{"api-key": "key-s"})) == 200
    assert await send(services, post("/v1/embeddings", EMBED, **{"api-key": "key-s"})) == 200
    assert await send(services, post("/v1/chat/completions", CHAT, **{"api-key": "key-p"})) == 200
    app = entra.token({"roles": ["Batch.Submit"]})  # mapped by its app role only, not by its name
    assert await send(services, post("/v1/chat/completions", CHAT, authorization=f"Bearer {app}")) == 200

    operations_before = services.quotas.limiter.operations + services.quotas.caller_slots.operations
    view = callers_view(services)
    assert services.quotas.limiter.operations + services.quotas.caller_slots.operations == operations_before
    assert view["instance"] == services.pool.instance_id
    callers = {c["caller"]: c for c in view["callers"]}

    # RPM and TPM of a caller under a profile: this instance's admissions exactly, the tokens settled against the
    # reported usage; `used` is the shared estimate, which counts at least what this instance admitted.
    team_a = callers["team-a"]
    assert team_a["profile"] == "gold" and team_a["limits"] == {"rpm": 10, "tpm": 5000, "concurrency": 3}
    [window] = team_a["window"]
    assert window["model"] is None
    requests, tokens = window["requests"], window["tokens"]
    assert requests["limit"] == 10 and requests["admitted_here"] == 3
    assert 3 <= requests["used"] <= 10 and requests["remaining"] == 10 - requests["used"]
    assert tokens["limit"] == 5000 and tokens["admitted_here"] == tokens_of(records, "team-a") > 0
    assert tokens["used"] >= tokens["admitted_here"] and tokens["shared"] is True
    assert 0 < requests["reset_s"] <= WINDOW_S + 1 / BUCKETS_PER_S  # counted to the end of its 0.5 s bucket
    assert window["concurrency"] == {"limit": 3, "in_flight_here": 0}

    # per=caller,model: one entry per model, each against its own limit.
    silver = callers["silver"]["window"]
    assert [e["model"] for e in silver] == ["gpt-4o-mini", "text-embedding-3-small"]
    for entry in silver:
        assert entry["tokens"]["limit"] == 1000
        assert entry["tokens"]["admitted_here"] == tokens_of(records, "silver", entry["model"]) > 0
        assert "requests" not in entry  # the profile has no RPM

    # No profile: no limits, nothing counted.
    assert callers["plain"]["limits"] is None and callers["plain"]["window"] == []

    # Mapped by role: the view shows the profile it was admitted with, not the one its name alone maps to.
    application = callers[f"app:{CLIENT_ID}"]
    assert application["profile"] == "batch" and application["limits"] == {"rpm": 50, "tpm": None, "concurrency": None}
    assert application["window"][0]["requests"]["admitted_here"] == 1

    # The limits gauge: one series per caller and kind (per-model keys share one), read at export time.
    reader = InMemoryMetricReader()
    CallerLimits(services.quotas.limiter.active_limits, MeterProvider(metric_readers=[reader]).get_meter("test"))
    [metric] = [m for r in reader.get_metrics_data().resource_metrics for s in r.scope_metrics for m in s.metrics]
    assert metric.name == CALLER_LIMIT
    series = {
        (p.attributes["gateway.caller"], p.attributes["gateway.limit"], p.attributes["gateway.limit.per"]): p.value
        for p in metric.data.data_points
    }
    assert series == {
        ("team-a", "rpm", "caller"): 10,
        ("team-a", "tpm", "caller"): 5000,
        ("silver", "tpm", "caller,model"): 1000,
        (f"app:{CLIENT_ID}", "rpm", "caller"): 50,
    }


async def test_the_callers_view_counts_requests_holding_a_callers_concurrency_slot(gateway):
    services, weu, _, _ = gateway
    hold = weu.hold_stream()
    out = await services.pipeline.handle(post("/v1/chat/completions", {**CHAT, "stream": True}, **{"api-key": "key-a"}))
    assert out.status == 200 and out.stream is not None and await hold.wait_reached()

    def in_flight() -> dict:
        [window] = {c["caller"]: c for c in callers_view(services)["callers"]}["team-a"]["window"]
        return window["concurrency"]

    assert in_flight() == {"limit": 3, "in_flight_here": 1}  # the stream holds its slot until its end
    hold.release()
    assert b"[DONE]" in b"".join([chunk async for chunk in out.stream])
    assert in_flight() == {"limit": 3, "in_flight_here": 0}
