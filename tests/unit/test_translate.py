"""Pure request mapping: both API styles reduce to one Route and one upstream path."""

import json

import pytest

from gateway.errors import GatewayError
from gateway.translate import resolve, upstream_path

V = "2024-10-21"
JSON = "application/json"


def test_azure_native_keeps_the_clients_api_version_and_other_query():
    route = resolve(
        "POST",
        "/openai/deployments/gpt-4o/chat/completions",
        "api-version=2025-01-01-preview&x=1&code=fk",
        JSON,
        b'{"messages": []}',
        V,
    )
    assert (route.api_style, route.model, route.operation, route.api_version) == (
        "azure",
        "gpt-4o",
        "chat/completions",
        "2025-01-01-preview",
    )
    # The function key (`code`) is the host's, never forwarded.
    assert upstream_path(route, "gpt-4o-weu") == (
        "/openai/deployments/gpt-4o-weu/chat/completions?api-version=2025-01-01-preview&x=1"
    )


def test_azure_native_without_api_version_uses_the_default():
    route = resolve("POST", "/openai/deployments/emb/embeddings", "", JSON, b'{"input": "x"}', V)
    assert upstream_path(route, "emb") == f"/openai/deployments/emb/embeddings?api-version={V}"


def test_v1_maps_model_to_the_deployment_path():
    body = json.dumps({"model": "gpt-4o-mini", "stream": True, "messages": []}).encode()
    route = resolve("POST", "/v1/chat/completions", "", JSON, body, V)
    assert (route.api_style, route.model, route.streaming) == ("v1", "gpt-4o-mini", True)
    assert upstream_path(route, "mini-weu") == f"/openai/deployments/mini-weu/chat/completions?api-version={V}"


def test_v1_multipart_reads_the_model_field_only():
    boundary = "XyZ"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        f'Content-Type: audio/wav\r\n\r\nRIFF....name="model"\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper\r\n--{boundary}--\r\n'
    ).encode()
    route = resolve("POST", "/v1/audio/transcriptions", "", f"multipart/form-data; boundary={boundary}", body, V)
    assert route.model == "whisper" and route.operation == "audio/transcriptions" and route.json is None


@pytest.mark.parametrize(
    ("method", "path", "ctype", "body", "status", "code"),
    [
        ("POST", "/v1/chat/completions", JSON, b"{not json", 400, "invalid_json"),
        ("POST", "/v1/chat/completions", JSON, b"[1, 2]", 400, "invalid_json"),
        ("POST", "/v1/chat/completions", JSON, b'{"messages": []}', 400, "missing_model"),
        ("POST", "/v1/embeddings", JSON, b'{"model": "../../etc"}', 400, "invalid_model"),
        ("POST", "/v1/fine_tuning/jobs", JSON, b"{}", 404, "route_not_found"),
        ("POST", "/v2/chat/completions", JSON, b"{}", 404, "route_not_found"),
        ("GET", "/v1/chat/completions", "", b"", 405, "method_not_allowed"),
        ("POST", "/v1/models", "", b"", 405, "method_not_allowed"),
        ("POST", "/openai/deployments/gpt-4o", JSON, b"{}", 404, "route_not_found"),
    ],
)
def test_bad_requests_become_openai_errors(method, path, ctype, body, status, code):
    with pytest.raises(GatewayError) as info:
        resolve(method, path, "", ctype, body, V)
    assert info.value.status == status
    error = json.loads(info.value.body())["error"]
    assert error["code"] == code and error["message"] and error["type"]


def test_models_route():
    assert resolve("GET", "/v1/models", "", "", b"", V).api_style == "models"
