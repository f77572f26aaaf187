"""Reading request and blob bodies in bounded memory: a size cap checked as bytes arrive, and JSON lines.

A declared `Content-Length` over the limit is refused before a byte of the body is read; a chunked body is
counted as it arrives and refused at the cap, so no client can make an instance buffer more than the limit.
Files (batch inputs and outputs) are never held whole: they are read line by line, each line capped.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Mapping

from . import errors

__all__ = ["check_declared_length", "iter_lines", "read_capped"]


def check_declared_length(headers: Mapping[str, str], limit: int) -> None:
    """413 when the client announces a body over `limit` (uvicorn and the host refuse malformed lengths)."""
    declared = headers.get("content-length", "").strip()
    if declared.isdigit() and int(declared) > limit:
        raise errors.too_large(limit)


async def read_capped(chunks: AsyncIterable[bytes], limit: int) -> bytes:
    """The whole body, or 413 as soon as more than `limit` bytes have arrived (the rest is never read)."""
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise errors.too_large(limit)
        parts.append(chunk)
    return b"".join(parts)


async def iter_lines(chunks: AsyncIterable[bytes], max_line: int, *, what: str = "file") -> AsyncIterator[bytes]:
    """The lines of a byte stream without their `\\n` (and a trailing `\\r`); 400 for a line over `max_line`.

    Only `\\n` ends a line: JSON text may hold U+2028 and friends, which `str.splitlines` would cut at.
    """
    pending = bytearray()
    async for chunk in chunks:
        start = 0
        while (end := chunk.find(b"\n", start)) != -1:
            if len(pending) + end - start > max_line:
                raise _long_line(what, max_line)
            pending += chunk[start:end]
            yield bytes(pending.removesuffix(b"\r"))
            pending.clear()
            start = end + 1
        pending += chunk[start:]
        if len(pending) > max_line:
            raise _long_line(what, max_line)
    if pending:
        yield bytes(pending.removesuffix(b"\r"))


def _long_line(what: str, max_line: int) -> errors.GatewayError:
    return errors.bad_request(
        f"A line of the {what} is longer than {max_line} bytes.", code="line_too_long", param=what
    )
