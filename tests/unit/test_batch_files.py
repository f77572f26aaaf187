"""Batch JSONL validation (a bad file is refused naming the first bad line), rewriting, object shapes."""

import json

import pytest

from gateway.batch_files import batch_object, parse_jsonl, rewrite_for_backend, validate_batch_jsonl
from gateway.errors import GatewayError


def line(custom_id: str = "r1", **overrides) -> dict:
    base = {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    }
    return {**base, **overrides}


def jsonl(*lines) -> bytes:
    return "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines).encode() + b"\n"


def refused(data: bytes, **limits) -> str:
    with pytest.raises(GatewayError) as info:
        validate_batch_jsonl(data, max_bytes=limits.get("max_bytes", 10**6), max_lines=limits.get("max_lines", 100))
    error = json.loads(info.value.body())["error"]
    assert info.value.status == 400 and error["code"] == "invalid_batch_file" and error["param"] == "file"
    return error["message"]


def test_a_good_file_passes_and_blank_lines_are_ignored():
    checker = validate_batch_jsonl(
        jsonl(line("a"), "", line("b", url="/chat/completions")), max_bytes=10**6, max_lines=10
    )
    assert (checker.lines, checker.model) == (2, "gpt-4o-mini")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (jsonl(line("a"), "{not json"), "Line 2 is not valid JSON."),
        (jsonl(line("a"), "[1, 2]"), "Line 2 must be a JSON object."),
        (jsonl({k: v for k, v in line().items() if k != "custom_id"}), "Line 1 has no 'custom_id'."),
        (jsonl({k: v for k, v in line().items() if k != "body"}), "Line 1 has no 'body'."),
        (jsonl(line("a"), line("b"), line("a")), "Line 3: custom_id 'a' is used more than once."),
        (jsonl(line(method="GET")), "Line 1: 'method' must be POST."),
        (jsonl(line(url="/v1/images/generations")), "Line 1: 'url' must be one of"),
        (jsonl(line(body={"messages": []})), "Line 1: 'body' must be an object with a 'model'."),
        (jsonl(line("a"), line("b", body={"model": "gpt-4o"})), "Line 2: every line must use the same model"),
        (jsonl(line(custom_id="")), "Line 1: 'custom_id' must be a non-empty string."),
        (b"\n\n", "The file holds no requests."),
        ("é".encode("latin-1"), "Line 1 is not UTF-8 text."),
    ],
)
def test_malformed_files_are_refused_naming_the_first_bad_line(content, message):
    assert refused(content).startswith(message)


def test_size_and_line_limits():
    assert "limit is 10" in refused(jsonl(line()), max_bytes=10)
    assert "more than 2 requests" in refused(jsonl(line("a"), line("b"), line("c")), max_lines=2)


def test_rewrite_uses_the_backends_deployment_and_azures_url():
    out = parse_jsonl(rewrite_for_backend([line("a"), line("b", url="/v1/embeddings")], "gpt-4o-mini-gb"))
    assert [(x["url"], x["body"]["model"]) for x in out] == [
        ("/chat/completions", "gpt-4o-mini-gb"),
        ("/embeddings", "gpt-4o-mini-gb"),
    ]
    assert out[0]["body"]["messages"] == line()["body"]["messages"]


def test_batch_object_has_the_openai_shape():
    job = {
        "id": "batch_1",
        "endpoint": "/v1/chat/completions",
        "input_file_id": "file-1",
        "completion_window": "24h",
        "created_at": 1000,
        "window_s": 86400,
        "lines": 3,
        "metadata": {"team": "a"},
    }
    obj = batch_object(
        job,
        {"status": "in_progress", "request_counts": {"total": 3, "completed": 1, "failed": 0}, "in_progress_at": 1001},
    )
    assert obj["object"] == "batch" and obj["status"] == "in_progress" and obj["expires_at"] == 87400
    assert obj["request_counts"] == {"total": 3, "completed": 1, "failed": 0} and obj["metadata"] == {"team": "a"}
    assert batch_object(job, {})["status"] == "validating"
