"""The async path's functions: the orchestrator, its activities, results routes and housekeeping.

Decorated wrappers only; the logic is in workflows (deterministic), activities and starter (plain async).
"""

from __future__ import annotations

import json
from typing import Any

import azure.durable_functions as df
import azure.functions as func
from azurefunctions.extensions.http.fastapi import JSONResponse, Request, Response

from gateway.bootstrap import Services
from gateway.deferral import Deferred
from gateway.errors import GatewayError
from gateway.http import ALL_METHODS, body_stream, inbound, to_response
from gateway.messages import Outbound, error_outbound

from . import activities, async_routes, batch_activities, batch_api, starter, work_view, workflows

__all__ = ["build_async_blueprint", "starter_for"]


def starter_for(services: Services):
    """What the data-plane functions call to defer a request: bound to these services, given the request's client."""

    async def start(client: df.DurableOrchestrationClient, deferred: Deferred) -> Outbound:
        return await starter.start(client, services, deferred)

    return start


def build_async_blueprint(services: Services) -> df.Blueprint:
    bp = df.Blueprint()

    @bp.orchestration_trigger(context_name="context", orchestration=workflows.RELAY_ORCHESTRATOR)
    def relay_request(context: df.DurableOrchestrationContext):
        """One deferred request, retried across backends with durable timers, ending in a completion message."""
        return (yield from workflows.relay_request(context))

    @bp.activity_trigger(input_name="payload", activity=workflows.ATTEMPT_ACTIVITY)
    async def attempt_backend(payload: str) -> dict:
        return await activities.attempt_backend(services, _decoded(payload))

    @bp.activity_trigger(input_name="payload", activity=workflows.PUBLISH_ACTIVITY)
    async def publish_completion(payload: str) -> dict:
        return await activities.publish_completion(services, _decoded(payload))

    @bp.route(route="results/{id}", methods=ALL_METHODS, auth_level=func.AuthLevel.ANONYMOUS)
    @bp.durable_client_input(client_name="client")
    async def results(req: Request, client: df.DurableOrchestrationClient) -> Response:
        """GET: the result of an async request (202 while running). DELETE: cancel it, or delete a finished one."""
        return await _async_route(services, req, client, "result")

    @bp.route(route="status/{id}", methods=ALL_METHODS, auth_level=func.AuthLevel.ANONYMOUS)
    @bp.durable_client_input(client_name="client")
    async def status(req: Request, client: df.DurableOrchestrationClient) -> Response:
        """The Durable status of an async request, to its caller only: no system key ever leaves the gateway."""
        return await _async_route(services, req, client, "status")

    @bp.orchestration_trigger(context_name="context", orchestration=workflows.BATCH_ORCHESTRATOR)
    def batch_job(context: df.DurableOrchestrationContext):
        """A managed OpenAI batch across backends: submit, poll on durable timers, collect, resubmit."""
        return (yield from workflows.batch_job(context))

    for name in ("batch_submit", "batch_poll", "batch_cancel_backend", "batch_collect", "batch_finish"):
        _register_activity(bp, services, name, getattr(batch_activities, name))

    for function_name, route in (
        ("v1_files", "v1/files/{*rest}"),
        ("v1_batches", "v1/batches/{*rest}"),
        ("azure_files", "openai/files/{*rest}"),
        ("azure_batches", "openai/batches/{*rest}"),
        ("azure_v1_files", "openai/v1/files/{*rest}"),
        ("azure_v1_batches", "openai/v1/batches/{*rest}"),
    ):
        bp.route(route=route, methods=ALL_METHODS, auth_level=func.AuthLevel.ANONYMOUS)(
            bp.durable_client_input(client_name="client")(_batch_route(services, function_name))
        )

    @bp.route(route="gateway/async/housekeeping", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
    @bp.durable_client_input(client_name="client")
    async def housekeeping_now(req: Request, client: df.DurableOrchestrationClient) -> JSONResponse:
        """Runs the housekeeping timer's work on demand (operators, and hosts without timers)."""
        return JSONResponse(await starter.housekeeping(client, services))

    @bp.route(route="gateway/work", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
    @bp.durable_client_input(client_name="client")
    async def recent_work(req: Request, client: df.DurableOrchestrationClient) -> JSONResponse:
        """Async requests and batches created in the last `hours` (operator console), newest first."""
        try:
            hours = float(req.query_params.get("hours") or 1)
        except ValueError:
            hours = 1.0
        return JSONResponse(await work_view.recent_work(client, services.upstream, hours))

    @bp.timer_trigger(arg_name="timer", schedule=services.settings.housekeeping_schedule, run_on_startup=False)
    @bp.durable_client_input(client_name="client")
    async def housekeeping(timer: func.TimerRequest, client: df.DurableOrchestrationClient) -> None:
        """Cancelled completions for work terminated from outside, and purge after GATEWAY_PURGE_AFTER_DAYS."""
        await starter.housekeeping(client, services)

    return bp


def _register_activity(bp: df.Blueprint, services: Services, name: str, implementation) -> None:
    """One activity function named `name` that decodes its input and calls `implementation(services, payload)`."""

    async def activity(payload: str) -> dict:
        return await implementation(services, _decoded(payload))

    bp.activity_trigger(input_name="payload", activity=name)(_renamed(activity, name))


async def _async_route(services: Services, req: Request, client: Any, route: str) -> Response:
    """`/results/{id}` or `/status/{id}` (see orchestrations/async_routes.py); every method reaches it (405 there)."""
    try:
        request = await inbound(req)
    except GatewayError as exc:
        return to_response(error_outbound(exc))
    return to_response(await async_routes.answer(client, services, request, route))


def _batch_route(services: Services, name: str):
    async def batches(req: Request, client: df.DurableOrchestrationClient) -> Response:
        """Files and Batches on both API styles (see orchestrations/batch_api.py); the body is streamed there."""
        try:
            request = await inbound(req)
        except GatewayError as exc:
            return to_response(error_outbound(exc))
        return to_response(await batch_api.handle(client, services, request, body_stream(req)))

    return _renamed(batches, name)


def _renamed(function, name: str):
    """Functions are registered under their __name__: give each generated wrapper its own."""
    function.__name__ = function.__qualname__ = name
    return function


def _decoded(payload: str | dict) -> dict:
    """Activity input arrives JSON-encoded from the host."""
    return json.loads(payload) if isinstance(payload, str) else payload
