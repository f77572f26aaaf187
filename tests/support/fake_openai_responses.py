"""The Responses API of one fake backend: responses kept per fake instance, as Azure keeps them per resource.

A response id is known only to the fake that created it, so a gateway that sends a follow-up
(`previous_response_id`, `GET /responses/{id}`) to the wrong backend gets that backend's 404, as it would on
Azure. Replies name the fake and count the turns of their chain ("... (turn 3)"), so a test sees where each
turn of a conversation ran. Background responses move one step per retrieval (queued → in_progress →
completed), never on a timer. Pure state and JSON: the HTTP side is in ``fake_openai.py``.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ResponseStore", "StoredResponse"]

_TERMINAL = frozenset({"completed", "incomplete", "failed", "cancelled"})


@dataclass
class StoredResponse:
    """A response as the backend keeps it: its final object, its input items and its stream's events."""

    final: dict[str, Any]
    items: list[dict[str, Any]]
    events: list[dict[str, Any]]
    turn: int
    pending: deque[str] = field(default_factory=deque)  # background statuses still to come, one per GET
    status: str = "completed"

    def current(self) -> dict[str, Any]:
        """The object as a retrieval sees it now."""
        if self.status == self.final["status"]:
            return self.final
        return {**self.final, "status": self.status, "output": [], "usage": None, "incomplete_details": None}


def not_found(response_id: str, param: str | None = None) -> dict[str, Any]:
    what = "Previous response" if param else "Response"
    code = "previous_response_not_found" if param else None
    message = f"{what} with id '{response_id}' not found."
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}


class ResponseStore:
    """Responses of one fake backend, by id (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._responses: dict[str, StoredResponse] = {}

    @property
    def ids(self) -> list[str]:
        with self._lock:
            return list(self._responses)

    def create(
        self, payload: dict[str, Any], model: str, reply: str, chunks: int
    ) -> tuple[int, dict[str, Any], StoredResponse | None]:
        """(status, the answer's object, the stored response). A `previous_response_id` unknown here is a 404."""
        previous_id = payload.get("previous_response_id")
        with self._lock:
            previous = self._responses.get(previous_id) if isinstance(previous_id, str) else None
        if previous_id is not None and previous is None:
            return 404, not_found(str(previous_id), "previous_response_id"), None
        turn = previous.turn + 1 if previous else 1
        text = f"{reply} (turn {turn})"
        pieces = _split_words(text, chunks)
        cap = payload.get("max_output_tokens")
        status = "completed"
        if isinstance(cap, int) and cap < len(pieces):
            pieces, status = pieces[:cap], "incomplete"
        history = previous.final["usage"]["total_tokens"] if previous else 0
        input_tokens = history + _words(payload.get("instructions")) + sum(_words(i) for i in _input_texts(payload))
        usage = {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": history},
            "output_tokens": len(pieces),
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + len(pieces),
        }
        message_id = f"msg_{uuid.uuid4().hex}"
        content = {"type": "output_text", "text": "".join(pieces), "annotations": [], "logprobs": []}
        item = {"id": message_id, "type": "message", "status": status, "role": "assistant", "content": [content]}
        final = {
            "id": f"resp_{uuid.uuid4().hex}{uuid.uuid4().hex[:16]}",
            "object": "response",
            "created_at": int(time.time()),
            "status": status,
            "background": payload.get("background") is True,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": payload.get("instructions"),
            "max_output_tokens": cap,
            "model": model,
            "output": [item],
            "parallel_tool_calls": True,
            "previous_response_id": previous_id,
            "reasoning": {"effort": None, "summary": None},
            "store": payload.get("store") is not False,
            "temperature": payload.get("temperature", 1.0),
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": payload.get("top_p", 1.0),
            "truncation": "disabled",
            "usage": usage,
            "user": None,
            "metadata": payload.get("metadata") or {},
        }
        stored = StoredResponse(final, _input_items(payload), _events(final, item, pieces), turn)
        if final["background"] and payload.get("stream") is not True:
            stored.status, stored.pending = "queued", deque(["in_progress", status])
        if final["store"]:
            with self._lock:
                self._responses[final["id"]] = stored
        return 200, stored.current(), stored

    def retrieve(self, response_id: str) -> StoredResponse | None:
        """The response, moved one background step on."""
        with self._lock:
            stored = self._responses.get(response_id)
            if stored is not None and stored.pending:
                stored.status = stored.pending.popleft()
            return stored

    def finish(self, stored: StoredResponse) -> None:
        """A background response resumed as a stream runs to its end."""
        with self._lock:
            if stored.status not in _TERMINAL:
                stored.status, stored.pending = stored.final["status"], deque()

    def delete(self, response_id: str) -> bool:
        with self._lock:
            return self._responses.pop(response_id, None) is not None

    def cancel(self, response_id: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            stored = self._responses.get(response_id)
            if stored is None:
                return 404, not_found(response_id)
            if not stored.final["background"]:
                error = {"message": "Cannot cancel a synchronous response.", "type": "invalid_request_error"}
                return 400, {"error": {**error, "param": None, "code": None}}
            if stored.status not in _TERMINAL:
                stored.status, stored.pending = "cancelled", deque()
            return 200, stored.current()

    def input_items(self, response_id: str) -> dict[str, Any] | None:
        with self._lock:
            stored = self._responses.get(response_id)
        if stored is None:
            return None
        data = stored.items
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": False,
        }


def _events(final: dict[str, Any], item: dict[str, Any], pieces: list[str]) -> list[dict[str, Any]]:
    """The stream of a response: created, in progress, the text in deltas, then its final event."""
    running = {**final, "status": "in_progress", "output": [], "usage": None, "incomplete_details": None}
    empty_part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    where = {"item_id": item["id"], "output_index": 0, "content_index": 0}
    started = {**item, "status": "in_progress", "content": []}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": running},
        {"type": "response.in_progress", "response": running},
        {"type": "response.output_item.added", "output_index": 0, "item": started},
        {"type": "response.content_part.added", **where, "part": empty_part},
        *({"type": "response.output_text.delta", **where, "delta": piece, "logprobs": []} for piece in pieces),
        {"type": "response.output_text.done", **where, "text": "".join(pieces), "logprobs": []},
        {"type": "response.content_part.done", **where, "part": item["content"][0]},
        {"type": "response.output_item.done", "output_index": 0, "item": item},
        {"type": f"response.{final['status']}", "response": final},
    ]
    return [{**event, "sequence_number": number} for number, event in enumerate(events)]


def _input_texts(payload: dict[str, Any]) -> list[str]:
    value = payload.get("input")
    texts = []
    for entry in value if isinstance(value, list) else [value]:
        if isinstance(entry, str):
            texts.append(entry)
        elif isinstance(entry, dict):
            content = entry.get("content")
            parts = content if isinstance(content, list) else [content]
            texts += [p if isinstance(p, str) else str(p.get("text", "")) for p in parts if isinstance(p, str | dict)]
    return texts


def _input_items(payload: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "id": f"msg_{uuid.uuid4().hex}",
            "type": "message",
            "role": "user",
            "status": "completed",
            "content": [{"type": "input_text", "text": text}],
        }
        for text in _input_texts(payload)
    ]


def _words(text: Any) -> int:
    return len(text.split()) if isinstance(text, str) else 0


def _split_words(text: str, parts: int) -> list[str]:
    """``text`` in at most ``parts`` pieces that concatenate back to it (one output token each)."""
    count = max(1, min(parts, len(text)))
    return [text[i * len(text) // count : (i + 1) * len(text) // count] for i in range(count)]
