"""The HTTP functions: FastAPI Request/Response ⇄ pipeline. The only azure.functions user in gateway/.

Every HTTP function in the app uses the streaming extension's types (importing it switches the whole app),
so SSE is relayed chunk by chunk instead of buffered by the host. Routes carry no `api/` prefix (host.json
sets routePrefix to ""), so clients use the gateway's base URL exactly as an Azure OpenAI endpoint.

Data-plane routes accept every method and let the gateway answer a wrong one with OpenAI's 405 and an
`Allow` header: a route registered for POST only would get the host's empty 404 instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import unquote

import azure.durable_functions as df
import azure.functions as func
from azurefunctions.extensions.http.fastapi import JSONResponse, Request, Response, StreamingResponse
from starlette.requests import ClientDisconnect  # what FastAPI's Request raises; the extension is built on it

from . import console, errors, guard, operations
from .bodies import check_declared_length, read_capped
from .bootstrap import Services
from .deferral import Deferred
from .messages import Inbound, Outbound, error_outbound

# (durable client, deferred request) -> the 202 answer
StartAsync = Callable[[Any, Deferred], Awaitable[Outbound]]

__all__ = ["ALL_METHODS", "StartAsync", "body_stream", "build_blueprint", "inbound", "to_response"]

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
    # The data plane's Durable client binding, taken as the host's JSON text: the SDK's rich client
    # (`durable_client_input`) parses it on every call, and only a deferred request needs it.
    _durable_client = bp.generic_input_binding(arg_name="client", type="durableClient")

    @bp.route(route="openai/deployments/{deployment}/{*operation}", methods=ALL_METHODS, auth_level=ANONYMOUS)
    @_durable_client
    async def azure_openai(req: Request, client: str) -> Response:
        """Azure-native passthrough: /openai/deployments/{deployment}/{operation}?api-version=..."""
        return await _serve(services, req, client, start_async)

    @bp.route(route="v1/{*operation}", methods=ALL_METHODS, auth_level=ANONYMOUS)
    @_durable_client
    async def openai_v1(req: Request, client: str) -> Response:
        """OpenAI v1 surface: `model` in the body picks the deployment."""
        return await _serve(services, req, client, start_async)

    @bp.route(route="openai/v1/{*operation}", methods=ALL_METHODS, auth_level=ANONYMOUS)
    @_durable_client
    async def azure_openai_v1(req: Request, client: str) -> Response:
        """Azure's v1 surface, served exactly as /v1: `OpenAI(base_url=<gateway>/openai/v1)` works."""
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
        return await _operate(operations.change_backend(pool, name, action))

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
        """Counters of this instance: requests handled, storage operations made and per second (last minute)."""
        limiter = services.quotas.limiter
        slot_ops = pipeline.slots.operations + pipeline.quotas.caller_slots.operations
        limit_ops = (limiter.operations if limiter else 0) + slot_ops
        unexpected = operations.unexpected_errors(services)
        return JSONResponse(operations.stats(pool, pipeline.requests, services.usage_counters, limit_ops, unexpected))

    @bp.route(route="gateway/callers", methods=["GET"], auth_level=FUNCTION)
    async def list_callers(req: Request) -> JSONResponse:
        """Known callers: profile, suspension, limits and their use in the current window (this instance's view)."""
        await pool.refresh_if_due()
        return JSONResponse(operations.callers_view(services))

    @bp.route(route="gateway/callers/{name}/{action}", methods=["POST"], auth_level=FUNCTION)
    async def change_caller(req: Request) -> Response:
        """suspend or resume a caller on every instance (within one state refresh)."""
        name, action = req.url.path.rstrip("/").split("/")[-2:]
        return await _operate(operations.change_caller(services.governance, unquote(name), action))

    @bp.route(route="gateway/profiles", methods=["GET"], auth_level=FUNCTION)
    async def list_profiles(req: Request) -> JSONResponse:
        """Every profile as it applies now (configuration plus operators' overrides)."""
        await pool.refresh_if_due()
        return JSONResponse({"profiles": services.governance.profiles()})

    @bp.route(route="gateway/profiles/{name}", methods=["PUT", "DELETE"], auth_level=FUNCTION)
    async def change_profile(req: Request) -> Response:
        """PUT: override a profile's keys (JSON object) on every instance. DELETE: back to configuration."""
        name = req.url.path.rstrip("/").rsplit("/", 1)[-1]
        if req.method == "DELETE":
            return await _operate(services.governance.reset_profile(name))
        return await _operate(operations.override_profile(services.governance, name, await req.body()))

    @bp.timer_trigger(arg_name="timer", schedule=services.settings.probe_schedule, run_on_startup=False)
    async def probe_backends(timer: func.TimerRequest) -> None:
        """Probes APIM-mode backends on GATEWAY_PROBE_SCHEDULE and shares the results."""
        await operations.probe(services.attempts)

    return bp


async def _operate(action: Awaitable[dict[str, Any]]) -> Response:
    """An operator action's answer: its JSON, or the OpenAI-shaped error it raised."""
    try:
        return JSONResponse(await action)
    except errors.GatewayError as exc:
        return to_response(error_outbound(exc))


async def inbound(req: Request, *, limit: int | None = None, body: bool = False) -> Inbound:
    """The hosting-independent view of a request (header names lower-case, as Starlette gives them).

    Headers and path are checked first (`gateway.guard`). With `limit` the body is read, refused with 413
    when its Content-Length says it is too big (before reading) or once more than `limit` bytes arrived;
    without, it is left for the route to stream (`body_stream(req)`). Raises GatewayError. (`body=False` is
    accepted as before; reading a body always needs its limit.)
    """
    if body and limit is None:
        raise ValueError("inbound(req, body=True) needs limit=: a body is never read without a cap")
    headers = req.headers.items()
    guard.check_headers(headers)
    path = req.scope["path"]  # decoded, as routes match it (req.url.path re-encodes '?', '#' and '\')
    raw_path = (req.scope.get("raw_path") or b"").decode("latin-1")
    guard.check_path(path, raw_path)
    data = b""
    if limit is not None:  # the body is read only with a cap
        check_declared_length(req.headers, limit)
        data = await read_capped(body_stream(req), limit)
    query = req.scope.get("query_string", b"").decode("latin-1")
    return Inbound(req.method, path, query, dict(headers), data, raw_path)


async def body_stream(req: Request) -> AsyncIterator[bytes]:
    """The request body as it arrives; a client that goes away mid-body is a 400 (nobody may see it), not a crash."""
    try:
        async for chunk in req.stream():
            yield chunk
    except ClientDisconnect:
        raise errors.bad_request("The request body ended before its announced end.", code="incomplete_body") from None


async def _serve(
    services: Services, req: Request, client: str | None = None, start_async: StartAsync | None = None
) -> Response:
    defer = None
    if client is not None and start_async is not None:

        async def defer(deferred: Deferred) -> Outbound:
            return await start_async(df.DurableOrchestrationClient(client), deferred)

    try:
        request = await inbound(req, limit=services.settings.max_body_bytes)
    except errors.GatewayError as exc:
        return to_response(error_outbound(exc))
    return to_response(await services.pipeline.handle(request, defer))


def to_response(out: Outbound) -> Response:
    """The FastAPI response for an Outbound: streamed chunk by chunk, or whole."""
    if out.stream is not None:
        return StreamingResponse(out.stream, status_code=out.status, headers=out.headers)
    return Response(out.body, status_code=out.status, headers=out.headers)
