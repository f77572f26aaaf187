"""Pure mapping of an inbound request (Azure-native, OpenAI v1 or Azure v1) to what a backend needs.

Both inbound styles reduce to one `Route`: the client-facing model/deployment name, the operation and the
api-versions. `outgoing` then builds what one backend gets, in that backend's style (`api=deployments`:
`/openai/deployments/{deployment}/...?api-version=`, or `api=v1`: `/openai/v1/...` with the deployment as the
body's `model`). Azure ignores the body's `model` under a deployment path and routes by it everywhere else, so
the body is rewritten only where the backend reads it. Nothing here does I/O, so it is safe to run again on
every retry.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, unquote_plus, urlencode

from . import errors, ids, validate
from .surface import OPERATIONS, V1_OPERATIONS

__all__ = [
    "V1_OPERATIONS",
    "Outgoing",
    "Route",
    "multipart_boundary",
    "multipart_field",
    "outgoing",
    "parse_body",
    "resolve",
    "upstream_path",
    "with_multipart_field",
    "without_credentials",
]

_AZURE_PREFIX = "/openai/deployments/"
_V1_PREFIXES = ("/v1/", "/openai/v1/")  # OpenAI's surface and Azure's v1 surface: served alike
_MODELS = re.compile(r"/(?:openai/v1|v1|openai)/models(?:/(?P<id>[^/]+))?/?")
_RESPONSE_ROUTE = re.compile(r"responses/(?P<id>[^/]+)(?P<action>/cancel|/input_items)?")
# Query parameters that belong to the gateway or the Functions host, never forwarded.
_OWN_QUERY = frozenset({"code", "api-version"})
# Query parameters that look like a credential (`api-key`, the host's `code`, a SAS `sig`, `token`, `*key*`, ...):
# kept out of anything stored, such as an async request's orchestration input.
_CREDENTIAL_QUERY = re.compile(r"code|sig|.*(key|token|secret|password).*", re.IGNORECASE)
# api-version values look like 2024-10-21, 2025-01-01-preview, preview or latest.
_API_VERSION = re.compile(r"[A-Za-z0-9._-]{1,40}")


@dataclass(frozen=True, slots=True)
class Route:
    """What the pipeline needs to pick backends and build the upstream request."""

    api_style: str  # "azure" | "v1" | "models"
    operation: str  # a key of surface.OPERATIONS, e.g. "chat/completions" or "responses/{id}"
    model: str  # client-facing model alias or deployment name: the routing key
    api_version: str  # for the dated (deployments and resource) API
    query: str  # the client's other query parameters, already encoded ("" when none)
    json: dict[str, Any] | None  # the parsed JSON body, when the body is JSON
    v1_api_version: str = ""  # what a v1 backend gets: the v1 client's undated api-version (preview), or none
    resource_id: str = ""  # the response id the path names (`responses/{id}...`)
    stream_query: bool = False  # `?stream=true` (a response retrieved as a stream)

    @property
    def streaming(self) -> bool:
        return self.stream_query or bool(self.json and self.json.get("stream") is True)

    @property
    def completion_cap(self) -> int | None:
        """The most tokens the answer may generate (`max_completion_tokens`, `max_tokens`, or the Responses API's
        `max_output_tokens`); None when the client set no cap."""
        body = self.json or {}
        cap = body.get("max_completion_tokens") or body.get("max_tokens") or body.get("max_output_tokens")
        return cap if isinstance(cap, int) and not isinstance(cap, bool) and cap > 0 else None

    @property
    def deferrable(self) -> bool:
        spec = OPERATIONS.get(self.operation)
        return spec is not None and spec.deferrable

    @property
    def creates_response(self) -> bool:
        spec = OPERATIONS.get(self.operation)
        return spec is not None and spec.creates_response

    @property
    def previous_response_id(self) -> str | None:
        value = self.json.get("previous_response_id") if self.json and self.creates_response else None
        return value if isinstance(value, str) and value else None


@dataclass(frozen=True, slots=True)
class Outgoing:
    """What one backend gets: the path and query, the body, and that body parsed (JSON operations)."""

    path: str
    body: bytes
    json: dict[str, Any] | None


def resolve(
    method: str,
    path: str,
    query: str,
    content_type: str,
    body: bytes,
    default_api_version: str,
    resource_api_version: str | None = None,
) -> Route:
    """Maps the inbound request to a Route, or raises the GatewayError the client should see.

    `resource_api_version` is the dated api-version of operations that live on the resource (Responses),
    which need a newer one than the deployments' default; None: `default_api_version`.
    """
    shown = f"{_shown(method, 16)} {_shown(path)}"
    params = parse_qsl(query, keep_blank_values=True)
    explicit = next((v for k, v in params if k == "api-version" and v), "")
    if explicit and not _API_VERSION.fullmatch(explicit):
        raise errors.bad_request("The api-version is not valid.", code="invalid_api_version", param="api-version")
    # The gateway's own parameters, and anything credential-like (a client's `?api-key=` is the gateway's key),
    # never reach a backend.
    rest = urlencode([(k, v) for k, v in params if k not in _OWN_QUERY and not _CREDENTIAL_QUERY.fullmatch(k.strip())])

    if path.startswith(_AZURE_PREFIX):
        deployment, _, operation = path[len(_AZURE_PREFIX) :].partition("/")
        operation = operation.rstrip("/")
        kind = V1_OPERATIONS.get(operation)
        if not validate.is_name(deployment) or kind is None:
            # Only known operations reach a backend: any other text would become part of the upstream URL.
            raise errors.not_found(f"No route for {shown}.", code="route_not_found")
        if method != "POST":
            raise _method_not_allowed(method, _shown(path))
        api_version = explicit or default_api_version
        v1_version = "" if _dated(explicit) else explicit
        if kind == "json":
            return Route("azure", operation, deployment, api_version, rest, parse_body(content_type, body), v1_version)
        multipart_boundary(content_type)  # relayed as it is, once the content type is right
        return Route("azure", operation, deployment, api_version, rest, None, v1_version)

    if (models := _MODELS.fullmatch(path)) is not None:
        if method != "GET":
            raise _method_not_allowed(method, _shown(path), "GET")
        model = models["id"] or ""
        if model and not validate.is_name(model):
            raise errors.not_found("The model does not exist or is not served by this gateway.", code="model_not_found")
        return Route("models", "models", model, explicit or default_api_version, rest, None)

    prefix = next((p for p in _V1_PREFIXES if path.startswith(p)), None)
    if prefix is None:
        raise errors.not_found(f"No route for {shown}.", code="route_not_found")
    operation, resource_id = _v1_operation(path[len(prefix) :].rstrip("/"))
    spec = OPERATIONS.get(operation)
    if spec is None:
        raise errors.not_found(f"The gateway does not serve {shown}.", code="route_not_found")
    if method not in spec.methods:
        raise _method_not_allowed(method, _shown(path), ", ".join(spec.methods))
    # A dated api-version is for the dated API; an undated one (preview) is passed to v1 backends.
    dated = explicit if _dated(explicit) else ""
    default = resource_api_version if spec.legacy == "resource" and resource_api_version else default_api_version
    api_version, v1_version = dated or default, "" if dated else explicit
    if not spec.body:  # the id routes: the model is where the response was created (affinity)
        stream = any(k == "stream" and v.lower() == "true" for k, v in params)
        return Route("v1", operation, "", api_version, rest, None, v1_version, resource_id, stream)
    parsed = parse_body(content_type, body) if spec.body == "json" else None
    if parsed is not None:
        model = _at(parsed, model_path(operation, parsed))
    else:
        model = multipart_field(content_type, body, "model")
    param = ".".join(model_path(operation, parsed or {}))
    if model is None or model == "":
        raise errors.bad_request(f"You must provide a {param} parameter.", code="missing_model", param=param)
    if not isinstance(model, str):
        raise errors.bad_request(f"'{param}' must be a string.", code="invalid_type", param=param)
    if not validate.is_name(model):
        raise errors.bad_request(f"Invalid model name: {validate.NAME_RULE}.", code="invalid_model", param=param)
    return Route("v1", operation, model, api_version, rest, parsed, v1_version)


def model_path(operation: str, body: dict[str, Any]) -> tuple[str, ...]:
    """Where `operation`'s body names its model (a realtime transcription session names it deeper)."""
    session = body.get("session")
    if operation == "realtime/client_secrets" and isinstance(session, dict) and session.get("type") == "transcription":
        return ("session", "audio", "input", "transcription", "model")
    return OPERATIONS[operation].model_at


