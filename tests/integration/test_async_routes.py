"""`/results/{id}` and `/status/{id}` (orchestrations/async_routes.py) when the Durable task hub cannot be reached.

The real `DurableOrchestrationClient` is given the binding the host injects, with its RPC base URL on a
loopback port that refuses connections: what the client sees when the host's Durable extension is gone.
Devhost runs cover the rest (tests/e2e/test_async.py), where the Durable stand-in is always reachable.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import azure.durable_functions as df
import pytest

from gateway.bootstrap import Services, build_gateway
from gateway.messages import Inbound
from orchestrations import async_routes
from tests.support.ports import closed_port

pytestmark = pytest.mark.usefixtures("durable_sdk_session")

KEY = "routes-key-3c1f"


@pytest.fixture
async def gateway(azurite) -> AsyncIterator[Services]:
    suffix = uuid.uuid4().hex[:8]
    gw = build_gateway(
        {
            "GATEWAY_API_KEYS": KEY,
            "AzureWebJobsStorage": azurite.connection_string,
            "GATEWAY_STATE_TABLE": "routes" + suffix,
            "GATEWAY_RESULTS_CONTAINER": "routes-" + suffix,
            "GATEWAY_BACKEND_1": "name=weu;host=http://127.0.0.1:9;mode=direct;api-key=k;deployments=gpt-4o-mini",
        }
    )
    yield gw
    await gw.close()


def unreachable_client(port: int) -> df.DurableOrchestrationClient:
    """A Durable client whose task hub (the host's RPC listener) refuses connections."""
    base = f"http://127.0.0.1:{port}"
    binding = {
        "taskHubName": "hub",
        "creationUrls": {},
        "managementUrls": {"id": "INSTANCEID", "statusQueryGetUri": f"{base}/instances/INSTANCEID"},
        "rpcBaseUrl": f"{base}/durabletask/",
    }
    return df.DurableOrchestrationClient(json.dumps(binding))


@pytest.mark.parametrize(("route", "method"), [("status", "GET"), ("result", "GET"), ("result", "DELETE")])
async def test_an_unreachable_task_hub_is_a_503_with_retry_after(gateway: Services, route: str, method: str, caplog):
    path = f"/{'results' if route == 'result' else 'status'}/{uuid.uuid4().hex}"
    with closed_port() as port:
        out = await async_routes.answer(
            unreachable_client(port), gateway, Inbound(method, path, "", {"api-key": KEY}, b""), route
        )
    assert out.status == 503 and int(out.headers["Retry-After"]) >= 1
    error = json.loads(out.body)["error"]
    assert (error["code"], error["type"], error["param"]) == ("storage_unavailable", "service_unavailable", None)
    assert any("Storage unavailable" in r.getMessage() for r in caplog.records)
    assert not any(r.exc_info for r in caplog.records)  # an outage, not a bug: no traceback


@pytest.mark.parametrize(("route", "method", "allow"), [("status", "DELETE", "GET"), ("result", "PUT", "GET, DELETE")])
async def test_a_wrong_method_is_refused_before_anything_is_read(gateway: Services, route, method, allow):
    with closed_port() as port:  # a method refused here never reaches the task hub (it would answer 503)
        inbound = Inbound(method, f"/x/{uuid.uuid4().hex}", "", {"api-key": KEY}, b"")
        out = await async_routes.answer(unreachable_client(port), gateway, inbound, route)
    assert out.status == 405 and out.headers["Allow"] == allow
    assert json.loads(out.body)["error"]["code"] == "method_not_allowed"
