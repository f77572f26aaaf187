"""A local Application Insights ingestion endpoint: what the real Azure Monitor exporter sends, decoded.

    with IngestionEndpoint().threaded() as ingestion:
        env = {"APPLICATIONINSIGHTS_CONNECTION_STRING": ingestion.connection_string}
        ...
        ingestion.wait_for(lambda items: any(i.base_type == "RequestData" for i in items))

It accepts (over HTTP or HTTPS) `POST /v2.1/track` and `/v2/track` (gzip or plain; a JSON array or
newline-delimited envelopes), answers as the service does (`itemsReceived`, `itemsAccepted`, `errors`), and
keeps every envelope with the headers of the post that carried it (so a test can check the Microsoft Entra
bearer token). Waiting is on a condition variable signalled by each post, never a sleep.
"""

from __future__ import annotations

import gzip
import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.support.local_server import LocalServer, serve_app

__all__ = ["Envelope", "IngestionEndpoint"]


@dataclass(frozen=True)
class Envelope:
    """One telemetry item as the exporter sent it, with the headers of its post."""

    raw: dict[str, Any]
    headers: dict[str, str]
    path: str

    @property
    def base_type(self) -> str:
        return self.raw.get("data", {}).get("baseType", "")

    @property
    def data(self) -> dict[str, Any]:
        return self.raw.get("data", {}).get("baseData", {})

    @property
    def properties(self) -> dict[str, str]:
        return self.data.get("properties") or {}

    @property
    def tags(self) -> dict[str, str]:
        return self.raw.get("tags") or {}

    def summary(self) -> str:
        """One line: the type, and the name (the metric names for metrics) with its request id if any."""
        if self.base_type == "MetricData":
            return f"{self.base_type} {','.join(m['name'] for m in self.metrics)}"
        request_id = self.properties.get("gateway.request_id", "")
        return f"{self.base_type} {self.data.get('name', '')} {request_id}".strip()

    @property
    def metrics(self) -> list[dict[str, Any]]:
        """The data points of a MetricData item (name, value, count, ...)."""
        return self.data.get("metrics") or []


class IngestionEndpoint(LocalServer):
    """`ssl_context` makes it HTTPS (the exporter sends a bearer token only over TLS: see tests/support/tls.py)."""

    def __init__(self, ssl_context: Any = None) -> None:
        self.ssl_context = ssl_context
        self.instrumentation_key = str(uuid.uuid4())  # a fresh one: the exporter's retry folder is per key
        self.port: int | None = None
        self._items: list[Envelope] = []
        self._posts = 0
        self.unknown: list[str] = []  # requests to any other path ("METHOD /path")
        self._cond = threading.Condition()
        self._runner: web.AppRunner | None = None

    @property
    def connection_string(self) -> str:
        if self.port is None:
            raise RuntimeError("the ingestion endpoint is not running")
        scheme = "https" if self.ssl_context else "http"
        return f"InstrumentationKey={self.instrumentation_key};IngestionEndpoint={scheme}://127.0.0.1:{self.port}/"

    @property
    def items(self) -> list[Envelope]:
        with self._cond:
            return list(self._items)

    def wait_for[T](self, found: Callable[[list[Envelope]], T], timeout_s: float = 20.0) -> T:
        """Blocks until `found(items)` is truthy and returns it, or raises TimeoutError saying what arrived."""
        with self._cond:
            result = self._cond.wait_for(lambda: found(list(self._items)), timeout_s)
            if not result:
                arrived = "\n".join(sorted({i.summary() for i in self._items}))
                raise TimeoutError(f"not found within {timeout_s:g} s; {len(self._items)} item(s) arrived:\n{arrived}")
            return result

    async def _track(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding", "").lower() == "gzip" or body[:2] == b"\x1f\x8b":
            body = gzip.decompress(body)
        text = body.decode("utf-8")
        try:
            parsed = json.loads(text)
            envelopes = parsed if isinstance(parsed, list) else [parsed]
        except json.JSONDecodeError:  # newline-delimited envelopes
            envelopes = [json.loads(line) for line in text.splitlines() if line.strip()]
        headers = {k.lower(): v for k, v in request.headers.items()}
        with self._cond:
            self._posts += 1
            self._items.extend(Envelope(e, headers, request.path) for e in envelopes)
            self._cond.notify_all()
        count = len(envelopes)
        return web.json_response({"itemsReceived": count, "itemsAccepted": count, "errors": []})

    async def _route(self, request: web.Request) -> web.Response:
        """`/v2.1/track` and `/v2/track`; the exporter writes `//v2.1/track` when the endpoint ends with `/`,
        as real connection strings do, and the service takes it."""
        if request.method == "POST" and request.path.lstrip("/") in ("v2.1/track", "v2/track"):
            return await self._track(request)
        with self._cond:
            self.unknown.append(f"{request.method} {request.path}")
        return web.json_response({"error": "not found"}, status=404)

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._route)
        self._runner, self.port = await serve_app(app, ssl_context=self.ssl_context)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
