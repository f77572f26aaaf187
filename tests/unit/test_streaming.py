"""SSE usage tap and stream-request preparation."""

from __future__ import annotations

import json
import random

import pytest

from gateway.errors import stream_error_event
from gateway.streaming import SseUsageTap, prepare_stream_request
from gateway.usage import Usage

USAGE = {
    "completion_tokens": 7,
    "prompt_tokens": 19,
    "total_tokens": 26,
    "completion_tokens_details": {"reasoning_tokens": 2, "accepted_prediction_tokens": 0},
    "prompt_tokens_details": {"cached_tokens": 5, "audio_tokens": 0},
}
CFR = {
    "hate": {"filtered": False, "severity": "safe"},
    "self_harm": {"filtered": False, "severity": "safe"},
}


def _chunk(delta: dict, finish: str | None = None) -> dict:
    # Azure serializes chunk keys alphabetically: "usage" ends up last.
    return {
        "choices": [
            {
                "content_filter_results": {} if finish else CFR,
                "delta": delta,
                "finish_reason": finish,
                "index": 0,
                "logprobs": None,
            }
        ],
        "created": 1733000000,
        "id": "chatcmpl-AbC123",
        "model": "gpt-4o-2024-11-20",
        "object": "chat.completion.chunk",
        "system_fingerprint": "fp_b705f0c291",
    }


CONTENT = ["Hello", "!", " How", " can I help", ' \u00e9t\u00e9 \U0001f600 {"usage":null}?']


def azure_events(include_usage: bool) -> list[dict]:
    events = [
        {
            "choices": [],
            "created": 0,
            "id": "",
            "model": "",
            "object": "",
            "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": CFR}],
        },
        _chunk({"content": "", "refusal": None, "role": "assistant"}),
        *(_chunk({"content": c}) for c in CONTENT),
        _chunk({}, finish="stop"),
    ]
    if include_usage:
        for ev in events:
            ev["usage"] = None
        events.append(
            {
                "choices": [],
                "created": 1733000000,
                "id": "chatcmpl-AbC123",
                "model": "gpt-4o-2024-11-20",
                "object": "chat.completion.chunk",
                "system_fingerprint": "fp_b705f0c291",
                "usage": USAGE,
            }
        )
    return events


def build_stream(events: list[dict], *, eol: str = "\n", separators=(",", ":"), ensure_ascii: bool = False) -> bytes:
    out = []
    for ev in events:
        out.append("data: " + json.dumps(ev, separators=separators, ensure_ascii=ensure_ascii) + eol + eol)
    out.append("data: [DONE]" + eol + eol)
    return "".join(out).encode()


def relay(tap: SseUsageTap, stream: bytes, cuts: list[int]) -> bytes:
    out = []
    prev = 0
    for cut in [*cuts, len(stream)]:
        out.append(tap.feed(stream[prev:cut]))
        prev = cut
    out.append(tap.flush())
    return b"".join(out)


def relay_all_ways(stream: bytes, strip: bool) -> list[tuple[bytes, SseUsageTap]]:
    """Whole, byte-by-byte, and a few seeded random splits."""
    results = []
    tap = SseUsageTap(strip)
    results.append((relay(tap, stream, []), tap))
    tap = SseUsageTap(strip)
    results.append((relay(tap, stream, list(range(1, len(stream)))), tap))
    rng = random.Random(1234)
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(1, 40)))
        tap = SseUsageTap(strip)
        results.append((relay(tap, stream, cuts), tap))
    return results


EXPECTED_USAGE = Usage(prompt_tokens=19, completion_tokens=7, total_tokens=26, cached_tokens=5, reasoning_tokens=2)


@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"])
@pytest.mark.parametrize("separators", [(",", ":"), (", ", ": ")], ids=["compact", "spaced"])
def test_strip_injected_usage_gives_the_stream_without_include_usage(eol, separators):
    with_usage = build_stream(azure_events(True), eol=eol, separators=separators)
    without = build_stream(azure_events(False), eol=eol, separators=separators)
    assert with_usage.count(b"null}") > len(CONTENT)  # sanity: the variant really carries usage:null
    for out, tap in relay_all_ways(with_usage, strip=True):
        assert out == without
        assert tap.usage == EXPECTED_USAGE
        assert tap.done is True


