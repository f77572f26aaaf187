"""What the real Azure Monitor exporter sends from the gateway, read back from a local ingestion endpoint.

The devhost runs in its own process (the exporter is process-global) with a connection string whose
`IngestionEndpoint` is tests/support/ingestion.py over HTTPS, and the identity-based ingestion Bicep deploys
(`APPLICATIONINSIGHTS_AUTHENTICATION_STRING=Authorization=AAD;ClientId=...`) against the fake managed-identity
endpoint: azure-core sends a bearer token only over TLS. Export intervals are shortened through the standard
variables (OTEL_METRIC_EXPORT_INTERVAL, OTEL_BSP_SCHEDULE_DELAY) and every trace is kept (always_on); the
distro's own default samples traces at 5 per second, which never touches metrics.
Waiting is on what arrives (a condition variable), never a sleep.
"""

from __future__ import annotations

import contextlib
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.devhost import DevHost
from tests.support.fake_identity import FakeIdentityEndpoint
from tests.support.fake_openai import FakeAzureOpenAI, Fault
from tests.support.ingestion import Envelope, IngestionEndpoint
from tests.support.local_server import serve_in_thread
from tests.support.ports import closed_port, wait_for_output
from tests.support.tls import LocalCertificate

KEY = "telemetry-key"
CLIENT_ID = "0c6f8a55-1d1e-4d2a-9d44-5d3f0b7a9e11"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}
FAST_EXPORT = {
    "OTEL_METRIC_EXPORT_INTERVAL": "300",
    "OTEL_BSP_SCHEDULE_DELAY": "100",
    "OTEL_TRACES_SAMPLER": "always_on",
    # The exporter's own telemetry about itself and its remote configuration go to Microsoft: not here.
    "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
    "APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED": "true",
}


def gateway_env(azurite, weu: FakeAzureOpenAI, neu: FakeAzureOpenAI, tmp: Path, **extra: str) -> dict[str, str]:
    suffix = uuid.uuid4().hex[:8]
    return {
        "AzureWebJobsStorage": azurite.connection_string,
        "GATEWAY_STATE_TABLE": "telemetry" + suffix,
        "GATEWAY_RESULTS_CONTAINER": "telemetry-" + suffix,
        "GATEWAY_COMPLETIONS_QUEUE": "telemetry-" + suffix,
        "GATEWAY_API_KEYS": f"team-a:{KEY}",
        "GATEWAY_MAX_WAIT_S": "0",
        "GATEWAY_BACKEND_1": f"name=weu;host={weu.url};mode=direct;api-key=fake-key;priority=1;deployments=gpt-4o-mini",
        "GATEWAY_BACKEND_2": f"name=neu;host={neu.url};mode=direct;api-key=fake-key;priority=2;deployments=gpt-4o-mini",
        "TMPDIR": str(tmp),  # the exporter's retry files for failed exports
        **FAST_EXPORT,
        **extra,
    }


def requests_of(items: list[Envelope], request_id: str) -> list[Envelope]:
    return [i for i in items if i.base_type == "RequestData" and i.properties.get("gateway.request_id") == request_id]


def children(items: list[Envelope], parent: Envelope, base_type: str) -> list[Envelope]:
    return [i for i in items if i.base_type == base_type and i.tags.get("ai.operation.parentId") == parent.data["id"]]


def metric_points(items: list[Envelope], name: str) -> list[tuple[float, dict[str, str]]]:
    return [(m["value"], i.properties) for i in items if i.base_type == "MetricData" for m in i.metrics
            if m["name"] == name]


@contextlib.contextmanager
def telemetry_stack(azurite, tmp_path: Path) -> Iterator[tuple[DevHost, IngestionEndpoint, FakeIdentityEndpoint,
                                                              FakeAzureOpenAI, FakeAzureOpenAI, httpx.Client]]:
    certificate = LocalCertificate(tmp_path / "tls")
    ingestion, identity = IngestionEndpoint(certificate.server_context()), FakeIdentityEndpoint()
    weu, neu = FakeAzureOpenAI(name="weu"), FakeAzureOpenAI(name="neu")
    with weu.threaded(), neu.threaded(), serve_in_thread(ingestion, identity):
        env = gateway_env(
            azurite, weu, neu, tmp_path,
            APPLICATIONINSIGHTS_CONNECTION_STRING=ingestion.connection_string,
            APPLICATIONINSIGHTS_AUTHENTICATION_STRING=f"Authorization=AAD;ClientId={CLIENT_ID}",
            REQUESTS_CA_BUNDLE=str(certificate.cert_file),  # the exporter trusts the local endpoint's certificate
            GATEWAY_PROFILE_GOLD="rpm=100000;tpm=50000000",  # limits far away: the limits gauge has a caller
            GATEWAY_CALLER_PROFILES="team-a=gold",
            **identity.env,
        )
        with DevHost(env=env) as host, httpx.Client(base_url=host.url, headers={"api-key": KEY}, timeout=30) as http:
            yield host, ingestion, identity, weu, neu, http