def upstream_path(route: Route, deployment: str, api: str = "deployments") -> str:
    """Path and query on a backend of style `api`, for the deployment it serves the route's model with."""
    spec = OPERATIONS[route.operation]
    name = route.operation.replace("{id}", quote(route.resource_id, safe=""))
    if api == "v1" or spec.legacy == "v1":
        path, version = f"/openai/v1/{name}", route.v1_api_version
    elif spec.legacy == "resource":
        path, version = f"/openai/{name}", route.api_version
    else:
        path, version = f"{_AZURE_PREFIX}{quote(deployment, safe='')}/{name}", route.api_version
    query = "&".join(q for q in ("api-version=" + quote(version, safe="") if version else "", route.query) if q)
    return f"{path}?{query}" if query else path


def outgoing(route: Route, api: str, deployment: str, body: bytes, content_type: str = "") -> Outgoing:
    """What a backend of style `api` gets for the route: its path, and the body naming `deployment` as the
    model wherever that backend reads it from the body (v1 surface, resource operations). Unchanged bytes
    otherwise, so the Azure-native passthrough stays byte for byte."""
    spec = OPERATIONS[route.operation]
    path = upstream_path(route, deployment, api)
    if not spec.model_at or (api != "v1" and spec.legacy == "deployment"):
        return Outgoing(path, body, route.json)
    if route.json is not None:
        where = model_path(route.operation, route.json)
        if _at(route.json, where) == deployment:
            return Outgoing(path, body, route.json)
        rewritten = _with(route.json, where, deployment)
        return Outgoing(path, json.dumps(rewritten, separators=(",", ":"), ensure_ascii=False).encode(), rewritten)
    if spec.body == "multipart" and multipart_field(content_type, body, "model") != deployment:
        return Outgoing(path, with_multipart_field(content_type, body, "model", deployment), None)
    return Outgoing(path, body, None)


