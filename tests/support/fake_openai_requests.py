"""What Azure OpenAI accepts: the fake server's request checks and the 400 answers Azure gives.

A body Azure would refuse gets Azure's 400 from the fake too, so a test built on the fake sees what a
client will see, and a sloppy test body fails here instead of passing here and failing in production.
The rules follow the 2024-10-21 inference spec: the required fields of each operation and the types
and ranges of the common parameters. ``model`` is never required: Azure routes by the deployment in
the path. Unknown fields pass, as they do on Azure. The messages use Azure's current wording.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "JSON_OPERATIONS",
    "MULTIPART_OPERATIONS",
    "TRANSCRIPT_FORMATS",
    "check_image_edit",
    "check_json",
    "check_multipart",
    "check_realtime_secret",
    "invalid_json",
    "parse_json",
    "v1_version_problem",
]

ErrorBody = dict[str, Any]

TRANSCRIPT_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
_SPEECH_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
_ROLES = ("system", "developer", "user", "assistant", "tool", "function")


def error(message: str, param: str | None, code: str) -> ErrorBody:
    """Azure's error body for a refused request."""
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}


def invalid_json() -> ErrorBody:
    """The answer to a body that is not a JSON object."""
    message = (
        "We could not parse the JSON body of your request. The API expects a JSON payload (an object), "
        "but what was sent was not valid JSON."
    )
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": "BadRequest"}}