def test_requests_dependencies_and_metrics_arrive_with_their_attributes(azurite, tmp_path):
    with telemetry_stack(azurite, tmp_path) as (_, ingestion, identity, weu, neu, http):
        # A sync call, a stream, an async request and a throttled one.
        assert http.post("/v1/chat/completions", json=CHAT, headers={"x-request-id": "sync-1"}).status_code == 200
        with http.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True},
                         headers={"x-request-id": "stream-1"}) as stream:
            assert stream.status_code == 200 and b"[DONE]" in stream.read()
        accepted = http.post("/v1/chat/completions", json=CHAT,
                             headers={"x-request-id": "async-1", "Prefer": "respond-async"})
        assert accepted.status_code == 202
        deadline = time.monotonic() + 30
        while (status := http.get(accepted.headers["Location"])).status_code == 202:
            assert time.monotonic() < deadline, status.text
        assert status.json()["output"]["status"] == "succeeded"
        weu.enqueue(Fault.status(429, retry_after=30))
        neu.enqueue(Fault.status(429, retry_after=30))
        assert http.post("/v1/chat/completions", json=CHAT, headers={"x-request-id": "throttled-1"}).status_code == 429

        def everything_arrived(items: list[Envelope]) -> bool:
            ids = ("sync-1", "stream-1", "throttled-1")
            names = {m["name"] for i in items if i.base_type == "MetricData" for m in i.metrics}
            outcomes = {(p["gateway.outcome"], p["gateway.async"]) for _, p in metric_points(items, "gateway.requests")}
            return (all(requests_of(items, i) for i in ids) and len(requests_of(items, "async-1")) >= 2
                    and {"gen_ai.client.token.usage", "gen_ai.client.operation.duration", "gateway.requests",
                         "gen_ai.client.operation.time_to_first_chunk", "gateway.breaker.transitions",
                         "gateway.caller.limit"} <= names
                    and {("throttled_backend", "False"), ("success", "True")} <= outcomes)

        ingestion.wait_for(everything_arrived, timeout_s=30)
        items = ingestion.items

        # Identity-based ingestion: every post carries the token the app's user-assigned identity got.
        assert {i.headers.get("authorization", "").split(" ")[0] for i in items} == {"Bearer"}
        assert {r["client_id"] for r in identity.requests} == {CLIENT_ID}
        assert {r["resource"] for r in identity.requests} == {"https://monitor.azure.com/"}

        # The sync call: one request with the GenAI and gateway attributes, over one dependency per attempt.
        [sync] = requests_of(items, "sync-1")
        p = sync.properties
        assert sync.data["responseCode"] == "200" and sync.data["success"] is True
        assert (p["gen_ai.operation.name"], p["gen_ai.provider.name"], p["gen_ai.request.model"]) == (
            "chat", "azure.ai.openai", "gpt-4o-mini")
        assert p["gen_ai.response.model"] and int(p["gen_ai.usage.input_tokens"]) > 0
        assert int(p["gen_ai.usage.output_tokens"]) > 0
        assert (p["gateway.caller"], p["gateway.backend"], p["gateway.deployment"], p["gateway.attempt"]) == (
            "team-a", "weu", "gpt-4o-mini", "1")
        assert (p["gateway.async"], p["gateway.outcome"]) == ("False", "success")
        [dependency] = children(items, sync, "RemoteDependencyData")
        assert dependency.data["target"] == weu.url.removeprefix("http://")  # server.address (and port)
        assert dependency.data["resultCode"] == "200" and dependency.properties["gateway.attempt"] == "1"
        assert dependency.properties["gen_ai.usage.output_tokens"] == p["gen_ai.usage.output_tokens"]

        # The stream: its time to first chunk, on the span and as a metric.
        [stream_request] = requests_of(items, "stream-1")
        assert stream_request.properties["gateway.streaming"] == "True"
        assert float(stream_request.properties["gateway.first_chunk_ms"]) > 0
        assert [v for v, props in metric_points(items, "gen_ai.client.operation.time_to_first_chunk")
                if props["gateway.streaming"] == "True"]

        # The async request: its activity attempt continues the trace of the request that was deferred.
        accepted_span = next(r for r in requests_of(items, "async-1") if r.data["responseCode"] == "202")
        [attempt] = [r for r in requests_of(items, "async-1") if r is not accepted_span]
        assert attempt.data["name"] == "attempt_backend"
        assert attempt.tags["ai.operation.id"] == accepted_span.tags["ai.operation.id"]
        assert attempt.tags["ai.operation.parentId"] == accepted_span.data["id"]
        assert (attempt.properties["gateway.async"], attempt.properties["gateway.outcome"]) == ("True", "success")
        assert len(children(items, attempt, "RemoteDependencyData")) == 1

        # The throttled request: 429 to the client, two throttled attempts, counted as throttled by the backend.
        [throttled] = requests_of(items, "throttled-1")
        assert throttled.data["responseCode"] == "429"
        assert throttled.properties["gateway.outcome"] == "throttled_backend"
        attempts = children(items, throttled, "RemoteDependencyData")
        assert sorted(a.properties["gateway.backend"] for a in attempts) == ["neu", "weu"]
        assert {(a.data["resultCode"], a.data["success"]) for a in attempts} == {("429", False)}
        opened = {(props["gateway.backend"], props["gateway.deployment"], props["gateway.breaker.state"])
                  for _, props in metric_points(items, "gateway.breaker.transitions")}
        assert {("weu", "gpt-4o-mini", "open"), ("neu", "gpt-4o-mini", "open")} <= opened

        # Metrics: tokens by caller and direction, requests by outcome (async included).
        tokens = metric_points(items, "gen_ai.client.token.usage")
        assert {(props["gateway.caller"], props["gen_ai.token.type"]) for _, props in tokens} == {
            ("team-a", "input"), ("team-a", "output")}
        outcomes = {(props["gateway.outcome"], props["gateway.async"]) for _, props in
                    metric_points(items, "gateway.requests")}
        assert {("success", "False"), ("success", "True"), ("throttled_backend", "False")} <= outcomes
        # The limits gauge that tokens-per-minute.kql joins on: the caller's configured RPM and TPM.
        limits = {(props["gateway.caller"], props["gateway.limit"], props["gateway.limit.per"]): value
                  for value, props in metric_points(items, "gateway.caller.limit")}
        assert limits == {("team-a", "rpm", "caller"): 100000, ("team-a", "tpm", "caller"): 50000000}
        assert not ingestion.unknown  # nothing else was posted anywhere