def _v1_operation(rest: str) -> tuple[str, str]:
    """(operation name, response id) of the path after the v1 prefix; ids are checked here."""
    match = _RESPONSE_ROUTE.fullmatch(rest)
    if match is None:
        return rest, ""
    return "responses/{id}" + (match["action"] or ""), ids.response_id(match["id"])


def _dated(version: str) -> bool:
    """A dated api-version (2024-10-21, 2025-04-01-preview), which only the deployments' API takes."""
    return version[:1].isdigit()


def _at(body: dict[str, Any], where: tuple[str, ...]) -> Any:
    value: Any = body
    for key in where:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _with(body: dict[str, Any], where: tuple[str, ...], value: str) -> dict[str, Any]:
    """A copy of `body` with `value` at `where`, copying only the objects on the way (the route's stays as it was)."""
    copy = dict(body)
    node = copy
    for key in where[:-1]:
        child = node.get(key)
        node[key] = dict(child) if isinstance(child, dict) else {}
        node = node[key]
    node[where[-1]] = value
    return copy


def without_credentials(query: str) -> str:
    """The query string without its credential-like parameters; the others stay exactly as they were sent."""
    kept = [part for part in query.split("&") if part and not _CREDENTIAL_QUERY.fullmatch(_query_name(part))]
    return "&".join(kept)


def _query_name(part: str) -> str:
    return unquote_plus(part.split("=", 1)[0]).strip()


def parse_body(content_type: str, body: bytes) -> dict[str, Any]:
    """The JSON object of a JSON operation's body; 400 naming the problem for anything else."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media not in ("", "application/json"):
        raise errors.bad_request(
            f"Unsupported content type '{_shown(media, 64)}': this operation takes application/json.",
            code="unsupported_content_type",
            param="content-type",
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        field = validate.undecodable_field(body)
        where = f"The text of '{field}'" if field else "The body"
        raise errors.bad_request(f"{where} is not valid UTF-8.", code="invalid_encoding", param=field) from None
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the interpreter's stack
        raise errors.bad_request(
            "We could not parse the JSON body of your request. Send valid JSON.", code="invalid_json"
        ) from None
    if not isinstance(parsed, dict):
        raise errors.bad_request(
            f"The JSON body must be an object, not {validate.json_kind(parsed)}.", code="invalid_json"
        )
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


def with_multipart_field(content_type: str, body: bytes, name: str, value: str) -> bytes:
    """The multipart body with the text field `name` set to `value` (replaced, or added as the first part)."""
    delimiter = b"--" + multipart_boundary(content_type)
    header = f'name="{name}"'.encode()
    parts = body.split(delimiter)
    for index, part in enumerate(parts):
        head, sep, _ = part.partition(b"\r\n\r\n")
        if sep and header in head and b"filename=" not in head:
            parts[index] = head + sep + value.encode() + b"\r\n"
            return delimiter.join(parts)
    first = body.find(delimiter)
    field = b'\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n' % (name.encode(), value.encode())
    return body[: max(first, 0)] + delimiter + field + body[max(first, 0) :]


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
