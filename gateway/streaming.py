"""SSE relay helpers (pure, no I/O): usage injection for streamed requests and the usage tap.

Hot path: ``SseUsageTap.feed`` runs on every network read of a streamed answer. Event framing is
``gateway.sse`` (the same parser the async path folds streams with); the tap works on bytes
(``find``/``rfind``/slices), forwards complete events untouched, and only JSON-parses an event whose
``"usage"`` member is not null (in practice: the single usage event at the end of a stream).
"""

from __future__ import annotations

import json
import re
from typing import Any

from gateway.sse import BOM, SseFramer, event_data, is_error_event, iter_payloads, json_object, split_events
from gateway.tokens import call_texts
from gateway.usage import Usage, response_model

__all__ = ["SseUsageTap", "prepare_stream_request"]


def prepare_stream_request(body: bytes, parsed: dict[str, Any]) -> tuple[bytes, bool]:
    """Makes a streamed request ask the backend for usage.

    For a streamed request (``parsed["stream"] is True``) whose client did not set
    ``stream_options.include_usage`` to true, returns the re-serialized body with
    ``stream_options.include_usage = true`` (other stream_options keys kept) and True ("we injected
    it", so the relay must strip the usage event). Otherwise returns ``(body, False)`` untouched.
    ``parsed`` is not mutated. A ``stream_options`` that is not an object is left alone so the client
    gets the backend's own validation error.
    """
    if not isinstance(parsed, dict) or parsed.get("stream") is not True:
        return body, False
    options = parsed.get("stream_options")
    if options is None:
        options = {}
    elif not isinstance(options, dict):
        return body, False
    if options.get("include_usage") is True:
        return body, False
    new = dict(parsed)
    new["stream_options"] = {**options, "include_usage": True}
    return json.dumps(new, separators=(",", ":")).encode(), True


# --- SSE usage tap -----------------------------------------------------------------------------

_USAGE = b'"usage"'
_NULL_USAGE_LAST = b',"usage":null}\n\n'
# `"usage"` followed by its colon, then optionally `null` (group 1). Matched at a known position.
_USAGE_MEMBER = re.compile(rb'"usage"[ \t\r\n]*:[ \t\r\n]*(null)?')
_USAGE_NULL = re.compile(rb'"usage"\s*:\s*null')
# What may follow a `,"usage":null` member for it to be provably top-level: only simple scalar
# members (no nesting, no escapes — e.g. OpenAI's `,"obfuscation":"x1Y2"`), then the closing brace
# that ends the data line, then the blank line that ends the event.
_TOP_LEVEL_TAIL = re.compile(
    rb'(?:[ \t]*,[ \t]*"[^"\\\r\n]*"[ \t]*:[ \t]*(?:"[^"\\\r\n]*"|null|true|false|-?[0-9][0-9.eE+-]*))*'
    rb"[ \t]*\}[ \t]*\r?\n\r?\n\Z"
)
_COMMA = re.compile(rb"[ \t]*,[ \t]*")
_CLOSE = re.compile(rb"[ \t]*\}")
_ANY_COMMA = re.compile(rb"\s*,\s*")


def _single_data_lines(block: bytes) -> bool:
    """True when every event of a block of complete events is a single `data:` line (LF line ends).

    Every LF must then belong to a blank line followed by `data:`, or to the final blank line.
    """
    return (
        block.startswith(b"data:")
        and block.endswith(b"\n\n")
        and block.count(b"\n") == 2 * block.count(b"\n\ndata:") + 2
        and block.find(b"\r") < 0  # a lone CR is a line end too
    )


def _line_start(event: bytes, pos: int) -> int:
    return max(event.rfind(b"\n", 0, pos), event.rfind(b"\r", 0, pos)) + 1


# Responses API streams end with one of these (no `[DONE]`); each carries the response with its usage.
_RESPONSE_ENDS = frozenset({"response.completed", "response.incomplete", "response.failed"})
_RESPONSE_CREATED = b'"response.created"'
_ERROR = b'"error"'  # escaped inside a JSON string (\"error\"), so content never matches it


