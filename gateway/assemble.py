"""Folds a streamed (SSE) Azure OpenAI answer into the object the non-streamed call returns (pure, no I/O).

Used when a ``stream: true`` request runs asynchronously: nobody is connected to receive the events, so the
gateway reads the whole stream itself and stores the result in the non-streamed shape.

Azure specifics handled here:

* the first event carries ``prompt_filter_results`` with ``choices: []`` and an empty ``id``/``model``/``object``
  and ``created: 0`` — hence "first non-empty" for those fields;
* per-choice ``content_filter_results`` (last non-empty kept), and the asynchronous-filter annotation events
  (``content_filter_offsets``, no ``delta``), whose offsets are stream-only and dropped;
* the usage event (``stream_options.include_usage``) has ``choices: []``.

Key presence follows the stream: a key the stream never carried (``refusal`` on an old api-version,
``system_fingerprint``, ``usage``, ``content_filter_results``) is left out rather than invented.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gateway.sse import is_error_event, iter_payloads, json_object

__all__ = ["AssembleError", "assemble_completion", "parse_sse"]

CHAT_CHUNK = "chat.completion.chunk"
TEXT_COMPLETION = "text_completion"

# Top-level chunk members handled explicitly; every other member is carried (last non-empty value wins).
_TOP_KNOWN = frozenset({"id", "object", "created", "model", "system_fingerprint", "choices", "usage"})
# Stream-only members that have no place in the non-streamed object.
_TOP_STREAM_ONLY = frozenset({"obfuscation"})
_CHOICE_KNOWN = frozenset({"index", "delta", "text", "finish_reason", "logprobs", "content_filter_results"})
_CHOICE_STREAM_ONLY = frozenset({"content_filter_offsets"})
_DELTA_KNOWN = frozenset({"role", "content", "refusal", "tool_calls", "function_call", "audio"})
# Inside merged fragments (tool calls, function_call, audio): identifiers are set once, never concatenated.
_SET_ONCE = frozenset({"id", "type"})


class AssembleError(ValueError):
    """The stream cannot be folded into a completion: it was empty or carried an error event.

    ``error`` is the error event's payload (e.g. ``{"error": {"code": ..., "message": ...}}``) or None.
    """

    def __init__(self, message: str, error: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.error = error


# --- SSE parsing --------------------------------------------------------------------------------


def parse_sse(raw: bytes) -> list[dict[str, Any]]:
    """The JSON payloads of the ``data:`` events of a complete SSE body, in order.

    Framing is ``gateway.sse`` (the usage tap's parser): lines end with CRLF, LF or CR; an event ends at a blank
    line; several ``data:`` lines of one event are joined with LF; one space after the colon is removed; lines
    starting with ``:`` are comments; other fields (``event:``, ``id:``, ``retry:``) are ignored; a leading BOM
    is skipped. A last event without its terminating blank line is still taken. Skips ``[DONE]``, payloads that
    are not JSON and JSON that is not an object. Invalid UTF-8 is replaced, not fatal.
    """
    return [obj for payload in iter_payloads(raw) if (obj := json_object(payload)) is not None]


# --- assembly ------------------------------------------------------------------------------------


def assemble_completion(events: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Folds parsed SSE chunk objects (chat.completion.chunk or text_completion chunks) into the one object
    the non-streamed call returns (``chat.completion`` or ``text_completion``).

    Raises ``AssembleError`` when there is no chunk at all or when the stream carried an error event.
    """
    top: dict[str, Any] = {}
    extras: dict[str, Any] = {}
    choices: dict[int, _Choice] = {}
    usage: Any = None
    kind: str | None = None
    seen = False
    for event in events:
        if not isinstance(event, dict):
            continue
        if is_error_event(event):
            raise AssembleError("the stream carried an error event", event)
        seen = True
        obj = event.get("object")
        if kind is None and obj in (CHAT_CHUNK, TEXT_COMPLETION):
            kind = obj
        for key in ("id", "model", "created", "system_fingerprint"):
            if key in event:
                if not top.get(key) and event[key]:
                    top[key] = event[key]
                else:
                    top.setdefault(key, None)
        if event.get("usage") is not None:
            usage = event["usage"]
        for key, value in event.items():
            if key not in _TOP_KNOWN and key not in _TOP_STREAM_ONLY:
                _keep_last_non_empty(extras, key, value)
        for raw_choice in event.get("choices") or ():
            if not isinstance(raw_choice, dict):
                continue
            index = raw_choice.get("index", 0)
            state = choices.get(index)
            if state is None:
                state = choices[index] = _Choice(index)
            state.feed(raw_choice)
            if kind is None:
                if "delta" in raw_choice:
                    kind = CHAT_CHUNK
                elif "text" in raw_choice:
                    kind = TEXT_COMPLETION
    if not seen:
        raise AssembleError("the stream carried no chunk")

    is_text = kind == TEXT_COMPLETION
    result: dict[str, Any] = {
        "id": top.get("id") or "",
        "object": TEXT_COMPLETION if is_text else "chat.completion",
        "created": top.get("created") or 0,
        "model": top.get("model") or "",
        "choices": [
            choices[i].text_choice() if is_text else choices[i].chat_choice() for i in sorted(choices, key=_sort_key)
        ],
    }
    if "system_fingerprint" in top:
        result["system_fingerprint"] = top["system_fingerprint"]
    if usage is not None:
        result["usage"] = usage
    result.update(extras)
    return result


def _sort_key(index: Any) -> tuple[int, Any]:
    return (0, index) if isinstance(index, int) else (1, str(index))


class _Choice:
    __slots__ = (
        "audio",
        "content",
        "content_seen",
        "extras",
        "filter_results",
        "finish_reason",
        "function_call",
        "index",
        "logprobs",
        "message_extras",
        "refusal",
        "refusal_seen",
        "role",
        "text",
        "tool_calls",
    )

    def __init__(self, index: int) -> None:
        self.index = index
        self.role: str | None = None
        self.content: list[str] = []
        self.content_seen = False
        self.refusal: list[str] = []
        self.refusal_seen = False
        self.tool_calls: dict[Any, dict[str, Any]] = {}
        self.function_call: dict[str, Any] | None = None
        self.audio: dict[str, Any] | None = None
        self.message_extras: dict[str, Any] = {}
        self.text: list[str] = []
        self.finish_reason: str | None = None
        self.logprobs: dict[str, Any] | None = None
        self.filter_results: dict[str, Any] = {}
        self.extras: dict[str, Any] = {}

    def feed(self, choice: dict[str, Any]) -> None:
        delta = choice.get("delta")
        if isinstance(delta, dict):
            self._feed_delta(delta)
        text = choice.get("text")
        if isinstance(text, str):
            self.text.append(text)
        if choice.get("finish_reason") is not None:
            self.finish_reason = choice["finish_reason"]
        logprobs = choice.get("logprobs")
        if isinstance(logprobs, dict):
            self.logprobs = _merge_logprobs(self.logprobs, logprobs)
        if "content_filter_results" in choice:
            _keep_last_non_empty(self.filter_results, "content_filter_results", choice["content_filter_results"])
        for key, value in choice.items():
            if key not in _CHOICE_KNOWN and key not in _CHOICE_STREAM_ONLY:
                _keep_last_non_empty(self.extras, key, value)

    def _feed_delta(self, delta: dict[str, Any]) -> None:
        if self.role is None and delta.get("role"):
            self.role = delta["role"]
        if "content" in delta:
            content = delta["content"]
            if isinstance(content, str):
                self.content_seen = True
                self.content.append(content)
        if "refusal" in delta:
            self.refusal_seen = True
            if isinstance(delta["refusal"], str):
                self.refusal.append(delta["refusal"])
        for call in delta.get("tool_calls") or ():
            if not isinstance(call, dict):
                continue
            key = call.get("index", len(self.tool_calls))
            fragment = {k: v for k, v in call.items() if k != "index"}
            self.tool_calls[key] = _merge_fragment(self.tool_calls.get(key, {}), fragment)
        if isinstance(delta.get("function_call"), dict):
            self.function_call = _merge_fragment(self.function_call or {}, delta["function_call"])
        if isinstance(delta.get("audio"), dict):
            self.audio = _merge_fragment(self.audio or {}, delta["audio"])
        for key, value in delta.items():
            if key not in _DELTA_KNOWN:
                self.message_extras[key] = _merge_value(self.message_extras.get(key), value)

    def _message(self) -> dict[str, Any]:
        tool_calls = [_finish_tool_call(self.tool_calls[k]) for k in sorted(self.tool_calls, key=_sort_key)]
        refusal = "".join(self.refusal) or None
        content: str | None = "".join(self.content) if self.content_seen else None
        if not content and (tool_calls or self.function_call or refusal or self.audio):
            # The non-streamed API answers `content: null` when the model produced something else.
            content = None
        message: dict[str, Any] = {"role": self.role or "assistant", "content": content}
        if self.refusal_seen:
            message["refusal"] = refusal
        if tool_calls:
            message["tool_calls"] = tool_calls
        if self.function_call is not None:
            message["function_call"] = {"name": "", "arguments": "", **self.function_call}
        if self.audio is not None:
            message["audio"] = self.audio
        for key, value in self.message_extras.items():
            if value is not None:
                message[key] = value
        return message

    def chat_choice(self) -> dict[str, Any]:
        choice: dict[str, Any] = {
            "index": self.index,
            "message": self._message(),
            "finish_reason": self.finish_reason,
            "logprobs": self.logprobs,
        }
        choice.update(self.filter_results)
        choice.update(self.extras)
        return choice

    def text_choice(self) -> dict[str, Any]:
        choice: dict[str, Any] = {
            "index": self.index,
            "text": "".join(self.text),
            "finish_reason": self.finish_reason,
            "logprobs": self.logprobs,
        }
        choice.update(self.filter_results)
        choice.update(self.extras)
        return choice


def _finish_tool_call(call: dict[str, Any]) -> dict[str, Any]:
    """A non-streamed tool call: ``id``, ``type`` (default from its payload member) and the payload."""
    out = dict(call)
    out.setdefault("id", "")
    if not out.get("type"):
        out["type"] = "custom" if "custom" in call and "function" not in call else "function"
    payload = out.get(out["type"])
    if out["type"] == "function":
        out["function"] = {"name": "", "arguments": "", **(payload if isinstance(payload, dict) else {})}
    elif out["type"] == "custom":
        out["custom"] = {"name": "", "input": "", **(payload if isinstance(payload, dict) else {})}
    return out


def _merge_fragment(acc: dict[str, Any], fragment: dict[str, Any]) -> dict[str, Any]:
    """Merges one streamed fragment of an object: strings concatenate (``id``/``type`` are set once), nested
    objects merge recursively, lists extend, other non-null values replace."""
    for key, value in fragment.items():
        if value is None:
            continue
        current = acc.get(key)
        if key in _SET_ONCE:
            if not current:
                acc[key] = value
        elif isinstance(value, dict):
            acc[key] = _merge_fragment(current if isinstance(current, dict) else {}, value)
        else:
            acc[key] = _merge_value(current, value)
    return acc


def _merge_value(current: Any, value: Any) -> Any:
    if value is None:
        return current
    if isinstance(current, str) and isinstance(value, str):
        return current + value
    if isinstance(current, list) and isinstance(value, list):
        return current + value
    return value


def _merge_logprobs(acc: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """Concatenates the token lists (chat ``content``/``refusal``; legacy ``tokens``, ``token_logprobs``,
    ``top_logprobs``, ``text_offset``); a member that never carried a list stays as sent (null)."""
    merged = dict(acc) if acc else {}
    for key, value in new.items():
        current = merged.get(key)
        if isinstance(value, list):
            merged[key] = (current if isinstance(current, list) else []) + value
        elif key not in merged:
            merged[key] = value
    return merged


def _is_empty(value: Any) -> bool:
    return value is None or value == "" or (isinstance(value, (dict, list)) and not value)


def _keep_last_non_empty(store: dict[str, Any], key: str, value: Any) -> None:
    if key not in store or not _is_empty(value):
        store[key] = value
