"""A request as the hosting layer hands it over, and the answer it sends back: hosting-independent types.

The pipeline, the async starter and the batch routes take an `Inbound` and return an `Outbound`; only
gateway/http.py turns them into the host's Request and Response.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from . import errors

__all__ = ["Inbound", "Outbound", "error_outbound"]


@dataclass(slots=True)
class Inbound:
    """A client request as the hosting layer received it (header names lower-case)."""

    method: str
    path: str  # percent-decoded, as routes see it
    query: str
    headers: Mapping[str, str]
    body: bytes
    raw_path: str = ""  # as it came on the request line, when the host says (checked too: %2F, %5C)


@dataclass(slots=True)
class Outbound:
    """The answer: `body` bytes, or `stream` to relay chunk by chunk."""

    status: int
    headers: dict[str, str]
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None


def error_outbound(error: errors.GatewayError, request_id: str | None = None) -> Outbound:
    """A gateway error as an answer: its status, its headers (Retry-After), the OpenAI error body."""
    headers = {"content-type": "application/json", **error.headers}
    if request_id:
        headers["x-request-id"] = request_id
    return Outbound(error.status, headers, error.body())
