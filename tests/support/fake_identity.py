"""A fake App Service managed-identity endpoint (IDENTITY_ENDPOINT / IDENTITY_HEADER protocol).

The real `azure.identity` DefaultAzureCredential talks to it exactly as it does on Azure Functions, so tests
exercise the gateway's token handling end to end and can count the token requests it makes.
"""

from __future__ import annotations

import secrets
import time

from aiohttp import web

from tests.support.local_server import serve_app


class FakeIdentityEndpoint:
    def __init__(self, lifetime_s: int = 3600) -> None:
        self.header_secret = secrets.token_hex(8)
        self.lifetime_s = lifetime_s
        self.requests: list[dict[str, str]] = []  # the query of every token request, in order
        self.port: int | None = None  # the OS picks it when the endpoint starts
        self._runner: web.AppRunner | None = None

    @property
    def env(self) -> dict[str, str]:
        """The variables the Functions platform sets for an app with a managed identity (once started)."""
        if self.port is None:
            raise RuntimeError("the identity endpoint is not running")
        return {"IDENTITY_ENDPOINT": f"http://127.0.0.1:{self.port}/msi/token", "IDENTITY_HEADER": self.header_secret}

    async def _token(self, request: web.Request) -> web.Response:
        if request.headers.get("X-IDENTITY-HEADER") != self.header_secret:
            return web.json_response({"error": "invalid header"}, status=401)
        self.requests.append(dict(request.query))
        return web.json_response(
            {
                "access_token": f"fake-token-{len(self.requests)}",
                "expires_on": str(int(time.time()) + self.lifetime_s),
                "resource": request.query.get("resource", ""),
                "token_type": "Bearer",
            }
        )

    async def __aenter__(self) -> FakeIdentityEndpoint:
        app = web.Application()
        app.router.add_get("/msi/token", self._token)
        self._runner, self.port = await serve_app(app)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
