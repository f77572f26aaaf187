"""Errors the gateway itself produces, and the OpenAI-shaped body every one of them is sent as.

Backend answers are relayed unchanged; only errors that originate here use these types, so a client's
OpenAI SDK always finds `error.message`, `error.type` and `error.code` where it expects them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

__all__ = [
    "ConfigError",
    "GatewayError",
    "bad_request",
    "conversation_unavailable",
    "error_body",
    "error_object",
    "internal_error",
    "invalid_token",
    "method_not_allowed",
    "not_found",
    "storage_unavailable",
    "stream_error_event",
    "too_large",
    "unauthorized",
    "unavailable",
    "upstream_failure",
]


class ConfigError(Exception):
    """A setting is missing or wrong; raised at start-up, the message names the setting, never its secret."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting
        self.problem = problem


class GatewayError(Exception):
    """A request the gateway answers itself, with an HTTP status and an OpenAI-style error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
        limit: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = dict(headers or {})
        # The caller's limit that refused the request (rpm, tpm, concurrency, models, suspended): its usage
        # record names it. Never in the body, which says it in words.
        self.limit = limit

    def body(self) -> bytes:
        return error_body(self.message, type=self.type, code=self.code, param=self.param)


def error_object(
    message: str, *, type: str = "gateway_error", code: str | None = None, param: str | None = None
) -> dict[str, str | None]:
    """The inner error object of the OpenAI API (also carried in async outputs and completion messages)."""
    return {"message": message, "type": type, "param": param, "code": code}


def error_body(message: str, *, type: str, code: str | None = None, param: str | None = None) -> bytes:
    """The JSON error envelope of the OpenAI API: {"error": {"message", "type", "param", "code"}}."""
    return json.dumps({"error": error_object(message, type=type, code=code, param=param)}).encode()


# Constructors for the errors the pipeline raises, so wording and codes stay consistent.


def bad_request(message: str, *, code: str = "invalid_request", param: str | None = None) -> GatewayError:
    return GatewayError(400, message, code=code, param=param)


def unauthorized() -> GatewayError:
    return GatewayError(
        401,
        "Missing or invalid API key. Send it as the 'api-key' header or as 'Authorization: Bearer <key>'.",
        type="authentication_error",
        code="invalid_api_key",
    )


def invalid_token(reason: str) -> GatewayError:
    """401 for a bearer token that failed a check: `reason` names the check and never quotes the token."""
    return GatewayError(
        401,
        f"Invalid bearer token: {reason}.",
        type="authentication_error",
        code="invalid_token",
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},  # RFC 6750 §3
    )


def internal_error() -> GatewayError:
    """A bug on our side: the client learns nothing of it but that it happened (the trace goes to the logs)."""
    return GatewayError(500, "The gateway failed to process the request.", type="server_error", code="internal_error")


def method_not_allowed(method: str, path: str, allow: str) -> GatewayError:
    return GatewayError(
        405, f"Method {method} is not allowed on {path}.", code="method_not_allowed", headers={"Allow": allow}
    )


def not_found(message: str, *, code: str = "not_found") -> GatewayError:
    return GatewayError(404, message, code=code)


def too_large(limit: int) -> GatewayError:
    return GatewayError(413, f"Request body exceeds the gateway limit of {limit} bytes.", code="request_too_large")


def unavailable(
    status: int, message: str, retry_after_s: int | None, *, code: str = "backends_unavailable"
) -> GatewayError:
    """429/503 when the request cannot be served now (by default: no backend can take it); Retry-After tells the
    client when to try again."""
    headers = {"Retry-After": str(max(1, retry_after_s))} if retry_after_s is not None else None
    return GatewayError(
        status,
        message,
        type="rate_limit_error" if status == 429 else "service_unavailable",
        code=code,
        headers=headers,
    )


def storage_unavailable(retry_after_s: int = 5) -> GatewayError:
    """503 when the gateway's own storage (results, files, the Durable task hub) cannot be reached: an outage the
    client waits out, never a 500 that reads like a bug."""
    message = "The gateway's storage is unavailable; retry later."
    return unavailable(503, message, retry_after_s, code="storage_unavailable")


def conversation_unavailable(message: str, retry_after_s: int) -> GatewayError:
    """503 for a request that must reach the backend keeping its response (affinity) when that cannot be done:
    it is never sent elsewhere, where the conversation does not exist."""
    return unavailable(503, message, retry_after_s, code="conversation_unavailable")


class CoolingDown(GatewayError):
    """Every backend is cooling down past what a synchronous request may wait: 429, or the async path."""


def cooling_down(retry_after_s: int) -> CoolingDown:
    return CoolingDown(
        429,
        "Every backend for this model is cooling down; retry after the indicated time.",
        type="rate_limit_error",
        code="backends_unavailable",
        headers={"Retry-After": str(max(1, retry_after_s))},
    )


def stream_error_event(message: str, *, responses: bool) -> bytes:
    """The SSE event that ends a stream the backend broke off: the one Azure sends, so SDKs raise instead of
    taking a truncated answer for a whole one (a Responses stream gets its typed `error` event)."""
    if responses:
        payload = {"type": "error", "code": "bad_gateway", "message": message, "param": None}
        return b"event: error\ndata: " + json.dumps(payload).encode() + b"\n\n"
    return b"data: " + error_body(message, type="upstream_error", code="bad_gateway") + b"\n\n"


def upstream_failure(status: int, message: str) -> GatewayError:
    """502 (bad gateway) or 504 (gateway timeout) when the last backend attempt failed at transport level."""
    return GatewayError(status, message, type="upstream_error", code="bad_gateway" if status == 502 else "timeout")
