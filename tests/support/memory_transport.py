"""An in-memory `gateway.upstream.Transport`: scripted backend answers, no sockets, no aiohttp.

It lets unit tests drive the real pipeline and attempt (choosing, failover, learning, relay, usage) in one event
loop, and see what the gateway did to each answer: which bytes it pulled from a stream and when (a relay that
buffers would pull ahead of its client), and whether it released the connection or dropped it.

Answers are queued per backend host (`script`); a request to a host with none left raises `Unscripted`, which
the pipeline turns into a 500, so a test expecting anything else fails and the log names the URL.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.upstream import Body, TransportError

__all__ = ["Answer", "MemoryResponse", "MemoryTransport", "Sent", "Unscripted", "sse"]


class Unscripted(AssertionError):
    """The gateway sent a request no answer was scripted for."""


class _Headers(Mapping[str, str]):
    """Case-insensitive header names, as `UpstreamResponse.headers` promises (iterates lower-case names)."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        self._items = {k.lower(): v for k, v in headers.items()}

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True)
class Answer:
    """One scripted outcome: headers in and `chunks` to read, or `fail` raised by `send` (a TransportError kind).
    `break_after` chunks read, the body breaks off with TransportError(`break_kind`)."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    chunks: tuple[bytes, ...] = ()
    fail: str | None = None
    break_after: int | None = None
    break_kind: str = "connect"

    @classmethod
    def json(cls, status: int, body: Any, headers: Mapping[str, str] | None = None) -> Answer:
        return cls(status, {"content-type": "application/json", **(headers or {})}, (json.dumps(body).encode(),))

    @classmethod
    def stream(cls, events: Iterable[Any], *, break_after: int | None = None) -> Answer:
        """A 200 event stream, one read per event (`sse`)."""
        return cls(200, {"content-type": "text/event-stream"}, tuple(sse(events)), break_after=break_after)

    @classmethod
    def failure(cls, kind: str) -> Answer:
        """No answer at all: "connect" (refused, reset) or "timeout"."""
        return cls(fail=kind)


def sse(events: Iterable[Any]) -> Iterator[bytes]:
    """Each event as its own `data:` block; a str is sent as is (`[DONE]`), anything else as compact JSON (as
    Azure sends it)."""
    for event in events:
        data = event if isinstance(event, str) else json.dumps(event, separators=(",", ":"))
        yield b"data: " + data.encode() + b"\n\n"


@dataclass
class Sent:
    """A request as the gateway sent it, and the answer it got (None when the send failed)."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    total_s: float | None
    response: MemoryResponse | None = None


class MemoryResponse:
    """`UpstreamResponse` over a scripted answer; counts the chunks handed out and how it ended."""

    def __init__(self, answer: Answer) -> None:
        self.status = answer.status
        self.headers: Mapping[str, str] = _Headers(answer.headers)
        self._answer = answer
        self.pulled = 0  # chunks handed to the gateway so far
        self.released = False  # read to its end, connection reusable
        self.closed = False  # abandoned or broken, connection dropped

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    async def chunks(self) -> AsyncIterator[bytes]:
        for index, chunk in enumerate(self._answer.chunks):
            if index == self._answer.break_after:
                raise TransportError(self._answer.break_kind, "scripted break")
            self.pulled += 1
            yield chunk

    def release(self) -> None:
        self.released = True

    def close(self) -> None:
        self.closed = True


class MemoryTransport:
    """The `Transport` contract in memory: `script(host, *answers)`, then read `sent` for what went out."""

    def __init__(self) -> None:
        self._answers: dict[str, list[Answer]] = {}
        self.sent: list[Sent] = []

    def script(self, host: str, *answers: Answer) -> None:
        """Queues answers for the backend whose `host=` is `host`, in order."""
        self._answers.setdefault(host.rstrip("/"), []).extend(answers)

    def to(self, host: str) -> list[Sent]:
        """The requests sent to one backend."""
        return [s for s in self.sent if s.url.startswith(host.rstrip("/") + "/")]

    async def send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: Body,
        *,
        total_s: float | None,
        connect_s: float | None = None,
        read_s: float | None = None,
    ) -> MemoryResponse:
        data = body if isinstance(body, bytes) else b"".join([chunk async for chunk in body])
        sent = Sent(method, url, dict(headers), data, total_s)
        self.sent.append(sent)
        queue = next((q for host, q in self._answers.items() if url.startswith(host + "/")), None)
        if not queue:
            raise Unscripted(f"no answer scripted for {method} {url}")
        answer = queue.pop(0)
        if answer.fail is not None:
            raise TransportError(answer.fail, "scripted")
        sent.response = MemoryResponse(answer)
        return sent.response

    def unused(self) -> int:
        """Answers scripted but never asked for."""
        return sum(len(q) for q in self._answers.values())
