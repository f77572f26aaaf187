"""Pure mapping of an inbound request (Azure-native or OpenAI v1) to what a backend needs.

Azure ignores the `model` field of the body and routes by the deployment in the URI, so both API styles
reduce to one `Route`: the client-facing model/deployment name, the Azure operation path and the
api-version. Nothing here does I/O, so it is safe to run again on every retry.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qsl, quote, urlencode

from . import errors

__all__ = ["V1_OPERATIONS", "Route", "parse_body", "resolve", "upstream_path"]

# OpenAI v1 operations the gateway forwards, with the body type that carries `model`.
V1_OPERATIONS: dict[str, str] = {
    "chat/completions": "json",
    "completions": "json",
    "embeddings": "json",
    "audio/transcriptions": "multipart",
    "audio/translations": "multipart",
    "audio/speech": "json",
    "images/generations": "json",
}
_AZURE_PREFIX = "/openai/deployments/"
_V1_PREFIX = "/v1/"
# Query parameters that belong to the gateway or the Functions host, never forwarded.
_OWN_QUERY = frozenset({"code", "api-version"})
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


@dataclass(frozen=True, slots=True)
class Route:
    """What the pipeline needs to pick backends and build the upstream URL."""

    api_style: str  # "azure" | "v1" | "models"
    operation: str  # Azure operation path after the deployment, e.g. "chat/completions"
    model: str  # client-facing model alias or deployment name: the routing key
    api_version: str
    query: str  # the client's other query parameters, already encoded ("" when none)
    json: dict[str, Any] | None  # the parsed JSON body, when the body is JSON

    @property
    def streaming(self) -> bool:
        return bool(self.json and self.json.get("stream") is True)


def resolve(method: str, path: str, query: str, content_type: str, body: bytes, default_api_version: str) -> Route:
    """Maps the inbound request to a Route, or raises the GatewayError the client should see."""
    params = parse_qsl(query, keep_blank_values=True)
    api_version = next((v for k, v in params if k == "api-version" and v), default_api_version)
    rest = urlencode([(k, v) for k, v in params if k not in _OWN_QUERY])

    if path.startswith(_AZURE_PREFIX):
        deployment, _, operation = path[len(_AZURE_PREFIX) :].partition("/")
        if not deployment or not operation or not _SAFE_NAME.match(deployment):
            raise errors.not_found(f"No route for {method} {path}.", code="route_not_found")
        if method != "POST":
            raise _method_not_allowed(method, path)
        return Route("azure", operation, deployment, api_version, rest, parse_body(content_type, body))

    if path == "/v1/models" or path == "/openai/models":
        if method != "GET":
            raise _method_not_allowed(method, path, "GET")
        return Route("models", "models", "", api_version, rest, None)

    if path.startswith(_V1_PREFIX):
        operation = path[len(_V1_PREFIX) :].rstrip("/")
        kind = V1_OPERATIONS.get(operation)
        if kind is None:
            raise errors.not_found(f"The gateway does not serve {method} {path}.", code="route_not_found")
        if method != "POST":
            raise _method_not_allowed(method, path)
        parsed = parse_body(content_type, body) if kind == "json" else None
        model = parsed.get("model") if parsed is not None else multipart_field(content_type, body, "model")
        if not isinstance(model, str) or not model:
            raise errors.bad_request("You must provide a model parameter.", code="missing_model", param="model")
        if not _SAFE_NAME.match(model):
            raise errors.bad_request(f"Invalid model name '{model[:64]}'.", code="invalid_model", param="model")
        return Route("v1", operation, model, api_version, rest, parsed)

    raise errors.not_found(f"No route for {method} {path}.", code="route_not_found")


def upstream_path(route: Route, deployment: str) -> str:
    """Path and query on the backend: /openai/deployments/{deployment}/{operation}?api-version=...&..."""
    query = "api-version=" + quote(route.api_version, safe="")
    if route.query:
        query += "&" + route.query
    return f"{_AZURE_PREFIX}{quote(deployment, safe='')}/{route.operation}?{query}"


def parse_body(content_type: str, body: bytes) -> dict[str, Any] | None:
    """The JSON object of a JSON body; None for other bodies; 400 for a JSON body that is not an object."""
    if not body or not (content_type.startswith("application/json") or (content_type == "" and body[:1] == b"{")):
        return None
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise errors.bad_request(
            "We could not parse the JSON body of your request. Send valid JSON.", code="invalid_json"
        ) from None
    if not isinstance(parsed, dict):
        raise errors.bad_request("The JSON body must be an object.", code="invalid_json")
    return parsed


def multipart_field(content_type: str, body: bytes, name: str) -> str | None:
    """The value of one small text field of a multipart/form-data body, without parsing the file parts."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not content_type.startswith("multipart/form-data") or match is None:
        raise errors.bad_request("Send the audio as multipart/form-data.", code="invalid_content_type")
    delimiter = b"--" + match.group(1).encode()
    header = f'name="{name}"'.encode()
    for part in body.split(delimiter):
        head, sep, value = part.partition(b"\r\n\r\n")
        if sep and header in head and b"filename=" not in head:
            return value.removesuffix(b"\r\n").decode("utf-8", "replace").strip()
    return None


def multipart_form(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """Every part of a multipart/form-data body: name -> (filename, bytes). Uses the stdlib MIME parser."""
    import email.parser
    import email.policy

    if not content_type.startswith("multipart/form-data"):
        raise errors.bad_request("Send the file as multipart/form-data.", code="invalid_content_type")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    parts: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            parts[name] = (part.get_filename(), cast("bytes | None", part.get_payload(decode=True)) or b"")
    return parts


def _method_not_allowed(method: str, path: str, allow: str = "POST") -> errors.GatewayError:
    return errors.method_not_allowed(method, path, allow)
