"""`/results/{id}` and `/status/{id}`: the gateway's own routes for an async request, as plain functions.

Both are registered for every method (orchestrations/blueprint.py) so a wrong one gets OpenAI's 405 with
`Allow` instead of the host's empty 404. A malformed id gets the same 404 as an unknown one (gateway/ids.py),
and storage or a Durable task hub that cannot be reached is a 503 with Retry-After, never a bare 500.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from gateway import errors, ids
from gateway.bootstrap import Services
from gateway.messages import Inbound, Outbound, error_outbound
from gateway.state_sync import STORAGE_ERRORS

from . import starter

__all__ = ["ALLOWED", "answer"]

log = logging.getLogger("orchestrations.async_routes")

Handler = Callable[[Any, Services, Inbound, str], Awaitable[Outbound]]
# route -> {method: handler}; each route's 404 code names it (`result_not_found`, `status_not_found`).
_ROUTES: dict[str, dict[str, Handler]] = {
    "result": {"GET": starter.get_result, "DELETE": starter.cancel},
    "status": {"GET": starter.get_status},
}
ALLOWED = {route: ", ".join(handlers) for route, handlers in _ROUTES.items()}


async def answer(client: Any, services: Services, inbound: Inbound, route: str) -> Outbound:
    """The answer to one request on `route` ("result" or "status"); every failure is an OpenAI-shaped error."""
    handlers = _ROUTES[route]
    try:
        handler = handlers.get(inbound.method)
        if handler is None:
            raise errors.method_not_allowed(inbound.method[:16], "this route", ALLOWED[route])
        instance_id = ids.instance_id(inbound.path.rstrip("/").rsplit("/", 1)[-1], what=route)
        return await handler(client, services, inbound, instance_id)
    except errors.GatewayError as exc:
        return error_outbound(exc)
    except STORAGE_ERRORS as exc:  # Blob Storage, or the Durable client's call to the host's task hub
        log.warning("Storage unavailable during %s of an async %s: %s", inbound.method[:16], route, type(exc).__name__)
        return error_outbound(errors.storage_unavailable())