@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"])
def test_client_asked_for_usage_stream_unchanged(eol):
    stream = build_stream(azure_events(True), eol=eol)
    for out, tap in relay_all_ways(stream, strip=False):
        assert out == stream
        assert tap.usage == EXPECTED_USAGE
        assert tap.done


@pytest.mark.parametrize("eol", ["\r\n", "\r"])
def test_every_split_point_of_a_short_stream(eol):
    # CRLF and CR: a read may end between the CR and the LF of the blank line closing a dropped event.
    events = azure_events(True)[1:3] + azure_events(True)[-1:]
    with_usage = build_stream(events, eol=eol)
    without = build_stream([{k: v for k, v in e.items() if k != "usage"} for e in events[:2]], eol=eol)
    for strip, expected in ((True, without), (False, with_usage)):
        n = len(with_usage)
        # every single split point, plus a grid of double split points
        splits = [(i, i) for i in range(n + 1)] + [(i, j) for i in range(0, n, 13) for j in range(i, n, 17)]
        for i, j in splits:
            tap = SseUsageTap(strip)
            out = tap.feed(with_usage[:i]) + tap.feed(with_usage[i:j]) + tap.feed(with_usage[j:])
            out += tap.flush()
            assert out == expected, (strip, i, j)
            assert tap.usage == EXPECTED_USAGE
            assert tap.done


def test_no_usage_then_completion_text_for_fallback():
    stream = build_stream(azure_events(False))
    for out, tap in relay_all_ways(stream, strip=True):
        assert out == stream
        assert tap.usage is None
        assert tap.done
        assert tap.completion_text() == "".join(CONTENT)


def test_completion_text_legacy_completions_and_tool_calls():
    events = [
        {"id": "cmpl-1", "object": "text_completion", "choices": [{"text": "Once", "index": 0}]},
        {"id": "cmpl-1", "object": "text_completion", "choices": [{"text": " upon", "index": 0}]},
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": '{"a":'}}]}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}}]},
    ]
    events.append({"choices": [{"delta": {"function_call": {"name": "g", "arguments": "{}"}}}]})
    tap = SseUsageTap(False)
    stream = build_stream(events)
    assert tap.feed(stream[:-5]) + tap.feed(stream[-5:]) + tap.flush() == stream
    assert tap.completion_text() == 'Once uponf{"a":1}g{}'


def test_partial_event_is_held_back_until_complete():
    tap = SseUsageTap(True)
    first = b'data: {"choices":[{"delta":{"content":"a"}}],"usage":null}\n\n'
    assert tap.feed(first[:10]) == b""
    assert tap.feed(first[10:-1]) == b""
    assert tap.feed(first[-1:] + b'data: {"cho') == b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n'
    # End of upstream in the middle of an event: the partial bytes go out unchanged.
    assert tap.flush() == b'data: {"cho'
    assert tap.flush() == b""
    assert not tap.done


def test_comments_event_and_id_lines_and_multiline_data_pass_through():
    stream = (
        b": keep-alive\n\n"
        b'event: message\nid: 1\ndata: {"choices":[{"delta":{"content":"x"}}]}\n\n'
        b"data: first line\ndata: second line\n\n"
        b"retry: 1000\n\n"
        b"data: [DONE]\n\n"
    )
    for strip in (True, False):
        for out, tap in relay_all_ways(stream, strip):
            assert out == stream
            assert tap.usage is None
            assert tap.done
            assert tap.completion_text() == "x"


def test_bom_opening_the_stream_is_kept_and_its_event_still_stripped():
    with_usage = b"\xef\xbb\xbf" + build_stream(azure_events(True))
    without = b"\xef\xbb\xbf" + build_stream(azure_events(False))
    for out, tap in relay_all_ways(with_usage, strip=True):
        assert out == without
        assert tap.usage == EXPECTED_USAGE
        assert tap.completion_text() == "".join(CONTENT)


