"""Pure request mapping: both API styles reduce to one Route and one upstream path."""

import json

import pytest

from gateway.errors import GatewayError
from gateway.translate import (
    multipart_field,
    outgoing,
    resolve,
    upstream_path,
    with_multipart_field,
    without_credentials,
)

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


# --- the Azure v1 surface inbound, and backends of either `api=` style --------------------------------------------

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def _route(path: str, body: dict | bytes = CHAT, query: str = "", ctype: str = JSON, method: str = "POST"):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return resolve(method, path, query, ctype, raw, V, "2025-04-01-preview")


def test_the_azure_v1_surface_is_served_like_v1():
    assert _route("/openai/v1/chat/completions") == _route("/v1/chat/completions")
    assert _route("/openai/v1/models", b"", method="GET", ctype="").api_style == "models"


@pytest.mark.parametrize(
    ("inbound", "api", "path", "model_in_body"),
    [
        ("/openai/deployments/gpt-4o/chat/completions", "deployments",
         f"/openai/deployments/gpt-4o-weu/chat/completions?api-version={V}", None),  # untouched: byte for byte
        ("/openai/deployments/gpt-4o/chat/completions", "v1", "/openai/v1/chat/completions", "gpt-4o-weu"),
        ("/v1/chat/completions", "deployments", f"/openai/deployments/gpt-4o-weu/chat/completions?api-version={V}",
         "gpt-4o"),  # Azure ignores the body's model under a deployment path: not rewritten
        ("/v1/chat/completions", "v1", "/openai/v1/chat/completions", "gpt-4o-weu"),
    ],
)  # fmt: skip
def test_either_inbound_style_reaches_either_backend_style(inbound, api, path, model_in_body):
    body = {"messages": CHAT["messages"]} if inbound.startswith("/openai/deployments/") else CHAT
    raw = json.dumps(body).encode()
    route = _route(inbound, raw)
    sent = outgoing(route, api, "gpt-4o-weu", raw)
    assert sent.path == path
    assert json.loads(sent.body).get("model") == model_in_body
    assert sent.json == json.loads(sent.body) and json.loads(sent.body)["messages"] == CHAT["messages"]
    if model_in_body in (None, "gpt-4o"):
        assert sent.body is raw
    assert route.json == body  # pure: the route is not changed, so a retry on another backend starts afresh


def test_an_undated_api_version_is_passed_to_v1_backends_only():
    route = _route("/openai/v1/chat/completions", query="api-version=preview")
    assert outgoing(route, "v1", "d", b"{}").path.endswith("/openai/v1/chat/completions?api-version=preview")
    assert upstream_path(route, "d") == f"/openai/deployments/d/chat/completions?api-version={V}"
    dated = _route("/openai/deployments/gpt-4o/chat/completions", {"messages": []}, "api-version=2025-01-01-preview")
    assert upstream_path(dated, "d", "v1") == "/openai/v1/chat/completions"


def test_responses_live_on_the_resource_with_the_deployment_as_model():
    route = _route("/v1/responses", {"model": "gpt-4o", "input": "hi", "stream": True})
    assert route.streaming and route.creates_response and not route.deferrable
    legacy = outgoing(route, "deployments", "gpt-4o-weu", b"")
    assert legacy.path == "/openai/responses?api-version=2025-04-01-preview"
    assert legacy.json == {"model": "gpt-4o-weu", "input": "hi", "stream": True}
    assert outgoing(route, "v1", "gpt-4o-weu", b"").path == "/openai/v1/responses"
    # A client's dated api-version wins over the Responses default.
    dated = _route("/openai/v1/responses", {"model": "gpt-4o"}, "api-version=2025-05-01-preview")
    assert upstream_path(dated, "x") == "/openai/responses?api-version=2025-05-01-preview"


@pytest.mark.parametrize(
    ("method", "path", "operation", "legacy", "v1"),
    [
        ("GET", "/v1/responses/resp_abc123", "responses/{id}",
         "/openai/responses/resp_abc123?api-version=2025-04-01-preview", "/openai/v1/responses/resp_abc123"),
        ("DELETE", "/openai/v1/responses/resp_abc123", "responses/{id}", None, "/openai/v1/responses/resp_abc123"),
        ("POST", "/v1/responses/resp_abc123/cancel", "responses/{id}/cancel", None,
         "/openai/v1/responses/resp_abc123/cancel"),
        ("GET", "/v1/responses/resp_abc123/input_items", "responses/{id}/input_items", None,
         "/openai/v1/responses/resp_abc123/input_items?limit=5"),
    ],
)  # fmt: skip
def test_response_id_routes(method, path, operation, legacy, v1):
    query = "limit=5" if path.endswith("input_items") else ""
    route = resolve(method, path, query, "", b"", V, "2025-04-01-preview")
    assert (route.operation, route.resource_id, route.model) == (operation, "resp_abc123", "")
    assert outgoing(route, "v1", "ignored", b"").path == v1
    if legacy:
        assert upstream_path(route, "ignored") == legacy


