"""The two floors: the least a Python async reverse proxy can do, on two server stacks.

* ``floor-aiohttp``: ``python -m bench.floor_proxy [--port 0] --upstream URL`` — an aiohttp server (port 0: the
  OS picks it, printed as ``floor-aiohttp listening on URL`` once bound);
* ``floor-asgi``: ``ASGI_HANDLER`` below, served by the development host exactly like the gateway
  (``bench/floor_app/function_app.py``: uvicorn, the devhost's router, FastAPI Request/Response types).

Both forward method, path, query and body to one upstream with one shared ``aiohttp.ClientSession`` (the
gateway's upstream settings: no decompression, no cookies, unlimited pool), swap the client's key for the
upstream key, drop hop-by-hop headers both ways, read JSON answers whole and relay everything else chunk by
chunk as it arrives. No auth, routing, failover, usage or logging: whatever the gateway costs beyond a floor
is the gateway's own work.
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import AsyncIterator, Mapping

import aiohttp
from aiohttp import web

UPSTREAM_ENV = "BENCH_UPSTREAM"
UPSTREAM_KEY_ENV = "BENCH_UPSTREAM_KEY"
_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "host", "content-length",
})
_REQUEST_DROP = _HOP | {"api-key", "authorization", "accept-encoding"}


class Relay:
    """One ClientSession for the process, created on first use (on the server's loop)."""

    def __init__(self, upstream: str, api_key: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.api_key = api_key
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def send(
        self, method: str, path_qs: str, headers: Mapping[str, str], body: bytes
    ) -> aiohttp.ClientResponse:
        out = {k: v for k, v in headers.items() if k.lower() not in _REQUEST_DROP}
        out["api-key"] = self.api_key
        out["accept-encoding"] = "identity"
        return await self.session().request(
            method, self.upstream + path_qs, headers=out, data=body or None, allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_read=120),
        )

    @staticmethod
    def answer_headers(resp: aiohttp.ClientResponse) -> dict[str, str]:
        return {k: v for k, v in resp.headers.items() if k.lower() not in _HOP}

    @staticmethod
    def buffered(resp: aiohttp.ClientResponse) -> bool:
        return resp.headers.get("content-type", "").startswith("application/json")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def relay_from_env() -> Relay:
    return Relay(os.environ[UPSTREAM_ENV], os.environ.get(UPSTREAM_KEY_ENV, "fake-key"))


# ------------------------------------------------------------------------------------------ floor-aiohttp


def aiohttp_app(relay: Relay) -> web.Application:
    async def proxy(request: web.Request) -> web.StreamResponse:
        resp = await relay.send(request.method, request.path_qs, request.headers, await request.read())
        try:
            headers = relay.answer_headers(resp)
            if relay.buffered(resp):
                return web.Response(body=await resp.read(), status=resp.status, headers=headers)
            out = web.StreamResponse(status=resp.status, headers=headers)
            await out.prepare(request)
            async for data in resp.content.iter_any():
                await out.write(data)
            await out.write_eof()
            return out
        finally:
            resp.release()

    async def on_cleanup(_: web.Application) -> None:
        await relay.close()

    app = web.Application(client_max_size=100 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", proxy)
    app.on_cleanup.append(on_cleanup)
    return app


# ------------------------------------------------------------------------------------------ floor-asgi


async def asgi_proxy(relay: Relay, req):  # req: the FastAPI (Starlette) Request the devhost passes
    """The same proxy with the FastAPI types, for the development host (see bench/floor_app)."""
    from azurefunctions.extensions.http.fastapi import Response, StreamingResponse

    path_qs = req.url.path + (f"?{req.url.query}" if req.url.query else "")
    resp = await relay.send(req.method, path_qs, req.headers, await req.body())
    headers = relay.answer_headers(resp)
    if relay.buffered(resp):
        try:
            return Response(await resp.read(), status_code=resp.status, headers=headers)
        finally:
            resp.release()

    async def chunks() -> AsyncIterator[bytes]:
        try:
            async for data in resp.content.iter_any():
                yield data
        finally:
            resp.release()

    return StreamingResponse(chunks(), status_code=resp.status, headers=headers)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="floor-aiohttp: a minimal aiohttp reverse proxy")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed once bound)")
    parser.add_argument("--upstream", default=os.environ.get(UPSTREAM_ENV))
    parser.add_argument("--api-key", default=os.environ.get(UPSTREAM_KEY_ENV, "fake-key"))
    args = parser.parse_args(argv)
    if not args.upstream:
        parser.error(f"--upstream or {UPSTREAM_ENV} is required")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))  # bound here, so a port 0 is known (and printed) before serving
    print(f"floor-aiohttp listening on http://{args.host}:{sock.getsockname()[1]}", flush=True)
    web.run_app(aiohttp_app(Relay(args.upstream, args.api_key)), sock=sock, access_log=None, print=None)


if __name__ == "__main__":
    main()