def test_cr_line_ends_event_goes_out_when_its_blank_line_arrives():
    tap = SseUsageTap(True)
    assert tap.feed(b'data: {"choices":[{"delta":{"content":"a"}}],"usage":null}\r') == b""
    assert tap.feed(b"\r") == b'data: {"choices":[{"delta":{"content":"a"}}]}\r\r'
    assert tap.feed(b'data: {"choices":[],"usage":{"prompt_tokens":1,"total_tokens":1}}\r\r') == b""
    assert tap.feed(b"data: [DONE]\r\r") == b"data: [DONE]\r\r"
    assert tap.usage == Usage(prompt_tokens=1, total_tokens=1)
    assert tap.done and tap.completion_text() == "a"


def test_openai_shape_with_obfuscation_after_usage():
    env = '"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini"'
    with_usage = (
        f'data: {{{env},"choices":[{{"index":0,"delta":{{"content":"Hi"}},"finish_reason":null}}],'
        '"usage":null,"obfuscation":"AAatV4uAp"}\n\n'
        f'data: {{{env},"choices":[{{"index":0,"delta":{{}},"finish_reason":"stop"}}],'
        '"usage":null,"obfuscation":"x"}\n\n'
        f'data: {{{env},"choices":[],"usage":{{"prompt_tokens":3,"completion_tokens":1,'
        '"total_tokens":4},"obfuscation":"q"}\n\n'
        "data: [DONE]\n\n"
    ).encode()
    without = (
        f'data: {{{env},"choices":[{{"index":0,"delta":{{"content":"Hi"}},"finish_reason":null}}],'
        '"obfuscation":"AAatV4uAp"}\n\n'
        f'data: {{{env},"choices":[{{"index":0,"delta":{{}},"finish_reason":"stop"}}],'
        '"obfuscation":"x"}\n\n'
        "data: [DONE]\n\n"
    ).encode()
    for out, tap in relay_all_ways(with_usage, strip=True):
        assert out == without
        assert tap.usage == Usage(prompt_tokens=3, completion_tokens=1, total_tokens=4)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        # usage first
        ('{"usage":null,"choices":[{"delta":{"content":"a"}}]}', '{"choices":[{"delta":{"content":"a"}}]}'),
        ('{"usage": null, "choices": []}', '{"choices": []}'),
        ('{"usage":null}', "{}"),
        # usage in the middle, followed by a nested member: goes through the JSON-checked path
        (
            '{"choices":[{"delta":{"content":"a"}}],"usage":null,"x":{"y":1}}',
            '{"choices":[{"delta":{"content":"a"}}],"x":{"y":1}}',
        ),
        ('{"a":1 , "usage" : null , "b":[2]}', '{"a":1  , "b":[2]}'),
        # a nested null usage is not the backend's top-level member: untouched
        ('{"choices":[],"response":{"usage":null}}', '{"choices":[],"response":{"usage":null}}'),
        # content that merely mentions usage (escaped quotes) is untouched
        (
            '{"choices":[{"delta":{"content":"\\"usage\\":null}"}}],"usage":null}',
            '{"choices":[{"delta":{"content":"\\"usage\\":null}"}}]}',
        ),
    ],
)
def test_null_usage_removal_shapes(payload, expected):
    for eol in ("\n", "\r\n"):
        tap = SseUsageTap(True)
        event = f"data: {payload}{eol}{eol}".encode()
        out = tap.feed(event) + tap.flush()
        assert out == f"data: {expected}{eol}{eol}".encode()
        assert json.loads(out.decode().strip()[6:]) == json.loads(expected)


def test_odd_shape_is_reserialized_as_valid_json():
    # Two identical null members textually (one nested, one top-level, in the middle): JSON fallback.
    event = b'id: 7\ndata: {"a":{"usage":null},"usage":null,"b":{"c":2}}\n\n'
    tap = SseUsageTap(True)
    out = tap.feed(event)
    lines = out.split(b"\n")
    assert lines[0] == b"id: 7"
    assert json.loads(lines[1][6:]) == {"a": {"usage": None}, "b": {"c": 2}}
    assert out.endswith(b"\n\n")


def test_odd_shape_keeps_the_events_own_line_ends():
    event = b'id: 7\r\ndata: {"a":{"usage":null},"usage":null,"b":{"c":2}}\r\n\r'
    tap = SseUsageTap(True)
    out = tap.feed(event) + tap.feed(b"\n") + tap.flush()
    assert out == b'id: 7\r\ndata: {"a":{"usage":null},"b":{"c":2}}\r\n\r\n'