def test_a_retrieved_response_may_be_streamed():
    route = resolve("GET", "/v1/responses/resp_1", "stream=true&starting_after=3", "", b"", V)
    assert route.streaming and route.query == "stream=true&starting_after=3"


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/v1/responses/..", 404, "response_not_found"),  # (guard.check_path refuses it first)
        ("GET", "/v1/responses/not-an-id", 404, "response_not_found"),
        ("GET", "/v1/responses/resp_" + "a" * 200, 404, "response_not_found"),
        ("PUT", "/v1/responses/resp_1", 405, "method_not_allowed"),
        ("GET", "/v1/responses/resp_1/cancel", 405, "method_not_allowed"),
        ("GET", "/v1/responses/resp_1/other", 404, "route_not_found"),
        ("POST", "/openai/deployments/gpt-4o/responses", 404, "route_not_found"),  # not an Azure-native operation
        ("GET", "/v1/models/..", 404, "model_not_found"),
    ],
)
def test_bad_response_routes(method, path, status, code):
    with pytest.raises(GatewayError) as info:
        resolve(method, path, "", "", b"", V)
    assert (info.value.status, info.value.code) == (status, code)


def test_realtime_secrets_take_the_model_from_the_session():
    route = _route("/v1/realtime/client_secrets", {"session": {"type": "realtime", "model": "gpt-realtime"}})
    assert route.model == "gpt-realtime" and not route.deferrable
    for api in ("deployments", "v1"):  # only the v1 surface mints them
        sent = outgoing(route, api, "realtime-weu", b"")
        assert sent.path == "/openai/v1/realtime/client_secrets"
        assert sent.json == {"session": {"type": "realtime", "model": "realtime-weu"}}
    transcription = {"session": {"type": "transcription", "audio": {"input": {"transcription": {"model": "whisper"}}}}}
    assert _route("/v1/realtime/client_secrets", transcription).model == "whisper"
    with pytest.raises(GatewayError) as info:
        _route("/v1/realtime/client_secrets", {"session": {"type": "realtime"}})
    assert (info.value.code, info.value.param) == ("missing_model", "session.model")


def _form(*fields: tuple[str, str | None, bytes]) -> bytes:
    out = b""
    for name, filename, data in fields:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--XyZ\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return out + b"--XyZ--\r\n"


def test_multipart_model_is_rewritten_for_v1_backends_only():
    ctype = "multipart/form-data; boundary=XyZ"
    raw = _form(("image", "a.png", b'\x89PNG name="model"'), ("model", None, b"gpt-image-1"), ("prompt", None, b"p"))
    route = _route("/v1/images/edits", raw, ctype=ctype)
    assert route.model == "gpt-image-1" and route.operation == "images/edits"
    assert outgoing(route, "deployments", "img-weu", raw, ctype).body is raw
    sent = outgoing(route, "v1", "img-weu", raw, ctype)
    expected = _form(("image", "a.png", b'\x89PNG name="model"'), ("model", None, b"img-weu"), ("prompt", None, b"p"))
    assert sent.body == expected
    # An Azure-style upload names no model: a v1 backend gets one.
    azure = _form(("file", "a.wav", b"RIFF"))
    route = resolve("POST", "/openai/deployments/whisper/audio/translations", "", ctype, azure, V)
    assert with_multipart_field(ctype, azure, "model", "w") == outgoing(route, "v1", "w", azure, ctype).body
    assert multipart_field(ctype, outgoing(route, "v1", "w", azure, ctype).body, "model") == "w"


@pytest.mark.parametrize(
    ("query", "kept"),
    [
        ("api-version=2024-10-21&api-key=s&code=s&sig=s&key=s&token=s&stream=true",
         "api-version=2024-10-21&stream=true"),
        ("Subscription-Key=s&X-APIKEY=s&access_token=s&client_secret=s&password=s&codes=1", "codes=1"),
        ("%61pi-key=s&api%2Dkey=s&api+key=s&a=1", "a=1"),  # names are compared decoded
        ("a=%2F..&b=&&c", "a=%2F..&b=&c"),  # what stays is kept exactly as sent
        ("", ""),
    ],
)  # fmt: skip
def test_credential_like_query_parameters_are_left_out(query, kept):
    assert without_credentials(query) == kept



@pytest.mark.parametrize("path", ["/openai/deployments/gpt-4o/chat/completions", "/v1/chat/completions"])
def test_a_credential_in_the_query_never_reaches_a_backend(path):
    """A client that authenticates with `?api-key=` would otherwise hand the gateway's key to every backend."""
    body = b'{"model": "gpt-4o", "messages": []}'
    route = resolve("POST", path, "api-key=gw-secret&Access_Token=t&sig=s&x=1", JSON, body, V)
    assert route.query == "x=1"
    sent = upstream_path(route, "gpt-4o-weu")
    assert "gw-secret" not in sent and "sig" not in sent and sent.endswith("x=1")