def parse_json(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or None when it is not one (bad UTF-8 and bad JSON included)."""
    try:
        value = json.loads(body)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return None
    return value if isinstance(value, dict) else None


# --------------------------------------------------------------------------- field rules


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "decimal"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _a(kind: str) -> str:
    """``kind`` with its article, as Azure's messages name JSON types ("an integer", "a decimal")."""
    kind = "decimal" if kind == "number" else kind
    return ("an " if kind[0] in "aeiou" else "a ") + kind


def _wrong_type(name: str, expected: tuple[str, ...], value: Any) -> ErrorBody:
    wanted = " or ".join(_a(kind) for kind in expected if kind != "null")
    message = f"Invalid type for '{name}': expected {wanted}, but got {_a(_type_name(value))} instead."
    return error(message, name, "invalid_type")


def _is(kind: str, value: Any) -> bool:
    """JSON-schema type test (booleans are not numbers, integers are numbers)."""
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return _type_name(value) == kind


@dataclass(frozen=True)
class Rule:
    """One body field: its JSON types, whether it is required, its bounds or allowed values."""

    types: tuple[str, ...]
    required: bool = False
    minimum: float | None = None
    maximum: float | None = None
    values: tuple[str, ...] | None = None
    min_items: int | None = None
    items: Callable[[str, Any], ErrorBody | None] | None = None


def _check_field(name: str, rule: Rule, value: Any) -> ErrorBody | None:
    if not any(_is(kind, value) for kind in rule.types):
        return _wrong_type(name, rule.types, value)
    if rule.values is not None and value not in rule.values:
        supported = ", ".join(f"'{v}'" for v in rule.values)
        return error(f"Invalid value: '{value}'. Supported values are: {supported}.", name, "invalid_value")
    if isinstance(value, int | float) and not isinstance(value, bool):
        kind = "integer" if isinstance(value, int) else "decimal"
        if rule.minimum is not None and value < rule.minimum:
            message = (
                f"Invalid '{name}': {kind} below minimum value. Expected a value >= {rule.minimum:g}, "
                f"but got {value} instead."
            )
            return error(message, name, f"{kind}_below_min_value")
        if rule.maximum is not None and value > rule.maximum:
            message = (
                f"Invalid '{name}': {kind} above maximum value. Expected a value <= {rule.maximum:g}, "
                f"but got {value} instead."
            )
            return error(message, name, f"{kind}_above_max_value")
    if isinstance(value, list):
        if rule.min_items is not None and len(value) < rule.min_items:
            message = (
                f"Invalid '{name}': empty array. Expected an array with minimum length {rule.min_items}, "
                "but got an empty array instead."
            )
            return error(message, name, "empty_array")
        if rule.items is not None:
            for index, item in enumerate(value):
                if (problem := rule.items(f"{name}[{index}]", item)) is not None:
                    return problem
    return None


def _message(name: str, value: Any) -> ErrorBody | None:
    if not isinstance(value, dict):
        return _wrong_type(name, ("object",), value)
    if "role" not in value:
        return error(f"Missing required parameter: '{name}.role'.", f"{name}.role", "missing_required_parameter")
    return _check_field(f"{name}.role", Rule(("string",), values=_ROLES), value["role"])


def _tool(name: str, value: Any) -> ErrorBody | None:
    if not isinstance(value, dict):
        return _wrong_type(name, ("object",), value)
    function = value.get("function")
    if value.get("type") == "function" and not (isinstance(function, dict) and isinstance(function.get("name"), str)):
        param = f"{name}.function.name"
        return error(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")
    return None


def _text_or_tokens(name: str, value: Any) -> ErrorBody | None:
    """An item of ``prompt`` or ``input``: a string, a token id, or an array of token ids."""
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return None
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return None
    return error(f"'{name}' must be a string, a token id or an array of token ids.", name, "invalid_type")


_STREAMING = {
    "stream": Rule(("boolean", "null")),
    "stream_options": Rule(("object", "null")),
}
_SAMPLING = {
    "n": Rule(("integer", "null"), minimum=1, maximum=128),
    "temperature": Rule(("number", "null"), minimum=0, maximum=2),
    "top_p": Rule(("number", "null"), minimum=0, maximum=1),
    "presence_penalty": Rule(("number", "null"), minimum=-2, maximum=2),
    "frequency_penalty": Rule(("number", "null"), minimum=-2, maximum=2),
    "seed": Rule(("integer", "null")),
    "stop": Rule(("string", "array", "null")),
    "user": Rule(("string",)),
    "logit_bias": Rule(("object", "null")),
}

RULES: dict[str, dict[str, Rule]] = {
    "chat/completions": {
        "messages": Rule(("array",), required=True, min_items=1, items=_message),
        "max_tokens": Rule(("integer", "null"), minimum=1),
        "max_completion_tokens": Rule(("integer", "null"), minimum=1),
        "tools": Rule(("array", "null"), items=_tool),
        "tool_choice": Rule(("string", "object", "null")),
        "parallel_tool_calls": Rule(("boolean", "null")),
        "response_format": Rule(("object", "null")),
        "logprobs": Rule(("boolean", "null")),
        "top_logprobs": Rule(("integer", "null"), minimum=0, maximum=20),
        **_STREAMING,
        **_SAMPLING,
    },
    "completions": {
        "prompt": Rule(("string", "array"), required=True, min_items=1, items=_text_or_tokens),
        "max_tokens": Rule(("integer", "null"), minimum=0),
        "echo": Rule(("boolean", "null")),
        "best_of": Rule(("integer", "null"), minimum=0, maximum=20),
        "logprobs": Rule(("integer", "null"), minimum=0, maximum=5),
        "suffix": Rule(("string", "null")),
        **_STREAMING,
        **_SAMPLING,
    },
    "embeddings": {
        "input": Rule(("string", "array"), required=True, min_items=1, items=_text_or_tokens),
        "encoding_format": Rule(("string", "null"), values=("float", "base64")),
        "dimensions": Rule(("integer", "null"), minimum=1),
        "user": Rule(("string",)),
    },
    "audio/speech": {
        "input": Rule(("string",), required=True),
        "voice": Rule(("string",), required=True),
        "response_format": Rule(("string",), values=_SPEECH_FORMATS),
        "speed": Rule(("number",), minimum=0.25, maximum=4),
    },
    "images/generations": {
        "prompt": Rule(("string",), required=True),
        "n": Rule(("integer", "null"), minimum=1, maximum=10),
        "size": Rule(("string", "null")),
        "quality": Rule(("string", "null")),
        "style": Rule(("string", "null")),
        "response_format": Rule(("string", "null"), values=("url", "b64_json")),
        "user": Rule(("string",)),
    },
}
JSON_OPERATIONS = frozenset(RULES)
MULTIPART_OPERATIONS = frozenset({"audio/transcriptions", "audio/translations"})


def check_json(operation: str, payload: Mapping[str, Any]) -> ErrorBody | None:
    """Azure's 400 body for a JSON request body it would refuse, or None when it would accept it."""
    for name, rule in RULES[operation].items():
        if name not in payload:
            if rule.required:
                return error(f"Missing required parameter: '{name}'.", name, "missing_required_parameter")
            continue
        if (problem := _check_field(name, rule, payload[name])) is not None:
            return problem
    if payload.get("stream_options") is not None and payload.get("stream") is not True:
        message = "The 'stream_options' parameter is only allowed when 'stream' is enabled."
        return error(message, "stream_options", "invalid_value")
    return None


def check_multipart(content_type: str, fields: Mapping[str, tuple[str | None, bytes]]) -> ErrorBody | None:
    """Azure's 400 body for an audio upload it would refuse (``fields``: name -> (file name, bytes))."""
    if not content_type.lower().startswith("multipart/form-data"):
        message = f"Invalid Content-Type header ({content_type or 'none'}): expected multipart/form-data."
        return error(message, None, "invalid_content_type")
    if "file" not in fields:
        return error("Missing required parameter: 'file'.", "file", "missing_required_parameter")
    form = {name: data.decode(errors="replace") for name, (filename, data) in fields.items() if filename is None}
    if (fmt := form.get("response_format")) is not None and fmt not in TRANSCRIPT_FORMATS:
        supported = ", ".join(f"'{v}'" for v in TRANSCRIPT_FORMATS)
        return error(f"Invalid value: '{fmt}'. Supported values are: {supported}.", "response_format", "invalid_value")
    if (temperature := form.get("temperature")) is not None:
        try:
            value = float(temperature)
        except ValueError:
            value = -1.0
        if not 0 <= value <= 1:
            message = f"Invalid 'temperature': expected a number between 0 and 1, but got '{temperature}' instead."
            return error(message, "temperature", "invalid_value")
    return None


def check_image_edit(content_type: str, fields: Mapping[str, tuple[str | None, bytes]]) -> ErrorBody | None:
    """Azure's 400 body for an image edit it would refuse: an `image` file part and a `prompt` are required."""
    if not content_type.lower().startswith("multipart/form-data"):
        message = f"Invalid Content-Type header ({content_type or 'none'}): expected multipart/form-data."
        return error(message, None, "invalid_content_type")
    if not any(name.startswith("image") and filename for name, (filename, _) in fields.items()):
        return error("Missing required parameter: 'image'.", "image", "missing_required_parameter")
    if "prompt" not in fields:
        return error("Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter")
    return None


def check_realtime_secret(payload: Mapping[str, Any]) -> ErrorBody | None:
    """Azure's 400 body for a client secret request it would refuse: a session naming its model is required."""
    session = payload.get("session")
    if not isinstance(session, dict):
        return error("Missing required parameter: 'session'.", "session", "missing_required_parameter")
    if session.get("type", "realtime") == "realtime" and not isinstance(session.get("model"), str):
        return error("Missing required parameter: 'session.model'.", "session.model", "missing_required_parameter")
    return None


def v1_version_problem(api_version: str | None) -> ErrorBody | None:
    """The v1 surface takes no dated api-version: only none, `preview` or `latest`."""
    if api_version in (None, "preview", "latest"):
        return None
    message = (
        f"The api-version '{api_version}' is not supported on the v1 API: send no api-version, or "
        "api-version=preview for preview features."
    )
    return error(message, "api-version", "BadRequest")
