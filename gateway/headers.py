"""Which headers cross the gateway: the client's to a backend, and a backend's back to the client.

Never forwarded: hop-by-hop headers (RFC 9110 §7.6.1), the client's credentials for the gateway or the
Functions host, what the App Service front end adds about itself, and headers the gateway sets itself.
Never relayed back: hop-by-hop headers, cookies, and the backend's `Date` and `Server` (the host adds its own,
and a client would otherwise see two of each). Hop-by-hop also means any header the sender names in its own
`Connection` header (RFC 9110 §7.6.1), in either direction.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["STANDARD_FORWARDED", "client_request_id", "forwarded_headers", "missing_header", "relayed_headers"]

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

# Hop-by-hop headers (RFC 9110 §7.6.1) and headers the gateway sets itself; never copied across.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
# Client credentials for the gateway (or the Functions host): never forwarded to a backend.
_CLIENT_AUTH = frozenset({"api-key", "authorization", "x-functions-key", "cookie"})
# What the App Service / Functions front end adds about itself: not the backend's business.
_PLATFORM = frozenset(
    {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-port", "x-forwarded-tlsversion",
     "x-original-url", "x-arr-log-id", "x-arr-ssl", "arr-ssl", "x-site-deployment-id", "was-default-hostname",
     "disguised-host", "client-ip", "x-client-ip", "x-client-port", "x-appservice-proto", "x-waws-unencoded-url",
     "max-forwards"}
)  # fmt: skip
_REQUEST_DROP = _HOP_BY_HOP | _CLIENT_AUTH | _PLATFORM | {"accept-encoding", "x-request-id", "prefer"}
# The host adds its own Date and Server: the backend's would be sent twice.
_RESPONSE_DROP = _HOP_BY_HOP | {"set-cookie", "x-request-id", "date", "server"}


# What a backend may see of the client's headers without an operator's say: what the APIs define (content
# negotiation, Azure's client request id, OpenAI's beta opt-ins) and W3C trace context. GATEWAY_FORWARD_HEADERS
# adds to it; everything else (SDK telemetry, cookies, whatever a client sends) stays at the gateway.
STANDARD_FORWARDED = frozenset(
    {"content-type", "accept", "accept-language", "user-agent", "x-ms-client-request-id", "x-ms-useragent",
     "openai-beta", "traceparent", "tracestate"}
)  # fmt: skip


def forwarded_headers(
    inbound: Mapping[str, str], request_id: str, allowed: frozenset[str] = frozenset()
) -> dict[str, str]:
    """The client's headers a backend may see: the standard ones and `allowed` (GATEWAY_FORWARD_HEADERS), never
    credentials or hop-by-hop ones; our request id, identity encoding."""
    options = _connection_options(inbound)
    drop = _REQUEST_DROP | options if options else _REQUEST_DROP
    headers = {k: v for k, v in inbound.items() if (k in STANDARD_FORWARDED or k in allowed) and k not in drop}
    headers["x-request-id"] = request_id
    headers["accept-encoding"] = "identity"  # we read usage from the bytes we relay
    return headers


def relayed_headers(backend: Mapping[str, str]) -> dict[str, str]:
    """The backend's answer headers a client may see (the gateway then adds its own)."""
    options = _connection_options(backend)
    drop = _RESPONSE_DROP | options if options else _RESPONSE_DROP
    return {k: v for k, v in backend.items() if k.lower() not in drop}


def _connection_options(headers: Mapping[str, str]) -> frozenset[str]:
    """The header names a message's `Connection` header lists (every such header, any case): hop-by-hop too.

    On the request path for every answer: a case-insensitive multidict (aiohttp's) is asked, not walked, and a
    `Connection` that names only itself (`keep-alive`, `close`) adds nothing."""
    getall = getattr(headers, "getall", None)
    values = getall("connection", ()) if getall else [v for k, v in headers.items() if k.lower() == "connection"]
    if not values:
        return _NO_OPTIONS
    names = {name.strip().lower() for value in values for name in value.split(",")} - _SELF_OPTIONS
    return frozenset(names) if names else _NO_OPTIONS


_NO_OPTIONS: frozenset[str] = frozenset()
_SELF_OPTIONS = frozenset({"", "close", "keep-alive"})  # already dropped (or not a header)


def client_request_id(headers: Mapping[str, str]) -> str | None:
    """The client's `x-request-id` when it is a plain token (it is echoed, forwarded and logged); else None."""
    value = headers.get("x-request-id", "")
    return value if _REQUEST_ID.fullmatch(value) else None


def missing_header(headers: Mapping[str, str], required: frozenset[str] | tuple[str, ...]) -> str | None:
    """The first required header (GATEWAY_REQUIRED_HEADERS, the profile's `headers=`) the request lacks."""
    return next((name for name in sorted(required) if not headers.get(name, "").strip()), None)
