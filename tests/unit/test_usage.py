"""Usage parsing, token estimation and the usage recorder."""

from __future__ import annotations

import json
import logging
import threading

import pytest

from gateway import usage as usage_mod
from gateway.usage import (
    Usage,
    UsageRecord,
    UsageRecorder,
    count_tokens,
    estimate_prompt_tokens,
    usage_from_json_body,
)


def test_from_openai_chat_with_details():
    u = Usage.from_openai(
        {
            "prompt_tokens": 1200,
            "completion_tokens": 300,
            "total_tokens": 1500,
            "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 128, "accepted_prediction_tokens": 0},
        }
    )
    assert u == Usage(1200, 300, 1500, cached_tokens=1024, reasoning_tokens=128)
    assert u.estimated is False
    assert u.as_dict() == {
        "prompt_tokens": 1200,
        "completion_tokens": 300,
        "total_tokens": 1500,
        "cached_tokens": 1024,
        "reasoning_tokens": 128,
        "estimated": False,
    }


def test_from_openai_embeddings_and_responses():
    assert Usage.from_openai({"prompt_tokens": 8, "total_tokens": 8}) == Usage(8, 0, 8)
    u = Usage.from_openai(
        {
            "input_tokens": 36,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 87,
            "output_tokens_details": {"reasoning_tokens": 64},
            "total_tokens": 123,
        }
    )
    assert u == Usage(36, 87, 123, cached_tokens=0, reasoning_tokens=64)
    # total computed when absent; None details omitted from as_dict
    u = Usage.from_openai({"prompt_tokens": 2, "completion_tokens": 3})
    assert u == Usage(2, 3, 5)
    assert "cached_tokens" not in u.as_dict() and "reasoning_tokens" not in u.as_dict()


@pytest.mark.parametrize(
    "garbage",
    [None, {}, [], "usage", 5, {"prompt_tokens": "12"}, {"prompt_tokens": True}, {"prompt_tokens": -1}],
)
def test_from_openai_garbage(garbage):
    assert Usage.from_openai(garbage) is None


def test_usage_from_json_body():
    body = json.dumps(
        {"id": "x", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}}
    ).encode()
    assert usage_from_json_body(body) == Usage(5, 6, 11)
    assert usage_from_json_body(b'{"id":"x","choices":[]}') is None
    assert usage_from_json_body(b"") is None
    assert usage_from_json_body(b'{"usage": null}') is None
    assert usage_from_json_body(b'{"usage": {"prompt_tokens": 1,') is None  # truncated
    assert usage_from_json_body(b'["usage"]') is None
    assert usage_from_json_body(b'\xff\xfe"usage"') is None
    assert usage_from_json_body(b"[" * 100000 + b'"usage"') is None


def test_count_tokens_cl100k():
    assert count_tokens("hello world") == 2
    assert count_tokens("") == 0
    assert count_tokens("<|endoftext|>") > 1  # special-token text counted as plain text, no raise
    assert count_tokens(None) == 0  # type: ignore[arg-type]


def test_count_tokens_fallback_without_encoding(monkeypatch):
    monkeypatch.setattr(usage_mod, "_encoding", None)
    assert count_tokens("hello world") == 3  # ceil(11 / 4)
    assert count_tokens("abcd") == 1


def test_encoding_loaded_once(monkeypatch):
    monkeypatch.setattr(usage_mod, "_encoding", usage_mod._UNLOADED)
    first = usage_mod._get_encoding()
    assert first is not None
    assert usage_mod._get_encoding() is first


def test_estimate_prompt_tokens_chat():
    body = {
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {
                "role": "user",
                "name": "bob",
                "content": [{"type": "text", "text": "hello world"}, {"type": "image_url", "image_url": {"url": "x"}}],
            },
        ]
    }
    expected = (
        3
        + 3
        + count_tokens("system")
        + count_tokens("You are a helpful assistant.")
        + 3
        + count_tokens("user")
        + count_tokens("hello world")
        + count_tokens("bob")
        + 1
    )
    assert estimate_prompt_tokens(body) == expected
    # OpenAI cookbook reference value for this shape (cl100k): 2 messages ~ 20-ish tokens
    assert 15 <= expected <= 30


