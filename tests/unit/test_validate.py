"""Malformed bodies: a 400 naming the field, for every operation, before anything is forwarded."""

import json

import pytest

from gateway.errors import GatewayError
from gateway.translate import parse_body
from gateway.validate import MAX_TOKENS, check_body

MESSAGES = [{"role": "user", "content": "hi"}]


def refused(operation: str, body: dict) -> dict:
    with pytest.raises(GatewayError) as info:
        check_body(operation, body)
    assert info.value.status == 400
    return json.loads(info.value.body())["error"]


@pytest.mark.parametrize(
    ("operation", "body", "param"),
    [
        ("chat/completions", {"messages": "hi"}, "messages"),
        ("chat/completions", {"messages": ["hi"]}, "messages"),
        ("chat/completions", {"messages": [{"role": 1}]}, "messages"),
        ("chat/completions", {}, "messages"),
        ("chat/completions", {"messages": MESSAGES, "model": 4}, "model"),
        ("chat/completions", {"messages": MESSAGES, "stream": "yes"}, "stream"),
        ("chat/completions", {"messages": MESSAGES, "stream": 1}, "stream"),
        ("chat/completions", {"messages": MESSAGES, "max_tokens": -1}, "max_tokens"),
        ("chat/completions", {"messages": MESSAGES, "max_tokens": MAX_TOKENS + 1}, "max_tokens"),
        ("chat/completions", {"messages": MESSAGES, "max_tokens": True}, "max_tokens"),
        ("chat/completions", {"messages": MESSAGES, "max_tokens": 1.5}, "max_tokens"),
        ("chat/completions", {"messages": MESSAGES, "max_completion_tokens": "10"}, "max_completion_tokens"),
        ("chat/completions", {"messages": MESSAGES, "temperature": float("nan")}, "temperature"),
        ("chat/completions", {"messages": MESSAGES, "temperature": 3}, "temperature"),
        ("chat/completions", {"messages": MESSAGES, "stream_options": "x"}, "stream_options"),
        ("chat/completions", {"messages": MESSAGES, "stream_options": {"include_usage": "y"}}, "stream_options"),
        ("chat/completions", {"messages": MESSAGES, "n": 0}, "n"),
        ("chat/completions", {"messages": MESSAGES, "tools": {}}, "tools"),
        ("completions", {"prompt": 5}, "prompt"),
        ("completions", {"prompt": "x", "logprobs": True}, "logprobs"),
        ("embeddings", {}, "input"),
        ("embeddings", {"input": {"a": 1}}, "input"),
        ("embeddings", {"input": "x", "dimensions": 0}, "dimensions"),
        ("images/generations", {"prompt": ["a"]}, "prompt"),
        ("audio/speech", {"input": "x"}, "voice"),
        ("batches", {"input_file_id": 1, "endpoint": "/v1/chat/completions"}, "input_file_id"),
        ("batches", {"input_file_id": "f", "endpoint": "/v1/chat/completions", "metadata": []}, "metadata"),
    ],
)
def test_each_wrong_field_is_named(operation, body, param):
    error = refused(operation, body)
    assert error["param"] == param and f"'{param}'" in error["message"]
    assert error["type"] == "invalid_request_error" and error["code"]


def test_good_bodies_and_nulls_pass_and_unknown_fields_are_the_backends_business():
    check_body("chat/completions", {"messages": [], "max_tokens": None, "stream": False, "vendor_x": {"a": 1}})
    check_body("chat/completions", {"messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}})
    check_body("completions", {"prompt": ["a", "b"], "logprobs": 2, "temperature": 0})
    check_body("embeddings", {"input": ["a"], "dimensions": 256})
    check_body("audio/transcriptions", {"anything": object()})  # multipart: not a JSON body


@pytest.mark.parametrize(
    ("content_type", "body", "code", "param", "says"),
    [
        ("application/json", b"[1]", "invalid_json", None, "not an array"),
        ("application/json", b'"text"', "invalid_json", None, "not a string"),
        ("application/json", b"null", "invalid_json", None, "not null"),
        ("application/json", b"", "invalid_json", None, "could not parse"),
        ("application/json", b'{"a": "\xff"}', "invalid_encoding", "a", "'a' is not valid UTF-8"),
        ("application/json", b'{"messages": [{"content": "ok"}, {"content": "\xfe"}]}', "invalid_encoding",
         "messages.[1].content", "'messages.[1].content'"),
        ("application/json", b'{"\xff": 1}', "invalid_encoding", None, "The body is not valid UTF-8"),
        ("application/json", b"[" * 100_000 + b"]" * 100_000, "invalid_json", None, "could not parse"),
        ("text/plain", b"{}", "unsupported_content_type", "content-type", "'text/plain'"),
        ("application/x-www-form-urlencoded", b"a=b", "unsupported_content_type", "content-type", "application/json"),
    ],
)  # fmt: skip
def test_bodies_that_are_not_a_json_object(content_type, body, code, param, says):
    with pytest.raises(GatewayError) as info:
        parse_body(content_type, body)
    error = json.loads(info.value.body())["error"]
    assert (info.value.status, error["code"], error["param"]) == (400, code, param)
    assert says in error["message"]


def test_json_with_a_charset_parameter_and_without_a_content_type_is_json():
    assert parse_body("application/json; charset=utf-8", b'{"a": 1}') == {"a": 1}
    assert parse_body("", b'{"a": 1}') == {"a": 1}
