"""The HTTP functions: FastAPI Request/Response ⇄ pipeline. The only azure.functions user in gateway/.

Every HTTP function in the app uses the streaming extension's types (importing it switches the whole app),
so SSE is relayed chunk by chunk instead of buffered by the host. Routes carry no `api/` prefix (host.json
sets routePrefix to ""), so clients use the gateway's base URL exactly as an Azure OpenAI endpoint.
"""

from __future__ import annotations

import azure.durable_functions as df
import azure.functions as func
from azurefunctions.extensions.http.fastapi import JSONResponse, Request, Response, StreamingResponse

from .pipeline import Gateway, Inbound

__all__ = ["build_blueprint"]

ANONYMOUS = func.AuthLevel.ANONYMOUS


def build_blueprint(gateway: Gateway) -> df.Blueprint:
    """The data-plane routes, bound to one Gateway (the gateway authenticates clients itself)."""
    bp = df.Blueprint()

    @bp.route(route="openai/deployments/{deployment}/{*operation}", methods=["POST"], auth_level=ANONYMOUS)
    async def azure_openai(req: Request) -> Response:
        """Azure-native passthrough: /openai/deployments/{deployment}/{operation}?api-version=..."""
        return await _serve(gateway, req)

    @bp.route(route="v1/{*operation}", methods=["GET", "POST"], auth_level=ANONYMOUS)
    async def openai_v1(req: Request) -> Response:
        """OpenAI v1 surface: `model` in the body picks the deployment."""
        return await _serve(gateway, req)

    @bp.route(route="openai/models", methods=["GET"], auth_level=ANONYMOUS)
    async def azure_models(req: Request) -> Response:
        """The models the configured backends serve, for Azure-style clients."""
        return await _serve(gateway, req)

    @bp.route(route="health", methods=["GET"], auth_level=ANONYMOUS)
    async def health(req: Request) -> JSONResponse:
        """Liveness: the app is loaded and its settings are valid (it would not have started otherwise)."""
        return JSONResponse({"status": "ok", "backends": len(gateway.settings.backends)})

    return bp


async def _serve(gateway: Gateway, req: Request) -> Response:
    inbound = Inbound(req.method, req.url.path, req.url.query, dict(req.headers.items()), await req.body())
    out = await gateway.handle(inbound)
    if out.stream is not None:
        return StreamingResponse(out.stream, status_code=out.status, headers=out.headers)
    return Response(out.body, status_code=out.status, headers=out.headers)
