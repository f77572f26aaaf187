"""Folding a streamed Azure OpenAI answer into the non-streamed object, and SSE body parsing."""

from __future__ import annotations

import copy
import json

import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from gateway.assemble import AssembleError, assemble_completion, parse_sse
from gateway.streaming import SseUsageTap
from gateway.usage import Usage

ID = "chatcmpl-AZq8gxyHt3mV1pLkQ2wN7eRb5sTuV"
CREATED = 1733412345
MODEL = "gpt-4o-2024-11-20"
FP = "fp_b705f0c291"

SAFE = {
    "hate": {"filtered": False, "severity": "safe"},
    "self_harm": {"filtered": False, "severity": "safe"},
    "sexual": {"filtered": False, "severity": "safe"},
    "violence": {"filtered": False, "severity": "safe"},
}
SAFE_OUTPUT = {
    **SAFE,
    "protected_material_code": {"filtered": False, "detected": False},
    "protected_material_text": {"filtered": False, "detected": False},
}
PROMPT_FILTER = [
    {"prompt_index": 0, "content_filter_results": {**SAFE, "jailbreak": {"filtered": False, "detected": False}}}
]
USAGE = {
    "completion_tokens": 12,
    "completion_tokens_details": {
        "accepted_prediction_tokens": 0,
        "audio_tokens": 0,
        "reasoning_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
    "prompt_tokens": 31,
    "prompt_tokens_details": {"audio_tokens": 0, "cached_tokens": 0},
    "total_tokens": 43,
}


# --- Azure stream builders (keys alphabetical, as Azure serializes them) -------------------------


def prompt_filter_event() -> dict:
    """Azure's first event: no choices, empty id/model/object, created 0."""
    return {"choices": [], "created": 0, "id": "", "model": "", "object": "", "prompt_filter_results": PROMPT_FILTER}


def chunk(*choices: dict, obj: str = "chat.completion.chunk", **extra) -> dict:
    return {
        "choices": list(choices),
        "created": CREATED,
        "id": ID,
        "model": MODEL,
        "object": obj,
        "system_fingerprint": FP,
        **extra,
    }


def delta(d: dict, index: int = 0, finish: str | None = None, cfr: dict | None = None, logprobs=None) -> dict:
    return {
        "content_filter_results": {} if cfr is None else cfr,
        "delta": d,
        "finish_reason": finish,
        "index": index,
        "logprobs": logprobs,
    }


def role(index: int = 0, **fields) -> dict:
    return delta({"content": "", "refusal": None, "role": "assistant", **fields}, index)


def usage_event(usage: dict = USAGE) -> dict:
    return chunk(usage=usage)


def sse(events: list[dict], sep: str = "\n") -> bytes:
    body = "".join(f"data: {json.dumps(e)}{sep}{sep}" for e in events) + f"data: [DONE]{sep}{sep}"
    return body.encode()


def non_streamed(choices: list[dict], usage: dict | None = USAGE) -> dict:
    result = {
        "choices": choices,
        "created": CREATED,
        "id": ID,
        "model": MODEL,
        "object": "chat.completion",
        "prompt_filter_results": PROMPT_FILTER,
        "system_fingerprint": FP,
    }
    if usage is not None:
        result["usage"] = usage
    return result


def assert_same(actual: dict, expected: dict) -> None:
    """Field by field first (readable failures), then the whole object."""
    assert set(actual) == set(expected)
    for key in expected:
        if key == "choices":
            assert len(actual["choices"]) == len(expected["choices"])
            for got, want in zip(actual["choices"], expected["choices"], strict=True):
                assert set(got) == set(want)
                for ckey in want:
                    assert got[ckey] == want[ckey], f"choices[{want['index']}].{ckey}"
        else:
            assert actual[key] == expected[key], key
    assert actual == expected


def oracle(events: list[dict]):
    """The openai client's own stream accumulator (it cannot take Azure's prompt-filter event)."""
    state = ChatCompletionStreamState()
    for event in events:
        if event.get("object") == "chat.completion.chunk":
            state.handle_chunk(ChatCompletionChunk.model_validate(event))
    return state.current_completion_snapshot


def check_chat(events: list[dict], expected: dict) -> dict:
    result = assemble_completion(events)
    assert_same(result, expected)
    ChatCompletion.model_validate(result)
    # Same result through the wire format, LF and CRLF.
    assert assemble_completion(parse_sse(sse(events))) == result
    assert assemble_completion(parse_sse(sse(events, "\r\n"))) == result
    # Same messages as the openai client's accumulator.
    reference = oracle(events)
    for got, ref in zip(result["choices"], reference.choices, strict=True):
        assert got["finish_reason"] == ref.finish_reason
        assert got["message"]["content"] == ref.message.content
        assert got["message"].get("refusal") == ref.message.refusal
        ref_calls = [
            {"id": c.id, "type": c.type, "function": {"name": c.function.name, "arguments": c.function.arguments}}
            for c in ref.message.tool_calls or []
        ]
        assert got["message"].get("tool_calls", []) == ref_calls
    return result


# --- chat ---------------------------------------------------------------------------------------


def test_plain_content():
    events = [
        prompt_filter_event(),
        chunk(role()),
        chunk(delta({"content": "Hello"}, cfr=SAFE_OUTPUT)),
        chunk(delta({"content": "! How"}, cfr=SAFE_OUTPUT)),
        chunk(delta({"content": " can I help?"}, cfr=SAFE_OUTPUT)),
        chunk(delta({}, finish="stop")),
        usage_event(),
    ]
    expected = non_streamed(
        [
            {
                "content_filter_results": SAFE_OUTPUT,
                "finish_reason": "stop",
                "index": 0,
                "logprobs": None,
                "message": {"content": "Hello! How can I help?", "refusal": None, "role": "assistant"},
            }
        ]
    )
    result = check_chat(events, expected)
    parsed = ChatCompletion.model_validate(result)
    assert parsed.usage is not None and parsed.usage.prompt_tokens_details.cached_tokens == 0
    assert parsed.choices[0].message.content == "Hello! How can I help?"


def test_two_tool_calls_with_split_arguments_and_null_content():
    def call(tc: dict) -> dict:
        return chunk(delta({"tool_calls": [tc]}))

    events = [
        prompt_filter_event(),
        chunk(
            delta(
                {
                    "content": None,
                    "refusal": None,
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "function": {"arguments": "", "name": "get_weather"},
                            "id": "call_8bXkq1",
                            "index": 0,
                            "type": "function",
                        }
                    ],
                }
            )
        ),
        call({"function": {"arguments": '{"ci'}, "index": 0}),
        call({"function": {"arguments": 'ty": "Par'}, "index": 0}),
        call({"function": {"arguments": 'is"}'}, "index": 0}),
        call({"function": {"arguments": "", "name": "get_time"}, "id": "call_Q2mZ9w", "index": 1, "type": "function"}),
        call({"function": {"arguments": '{"tz": '}, "index": 1}),
        call({"function": {"arguments": '"Europe/Paris"}'}, "index": 1}),
        chunk(delta({}, finish="tool_calls")),
        usage_event(),
    ]
    expected = non_streamed(
        [
            {
                "content_filter_results": {},
                "finish_reason": "tool_calls",
                "index": 0,
                "logprobs": None,
                "message": {
                    "content": None,
                    "refusal": None,
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "function": {"arguments": '{"city": "Paris"}', "name": "get_weather"},
                            "id": "call_8bXkq1",
                            "type": "function",
                        },
                        {
                            "function": {"arguments": '{"tz": "Europe/Paris"}', "name": "get_time"},
                            "id": "call_Q2mZ9w",
                            "type": "function",
                        },
                    ],
                },
            }
        ]
    )
    result = check_chat(events, expected)
    calls = ChatCompletion.model_validate(result).choices[0].message.tool_calls
    assert [json.loads(c.function.arguments) for c in calls] == [{"city": "Paris"}, {"tz": "Europe/Paris"}]