class SseUsageTap:
    """Watches an SSE byte stream as it is relayed: captures usage, strips the usage-only event the gateway injected.

    With `responses`, it also reads the response id from the `response.created` event (for affinity) and counts
    a stream as done at its final `response.*` event.
    """

    __slots__ = ("_framer", "_raw", "_responses", "_skip_lf", "_strip", "done", "error", "response_id", "usage")

    def __init__(self, strip_injected_usage: bool, *, responses: bool = False) -> None:
        self._strip = strip_injected_usage
        self._responses = responses
        self._framer = SseFramer()
        self._skip_lf = False  # the LF of a CRLF whose event was dropped may open the next read
        self._raw: list[bytes] = []  # complete upstream blocks, parsed lazily by completion_text()
        self.usage: Usage | None = None
        self.done = False
        self.response_id: str | None = None
        self.error: dict[str, Any] | None = None  # the backend's error event: the answer failed after its 200

    # -- hot path --

    def feed(self, data: bytes) -> bytes:
        """Returns the bytes to forward now: every complete event (modified only as documented)."""
        if self._skip_lf and data:
            self._skip_lf = False
            if data.startswith(b"\n"):
                data = data[1:]
        data = self._framer.feed(data)
        if not data:
            return data
        self._raw.append(data)
        # `find` rather than `in`: `in` first tries its operand as an int and pays for the TypeError.
        if data.find(b"[DONE]") >= 0:
            self._check_done(data)
        if self.error is None and data.find(_ERROR) >= 0:
            self._check_error(data)
        if self._responses and self.response_id is None and data.find(_RESPONSE_CREATED) >= 0:
            self._read_response_id(data)
        if data.find(_USAGE) < 0:
            return data
        if self._strip:
            if _single_data_lines(data):
                # Fast path: in events that are each one `data:` line, `,"usage":null}` right before the blank
                # line is a top-level member (a JSON string holds no raw newline, so that `}` closes the
                # payload): removing every such member at once is what the per-event path does to each.
                data = data.replace(_NULL_USAGE_LAST, b"}\n\n")
                if data.find(_USAGE) < 0:
                    return data
        elif not self._usage_state(data)[0]:
            return data  # only `"usage":null` members: nothing to capture, nothing to change
        return self._process_block(data)

    def flush(self) -> bytes:
        """End of upstream: returns the held-back partial event unchanged (usage in it is still captured)."""
        rest = self._framer.flush()
        if rest:
            self._raw.append(rest)
            if b"[DONE]" in rest:
                self._check_done(rest)
            if self.error is None and _ERROR in rest:
                self._check_error(rest)
            if _USAGE in rest and self._usage_state(rest)[0]:
                self._capture(json_object(event_data(rest)))
        return rest

    def response_model(self) -> str | None:
        """The `model` the backend named in its last event that names one (gen_ai.response.model)."""
        for block in reversed(self._raw):
            if model := response_model(block):
                return model
        return None

    # -- per-event work (only for blocks that mention "usage") --

    def _process_block(self, block: bytes) -> bytes:
        out = []
        changed = dropped_last = False
        for event in split_events(block):
            dropped_last = False
            if event.find(_USAGE) >= 0:
                new = self._process_event(event)
                if new is not event:
                    changed = True
                    if new is None:
                        dropped_last = True
                        continue
                    event = new
            out.append(event)
        # The read may have ended inside the CRLF that closes a dropped last event: its LF goes too.
        self._skip_lf = dropped_last and block.endswith(b"\r") and not self._framer.pending
        return b"".join(out) if changed else block

    @staticmethod
    def _usage_state(event: bytes) -> tuple[bool, int, int]:
        """(has a non-null "usage" member, start, end) — start/end of the last null member or -1."""
        has_value = False
        null_start = null_end = -1
        i = event.find(_USAGE)
        while i >= 0:
            m = _USAGE_MEMBER.match(event, i)
            if m is not None:
                if m.group(1) is None:
                    has_value = True
                else:
                    null_start, null_end = i, m.end()
            i = event.find(_USAGE, i + 7)
        return has_value, null_start, null_end

    def _process_event(self, event: bytes) -> bytes | None:
        """The event to forward (the same object if unchanged), or None to drop it."""
        has_value, null_start, null_end = self._usage_state(event)
        if has_value:
            obj = json_object(event_data(event))
            top = self._capture(obj)
            if self._strip and top and obj is not None and obj.get("choices") == []:
                return None  # the usage-only event the gateway injected
            return event
        if self._strip and null_start >= 0:
            return _remove_null_usage(event, null_start, null_end)
        return event

    def _capture(self, obj: Any) -> bool:
        """Records usage from a parsed event; True when the event has a non-null top-level usage."""
        if not isinstance(obj, dict):
            return False
        raw = obj.get("usage")
        top = raw is not None
        if not top:
            # Responses API stream: {"type":"response.completed","response":{...,"usage":{...}}}
            response = obj.get("response")
            if isinstance(response, dict):
                raw = response.get("usage")
        usage = Usage.from_openai(raw)
        if usage is not None:
            self.usage = usage
            if self._responses and obj.get("type") in _RESPONSE_ENDS:
                self.done = True  # the last event: the record can be written before it is relayed
        return top

    def _read_response_id(self, block: bytes) -> None:
        for event in split_events(block):
            obj = json_object(event_data(event)) if event.find(_RESPONSE_CREATED) >= 0 else None
            response = obj.get("response") if obj is not None and obj.get("type") == "response.created" else None
            if isinstance(response, dict) and isinstance(response.get("id"), str):
                self.response_id = response["id"]
                return

    def _check_error(self, block: bytes) -> None:
        """Keeps the first error event of the block (`sse.is_error_event`)."""
        for event in split_events(block):
            obj = json_object(event_data(event)) if event.find(_ERROR) >= 0 else None
            if obj is not None and is_error_event(obj):
                self.error = obj
                return

    def _check_done(self, block: bytes) -> None:
        for line in block.splitlines():
            if line == b"data: [DONE]" or line == b"data:[DONE]":
                self.done = True
                return

    # -- fallback estimation --

    def completion_text(self) -> str:
        """Concatenated generated text over all events seen (chat ``delta.content`` and tool-call
        arguments, completions ``text``, Responses ``output_text`` deltas), for the tiktoken estimate when no
        usage was reported."""
        pieces: list[str] = []
        for payload in iter_payloads(b"".join(self._raw)):
            if self._responses and b'"response.output_text.delta"' in payload:
                event = json_object(payload)
                delta = event.get("delta") if event is not None else None
                pieces.append(delta if isinstance(delta, str) else "")
                continue
            if b'"choices"' not in payload:
                continue
            obj = json_object(payload)
            choices = obj.get("choices") if obj is not None else None
            if not isinstance(choices, list):
                continue
            for choice in choices:
                if isinstance(choice, dict):
                    _collect_choice_text(choice, pieces)
        return "".join(pieces)


