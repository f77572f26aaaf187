"""A misconfigured gateway in its host: still serving, saying which setting to fix, never echoing a value."""

from __future__ import annotations

import httpx
import pytest

from tests.support.devhost import DevHost

SECRET = "s3cr3t-value-that-must-not-leak"
OPERATOR = {"x-functions-key": "devhost-function-key"}


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"GATEWAY_API_KEYS": f"team:{SECRET}"}, "GATEWAY_BACKEND_1"),  # no backend configured
        (
            {"GATEWAY_BACKEND_1": f"host=https://a.example;api-key={SECRET};colour=blue", "GATEWAY_API_KEYS": "k"},
            "GATEWAY_BACKEND_1",
        ),
        ({"GATEWAY_BACKEND_1": "host=https://a.example", "GATEWAY_SYNC_BUDGET_S": SECRET}, "GATEWAY_SYNC_BUDGET_S"),
    ],
)
def test_health_and_every_route_say_which_setting_is_wrong(azurite, env: dict, setting: str):
    with DevHost(env={"AzureWebJobsStorage": azurite.connection_string, **env}) as host:
        health = httpx.get(f"{host.url}/health")
        assert health.status_code == 503 and health.json()["setting"] == setting
        assert health.json()["status"] == "misconfigured" and health.json()["problem"]
        for method, path in (
            ("POST", "/v1/chat/completions"),
            ("GET", "/v1/models"),
            ("POST", "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"),
            ("GET", "/openai/models"),
            ("POST", "/v1/batches"),
            ("GET", "/status/abc"),
            ("GET", "/results/abc"),
        ):
            answer = httpx.request(method, host.url + path, headers={"api-key": "k"}, json={})
            error = answer.json()["error"]
            assert answer.status_code == 503 and error["code"] == "gateway_misconfigured", (path, answer.text)
            assert error["param"] == setting and setting in error["message"]
            assert answer.headers["retry-after"]
        operator = httpx.get(f"{host.url}/gateway/backends", headers=OPERATOR)
        assert operator.status_code == 503
        for text in (health.text, answer.text, operator.text, host.log()):
            assert SECRET not in text
