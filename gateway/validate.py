"""Field checks on JSON bodies, before anything is forwarded or stored: one table, one small checker.

A wrong type caught here is a 400 naming the field; caught by a backend it is a billed round trip, a 400
in Azure's shape (not OpenAI's), or in the worst case a gateway bug when our own code (usage injection,
the async deferral, token estimates) reads the field first. Only fields whose type is certain are listed;
any other field passes untouched, for the backend to judge. `null` is accepted for every optional field,
as Azure accepts it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from . import errors, ids

__all__ = ["MAX_TOKENS", "NAME_RULE", "RULES", "check_body", "is_name", "json_kind", "undecodable_field"]

MAX_TOKENS = 1 << 20  # no deployment generates more in one answer; more is a typo or an attack
# Azure's rule for deployment names, applied to model names too: they become part of the upstream URL.
_NAME = re.compile(r"(?!\.+$)[A-Za-z0-9_.-]{1,64}")
NAME_RULE = "letters, digits, '-', '_' and '.', at most 64 characters"
Check = Callable[[Any], str | None]  # the problem with a value, or None when it is fine


def _integer(low: int, high: int) -> Check:
    def check(value: Any) -> str | None:
        if type(value) is not int:
            return "must be an integer"
        return None if low <= value <= high else f"must be between {low} and {high}"

    return check


def _number(low: float, high: float) -> Check:
    def check(value: Any) -> str | None:
        if type(value) not in (int, float) or not math.isfinite(value):
            return "must be a number"
        return None if low <= value <= high else f"must be between {low} and {high}"

    return check


def _of(*kinds: type, what: str) -> Check:
    def check(value: Any) -> str | None:
        return None if type(value) in kinds else f"must be {what}"

    return check


def _objects(value: Any) -> str | None:
    if not isinstance(value, list):
        return "must be an array"
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            return f"must hold objects (item {index} is not)"
        if "role" in item and not isinstance(item["role"], str):
            return f"must hold objects whose 'role' is a string (item {index})"
    return None


def _stream_options(value: Any) -> str | None:
    if not isinstance(value, dict):
        return "must be an object"
    usage = value.get("include_usage")
    return None if usage is None or type(usage) is bool else "must have a boolean 'include_usage'"


def _response_id(value: Any) -> str | None:
    return None if ids.is_response_id(value) else "must be a response id ('resp_' and letters or digits)"


STRING = _of(str, what="a string")
BOOL = _of(bool, what="a boolean")
OBJECT = _of(dict, what="an object")
ARRAY = _of(list, what="an array")
STRING_OR_ARRAY = _of(str, list, what="a string or an array")
STRING_OR_OBJECT = _of(str, dict, what="a string or an object")
TOKENS = _integer(1, MAX_TOKENS)
PENALTY = _number(-2, 2)

_SAMPLING: dict[str, Check] = {
    "model": STRING,
    "stream": BOOL,
    "stream_options": _stream_options,
    "max_tokens": TOKENS,
    "n": _integer(1, 128),
    "temperature": _number(0, 2),
    "top_p": _number(0, 1),
    "presence_penalty": PENALTY,
    "frequency_penalty": PENALTY,
    "stop": STRING_OR_ARRAY,
    "seed": _integer(-(1 << 63), (1 << 63) - 1),
    "logit_bias": OBJECT,
    "user": STRING,
}

# operation -> {field: check}; REQUIRED lists the fields that must be present and not null.
RULES: dict[str, dict[str, Check]] = {
    "chat/completions": {
        **_SAMPLING,
        "messages": _objects,
        "max_completion_tokens": TOKENS,
        "logprobs": BOOL,
        "top_logprobs": _integer(0, 20),
        "tools": ARRAY,
        "tool_choice": STRING_OR_OBJECT,
        "parallel_tool_calls": BOOL,
        "functions": ARRAY,
        "function_call": STRING_OR_OBJECT,
        "response_format": OBJECT,
        "metadata": OBJECT,
        "store": BOOL,
        "reasoning_effort": STRING,
    },
    "completions": {
        **_SAMPLING,
        "prompt": STRING_OR_ARRAY,
        "logprobs": _integer(0, 5),
        "echo": BOOL,
        "best_of": _integer(1, 128),
        "suffix": STRING,
    },
    "embeddings": {
        "model": STRING,
        "input": STRING_OR_ARRAY,
        "dimensions": _integer(1, 65536),
        "encoding_format": STRING,
        "user": STRING,
    },
    "images/generations": {
        "model": STRING,
        "prompt": STRING,
        "n": _integer(1, 10),
        "size": STRING,
        "quality": STRING,
        "style": STRING,
        "response_format": STRING,
        "user": STRING,
    },
    "audio/speech": {
        "model": STRING,
        "input": STRING,
        "voice": STRING,
        "response_format": STRING,
        "speed": _number(0.25, 4),
    },
    "responses": {
        "model": STRING,
        "input": STRING_OR_ARRAY,
        "instructions": STRING,
        "stream": BOOL,
        "background": BOOL,
        "store": BOOL,
        "previous_response_id": _response_id,  # becomes a table key and decides the backend (affinity)
        "max_output_tokens": TOKENS,
        "temperature": _number(0, 2),
        "top_p": _number(0, 1),
        "tools": ARRAY,
        "tool_choice": STRING_OR_OBJECT,
        "parallel_tool_calls": BOOL,
        "include": ARRAY,
        "metadata": OBJECT,
        "reasoning": OBJECT,
        "text": OBJECT,
        "truncation": STRING,
        "user": STRING,
    },
    "realtime/client_secrets": {"session": OBJECT, "expires_after": OBJECT},
    # The Batch API's create body.
    "batches": {
        "input_file_id": STRING,
        "endpoint": STRING,
        "completion_window": STRING,
        "metadata": OBJECT,
    },
}
REQUIRED: dict[str, tuple[str, ...]] = {
    "chat/completions": ("messages",),
    "embeddings": ("input",),
    "images/generations": ("prompt",),
    "audio/speech": ("input", "voice"),
    "batches": ("input_file_id", "endpoint"),
}


def is_name(value: object) -> bool:
    """A deployment or model name by Azure's rule (and not '.' or '..')."""
    return isinstance(value, str) and _NAME.fullmatch(value) is not None


