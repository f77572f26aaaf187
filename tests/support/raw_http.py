"""A raw HTTP/1.1 client over a TCP socket, for requests no well-behaved client would send.

httpx and the openai client normalise paths (`..` segments vanish), refuse CR/LF in headers and encode
what they send; the bad-input tests need the bytes on the wire to be exactly the bytes they wrote. Every
request is sent with `Connection: close`, so the answer is everything read until the server closes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Sequence
from dataclasses import dataclass

__all__ = ["RawResponse", "build_request", "send_raw"]


@dataclass(frozen=True, slots=True)
class RawResponse:
    status: int
    headers: list[tuple[str, str]]  # names lower-cased, values latin-1 decoded, in order
    body: bytes  # de-chunked
    raw: bytes  # everything the server sent

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)


def build_request(
    method: bytes,
    target: bytes,
    headers: Sequence[tuple[bytes, bytes]] = (),
    body: bytes | None = None,
    *,
    host: bytes = b"127.0.0.1",
) -> bytes:
    """The request's bytes; Content-Length is added for a body unless `headers` already frame it."""
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: " + host]
    names = {name.lower() for name, _ in headers}
    lines += [name + b": " + value for name, value in headers]
    if body is not None and b"content-length" not in names and b"transfer-encoding" not in names:
        lines.append(b"Content-Length: " + str(len(body)).encode())
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")


async def send_raw(
    host: str,
    port: int,
    request: bytes,
    *,
    body_chunks: AsyncIterable[bytes] | None = None,
    timeout_s: float = 30.0,
) -> RawResponse:
    """Sends `request` (then `body_chunks`, while the answer is read) and parses what comes back.

    Sending stops when the server answers or closes: a server that refuses a body early is not fed the rest.
    """
    reader, writer = await asyncio.open_connection(host, port)
    sender: asyncio.Task[None] | None = None
    try:
        writer.write(request)
        if body_chunks is not None:
            sender = asyncio.create_task(_send_chunks(writer, body_chunks))
        raw = await asyncio.wait_for(_read_all(reader), timeout_s)
    finally:
        if sender is not None:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass
    return parse_response(raw)


async def _send_chunks(writer: asyncio.StreamWriter, chunks: AsyncIterable[bytes]) -> None:
    try:
        async for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError):
        pass  # the server stopped reading: that is what the test wants to see


async def _read_all(reader: asyncio.StreamReader) -> bytes:
    parts = []
    try:
        while data := await reader.read(65536):
            parts.append(data)
    except (ConnectionError, OSError):
        pass  # a reset after the answer was sent still leaves the answer
    return b"".join(parts)


def parse_response(raw: bytes) -> RawResponse:
    """The final answer (interim 1xx answers, such as 100 Continue, are skipped)."""
    rest = raw
    while True:
        head, _, body = rest.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        status = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else 0
        if not 100 <= status < 200 or not body:
            break
        rest = body
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.append((name.strip().lower().decode("latin-1"), value.strip().decode("latin-1")))
    if any(k == "transfer-encoding" and "chunked" in v.lower() for k, v in headers):
        body = _dechunk(body)
    return RawResponse(status, headers, body, raw)


def _dechunk(data: bytes) -> bytes:
    out, at = bytearray(), 0
    while True:
        line_end = data.find(b"\r\n", at)
        if line_end == -1:
            return bytes(out)
        size = int(data[at:line_end].split(b";")[0] or b"0", 16)
        if size == 0:
            return bytes(out)
        out += data[line_end + 2 : line_end + 2 + size]
        at = line_end + 2 + size + 2