def test_null_usage_in_comment_line_untouched():
    event = b': {"x":1,"usage":null}\n\n'
    tap = SseUsageTap(True)
    assert tap.feed(event) == event


def test_null_usage_on_a_line_after_a_lone_cr_is_not_data():
    # A lone CR ends a line: `foo,"usage":null}` is a field of its own, not part of the JSON payload.
    event = b'data: {"a":1}\rfoo,"usage":null}\n\n'
    for split in (len(event), 5):
        tap = SseUsageTap(True)
        assert tap.feed(event[:split]) + tap.feed(event[split:]) == event


def test_usage_event_with_choices_is_kept_when_stripping():
    # Some backends put usage on the last content chunk: it is not the injected usage-only event.
    event = (
        b'data: {"choices":[{"delta":{"content":"z"}}],'
        b'"usage":{"prompt_tokens":1,"total_tokens":2,"completion_tokens":1}}\n\n'
    )
    tap = SseUsageTap(True)
    assert tap.feed(event) == event
    assert tap.usage == Usage(prompt_tokens=1, completion_tokens=1, total_tokens=2)


def test_responses_api_stream_usage_captured():
    stream = (
        b"event: response.created\n"
        b'data: {"type":"response.created","response":{"id":"resp_1","usage":null}}\n\n'
        b"event: response.completed\n"
        b'data: {"type":"response.completed","response":{"id":"resp_1","usage":{"input_tokens":11,'
        b'"input_tokens_details":{"cached_tokens":0},"output_tokens":4,'
        b'"output_tokens_details":{"reasoning_tokens":1},"total_tokens":15}}}\n\n'
    )
    for out, tap in relay_all_ways(stream, strip=False):
        assert out == stream
        assert tap.usage == Usage(
            prompt_tokens=11, completion_tokens=4, total_tokens=15, cached_tokens=0, reasoning_tokens=1
        )
        assert not tap.done


def test_flush_captures_usage_of_unterminated_last_event():
    tap = SseUsageTap(True)
    tail = b'data: {"choices":[],"usage":{"prompt_tokens":2,"completion_tokens":3,"total_tokens":5}}'
    assert tap.feed(tail) == b""
    assert tap.flush() == tail
    assert tap.usage == Usage(prompt_tokens=2, completion_tokens=3, total_tokens=5)


def test_non_json_and_garbage_usage_events_pass():
    stream = b'data: not json "usage": {oops\n\ndata: {"choices":[],"usage":"weird"}\n\n'
    for strip in (True, False):
        tap = SseUsageTap(strip)
        out = tap.feed(stream) + tap.flush()
        assert tap.usage is None
        if not strip:
            assert out == stream


# --- prepare_stream_request ---------------------------------------------------------------------


def test_prepare_injects_include_usage_and_keeps_other_options():
    parsed = {"messages": [{"role": "user", "content": "hi"}], "stream": True, "stream_options": {"x": 1}}
    body = json.dumps(parsed).encode()
    new_body, injected = prepare_stream_request(body, parsed)
    assert injected is True
    assert json.loads(new_body) == {**parsed, "stream_options": {"x": 1, "include_usage": True}}
    assert parsed["stream_options"] == {"x": 1}  # caller's dict not mutated


def test_prepare_injects_when_absent_or_false():
    for options in (None, {"include_usage": False}):
        parsed = {"stream": True, "messages": []}
        if options is not None:
            parsed["stream_options"] = options
        new_body, injected = prepare_stream_request(json.dumps(parsed).encode(), parsed)
        assert injected
        assert json.loads(new_body)["stream_options"] == {"include_usage": True}


def test_prepare_noop_when_client_asked_or_not_streaming():
    parsed = {"stream": True, "stream_options": {"include_usage": True}, "messages": []}
    body = b'{"stream": true, "stream_options": {"include_usage": true}, "messages": []}'
    out, injected = prepare_stream_request(body, parsed)
    assert out is body and injected is False
    for parsed in ({"messages": []}, {"stream": False}, {"stream": "true"}, {"stream": True, "stream_options": 5}):
        body = json.dumps(parsed).encode()
        out, injected = prepare_stream_request(body, parsed)
        assert out is body and injected is False


