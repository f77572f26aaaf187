"""The app as it runs with invalid or missing settings: indexed, visible, and refusing work with a reason.

Raising while `function_app` is imported would make the Functions host index no function at all ("No job
functions found"): the operator would see an empty app and have to dig the reason out of the logs. Instead the
same routes are registered and answer 503: `/health` names the setting and the problem, every data-plane route
answers `gateway_misconfigured` naming the setting, never its value (values may be secrets). The async
functions are not registered until the settings are valid again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import azure.durable_functions as df
import azure.functions as func
from azurefunctions.extensions.http.fastapi import JSONResponse, Request, Response

from . import errors
from .http import ALL_METHODS, to_response
from .messages import error_outbound

__all__ = ["build_misconfigured_blueprint"]

log = logging.getLogger("gateway.config")

RETRY_AFTER_S = 30
# Every route the working app serves, under a catch-all of the same prefix.
_DATA_PLANE = ("openai/{*rest}", "v1/{*rest}", "results/{*rest}", "status/{*rest}")


def build_misconfigured_blueprint(problem: errors.ConfigError) -> df.Blueprint:
    log.error("The gateway is misconfigured: %s", problem)  # the setting's name and the problem, never a value
    bp = df.Blueprint()
    error = errors.GatewayError(
        503,
        f"The gateway is misconfigured: setting {problem.setting}: {problem.problem}.",
        type="service_unavailable",
        code="gateway_misconfigured",
        param=problem.setting,
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )

    @bp.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
    async def health(req: Request) -> JSONResponse:
        """Readiness: 503 with the setting to fix."""
        body = {"status": "misconfigured", "setting": problem.setting, "problem": problem.problem}
        return JSONResponse(body, status_code=503)

    for index, route in enumerate(_DATA_PLANE):
        bp.route(route=route, methods=ALL_METHODS, auth_level=func.AuthLevel.ANONYMOUS)(
            _refusing(error, f"misconfigured_{index}")
        )
    bp.route(route="gateway/{*rest}", methods=ALL_METHODS, auth_level=func.AuthLevel.FUNCTION)(
        _refusing(error, "misconfigured_operator")
    )
    return bp


def _refusing(error: errors.GatewayError, name: str) -> Callable[[Request], Awaitable[Response]]:
    async def refuse(req: Request) -> Response:
        return to_response(error_outbound(error))

    refuse.__name__ = refuse.__qualname__ = name  # functions are registered under their __name__
    return refuse
