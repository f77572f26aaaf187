"""Pure mapping of an inbound request (Azure-native or OpenAI v1) to what a backend needs.

Azure ignores the `model` field of the body and routes by the deployment in the URI, so both API styles
reduce to one `Route`: the client-facing model/deployment name, the Azure operation path and the
api-version. Nothing here does I/O, so it is safe to run again on every retry.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from . import errors, validate

__all__ = ["V1_OPERATIONS", "Route", "multipart_boundary", "multipart_field", "parse_body", "resolve", "upstream_path"]

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
# api-version values look like 2024-10-21, 2025-01-01-preview, preview or latest.
_API_VERSION = re.compile(r"[A-Za-z0-9._-]{1,40}")


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
    shown = f"{_shown(method, 16)} {_shown(path)}"
    params = parse_qsl(query, keep_blank_values=True)
    api_version = next((v for k, v in params if k == "api-version" and v), default_api_version)
    if not _API_VERSION.fullmatch(api_version):
        raise errors.bad_request("The api-version is not valid.", code="invalid_api_version", param="api-version")
    rest = urlencode([(k, v) for k, v in params if k not in _OWN_QUERY])

    if path.startswith(_AZURE_PREFIX):
        deployment, _, operation = path[len(_AZURE_PREFIX) :].partition("/")
        operation = operation.rstrip("/")
        kind = V1_OPERATIONS.get(operation)
        if not validate.is_name(deployment) or kind is None:
            # Only known operations reach a backend: any other text would become part of the upstream URL.
            raise errors.not_found(f"No route for {shown}.", code="route_not_found")
        if method != "POST":
            raise _method_not_allowed(method, _shown(path))
        if kind == "json":
            return Route("azure", operation, deployment, api_version, rest, parse_body(content_type, body))
        multipart_boundary(content_type)  # relayed as it is, once the content type is right
        return Route("azure", operation, deployment, api_version, rest, None)

    if path == "/v1/models" or path == "/openai/models":
        if method != "GET":
            raise _method_not_allowed(method, _shown(path), "GET")
        return Route("models", "models", "", api_version, rest, None)

    if path.startswith(_V1_PREFIX):
        operation = path[len(_V1_PREFIX) :].rstrip("/")
        kind = V1_OPERATIONS.get(operation)
        if kind is None:
            raise errors.not_found(f"The gateway does not serve {shown}.", code="route_not_found")
        if method != "POST":
            raise _method_not_allowed(method, _shown(path))
        parsed = parse_body(content_type, body) if kind == "json" else None
        model = parsed.get("model") if parsed is not None else multipart_field(content_type, body, "model")
        if model is None or model == "":
            raise errors.bad_request("You must provide a model parameter.", code="missing_model", param="model")
        if not isinstance(model, str):
            raise errors.bad_request("'model' must be a string.", code="invalid_type", param="model")
        if not validate.is_name(model):
            raise errors.bad_request(
                f"Invalid model name: {validate.NAME_RULE}.",
                code="invalid_model",
                param="model",
            )
        return Route("v1", operation, model, api_version, rest, parsed)

    raise errors.not_found(f"No route for {shown}.", code="route_not_found")


def upstream_path(route: Route, deployment: str) -> str:
    """Path and query on the backend: /openai/deployments/{deployment}/{operation}?api-version=...&..."""
    query = "api-version=" + quote(route.api_version, safe="")
    if route.query:
        query += "&" + route.query
    return f"{_AZURE_PREFIX}{quote(deployment, safe='')}/{route.operation}?{query}"


def parse_body(content_type: str, body: bytes) -> dict[str, Any]:
    """The JSON object of a JSON operation's body; 400 naming the problem for anything else."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media not in ("", "application/json"):
        raise errors.bad_request(
            f"Unsupported content type '{_shown(media, 64)}': this operation takes application/json.",
            code="unsupported_content_type",
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise errors.bad_request("The body is not valid UTF-8.", code="invalid_encoding") from None
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the interpreter's stack
        raise errors.bad_request(
            "We could not parse the JSON body of your request. Send valid JSON.", code="invalid_json"
        ) from None
    if not isinstance(parsed, dict):
        raise errors.bad_request("The JSON body must be an object.", code="invalid_json")
    return parsed


def multipart_field(content_type: str, body: bytes, name: str) -> str | None:
    """The value of one small text field of a multipart/form-data body, without parsing the file parts."""
    delimiter = b"--" + multipart_boundary(content_type)
    header = f'name="{name}"'.encode()
    for part in body.split(delimiter):
        head, sep, value = part.partition(b"\r\n\r\n")
        if sep and header in head and b"filename=" not in head:
            return value.removesuffix(b"\r\n").decode("utf-8", "replace").strip()
    return None


def multipart_boundary(content_type: str) -> bytes:
    """The boundary of a multipart/form-data content type; 400 `invalid_content_type` without one."""
    match = re.search(r'boundary="?([\x21-\x7e]{1,70}?)"?(?:;|$)', content_type)
    if not content_type.lower().startswith("multipart/form-data") or match is None:
        raise errors.bad_request("Send the body as multipart/form-data with a boundary.", code="invalid_content_type")
    return match.group(1).encode()


def _method_not_allowed(method: str, path: str, allow: str = "POST") -> errors.GatewayError:
    return errors.method_not_allowed(_shown(method, 16), path, allow)


def _shown(text: str, limit: int = 200) -> str:
    """Client text safe to put in an error message: visible ASCII only, and not too long."""
    return re.sub(r"[^\x20-\x7e]", "?", text)[:limit]
