"""The HTTP functions: FastAPI Request/Response ⇄ pipeline. The only azure.functions user in gateway/.

Every HTTP function in the app uses the streaming extension's types (importing it switches the whole app),
so SSE is relayed chunk by chunk instead of buffered by the host. Routes carry no `api/` prefix (host.json
sets routePrefix to ""), so clients use the gateway's base URL exactly as an Azure OpenAI endpoint.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import azure.durable_functions as df
import azure.functions as func
from azurefunctions.extensions.http.fastapi import JSONResponse, Request, Response, StreamingResponse

from . import operator
from .pipeline import Deferred, Gateway, Inbound, Outbound

# (durable client, deferred request) -> the 202 answer
StartAsync = Callable[[Any, Deferred], Awaitable[Outbound]]

__all__ = ["StartAsync", "build_blueprint", "to_response"]

ANONYMOUS = func.AuthLevel.ANONYMOUS
FUNCTION = func.AuthLevel.FUNCTION


def build_blueprint(gateway: Gateway, start_async: StartAsync | None = None) -> df.Blueprint:
    """The data-plane and operator routes, bound to one Gateway (the gateway authenticates clients itself).

    `start_async(client, deferred)` starts the async path for requests the pipeline defers; the
    data-plane functions get a Durable client binding for it.
    """
    bp = df.Blueprint()

    @bp.route(route="openai/deployments/{deployment}/{*operation}", methods=["POST"], auth_level=ANONYMOUS)
    @bp.durable_client_input(client_name="client")
    async def azure_openai(req: Request, client: df.DurableOrchestrationClient) -> Response:
        """Azure-native passthrough: /openai/deployments/{deployment}/{operation}?api-version=..."""
        return await _serve(gateway, req, client, start_async)

    @bp.route(route="v1/{*operation}", methods=["GET", "POST"], auth_level=ANONYMOUS)
    @bp.durable_client_input(client_name="client")
    async def openai_v1(req: Request, client: df.DurableOrchestrationClient) -> Response:
        """OpenAI v1 surface: `model` in the body picks the deployment."""
        return await _serve(gateway, req, client, start_async)

    @bp.route(route="openai/models", methods=["GET"], auth_level=ANONYMOUS)
    async def azure_models(req: Request) -> Response:
        """The models the configured backends serve, for Azure-style clients."""
        return await _serve(gateway, req)

    @bp.route(route="health", methods=["GET"], auth_level=ANONYMOUS)
    async def health(req: Request) -> JSONResponse:
        """Liveness: the app is loaded and its settings are valid (it would not have started otherwise)."""
        return JSONResponse({"status": "ok", "backends": len(gateway.settings.backends)})

    # Operator routes: function keys (the host checks them). Not under admin/, which the host reserves.
    @bp.route(route="gateway/backends", methods=["GET"], auth_level=FUNCTION)
    async def list_backends(req: Request) -> JSONResponse:
        """Every backend: configuration (secrets masked), breaker, latency, last error, capacity, probe."""
        await gateway.pool.refresh_if_due()
        return JSONResponse(operator.backends_view(gateway))

    @bp.route(route="gateway/backends/{name}/{action}", methods=["POST"], auth_level=FUNCTION)
    async def change_backend(req: Request) -> JSONResponse:
        """reset (close the breaker everywhere), disable or enable a backend for every instance."""
        name, action = req.url.path.rstrip("/").split("/")[-2:]
        status, body = await operator.change_backend(gateway, name, action)
        return JSONResponse(body, status_code=status)

    @bp.route(route="gateway/stats", methods=["GET"], auth_level=FUNCTION)
    async def stats(req: Request) -> JSONResponse:
        """Counters of this instance: requests handled and storage operations made."""
        return JSONResponse(operator.stats(gateway))

    @bp.timer_trigger(arg_name="timer", schedule=gateway.settings.probe_schedule, run_on_startup=False)
    async def probe_backends(timer: func.TimerRequest) -> None:
        """Probes APIM-mode backends on GATEWAY_PROBE_SCHEDULE and shares the results."""
        await operator.probe(gateway)

    return bp


async def _serve(gateway: Gateway, req: Request, client=None, start_async: StartAsync | None = None) -> Response:
    inbound = Inbound(req.method, req.url.path, req.url.query, dict(req.headers.items()), await req.body())
    defer = None
    if client is not None and start_async is not None:

        async def defer(deferred: Deferred) -> Outbound:
            return await start_async(client, deferred)

    return to_response(await gateway.handle(inbound, defer))


def to_response(out: Outbound) -> Response:
    """The FastAPI response for an Outbound: streamed chunk by chunk, or whole."""
    if out.stream is not None:
        return StreamingResponse(out.stream, status_code=out.status, headers=out.headers)
    return Response(out.body, status_code=out.status, headers=out.headers)
