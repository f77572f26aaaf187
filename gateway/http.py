"""The HTTP functions: FastAPI Request/Response ⇄ pipeline. The only azure.functions user in gateway/.

Every HTTP function in the app uses the streaming extension's types (importing it switches the whole app),
so SSE is relayed chunk by chunk instead of buffered by the host. Routes carry no `api/` prefix (host.json
sets routePrefix to ""), so clients use the gateway's base URL exactly as an Azure OpenAI endpoint.

Data-plane routes accept every method and let the gateway answer a wrong one with OpenAI's 405 and an
`Allow` header: a route registered for POST only would get the host's empty 404 instead.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import azure.durable_functions as df
import azure.functions as func
from azurefunctions.extensions.http.fastapi import JSONResponse, Request, Response, StreamingResponse

from . import console, errors, operations
from .bootstrap import Services
from .pipeline import Deferred, Inbound, Outbound, error_outbound

# (durable client, deferred request) -> the 202 answer
StartAsync = Callable[[Any, Deferred], Awaitable[Outbound]]

__all__ = ["ALL_METHODS", "StartAsync", "build_blueprint", "inbound", "to_response"]

ANONYMOUS = func.AuthLevel.ANONYMOUS
FUNCTION = func.AuthLevel.FUNCTION
ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


def build_blueprint(services: Services, start_async: StartAsync | None = None) -> df.Blueprint:
    """The data-plane and operator routes, bound to one set of services (the gateway authenticates clients).

    `start_async(client, deferred)` starts the async path for requests the pipeline defers; the
    data-plane functions get a Durable client binding for it.
    """
    bp = df.Blueprint()
    pipeline, pool = services.pipeline, services.pool

    @bp.route(route="openai/deployments/{deployment}/{*operation}", methods=ALL_METHODS, auth_level=ANONYMOUS)
    @bp.durable_client_input(client_name="client")  # type: ignore[untyped-decorator]  # unannotated in the SDK
    async def azure_openai(req: Request, client: df.DurableOrchestrationClient) -> Response:
        """Azure-native passthrough: /openai/deployments/{deployment}/{operation}?api-version=..."""
        return await _serve(services, req, client, start_async)

    @bp.route(route="v1/{*operation}", methods=ALL_METHODS, auth_level=ANONYMOUS)
    @bp.durable_client_input(client_name="client")  # type: ignore[untyped-decorator]  # unannotated in the SDK
    async def openai_v1(req: Request, client: df.DurableOrchestrationClient) -> Response:
        """OpenAI v1 surface: `model` in the body picks the deployment."""
        return await _serve(services, req, client, start_async)

    @bp.route(route="openai/models", methods=ALL_METHODS, auth_level=ANONYMOUS)
    async def azure_models(req: Request) -> Response:
        """The models the configured backends serve, for Azure-style clients."""
        return await _serve(services, req)

    @bp.route(route="health", methods=["GET"], auth_level=ANONYMOUS)
    async def health(req: Request) -> JSONResponse:
        """Liveness: the app is loaded and its settings are valid (it would not have started otherwise)."""
        return JSONResponse({"status": "ok", "backends": len(services.settings.backends)})

    # Operator routes: function keys (the host checks them). Not under admin/, which the host reserves.
    @bp.route(route="gateway/backends", methods=["GET"], auth_level=FUNCTION)
    async def list_backends(req: Request) -> JSONResponse:
        """Every backend and its deployments: configuration (secrets masked), breakers, latency, capacity, probe."""
        await pool.refresh_if_due()
        return JSONResponse(operations.backends_view(pool, services.attempts.in_flight))

    @bp.route(route="gateway/backends/{name}/{action}", methods=["POST"], auth_level=FUNCTION)
    async def change_backend(req: Request) -> Response:
        """reset (close the breakers everywhere), disable or enable a backend for every instance."""
        name, action = req.url.path.rstrip("/").split("/")[-2:]
        try:
            return JSONResponse(await operations.change_backend(pool, name, action))
        except errors.GatewayError as exc:
            return to_response(error_outbound(exc))

    @bp.route(route="gateway/console", methods=["GET"], auth_level=FUNCTION)
    async def operator_console(req: Request) -> Response:
        """The operator console (open it with ?code=<function key>): backends, callers, tokens, recent work."""
        body, headers = console.page()
        return Response(body, status_code=200, headers=headers)

    @bp.route(route="gateway/usage", methods=["GET"], auth_level=FUNCTION)
    async def usage(req: Request) -> Response:
        """Requests and tokens per caller/model/backend/deployment over a window, summed over every instance."""
        try:
            return JSONResponse(await operations.usage_view(services.usage_counters, dict(req.query_params)))
        except errors.GatewayError as exc:
            return to_response(error_outbound(exc))

    @bp.route(route="gateway/stats", methods=["GET"], auth_level=FUNCTION)
    async def stats(req: Request) -> JSONResponse:
        """Counters of this instance: requests handled and storage operations made."""
        return JSONResponse(operations.stats(pool, pipeline.requests, services.usage_counters))

    @bp.timer_trigger(arg_name="timer", schedule=services.settings.probe_schedule, run_on_startup=False)
    async def probe_backends(timer: func.TimerRequest) -> None:
        """Probes APIM-mode backends on GATEWAY_PROBE_SCHEDULE and shares the results."""
        await operations.probe(services.attempts)

    return bp


async def inbound(req: Request, *, body: bool = True) -> Inbound:
    """The hosting-independent view of a request (header names lower-case, as Starlette gives them)."""
    return Inbound(
        req.method, req.url.path, req.url.query, dict(req.headers.items()), await req.body() if body else b""
    )


async def _serve(
    services: Services, req: Request, client: Any = None, start_async: StartAsync | None = None
) -> Response:
    defer = None
    if client is not None and start_async is not None:

        async def defer(deferred: Deferred) -> Outbound:
            return await start_async(client, deferred)

    return to_response(await services.pipeline.handle(await inbound(req), defer))


def to_response(out: Outbound) -> Response:
    """The FastAPI response for an Outbound: streamed chunk by chunk, or whole."""
    if out.stream is not None:
        return StreamingResponse(out.stream, status_code=out.status, headers=out.headers)
    return Response(out.body, status_code=out.status, headers=out.headers)