def test_tool_call_after_empty_content_string_gives_null_content():
    # Some deployments open with `content: ""` even when the model then calls a tool.
    events = [
        chunk(role()),
        chunk(delta({"tool_calls": [{"id": "c1", "index": 0, "type": "function", "function": {"name": "f"}}]})),
        chunk(delta({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]})),
        chunk(delta({}, finish="tool_calls")),
    ]
    message = assemble_completion(events)["choices"][0]["message"]
    assert message["content"] is None
    assert message["tool_calls"] == [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]


def test_tool_calls_out_of_order_are_sorted_and_ids_not_concatenated():
    events = [
        chunk(delta({"role": "assistant", "tool_calls": [{"id": "b", "index": 1, "type": "function"}]})),
        chunk(delta({"tool_calls": [{"id": "a", "index": 0, "type": "function", "function": {"name": "x"}}]})),
        # A backend that repeats id/type on every fragment.
        chunk(delta({"tool_calls": [{"id": "b", "index": 1, "type": "function", "function": {"name": "y"}}]})),
        chunk(delta({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]})),
        chunk(delta({}, finish="tool_calls")),
    ]
    calls = assemble_completion(events)["choices"][0]["message"]["tool_calls"]
    assert calls == [
        {"id": "a", "type": "function", "function": {"name": "x", "arguments": "{}"}},
        {"id": "b", "type": "function", "function": {"name": "y", "arguments": ""}},
    ]


