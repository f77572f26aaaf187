"""An incremental multipart/form-data reader: bytes in as they arrive, parts out, nothing held whole.

A batch upload can be 100 MB; the stdlib MIME parser wants the whole body in memory, so uploads are read
with this instead. It keeps at most one delimiter's worth of bytes back (the delimiter may straddle two
chunks) plus the headers of the current part (capped).
"""

from __future__ import annotations

import email.errors
import email.parser
import email.policy
from collections.abc import Iterator
from dataclasses import dataclass

from . import errors

__all__ = ["Data", "End", "MultipartReader", "PartStart"]

MAX_PART_HEADERS = 16 * 1024


@dataclass(frozen=True, slots=True)
class PartStart:
    name: str
    filename: str | None
    content_type: str


@dataclass(frozen=True, slots=True)
class Data:
    data: bytes


@dataclass(frozen=True, slots=True)
class End:
    """The current part ended."""


_PREAMBLE, _AFTER_DELIMITER, _HEADERS, _BODY, _DONE = range(5)


class MultipartReader:
    """`feed(chunk)` yields PartStart, Data… and End for each part; `close()` checks the body was complete."""

    def __init__(self, boundary: bytes) -> None:
        self._delimiter = b"\r\n--" + boundary
        self._buffer = bytearray(b"\r\n")  # so the first delimiter looks like every other one
        self._state = _PREAMBLE

    def feed(self, chunk: bytes) -> Iterator[PartStart | Data | End]:
        self._buffer += chunk
        while True:
            if self._state == _PREAMBLE:
                at = self._buffer.find(self._delimiter)
                if at == -1:
                    keep = len(self._delimiter) - 1
                    del self._buffer[: max(0, len(self._buffer) - keep)]  # the preamble is ignored
                    return
                del self._buffer[: at + len(self._delimiter)]
                self._state = _AFTER_DELIMITER
            elif self._state == _AFTER_DELIMITER:
                if len(self._buffer) < 2:
                    return
                if self._buffer[:2] == b"--":
                    self._state = _DONE
                    self._buffer.clear()
                    return
                line_end = self._buffer.find(b"\r\n")
                if line_end == -1:
                    if len(self._buffer) > 256:
                        raise _bad("a delimiter line is malformed")
                    return
                if self._buffer[:line_end].strip(b" \t"):
                    raise _bad("a delimiter line is malformed")
                del self._buffer[: line_end + 2]
                self._state = _HEADERS
            elif self._state == _HEADERS:
                end = self._buffer.find(b"\r\n\r\n")
                if end == -1:
                    if len(self._buffer) > MAX_PART_HEADERS:
                        raise _bad(f"a part's headers are longer than {MAX_PART_HEADERS} bytes")
                    return
                head = bytes(self._buffer[:end])
                del self._buffer[: end + 4]
                self._state = _BODY
                yield _part_start(head)
            elif self._state == _BODY:
                at = self._buffer.find(self._delimiter)
                if at == -1:
                    keep = len(self._delimiter) - 1
                    if len(self._buffer) > keep:
                        out = bytes(self._buffer[: len(self._buffer) - keep])
                        del self._buffer[: len(out)]
                        yield Data(out)
                    return
                if at:
                    yield Data(bytes(self._buffer[:at]))
                del self._buffer[: at + len(self._delimiter)]
                self._state = _AFTER_DELIMITER
                yield End()
            else:  # _DONE: the epilogue is ignored
                self._buffer.clear()
                return

    def close(self) -> None:
        """400 unless the closing delimiter was seen."""
        if self._state != _DONE:
            raise _bad("the body ended before its closing boundary")


def _part_start(head: bytes) -> PartStart:
    try:
        text = head.decode("utf-8")
        headers = email.parser.Parser(policy=email.policy.HTTP).parsestr(text + "\r\n\r\n", headersonly=True)
        disposition = headers.get_content_disposition()
        name = headers.get_param("name", header="content-disposition")
        filename = headers.get_filename()
        content_type = headers.get_content_type()
    except (ValueError, LookupError, TypeError, email.errors.MessageError):  # UnicodeDecodeError is a ValueError
        raise _bad("a part's headers cannot be read") from None
    if disposition != "form-data":
        raise _bad("a part has no 'Content-Disposition: form-data'")
    if not isinstance(name, str) or not name:
        raise _bad("a part has no name")
    return PartStart(name, filename if isinstance(filename, str) else None, content_type)


def _bad(problem: str) -> errors.GatewayError:
    return errors.bad_request(f"The multipart body is malformed: {problem}.", code="invalid_multipart")