# --- Responses API streams: usage from the final response.* event, the id from response.created -------------------


def _responses_stream(final: str, usage: dict | None) -> list[bytes]:
    response = {"id": "resp_abc", "object": "response", "status": "in_progress", "usage": None}
    events = [
        {"type": "response.created", "sequence_number": 0, "response": response},
        {"type": "response.output_text.delta", "sequence_number": 1, "delta": "Hello "},
        {"type": "response.output_text.delta", "sequence_number": 2, "delta": "there"},
        {"type": final, "sequence_number": 3, "response": {**response, "status": final[9:], "usage": usage}},
    ]
    return [f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events]


RESPONSES_USAGE = {
    "input_tokens": 12,
    "input_tokens_details": {"cached_tokens": 4},
    "output_tokens": 7,
    "output_tokens_details": {"reasoning_tokens": 3},
    "total_tokens": 19,
}


@pytest.mark.parametrize("final", ["response.completed", "response.incomplete", "response.failed"])
def test_responses_usage_comes_from_the_final_event(final):
    tap = SseUsageTap(strip_injected_usage=False, responses=True)
    chunks = _responses_stream(final, RESPONSES_USAGE)
    out = [tap.feed(chunk) for chunk in chunks]
    assert out == chunks  # relayed untouched: nothing is injected into a Responses stream
    assert tap.response_id == "resp_abc"
    assert tap.usage == Usage(12, 7, 19, cached_tokens=4, reasoning_tokens=3)
    assert tap.done  # the record is written before the last event is relayed


def test_responses_stream_read_one_byte_at_a_time():
    tap = SseUsageTap(strip_injected_usage=False, responses=True)
    raw = b"".join(_responses_stream("response.completed", RESPONSES_USAGE))
    relayed = b"".join(tap.feed(raw[i : i + 1]) for i in range(len(raw))) + tap.flush()
    assert relayed == raw and tap.response_id == "resp_abc" and tap.usage.total_tokens == 19


def test_a_responses_stream_without_usage_falls_back_to_its_text():
    tap = SseUsageTap(strip_injected_usage=False, responses=True)
    for chunk in _responses_stream("response.failed", None):
        tap.feed(chunk)
    assert tap.usage is None and not tap.done and tap.completion_text() == "Hello there"


def test_a_chat_tap_does_not_look_for_response_ids():
    tap = SseUsageTap(strip_injected_usage=False)
    for chunk in _responses_stream("response.completed", RESPONSES_USAGE):
        tap.feed(chunk)
    assert tap.response_id is None and not tap.done


def test_an_error_event_is_relayed_unchanged_and_marks_the_stream_failed():
    error = {"error": {"code": "server_error", "message": "The server had an error", "type": "server_error"}}
    stream = build_stream([*azure_events(False)[:3], error]).removesuffix(b"data: [DONE]\n\n")  # no [DONE]
    for out, tap in relay_all_ways(stream, strip=True):
        assert out == stream
        assert tap.error == error and not tap.done


def test_content_that_talks_about_errors_is_not_an_error_event():
    events = azure_events(False)
    events[1]["choices"][0]["delta"]["content"] = 'the "error" key, {"error": 1}'
    stream = build_stream(events)
    for _, tap in relay_all_ways(stream, strip=True):
        assert tap.error is None and tap.done


@pytest.mark.parametrize("event", [{"type": "error", "code": "server_error", "message": "x"},
                                   {"type": "response.failed", "response": {"error": {"code": "server_error"}}}])
def test_responses_error_events_mark_the_stream_failed(event):
    tap = SseUsageTap(False, responses=True)
    tap.feed(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
    assert tap.error == event


@pytest.mark.parametrize("responses", [False, True])
def test_the_event_that_ends_a_broken_stream_is_an_error_event_to_a_reader(responses):
    event = stream_error_event("Backend weu broke off its answer; it is incomplete.", responses=responses)
    tap = SseUsageTap(False, responses=responses)
    assert tap.feed(event) == event
    assert tap.error is not None
    inner = tap.error if responses else tap.error["error"]
    assert inner["code"] == "bad_gateway" and "weu" in inner["message"]
