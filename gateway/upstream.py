"""The only aiohttp client user: one ClientSession per worker process, created lazily.

Connection reuse to the backends is most of a proxy's speed, so requests never get a session of their own.
The session is rebuilt only when the event loop it belongs to is gone (tests run several loops in one
process; the Functions worker runs one).
"""

from __future__ import annotations

import asyncio

import aiohttp

__all__ = ["Upstream"]


class Upstream:
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
        self, method: str, url: str, headers: dict[str, str], body: bytes, *, total_s: float | None
    ) -> aiohttp.ClientResponse:
        """Sends one request and returns once the response headers are in; the caller reads or releases it."""
        timeout = aiohttp.ClientTimeout(
            total=total_s,
            connect=self._connect_timeout_s,
            sock_connect=self._connect_timeout_s,
            sock_read=self._read_timeout_s,
        )
        return await self.session().request(
            method, url, headers=headers, data=body or None, timeout=timeout, allow_redirects=False
        )

    async def get_json(self, url: str, headers: dict[str, str]) -> dict:
        async with self.session().get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=30)) as resp:
            resp.raise_for_status()
            return await resp.json(content_type=None)

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None