@contextlib.contextmanager
def silent_listener() -> Iterator[int]:
    """A port that accepts TCP connections (into the backlog) and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield sock.getsockname()[1]


@pytest.mark.parametrize("endpoint", ["closed", "silent"])
def test_an_unreachable_ingestion_endpoint_neither_crashes_nor_slows_requests(azurite, tmp_path, endpoint):
    weu, neu = FakeAzureOpenAI(name="weu"), FakeAzureOpenAI(name="neu")
    with (
        weu.threaded(), neu.threaded(),
        (closed_port() if endpoint == "closed" else silent_listener()) as port,
    ):
        connection = f"InstrumentationKey={uuid.uuid4()};IngestionEndpoint=http://127.0.0.1:{port}/"
        env = gateway_env(azurite, weu, neu, tmp_path, APPLICATIONINSIGHTS_CONNECTION_STRING=connection)
        with DevHost(env=env) as host, httpx.Client(base_url=host.url, headers={"api-key": KEY}, timeout=30) as http:
            assert http.post("/v1/chat/completions", json=CHAT).status_code == 200
            if endpoint == "closed":  # the exporter has tried and failed before the timed requests
                failed = "Retrying due to server request error"
                wait_for_output(host.log_path, lambda text: failed in text or None, timeout_s=20)
            durations = []
            for _ in range(30):
                started = time.monotonic()
                assert http.post("/v1/chat/completions", json=CHAT).status_code == 200
                durations.append(time.monotonic() - started)
            assert max(durations) < 1.0, durations  # the export runs on its own threads, never on a request
            assert host.running and http.get("/health").status_code == 200
