"""Serving test servers on loopback: an aiohttp app on a port the OS picks, and async servers on a private thread.

The fakes (Azure OpenAI, Entra, managed identity, Application Insights ingestion) all start the same way; blocking
tests (the devhost, httpx, the sync SDKs) run them on an event loop of their own in a daemon thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Iterator
from typing import Any, Self

from aiohttp import web

__all__ = ["LocalServer", "serve_app", "serve_in_thread"]


async def serve_app(
    app: web.Application,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    ssl_context: ssl.SSLContext | None = None,
    **runner_options: Any,
) -> tuple[web.AppRunner, int]:
    """Starts `app` (no access log) and returns its runner, for `cleanup()`, and the port it listens on."""
    runner = web.AppRunner(app, access_log=None, **runner_options)
    await runner.setup()
    await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
    return runner, runner.addresses[0][1]


@contextlib.contextmanager
def serve_in_thread(*servers: Any, name: str = "local-servers") -> Iterator[None]:
    """Runs async context managers (local servers) on one private event loop in a daemon thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name=name, daemon=True)
    thread.start()
    stack = contextlib.AsyncExitStack()
    try:

        async def enter() -> None:
            for server in servers:
                await stack.enter_async_context(server)

        asyncio.run_coroutine_threadsafe(enter(), loop).result(timeout=30)
        yield
    finally:
        asyncio.run_coroutine_threadsafe(stack.aclose(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()


class LocalServer:
    """A test server with `start()` and `stop()`: used as an async context manager, or `threaded()` for tests
    that block."""

    thread_name = "local-server"

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @contextlib.contextmanager
    def threaded(self) -> Iterator[Self]:
        """Runs on a private event loop in a daemon thread (the devhost, httpx, the sync SDKs block)."""
        with serve_in_thread(self, name=self.thread_name):
            yield self
