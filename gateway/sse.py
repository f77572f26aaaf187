"""Server-sent events framing (pure, bytes in, bytes out): the one SSE parser of the gateway.

Both the usage tap (``gateway.streaming``, on every network read of a streamed answer) and the stream
folding of the async path (``gateway.assemble.parse_sse``) cut events here, so they agree on what an event
is: lines end with CRLF, LF or CR; an event ends at a blank line; ``data:`` lines of one event are joined
with LF and lose one leading space; ``:`` lines are comments; a UTF-8 BOM may open the stream; a last event
without its blank line is still an event once the stream has ended.

Framing never changes a byte: the tap forwards what it is given, so ``SseFramer`` only decides where the
complete events end, and ``split_events`` cuts a run of complete events so that joining the parts gives the
run back. An extra blank line (or the LF of a CRLF that arrived in the next read) is a part with no data.

Searches use ``bytes.find``, not ``in``: ``in`` first tries its operand as an int and pays for the TypeError
(0.15-0.4 µs more per search, measured), and this code runs on every read of every streamed answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

__all__ = ["SseFramer", "event_data", "is_error_event", "iter_payloads", "json_object", "split_events"]

BOM = b"\xef\xbb\xbf"
# A blank line: one line end, then another. The first is atomic so that a CRLF is never read as CR + LF.
_BLANK_LINE = re.compile(rb"(?>\r\n|\n|\r)(?:\r\n|\n|\r)")


def _after_pair(buf: bytes, pair: bytes) -> int:
    """End of the last blank line that ``pair`` (``\\n\\r`` or ``\\r\\r``) starts, with its LF; 0 if none."""
    i = buf.rfind(pair)
    if i < 0:
        return 0
    end = i + 2
    return end + 1 if buf.startswith(b"\n", end) else end


class SseFramer:
    """Incremental framing: ``feed`` returns the complete events so far and keeps the unfinished tail."""

    __slots__ = ("_tail",)

    def __init__(self) -> None:
        self._tail = b""

    def feed(self, data: bytes) -> bytes:
        """The run of complete events that ``data`` finishes (often b""); the rest waits for the next read."""
        if self._tail:
            data = self._tail + data
        # The end of the last blank line. Two line ends in a row (other than the two bytes of one CRLF) always
        # make one, so the last `\n\n`, `\n\r` or `\r\r` marks it. A CR at the very end may still get its LF
        # in the next read: that LF then opens the next run as a part with no data (see split_events).
        cut = data.rfind(b"\n\n") + 2
        if data.find(b"\r") >= 0:
            cut = max(cut, _after_pair(data, b"\n\r"), _after_pair(data, b"\r\r"))
        if cut < 2:
            self._tail = data
            return b""
        if cut == len(data):
            self._tail = b""
            return data
        self._tail = data[cut:]
        return data[:cut]

    @property
    def pending(self) -> bool:
        """True while part of an event waits for the next read."""
        return bool(self._tail)

    def flush(self) -> bytes:
        """End of the stream: the unterminated last event (b"" if none), which still counts as an event."""
        rest = self._tail
        self._tail = b""
        return rest


def split_events(run: bytes) -> list[bytes]:
    """The events of a run of complete events, each with its blank line; ``b"".join(parts) == run``.

    Line ends that open the run are a part of their own: the LF of a CRLF cut by the previous read belongs
    to the event before, and must not go away with the next event if the tap drops that one.
    """
    events = []
    if run.startswith((b"\n", b"\r")):
        body = run.lstrip(b"\r\n")
        events.append(run[: len(run) - len(body)])
        run = body
    if run.find(b"\r") < 0:
        parts = run.split(b"\n\n")
        last = parts.pop()
        events += [part + b"\n\n" for part in parts]
        if last:
            events.append(last)  # an unterminated last event (flush)
        return events
    pos = 0
    for m in _BLANK_LINE.finditer(run):
        events.append(run[pos : m.end()])
        pos = m.end()
    if pos < len(run):
        events.append(run[pos:])
    return events


def event_data(event: bytes) -> bytes | None:
    """The event's data (``data:`` lines joined with LF, one leading space removed), None if it has none."""
    if event.startswith(b"data:") and event.count(b"\n") <= 2:
        # Common case: a single data line followed by the blank line.
        line = event[5:].rstrip(b"\r\n")
        if line.find(b"\n") < 0 and line.find(b"\r") < 0:
            return line[1:] if line.startswith(b" ") else line
    if event.startswith(BOM):
        event = event[3:]
    parts = []
    for line in event.splitlines():  # bytes.splitlines splits at CR, LF and CRLF only
        if line.startswith(b"data:"):
            value = line[5:]
            parts.append(value[1:] if value.startswith(b" ") else value)
        elif line == b"data":  # a field name alone: an empty value
            parts.append(b"")
    return b"\n".join(parts) if parts else None


def iter_payloads(raw: bytes) -> Iterator[bytes]:
    """The data of every event of a whole SSE body, in order, the unterminated last one included."""
    framer = SseFramer()
    for run in (framer.feed(raw), framer.flush()):
        for event in split_events(run) if run else ():
            payload = event_data(event)
            if payload is not None:
                yield payload


def json_object(payload: bytes | None) -> dict[str, Any] | None:
    """The JSON object an event's data holds; None for ``[DONE]``, other JSON and non-JSON. Never raises.

    Invalid UTF-8 is replaced rather than fatal: one bad byte in a content delta must not lose the event.
    """
    if not payload or payload.lstrip()[:1] != b"{":
        return None
    try:
        obj = json.loads(payload.decode("utf-8", "replace"))
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def is_error_event(obj: dict[str, Any]) -> bool:
    """The backend's error event: `{"error": ...}` without choices (chat, completions), or a Responses `error` or
    `response.failed` event. After it the answer is a failure, whatever status came first."""
    return ("error" in obj and not obj.get("choices")) or obj.get("type") in ("error", "response.failed")