def test_legacy_function_call():
    events = [
        prompt_filter_event(),
        chunk(delta({"content": None, "function_call": {"arguments": "", "name": "lookup"}, "role": "assistant"})),
        chunk(delta({"function_call": {"arguments": '{"q": '}})),
        chunk(delta({"function_call": {"arguments": '"azure"}'}})),
        chunk(delta({}, finish="function_call")),
        usage_event(),
    ]
    expected = non_streamed(
        [
            {
                "content_filter_results": {},
                "finish_reason": "function_call",
                "index": 0,
                "logprobs": None,
                "message": {
                    "content": None,
                    "function_call": {"arguments": '{"q": "azure"}', "name": "lookup"},
                    "role": "assistant",
                },
            }
        ]
    )
    check_chat(events, expected)


def test_n2_interleaved_choices():
    events = [
        prompt_filter_event(),
        chunk(role(0)),
        chunk(role(1)),
        chunk(delta({"content": "Red"}, 1, cfr=SAFE_OUTPUT)),
        chunk(delta({"content": "Blue"}, 0, cfr=SAFE_OUTPUT)),
        chunk(delta({"content": " and green."}, 1, cfr=SAFE_OUTPUT)),
        chunk(delta({"content": " sky."}, 0, cfr=SAFE_OUTPUT)),
        chunk(delta({}, 1, finish="length")),
        chunk(delta({}, 0, finish="stop")),
        usage_event(),
    ]
    expected = non_streamed(
        [
            {
                "content_filter_results": SAFE_OUTPUT,
                "finish_reason": "stop",
                "index": 0,
                "logprobs": None,
                "message": {"content": "Blue sky.", "refusal": None, "role": "assistant"},
            },
            {
                "content_filter_results": SAFE_OUTPUT,
                "finish_reason": "length",
                "index": 1,
                "logprobs": None,
                "message": {"content": "Red and green.", "refusal": None, "role": "assistant"},
            },
        ]
    )
    check_chat(events, expected)


def test_two_choices_in_one_chunk():
    events = [
        chunk(role(0), role(1)),
        chunk(delta({"content": "a"}, 1), delta({"content": "b"}, 0)),
        chunk(delta({}, 0, finish="stop"), delta({}, 1, finish="stop")),
    ]
    result = assemble_completion(events)
    assert [(c["index"], c["message"]["content"]) for c in result["choices"]] == [(0, "b"), (1, "a")]


