"""Realtime sessions: the gateway mints the client secret; the media goes straight to the backend.

A Realtime session runs over WebRTC or a WebSocket for minutes. A Functions HTTP trigger can hold neither (no
WebSocket upgrade, no UDP, 230 s per answer), so the gateway does what it can do well: authenticate and govern
the caller, choose a backend serving the model, and mint the ephemeral secret there with the backend's own
credential (through the one attempt). The secret is bound to that resource, so the answer says where to connect:
the `x-gateway-realtime-endpoint` header, and the same URL as a body field the official client ignores.
"""

from __future__ import annotations

import json

from .backend_config import Backend

__all__ = ["ENDPOINT_FIELD", "ENDPOINT_HEADER", "announce", "endpoint"]

ENDPOINT_HEADER = "x-gateway-realtime-endpoint"
ENDPOINT_FIELD = "gateway_realtime_endpoint"


def endpoint(backend: Backend) -> str:
    """The backend's Realtime URL (WebRTC: POST `{endpoint}/calls`; WebSocket: the same URL with `wss://`)."""
    return f"{backend.host}/openai/v1/realtime"


def announce(body: bytes, headers: dict[str, str], backend: Backend) -> bytes:
    """The minted secret's answer with the endpoint added (header and body); other answers unchanged."""
    try:
        answer = json.loads(body)
    except ValueError:
        return body
    if not isinstance(answer, dict):
        return body
    url = endpoint(backend)
    headers[ENDPOINT_HEADER] = url
    return json.dumps({**answer, ENDPOINT_FIELD: url}).encode()
