"""The only aiohttp client user: one ClientSession per worker process, behind a small transport contract.

Connection reuse to the backends is most of a proxy's speed, so requests never get a session of their own.
The session is rebuilt only when the event loop it belongs to is gone (tests run several loops in one
process; the Functions worker runs one).

Everything above this module sees `UpstreamResponse` (status, headers, bytes, release/close) and
`TransportError`, never aiohttp types, so the pipeline and the activities can be driven by an in-memory
transport in unit tests (tests/support/memory_transport.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from typing import Any, Protocol

import aiohttp

__all__ = ["NETWORK_ERRORS", "Body", "Transport", "TransportError", "Upstream", "UpstreamResponse"]

# A request body: bytes, or chunks produced as they are sent (a batch file; the caller sets Content-Length).
type Body = bytes | AsyncIterable[bytes]


# What a call through the session raises when the other side cannot be reached or answers an error status.
NETWORK_ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientError, OSError, TimeoutError)


class TransportError(Exception):
    """No usable answer: `kind` is "timeout" (connect or read) or "connect" (refused, reset, broken)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


class UpstreamResponse(Protocol):
    """A backend's answer once its headers are in. Read it whole or chunk by chunk, then release or close."""

    status: int
    headers: Mapping[str, str]  # case-insensitive

    async def read(self) -> bytes: ...

    def chunks(self) -> AsyncIterator[bytes]: ...

    def release(self) -> None:
        """The answer was read to its end: the connection may be reused."""

    def close(self) -> None:
        """The answer was abandoned or broke: the connection must not be reused."""


class Transport(Protocol):
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
    ) -> UpstreamResponse: ...


def _transport_error(exc: BaseException) -> TransportError:
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return TransportError("timeout", type(exc).__name__)
    return TransportError("connect", type(exc).__name__)


class _AiohttpResponse:
    """`UpstreamResponse` over an aiohttp ClientResponse; aiohttp's errors become TransportError."""

    __slots__ = ("_resp", "headers", "status")

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.status = resp.status
        self.headers: Mapping[str, str] = resp.headers

    async def read(self) -> bytes:
        try:
            return await self._resp.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _transport_error(exc) from None

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for data in self._resp.content.iter_any():
                yield data
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _transport_error(exc) from None

    def release(self) -> None:
        self._resp.release()

    def close(self) -> None:
        self._resp.close()


class Upstream:
    """The aiohttp transport: one lazily created session, timeouts from settings, no redirects or cookies."""

    def __init__(self, connect_timeout_s: float, read_timeout_s: float) -> None:
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60),
                # We relay bytes as they come: no decompression, no cookies, no header we did not choose.
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent",),
            )
            self._loop = loop
        return self._session

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
    ) -> UpstreamResponse:
        """Sends one request and returns once the response headers are in; the caller reads, releases or closes.

        `connect_s` / `read_s` are a backend's own timeouts (`connect_timeout=` / `timeout=`); None: the settings'.
        """
        connect = connect_s if connect_s is not None else self._connect_timeout_s
        timeout = aiohttp.ClientTimeout(
            total=total_s,
            connect=connect,
            sock_connect=connect,
            sock_read=read_s if read_s is not None else self._read_timeout_s,
        )
        try:
            resp = await self.session().request(
                method, url, headers=headers, data=body or None, timeout=timeout, allow_redirects=False
            )
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _transport_error(exc) from None
        return _AiohttpResponse(resp)

    async def get_json(self, url: str, headers: dict[str, str]) -> Any:
        """A small JSON document (Key Vault secrets): raises on any non-2xx."""
        async with self.session().get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=30)) as resp:
            resp.raise_for_status()
            return await resp.json(content_type=None)

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None