def test_estimate_counts_the_function_calls_of_assistant_messages():
    call = {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    plain = {"messages": [{"role": "assistant", "content": None}]}
    calls = [{"id": "c1", "type": "function", "function": call}, "junk", {"function": "junk"}]
    with_tools = {"messages": [{"role": "assistant", "content": None, "tool_calls": calls}]}
    legacy = {"messages": [{"role": "assistant", "content": None, "function_call": call}]}
    expected = estimate_prompt_tokens(plain) + count_tokens(call["name"]) + count_tokens(call["arguments"])
    assert estimate_prompt_tokens(with_tools) == estimate_prompt_tokens(legacy) == expected
    assert expected > estimate_prompt_tokens(plain)


def test_estimate_prompt_tokens_completions_and_other():
    assert estimate_prompt_tokens({"prompt": "hello world"}) == 2
    assert estimate_prompt_tokens({"prompt": ["hello world", "hello"]}) == 3
    assert estimate_prompt_tokens({"prompt": [1, 2, 3]}) == 3
    assert estimate_prompt_tokens({"input": "embed me"}) == 0
    assert estimate_prompt_tokens(None) == 0
    assert estimate_prompt_tokens({"messages": "nope"}) == 0
    assert estimate_prompt_tokens({"messages": [None, 3]}) == 3  # reply primer only


def _record(**kw) -> UsageRecord:
    base = dict(
        request_id="req-1",
        api_style="v1",
        operation="chat/completions",
        model="gpt-4o",
        deployment="gpt-4o-eu",
        backend="aoai-swe",
        status=200,
        streaming=True,
        attempts=1,
        duration_ms=123.4567,
        usage=Usage(10, 5, 15, cached_tokens=2),
    )
    base.update(kw)
    return UsageRecord(**base)


def test_record_as_dict_flat():
    d = _record(caller="team-a").as_dict()
    assert d["prompt_tokens"] == 10 and d["completion_tokens"] == 5 and d["total_tokens"] == 15
    assert d["cached_tokens"] == 2 and d["reasoning_tokens"] is None and d["usage_estimated"] is False
    assert d["caller"] == "team-a" and d["duration_ms"] == 123.457 and d["streaming"] is True
    assert "usage" not in d
    assert isinstance(d["timestamp"], str) and d["timestamp"].endswith("+00:00")
    json.dumps(d)
    d = _record(usage=None).as_dict()
    assert d["prompt_tokens"] is None and d["usage_estimated"] is None


def test_recorder_writes_json_lines_logs_and_survives_failing_sink(tmp_path, caplog):
    path = tmp_path / "usage.jsonl"
    recorder = UsageRecorder(str(path))
    seen = []

    def bad_sink(rec):
        raise RuntimeError("exporter down")

    recorder.add_sink(bad_sink)
    recorder.add_sink(seen.append)
    with caplog.at_level(logging.INFO, logger="gateway.usage"):
        recorder.record(_record(request_id="a"))
        recorder.record(_record(request_id="b", usage=Usage(1, 2, 3, estimated=True)))
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["request_id"] for line in lines] == ["a", "b"]
    assert json.loads(lines[1])["usage_estimated"] is True
    assert [r.request_id for r in seen] == ["a", "b"]  # later sinks still run
    infos = [r for r in caplog.records if r.levelno == logging.INFO and r.name == "gateway.usage"]
    assert [json.loads(r.getMessage())["request_id"] for r in infos] == ["a", "b"]
    assert any(
        "exporter down" in (r.exc_text or "") or r.exc_info for r in caplog.records if r.levelno == logging.WARNING
    )


def test_recorder_unwritable_file_does_not_raise(tmp_path):
    recorder = UsageRecorder(str(tmp_path / "missing-dir" / "usage.jsonl"))
    recorder.record(_record())  # logged, not raised


def test_recorder_concurrent_lines_are_whole(tmp_path):
    path = tmp_path / "usage.jsonl"
    recorder = UsageRecorder(str(path))
    big = "x" * 5000

    def worker(n):
        for i in range(50):
            recorder.record(_record(request_id=f"{n}-{i}", caller=big))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 400
    assert len({json.loads(line)["request_id"] for line in lines}) == 400


def test_recorder_without_file(caplog):
    recorder = UsageRecorder()
    with caplog.at_level(logging.INFO, logger="gateway.usage"):
        recorder.record(_record())
    assert any(r.name == "gateway.usage" for r in caplog.records)


def test_usage_from_json_body_fast_path_and_its_fallbacks():
    last = (
        b'{"id":"x","choices":[{"message":{"content":"the \\"usage\\": field"}}],'
        b'"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}'
    )
    assert usage_from_json_body(last).total_tokens == 7
    not_last = b'{"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2},"id":"x"}'
    assert usage_from_json_body(not_last).total_tokens == 2  # parsed whole
    nested_last = b'{"data":{"usage":{"prompt_tokens":9,"completion_tokens":9,"total_tokens":18}}}'
    assert usage_from_json_body(nested_last) is None  # a nested usage is not the answer's usage
    pretty = b'{\n  "id": "x",\n  "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}\n}\n'
    assert usage_from_json_body(pretty).total_tokens == 11