def _collect_choice_text(choice: dict[str, Any], pieces: list[str]) -> None:
    text = choice.get("text")
    if isinstance(text, str):
        pieces.append(text)
    delta = choice.get("delta")
    if isinstance(delta, dict):
        content = delta.get("content")
        if isinstance(content, str):
            pieces.append(content)
        pieces.extend(call_texts(delta))


# --- removing the `"usage":null` member added because of the injected include_usage -------------


def _remove_null_usage(event: bytes, start: int, end: int) -> bytes:
    """Removes the top-level ``"usage":null`` member (event[start:end]) with its separating comma.

    Fast paths prove the member is top-level from the bytes alone (OpenAI/Azure put it last, or
    only followed by simple scalars such as ``"obfuscation"``); anything else goes through JSON.
    """
    line_start = _line_start(event, start)
    if event.startswith(b"data:", line_start):
        k = start - 1
        while k > line_start and event[k] in b" \t":
            k -= 1
        sep = event[k]
        if sep == 0x2C:  # ','
            tail = event[end:]
            if tail == b"}\n\n" or tail == b"}\r\n\r\n" or _TOP_LEVEL_TAIL.match(event, end) is not None:
                return event[:k] + event[end:]
        elif sep == 0x7B and line_start == 0:  # '{' opening the payload of the event's first line
            prefix = event[5:k]
            if prefix in (b"", b" "):
                m = _COMMA.match(event, end)
                if m is not None:
                    return event[:start] + event[m.end() :]
                if _CLOSE.match(event, end) is not None:
                    return event[:start] + event[end:]
    return _remove_null_usage_slow(event)


def _remove_null_usage_slow(event: bytes) -> bytes:
    obj = json_object(event_data(event))
    if obj is None or "usage" not in obj or obj["usage"] is not None:
        return event  # the null "usage" is nested (or the event is not JSON): not ours to touch
    del obj["usage"]
    matches = list(_USAGE_NULL.finditer(event))
    if len(matches) == 1:
        # Exactly one `"usage":null` in the event and it is the top-level member: delete it with
        # one of its commas, then check the result really is the same object without "usage".
        s, e = matches[0].span()
        k = s - 1
        while k >= 0 and event[k] in b" \t\r\n":
            k -= 1
        if k >= 0 and event[k] == 0x2C:
            candidate = event[:k] + event[e:]
        else:
            m = _ANY_COMMA.match(event, e)
            candidate = event[:s] + event[m.end() :] if m else event[:s] + event[e:]
        if json_object(event_data(candidate)) == obj:
            return candidate
    # Odd shape: re-serialize this one event (data lines replaced by one, other lines, BOM and blank line kept).
    prefix = BOM if event.startswith(BOM) else b""
    body = event[len(prefix) :].rstrip(b"\r\n")
    terminator = event[len(prefix) + len(body) :]
    eol = b"\r\n" if terminator.startswith(b"\r\n") else terminator[:1] or b"\n"
    data_line = b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
    lines = []
    for line in body.splitlines():
        if not line:
            continue
        if line.startswith(b"data:"):
            if data_line:
                lines.append(data_line)
                data_line = b""
        else:
            lines.append(line)
    return prefix + eol.join(lines) + terminator