def test_refusal():
    events = [
        prompt_filter_event(),
        chunk(delta({"content": None, "refusal": "", "role": "assistant"})),
        chunk(delta({"refusal": "I'm sorry, "})),
        chunk(delta({"refusal": "I can't help with that."})),
        chunk(delta({}, finish="stop")),
        usage_event(),
    ]
    expected = non_streamed(
        [
            {
                "content_filter_results": {},
                "finish_reason": "stop",
                "index": 0,
                "logprobs": None,
                "message": {"content": None, "refusal": "I'm sorry, I can't help with that.", "role": "assistant"},
            }
        ]
    )
    result = check_chat(events, expected)
    assert ChatCompletion.model_validate(result).choices[0].message.refusal == "I'm sorry, I can't help with that."


def _token(token: str, logprob: float) -> dict:
    return {
        "bytes": list(token.encode()),
        "logprob": logprob,
        "token": token,
        "top_logprobs": [{"bytes": list(token.encode()), "logprob": logprob, "token": token}],
    }


def test_logprobs_are_concatenated():
    hi, comma, there = _token("Hi", -0.01), _token(",", -0.3), _token(" there", -1.2)
    events = [
        prompt_filter_event(),
        chunk(delta({"content": "", "refusal": None, "role": "assistant"}, logprobs={"content": [], "refusal": None})),
        chunk(delta({"content": "Hi"}, cfr=SAFE_OUTPUT, logprobs={"content": [hi], "refusal": None})),
        chunk(delta({"content": ", there"}, cfr=SAFE_OUTPUT, logprobs={"content": [comma, there], "refusal": None})),
        chunk(delta({}, finish="stop")),
        usage_event(),
    ]
    expected = non_streamed(
        [
            {
                "content_filter_results": SAFE_OUTPUT,
                "finish_reason": "stop",
                "index": 0,
                "logprobs": {"content": [hi, comma, there], "refusal": None},
                "message": {"content": "Hi, there", "refusal": None, "role": "assistant"},
            }
        ]
    )
    result = check_chat(events, expected)
    parsed = ChatCompletion.model_validate(result)
    assert [t.token for t in parsed.choices[0].logprobs.content] == ["Hi", ",", " there"]


def test_no_usage_chunk_means_no_usage():
    events = [
        prompt_filter_event(),
        chunk(role()),
        chunk(delta({"content": "ok"}, cfr=SAFE_OUTPUT)),
        chunk(delta({}, finish="stop")),
    ]
    expected = non_streamed(
        [
            {
                "content_filter_results": SAFE_OUTPUT,
                "finish_reason": "stop",
                "index": 0,
                "logprobs": None,
                "message": {"content": "ok", "refusal": None, "role": "assistant"},
            }
        ],
        usage=None,
    )
    result = check_chat(events, expected)
    assert "usage" not in result
    assert ChatCompletion.model_validate(result).usage is None


