"""Checks on the request line and headers, made before any route looks at the path or parses a body.

The gateway builds upstream URLs and blob names from path segments, and forwards most client headers, so a
path must be plain: no dot segments, no encoded or back slashes, no control or non-ASCII characters. The
host (uvicorn in the devhost, the Functions host in Azure) may decode `%2F` before the app sees the path,
so both the decoded path and the raw one are checked. Headers that a backend or a log line could misread
(control characters, non-ASCII, the same credential twice, sizes over the limits) are refused here too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from . import errors

__all__ = ["MAX_HEADERS", "MAX_HEADERS_BYTES", "MAX_HEADER_BYTES", "check_headers", "check_path"]

MAX_HEADER_BYTES = 8 * 1024  # one header, name and value (what common servers, and Azure's front end, accept)
MAX_HEADERS_BYTES = 32 * 1024  # all of them
MAX_HEADERS = 100  # how many (backends refuse more: aiohttp at 128, Azure's front end near there)
_ENCODED_SEPARATOR = re.compile(r"%(?:2f|5c|25)", re.IGNORECASE)  # / \ and % itself (double encoding)
_DOT_SEGMENT = re.compile(r"(?:^|/)(?:\.|%2e){1,2}(?:/|$)", re.IGNORECASE)
_UNSAFE_CHAR = re.compile(r"[^\x21-\x7e]|\\")  # controls, space, DEL, non-ASCII, backslash
_UNSAFE_VALUE = re.compile(r"[^\t\x20-\x7e]")  # header values: visible ASCII, space and tab only
# Headers that must come once: a second credential or body description could mean two things.
_SINGLE = frozenset({"api-key", "authorization", "content-type", "content-length", "x-functions-key", "prefer"})


# The three above in one search, spelled without IGNORECASE: under it the non-ASCII "\u212a" (Kelvin) folds to "k"
# and would pass the character class.
_ANY_UNSAFE_PATH = re.compile(r"%(?:2[fF]|5[cC]|25)|(?:^|/)(?:\.|%2[eE]){1,2}(?:/|$)|[^\x21-\x7e]|\\")


def check_path(path: str, raw_path: str = "") -> None:
    """400 `invalid_path` for a path the gateway will not interpret; `raw_path` as received, if known.

    One search per form on the way in (every request pays it); which rule it broke is worked out only then."""
    for form in (raw_path, path) if raw_path != path else (path,):
        if not form or not _ANY_UNSAFE_PATH.search(form):
            continue
        if _ENCODED_SEPARATOR.search(form):
            raise _bad_path("an encoded '/', '\\' or '%'")
        if _DOT_SEGMENT.search(form):
            raise _bad_path("a '.' or '..' segment")
        if _UNSAFE_CHAR.search(form):
            raise _bad_path("a backslash, a space, a control or a non-ASCII character")


def check_headers(headers: Iterable[tuple[str, str]]) -> None:
    """400 `invalid_header` (naming it) or 431 `headers_too_large`; names arrive lower-case."""
    seen: set[str] = set()
    total = count = 0
    for name, value in headers:
        count += 1
        if count > MAX_HEADERS:
            raise _too_large(f"The request has more than {MAX_HEADERS} headers.")
        size = len(name) + len(value) + 4
        total += size
        if size > MAX_HEADER_BYTES:
            raise _too_large(f"The header '{_printable(name)}' is longer than {MAX_HEADER_BYTES} bytes.")
        if _UNSAFE_VALUE.search(value) or _UNSAFE_CHAR.search(name):
            raise errors.bad_request(
                f"The header '{_printable(name)}' holds a control or non-ASCII character.",
                code="invalid_header",
                param=_printable(name),
            )
        if name in _SINGLE:
            if name in seen:
                raise errors.bad_request(
                    f"The header '{name}' was sent more than once.", code="invalid_header", param=name
                )
            seen.add(name)
    if total > MAX_HEADERS_BYTES:
        raise _too_large(f"The request headers are longer than {MAX_HEADERS_BYTES} bytes.")


def _bad_path(what: str) -> errors.GatewayError:
    return errors.bad_request(f"The request path holds {what}, which the gateway does not accept.", code="invalid_path")


def _too_large(message: str) -> errors.GatewayError:
    return errors.GatewayError(431, message, code="headers_too_large")


def _printable(text: str) -> str:
    """A header name safe to put in a message: visible ASCII only, at most 64 characters."""
    return re.sub(r"[^\x21-\x7e]", "?", text)[:64]
