"""A wrong method on any data-plane route of gateway/ gets OpenAI's 405 body and an `Allow` header, not the host's 404.

Two halves: every data-plane function is registered for every method (so the host hands the request to the
gateway), and for every operation of the surface table, on every inbound style, each other method is answered 405
naming the allowed ones. The e2e test (tests/e2e/test_openai_clients.py) runs a sample of them through the devhost.
`/results/{id}` and `/status/{id}` live in orchestrations/ and are not covered here.
"""

from __future__ import annotations

import json

import azure.durable_functions as df
import pytest

from gateway.bootstrap import build_services
from gateway.config import load_settings
from gateway.errors import GatewayError
from gateway.http import ALL_METHODS, build_blueprint
from gateway.surface import OPERATIONS
from gateway.translate import resolve

V = "2024-10-21"
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
OPERATOR_ROUTES = ("gateway/", "health")  # function-key routes and liveness: not the OpenAI surface


def http_functions() -> dict[str, list[str]]:
    """route -> methods of every HTTP function of gateway/http.py's blueprint, as the host indexes them."""
    settings = load_settings(
        {"GATEWAY_BACKEND_1": "name=a;host=https://a.example;mode=direct;deployments=m", "GATEWAY_AUTH": "none"}
    )
    app = df.DFApp()
    app.register_functions(build_blueprint(build_services(settings)))
    routes = {}
    for function in app.get_functions():
        for binding in json.loads(function.get_function_json())["bindings"]:
            if binding["type"] == "httpTrigger":
                routes[binding["route"]] = binding["methods"]
    return routes


def test_every_data_plane_function_takes_every_method():
    data_plane = {r: m for r, m in http_functions().items() if not r.startswith(OPERATOR_ROUTES)}
    assert set(data_plane) >= {"openai/deployments/{deployment}/{*operation}", "v1/{*operation}", "openai/models"}
    assert {route: sorted(methods) for route, methods in data_plane.items()} == dict.fromkeys(
        data_plane, sorted(METHODS)
    )
    assert sorted(ALL_METHODS) == sorted(METHODS)


def wrong_methods() -> list[tuple[str, str, str]]:
    """(method, path, Allow) for every route of the surface table and the models routes, every method it refuses."""
    cases = []
    for name, operation in OPERATIONS.items():
        rest = name.replace("{id}", "resp_1")
        paths = [f"/v1/{rest}", f"/openai/v1/{rest}"]
        if operation.azure_style:
            paths.append(f"/openai/deployments/gpt-4o/{rest}")
        allow = ", ".join(operation.methods)
        cases += [(m, p, allow) for p in paths for m in METHODS if m not in operation.methods]
    for path in ("/v1/models", "/openai/models", "/openai/v1/models", "/v1/models/gpt-4o"):
        cases += [(m, path, "GET") for m in METHODS if m != "GET"]
    return cases


def test_a_wrong_method_gets_405_with_allow_and_openais_error_body():
    cases = wrong_methods()
    assert len(cases) > 200  # every operation, both v1 prefixes, the Azure path, the models routes
    wrong = []
    for method, path, allow in cases:
        with pytest.raises(GatewayError) as info:
            resolve(method, path, f"api-version={V}", "", b"", V)
        error = json.loads(info.value.body())["error"]
        answer = (info.value.status, info.value.headers, set(error), error["code"], error["type"])
        expected = (405, {"Allow": allow}, {"message", "type", "param", "code"}, "method_not_allowed",
                    "invalid_request_error")  # fmt: skip
        if answer != expected or method not in error["message"]:
            wrong.append((method, path, answer))
    assert wrong == []