def check_body(operation: str, body: Mapping[str, Any]) -> None:
    """400 naming the first field that is missing or of the wrong type or range; unknown operations pass."""
    for name in REQUIRED.get(operation, ()):
        if body.get(name) is None:
            raise errors.bad_request(
                f"Missing required parameter: '{name}'.", code="missing_required_parameter", param=name
            )
    for name, check in RULES.get(operation, {}).items():
        value = body.get(name)
        if value is not None and (problem := check(value)) is not None:
            raise errors.bad_request(f"'{name}' {problem}.", code="invalid_type", param=name)


def json_kind(value: Any) -> str:
    """What a JSON value is, in the words of an error message ("an array", "a string", ...)."""
    kinds = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else kinds.get(type(value), "an object")


def undecodable_field(body: bytes) -> str | None:
    """The field (OpenAI's `messages.[0].content` form) whose text is not UTF-8, when the JSON around it parses.

    Undecodable bytes become lone surrogates (U+DC80-U+DCFF) with `surrogateescape`, and are found in the parsed
    value; None when the JSON does not parse, or the bytes are in a key or outside any string."""
    try:
        parsed = json.loads(body.decode("utf-8", "surrogateescape"))
    except (ValueError, RecursionError):
        return None
    stack: list[tuple[Any, str]] = [(parsed, "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, str):
            if path and _ESCAPED.search(node):
                return path
        elif isinstance(node, dict):
            stack.extend((value, f"{path}.{key}" if path else key) for key, value in reversed(node.items()))
        elif isinstance(node, list):
            stack.extend((value, f"{path}.[{index}]") for index, value in reversed(list(enumerate(node))))
    return None


_ESCAPED = re.compile("[\udc80-\udcff]")

