"""Usage parsing, token estimation and the usage recorder."""

from __future__ import annotations

import json
import logging
import threading

import pytest

from gateway import tokens
from gateway.tokens import count_tokens, estimate_prompt_tokens
from gateway.usage import Usage, UsageRecord, UsageRecorder, usage_from_json_body


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


def test_count_tokens():
    assert count_tokens("hello world") == count_tokens("hello world", "gpt-4") == 2
    assert count_tokens("") == 0
    assert count_tokens("<|endoftext|>") > 1  # special-token text counted as plain text, no raise
    assert count_tokens("lone \ud800 surrogate") > 0  # tiktoken repairs it, no raise
    assert count_tokens(None) == 0  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("chatgpt-4o-latest", "o200k_base"),
        ("gpt-4o-realtime-preview", "o200k_base"),
        ("gpt-realtime", "o200k_base"),
        ("gpt-audio", "o200k_base"),
        ("omni-moderation-latest", "o200k_base"),
        ("gpt-4.1", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("gpt-4.5-preview", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("gpt-5-mini", "o200k_base"),
        ("o1", "o200k_base"),
        ("o1-mini", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("o4-mini", "o200k_base"),
        ("codex-mini", "o200k_base"),
        # Azure deployment names are free text: the model name inside them decides.
        ("GPT-4o-Mini-WEU", "o200k_base"),
        ("prod_gpt4o", "o200k_base"),
        ("team-o3-eu", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-32k", "cl100k_base"),
        ("gpt-4-turbo-2024-04-09", "cl100k_base"),
        ("gpt-4-1106-preview", "cl100k_base"),
        ("gpt-35-turbo", "cl100k_base"),
        ("gpt-35-turbo-16k-neu", "cl100k_base"),
        ("gpt-3.5-turbo-instruct", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("text-embedding-ada-002", "cl100k_base"),
        ("davinci-002", "cl100k_base"),
        # Unknown or no model: current models use o200k.
        (None, "o200k_base"),
        ("", "o200k_base"),
        ("my-chat-deployment", "o200k_base"),
        ("gpt-4-demo1", "cl100k_base"),  # "o1" inside a word is not the o1 model
    ],
)
def test_encoding_name(model, encoding):
    assert tokens.encoding_name(model) == encoding


def test_counts_differ_between_the_two_encodings():
    text = "Bonjour, comment ça va ? 日本語のテキストです。 for (i = 0; i < n; i++) { total += i; }"
    o200k, cl100k = count_tokens(text, "gpt-4o"), count_tokens(text, "gpt-4")
    assert o200k != cl100k
    assert count_tokens(text) == o200k and count_tokens(text, "gpt-35-turbo") == cl100k
    # The same texts tiktoken's own tests pin: cl100k [15339, 1917], o200k [24912, 2375].
    assert tokens._encoder("gpt-4").encode_ordinary("hello world") == [15339, 1917]
    assert tokens._encoder("gpt-4o").encode_ordinary("hello world") == [24912, 2375]


def test_split_patterns_are_tiktokens(monkeypatch):
    from tiktoken_ext import openai_public

    monkeypatch.setattr(openai_public, "load_tiktoken_bpe", lambda *args, **kwargs: {})  # no download
    assert tokens._ENCODINGS["cl100k_base"][0] == openai_public.cl100k_base()["pat_str"]
    assert tokens._ENCODINGS["o200k_base"][0] == openai_public.o200k_base()["pat_str"]


def test_one_encoder_per_encoding_loaded_once(monkeypatch):
    monkeypatch.setattr(tokens, "_encoders", {})
    loads = []
    real = tokens._load_encoding
    monkeypatch.setattr(tokens, "_load_encoding", lambda name: loads.append(name) or real(name))
    o200k = tokens._encoder("gpt-4o")
    assert o200k is not None and o200k.name == "o200k_base"
    assert tokens._encoder("gpt-5-mini") is o200k
    assert tokens._encoder(None) is o200k
    cl100k = tokens._encoder("gpt-4")
    assert cl100k is not o200k and cl100k.name == "cl100k_base"
    assert tokens._encoder("gpt-35-turbo") is cl100k
    assert loads == ["o200k_base", "cl100k_base"]


def test_count_tokens_fallback_without_encoding_logs_once(monkeypatch, caplog):
    def missing(name):
        raise ValueError(f"{name}: sha256 mismatch")

    monkeypatch.setattr(tokens, "_encoders", {})
    monkeypatch.setattr(tokens, "_logged", set())
    monkeypatch.setattr(tokens, "_load_encoding", missing)
    with caplog.at_level(logging.WARNING, logger="gateway.usage"):
        assert count_tokens("hello world") == 3  # ceil(11 / 4)
        assert count_tokens("abcd", "gpt-4o") == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "o200k_base" in warnings[0].getMessage() and warnings[0].exc_info


def test_encode_failure_is_logged_once_not_swallowed(monkeypatch, caplog):
    class Broken:
        def encode_ordinary(self, text):
            raise RuntimeError("tokenizer bug")

    monkeypatch.setattr(tokens, "_encoders", {"o200k_base": Broken()})
    monkeypatch.setattr(tokens, "_logged", set())
    with caplog.at_level(logging.WARNING, logger="gateway.usage"):
        assert count_tokens("hello world") == 3
        assert count_tokens("hello world") == 3
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "tokenizer bug" in str(warnings[0].exc_info[1])


def test_estimate_uses_the_given_model_else_the_requests_own():
    text = "Bonjour, comment ça va ? 日本語のテキストです。"
    body = {"messages": [{"role": "user", "content": text}]}
    o200k = estimate_prompt_tokens(body, "gpt-4o")
    cl100k = estimate_prompt_tokens(body, "gpt-35-turbo")
    assert cl100k - o200k == count_tokens(text, "gpt-4") - count_tokens(text, "gpt-4o") != 0
    assert estimate_prompt_tokens({**body, "model": "gpt-4"}) == cl100k
    assert estimate_prompt_tokens({**body, "model": "gpt-4"}, "gpt-4o-deployment") == o200k
    assert estimate_prompt_tokens(body) == o200k
    assert estimate_prompt_tokens({"prompt": text, "model": "gpt-35-turbo-instruct"}) == count_tokens(text, "gpt-4")


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
    # OpenAI cookbook reference value for this shape: 2 messages ~ 20-ish tokens
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


def test_estimate_prompt_tokens_of_a_responses_request():
    items = [{"role": "user", "content": [{"type": "input_text", "text": "hello world"}]}, "again"]
    body = {"model": "gpt-4o", "instructions": "be brief", "input": items}
    # instructions (2) + one message (3 per message + role 1 + text 2) + a plain text item (1)
    assert estimate_prompt_tokens(body) == 2 + 3 + 1 + 2 + 1


def test_estimate_prompt_tokens_completions_and_other():
    assert estimate_prompt_tokens({"prompt": "hello world"}) == 2
    assert estimate_prompt_tokens({"prompt": ["hello world", "hello"]}) == 3
    assert estimate_prompt_tokens({"prompt": [1, 2, 3]}) == 3
    assert estimate_prompt_tokens({"input": "embed me"}) == 2  # an input text (embeddings, Responses) counts
    assert estimate_prompt_tokens({"input": {"not": "text"}}) == 0
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


def test_recorder_unwritable_file_does_not_raise(tmp_path, caplog):
    path = tmp_path / "missing-dir" / "usage.jsonl"
    recorder = UsageRecorder(str(path))
    seen = []
    recorder.add_sink(seen.append)
    with caplog.at_level(logging.INFO, logger="gateway.usage"):
        recorder.record(_record(request_id="kept"))  # returns: the failure is logged, not raised
    assert not path.exists()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(path) in warnings[0].getMessage()
    assert isinstance(warnings[0].exc_info[1], FileNotFoundError)
    assert [r.request_id for r in seen] == ["kept"]  # the other sinks still get the record
    assert any(r.levelno == logging.INFO and '"kept"' in r.getMessage() for r in caplog.records)


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
