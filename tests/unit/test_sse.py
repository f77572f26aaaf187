"""SSE framing shared by the usage tap and parse_sse: incremental cuts, event splitting, data payloads."""

from __future__ import annotations

import random

import pytest

from gateway.sse import SseFramer, event_data, iter_payloads, json_object, split_events

# One stream that uses every framing feature: comments, other fields, multi-line data, a data line without
# a space or without a colon, an extra blank line, [DONE] and a last event without its blank line.
EVENTS = [
    ": keep-alive",
    'event: message\nid: 1\ndata: {"a": 1}',
    'data: {"b":\ndata:  2}',
    "retry: 1000",
    "data",
    'data:{"c": "é"}',
    "\ndata: [DONE]",
]
PAYLOADS = [b'{"a": 1}', b'{"b":\n 2}', b"", b'{"c": "\xc3\xa9"}', b"[DONE]", b'{"last": true}']


def stream(eol: str) -> bytes:
    body = "".join(event.replace("\n", eol) + eol + eol for event in EVENTS) + 'data: {"last": true}'
    return body.encode()


def frame(framer: SseFramer, data: bytes, cuts: list[int]) -> list[bytes]:
    runs, prev = [], 0
    for cut in [*cuts, len(data)]:
        runs.append(framer.feed(data[prev:cut]))
        prev = cut
    runs.append(framer.flush())
    return runs


@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"])
def test_every_split_gives_the_same_bytes_and_payloads(eol):
    data = stream(eol)
    rng = random.Random(7)
    splits = [[], list(range(1, len(data)))] + [
        sorted(rng.sample(range(1, len(data)), rng.randint(1, 30))) for _ in range(30)
    ]
    for cuts in splits:
        runs = frame(SseFramer(), data, cuts)
        assert b"".join(runs) == data  # framing never changes a byte
        events = [event for run in runs if run for event in split_events(run)]
        assert b"".join(events) == data
        assert [p for e in events if (p := event_data(e)) is not None] == PAYLOADS, cuts
    assert list(iter_payloads(data)) == PAYLOADS


def test_complete_events_go_out_at_once_and_the_tail_waits():
    framer = SseFramer()
    assert framer.feed(b"data: 1\n\ndata: 2") == b"data: 1\n\n"
    assert framer.pending
    assert framer.feed(b"\n") == b""
    assert framer.feed(b"\n") == b"data: 2\n\n"
    assert not framer.pending
    # CR line ends: an event is complete at its second CR, not at the end of the stream.
    assert framer.feed(b"data: 3\r\rdata: 4\r") == b"data: 3\r\r"
    assert framer.feed(b"\r") == b"data: 4\r\r"
    assert framer.flush() == b""


@pytest.mark.parametrize(
    ("buf", "end"),
    [
        (b"", 0),
        (b"\n", 0),
        (b"data: x", 0),
        (b"data: x\n", 0),
        (b"data: x\r\n", 0),
        (b"data: x\n\n", 9),
        (b"data: x\r\n\r\n", 11),
        (b"data: x\r\n\r", 10),  # its LF may still come: it opens the next run
        (b"data: x\r\r", 9),
        (b"data: x\r\r\ndata: y", 10),
        (b"data: x\n\rdata: y", 9),
        (b"data: x\r\n\ndata: y\n", 10),
        (b"a\n\nb\r\rc", 6),
    ],
)
def test_a_run_ends_after_the_last_blank_line(buf, end):
    framer = SseFramer()
    assert framer.feed(buf) == buf[:end]
    assert framer.flush() == buf[end:]


def test_split_events_keeps_every_byte_and_isolates_leading_line_ends():
    assert split_events(b"a\n\nb\n\n") == [b"a\n\n", b"b\n\n"]
    assert split_events(b"a\r\n\r\nb\r\rc\n\r\n") == [b"a\r\n\r\n", b"b\r\r", b"c\n\r\n"]
    # The LF of a CRLF cut by the previous read is a part of its own, with no data.
    assert split_events(b"\ndata: x\n\n") == [b"\n", b"data: x\n\n"]
    assert split_events(b"\r\n\r\ndata: x\r\n\r\n") == [b"\r\n\r\n", b"data: x\r\n\r\n"]
    assert event_data(b"\n") is None
    # An unterminated last event (what flush returns) is still a part.
    assert split_events(b"a\n\nb") == [b"a\n\n", b"b"]


@pytest.mark.parametrize(
    ("event", "data"),
    [
        (b"data: x\n\n", b"x"),
        (b"data:x\r\n\r\n", b"x"),
        (b"data:  x\n\n", b" x"),  # only one space is removed
        (b"data: a\rdata: b\r\r", b"a\nb"),
        (b"id: 1\ndata: a\n: note\ndata: b\n\n", b"a\nb"),
        (b"data\n\n", b""),
        (b"data: \n\n", b""),
        (b"\xef\xbb\xbfdata: x\n\n", b"x"),  # a BOM opening the stream
        (b": data: x\n\n", None),
        (b"event: ping\n\n", None),
        (b"datum: x\n\n", None),
    ],
)
def test_event_data(event, data):
    assert event_data(event) == data


def test_json_object():
    assert json_object(b'{"a": 1}') == {"a": 1}
    assert json_object(b' \t{"a": 1}') == {"a": 1}
    assert json_object(b'{"a": "\xff"}') == {"a": "\ufffd"}  # invalid UTF-8 replaced, not fatal
    for payload in (None, b"", b"[DONE]", b"[1, 2]", b"12", b'"s"', b"{oops", b"{" * 100000):
        assert json_object(payload) is None