def test_openai_style_stream_usage_null_then_usage_and_obfuscation_dropped():
    """api.openai.com-shaped chunks: no Azure filter fields, `usage: null` on every chunk, obfuscation."""
    base = {"id": ID, "object": "chat.completion.chunk", "created": CREATED, "model": MODEL}
    base |= {"service_tier": "default", "system_fingerprint": FP, "usage": None}

    def ev(choices: list, **extra) -> dict:
        return {**base, "choices": choices, "obfuscation": "x1Y2", **extra}

    events = [
        ev(
            [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": "", "refusal": None},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ]
        ),
        ev([{"index": 0, "delta": {"content": "Yes"}, "logprobs": None, "finish_reason": None}]),
        ev([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]),
        ev([], usage=USAGE),
    ]
    result = assemble_completion(events)
    assert result == {
        "id": ID,
        "object": "chat.completion",
        "created": CREATED,
        "model": MODEL,
        "service_tier": "default",
        "system_fingerprint": FP,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Yes", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": USAGE,
    }
    ChatCompletion.model_validate(result)


def test_azure_async_filter_annotation_events():
    """Asynchronous filter mode: annotation events with empty id/model/object, offsets and no delta."""
    filtered = {**SAFE_OUTPUT, "violence": {"filtered": False, "severity": "low"}}

    def annotation(cfr: dict) -> dict:
        choice = {
            "content_filter_offsets": {"check_offset": 0, "end_offset": 12, "start_offset": 0},
            "content_filter_results": cfr,
            "finish_reason": None,
            "index": 0,
        }
        return {"choices": [choice], "created": 0, "id": "", "model": "", "object": ""}

    events = [
        prompt_filter_event(),
        chunk(role()),
        chunk(delta({"content": "Swords "})),
        chunk(delta({"content": "clash."})),
        chunk(delta({}, finish="stop")),
        annotation(SAFE_OUTPUT),
        annotation(filtered),
        usage_event(),
    ]
    result = assemble_completion(events)
    assert (result["id"], result["model"], result["created"], result["object"]) == (
        ID,
        MODEL,
        CREATED,
        "chat.completion",
    )
    choice = result["choices"][0]
    assert "content_filter_offsets" not in choice
    assert choice["content_filter_results"] == filtered
    assert choice["message"] == {"content": "Swords clash.", "refusal": None, "role": "assistant"}
    ChatCompletion.model_validate(result)


def test_content_filter_finish():
    hate = {**SAFE_OUTPUT, "hate": {"filtered": True, "severity": "high"}}
    events = [
        prompt_filter_event(),
        chunk(role()),
        chunk(delta({"content": "Some"}, cfr=SAFE_OUTPUT)),
        chunk(delta({}, finish="content_filter", cfr=hate)),
        chunk(delta({}, cfr={})),
    ]
    choice = assemble_completion(events)["choices"][0]
    assert choice["finish_reason"] == "content_filter"
    assert choice["content_filter_results"] == hate


def test_old_api_version_without_refusal_key_omits_it():
    events = [
        chunk(delta({"content": "", "role": "assistant"})),
        chunk(delta({"content": "x"})),
        chunk(delta({}, finish="stop")),
    ]
    message = assemble_completion(events)["choices"][0]["message"]
    assert message == {"content": "x", "role": "assistant"}


def test_role_defaults_to_assistant_and_empty_content_stays_empty_string():
    events = [chunk(delta({"content": ""})), chunk(delta({}, finish="length"))]
    message = assemble_completion(events)["choices"][0]["message"]
    assert message == {"content": "", "role": "assistant"}


def test_unknown_delta_string_fields_concatenate():
    # e.g. reasoning_content from some Foundry deployments.
    events = [
        chunk(delta({"role": "assistant", "reasoning_content": "Think"})),
        chunk(delta({"reasoning_content": "ing."})),
        chunk(delta({"content": "Done"})),
        chunk(delta({}, finish="stop")),
    ]
    message = assemble_completion(events)["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "Done", "reasoning_content": "Thinking."}


def test_input_not_mutated():
    events = [
        prompt_filter_event(),
        chunk(role()),
        chunk(
            delta(
                {
                    "tool_calls": [
                        {"id": "c", "index": 0, "type": "function", "function": {"name": "f", "arguments": "{"}}
                    ]
                }
            )
        ),
        chunk(
            delta(
                {"tool_calls": [{"index": 0, "function": {"arguments": "}"}}]}, logprobs={"content": [_token("a", -1)]}
            )
        ),
        chunk(delta({}, finish="tool_calls")),
        usage_event(),
    ]
    before = copy.deepcopy(events)
    first = assemble_completion(events)
    assert events == before
    assert assemble_completion(events) == first


def test_accepts_a_generator():
    events = [chunk(role()), chunk(delta({"content": "gen"})), chunk(delta({}, finish="stop"))]
    assert assemble_completion(e for e in events)["choices"][0]["message"]["content"] == "gen"


def test_empty_stream_raises():
    with pytest.raises(AssembleError) as info:
        assemble_completion([])
    assert info.value.error is None


def test_error_event_raises_with_payload():
    error = {"error": {"code": "server_error", "message": "The server had an error.", "type": "server_error"}}
    with pytest.raises(AssembleError) as info:
        assemble_completion([prompt_filter_event(), chunk(role()), error])
    assert info.value.error == error
    assert isinstance(info.value, ValueError)


# --- legacy text completion -------------------------------------------------------------------------


def text_chunk(text: str, finish: str | None = None, logprobs=None, cfr: dict | None = None, index: int = 0) -> dict:
    choice = {"content_filter_results": {} if cfr is None else cfr, "finish_reason": finish, "index": index}
    choice |= {"logprobs": logprobs, "text": text}
    return {
        "choices": [choice],
        "created": CREATED,
        "id": "cmpl-9x8Y7z",
        "model": "gpt-35-turbo-instruct",
        "object": "text_completion",
    }


def test_text_completion():
    events = [
        {"choices": [], "created": 0, "id": "", "model": "", "object": "", "prompt_filter_results": PROMPT_FILTER},
        text_chunk("Once", cfr=SAFE),
        text_chunk(" upon", cfr=SAFE),
        text_chunk(" a time", cfr=SAFE),
        text_chunk("", finish="length"),
        {
            "choices": [],
            "created": CREATED,
            "id": "cmpl-9x8Y7z",
            "model": "gpt-35-turbo-instruct",
            "object": "text_completion",
            "usage": {"completion_tokens": 3, "prompt_tokens": 4, "total_tokens": 7},
        },
    ]
    expected = {
        "choices": [
            {
                "content_filter_results": SAFE,
                "finish_reason": "length",
                "index": 0,
                "logprobs": None,
                "text": "Once upon a time",
            }
        ],
        "created": CREATED,
        "id": "cmpl-9x8Y7z",
        "model": "gpt-35-turbo-instruct",
        "object": "text_completion",
        "prompt_filter_results": PROMPT_FILTER,
        "usage": {"completion_tokens": 3, "prompt_tokens": 4, "total_tokens": 7},
    }
    result = assemble_completion(events)
    assert_same(result, expected)
    parsed = Completion.model_validate(result)
    assert parsed.choices[0].text == "Once upon a time"
    assert assemble_completion(parse_sse(sse(events, "\r\n"))) == result


def test_text_completion_logprobs_and_n2():
    def lp(tokens: list[str], offset: int) -> dict:
        offsets = []
        for t in tokens:
            offsets.append(offset)
            offset += len(t)
        return {
            "text_offset": offsets,
            "token_logprobs": [-0.5] * len(tokens),
            "tokens": tokens,
            "top_logprobs": [{t: -0.5} for t in tokens],
        }

    events = [
        text_chunk("A", logprobs=lp(["A"], 10), index=1),
        text_chunk("X", logprobs=lp(["X"], 10), index=0),
        text_chunk("B", logprobs=lp(["B"], 11), index=1, finish="stop"),
        text_chunk("Y", logprobs=lp(["Y"], 11), index=0, finish="length"),
    ]
    result = assemble_completion(events)
    assert [c["text"] for c in result["choices"]] == ["XY", "AB"]
    assert result["choices"][1]["logprobs"] == lp(["A", "B"], 10)
    assert [c["finish_reason"] for c in result["choices"]] == ["length", "stop"]
    assert "usage" not in result
    assert "system_fingerprint" not in result
    Completion.model_validate(result)


def test_kind_inferred_from_choices_when_object_missing():
    events = [{"id": "x", "created": 1, "model": "m", "choices": [{"index": 0, "text": "hi", "finish_reason": "stop"}]}]
    assert assemble_completion(events)["object"] == "text_completion"


# --- parse_sse ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("sep", ["\n", "\r\n", "\r"])
def test_parse_sse_line_endings(sep):
    body = f'data: {{"a": 1}}{sep}{sep}data: {{"b": 2}}{sep}{sep}data: [DONE]{sep}{sep}'.encode()
    assert parse_sse(body) == [{"a": 1}, {"b": 2}]


def test_parse_sse_multiline_data_comments_fields_and_junk():
    body = (
        b": keep-alive comment\n\n"
        b"event: message\n"
        b"id: 7\n"
        b'data: {"a":\n'
        b"data:  1,\n"
        b'data: "s": "x"}\n'
        b"retry: 1000\n"
        b"\n"
        b"data: not json\n\n"
        b"data: [1, 2]\n\n"
        b"data:\n\n"
        b'data:{"nospace": true}\r\n\r\n'
        b"data: [DONE]\n\n"
    )
    assert parse_sse(body) == [{"a": 1, "s": "x"}, {"nospace": True}]


def test_parse_sse_mixed_endings_bom_and_unterminated_last_event():
    body = '\ufeffdata: {"a": 1}\r\n\ndata: {"b": "é"}\n\r\ndata: {"c": 3}'.encode()
    assert parse_sse(body) == [{"a": 1}, {"b": "é"}, {"c": 3}]


def test_parse_sse_keeps_unicode_line_separators_inside_json():
    # U+2028 is legal unescaped in JSON; it is not an SSE line break.
    payload = json.dumps({"content": "a\u2028b\x85c"}, ensure_ascii=False)
    assert parse_sse(f"data: {payload}\n\n".encode()) == [{"content": "a\u2028b\x85c"}]


def test_parse_sse_done_only_and_empty():
    assert parse_sse(b"data: [DONE]\n\n") == []
    assert parse_sse(b"") == []
    assert parse_sse(b"\n\n\r\n") == []


def test_parse_sse_invalid_utf8_does_not_raise():
    assert parse_sse(b'data: {"a": "\xff"}\n\ndata: {"b": 1}\n\n') == [{"a": "\ufffd"}, {"b": 1}]


def test_parse_sse_split_data_line_across_events_is_not_joined():
    # The blank line ends the first event: its lone fragment is not JSON and is skipped.
    body = b'data: {"a":\n\ndata: 1}\n\ndata: {"ok": 1}\n\n'
    assert parse_sse(body) == [{"ok": 1}]


@pytest.mark.parametrize("sep", ["\n", "\r\n", "\r"])
def test_parse_sse_and_the_usage_tap_read_the_same_events(sep):
    # One parser: what the async path folds is what the relay's usage tap saw, read by read.
    events = [prompt_filter_event(), chunk(role()), chunk(delta({"content": "Hel"})), chunk(delta({"content": "lo"}))]
    events += [chunk(delta({}, finish="stop")), usage_event()]
    raw = f": ping{sep}{sep}".encode() + sse(events, sep)
    tap = SseUsageTap(False)
    relayed = b"".join(tap.feed(raw[i : i + 7]) for i in range(0, len(raw), 7)) + tap.flush()
    assert relayed == raw
    result = assemble_completion(parse_sse(raw))
    assert tap.completion_text() == result["choices"][0]["message"]["content"] == "Hello"
    assert tap.usage == Usage.from_openai(result["usage"]) == Usage.from_openai(USAGE)
    assert tap.done


def test_audio_fragments_merge():
    events = [
        chunk(delta({"role": "assistant", "content": None, "audio": {"id": "audio_1", "transcript": "Hel"}})),
        chunk(delta({"audio": {"id": "audio_1", "data": "UklG", "transcript": "lo"}})),
        chunk(delta({"audio": {"data": "RiQ=", "expires_at": 1733416000}})),
        chunk(delta({}, finish="stop")),
    ]
    result = assemble_completion(events)
    assert result["choices"][0]["message"] == {
        "role": "assistant",
        "content": None,
        "audio": {"id": "audio_1", "transcript": "Hello", "data": "UklGRiQ=", "expires_at": 1733416000},
    }
    ChatCompletion.model_validate(result)


def test_truncated_stream_keeps_null_finish_reason():
    # No finish chunk: the result says so (finish_reason null) instead of inventing one.
    result = assemble_completion([prompt_filter_event(), chunk(role()), chunk(delta({"content": "Half"}))])
    assert result["choices"][0]["finish_reason"] is None
    assert result["choices"][0]["message"]["content"] == "Half"
