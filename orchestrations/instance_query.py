"""The Durable instance query, page by page.

The extension's instance query (`GET {rpcBaseUrl}instances/?createdTimeFrom=...`) answers one page: `top`
instances (100 when not given; on the Azure Storage provider the first ones by instance id) and, when more
match, an `x-ms-continuation-token` header to send back for the next page. The Python SDK's `get_status_by`
sends no `top`, sends no token and reads no header (azure-functions-durable-python#580, azure-functions-durable
1.7.0 is pinned): it returns the first 100 and nothing says that more exist. So this module makes the same
request itself through the gateway's one HTTP session, with an explicit `top`, and follows the token.

Pages come in instance-id order (on the Azure Storage provider), not by creation time, so "the newest" of a
window can only be known by reading the whole window: `query` does, up to `max_pages` requests, and says whether
it read everything.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from azure.durable_functions.constants import DATETIME_STRING_FORMAT
from azure.durable_functions.models.DurableOrchestrationStatus import DurableOrchestrationStatus

from gateway.upstream import Upstream

__all__ = ["CONTINUATION", "PAGE", "Listing", "newest_first", "pages", "query"]

PAGE = 100  # instances asked for per request (the extension's own default page)
DEFAULT_PAGES = 32  # requests per listing
CONTINUATION = "x-ms-continuation-token"
_TIMEOUT_S = 30.0
_NO_MORE = {"", "bnVsbA=="}  # no token, or base64 "null" (what some providers send at the end)


@dataclass(frozen=True, slots=True)
class Listing:
    items: list[Any]  # DurableOrchestrationStatus, in the query's order
    complete: bool  # nothing matching was left unread
    requests: int  # instance-query requests made


async def pages(
    client: Any,
    upstream: Upstream,
    *,
    created_from: datetime | None = None,
    created_to: datetime | None = None,
    runtime_status: Sequence[Any] = (),
    prefix: str | None = None,
    show_input: bool = False,
    top: int = PAGE,
) -> AsyncGenerator[list[Any]]:
    """Every page of the instances matching the filters (both times included), following the token."""
    url = _url(client, created_from, created_to, runtime_status, prefix, show_input, top)
    token: str | None = None
    while True:
        page, following = await _request(upstream, url, token)
        yield page
        if following is None or following == token:
            return
        token = following


async def query(client: Any, upstream: Upstream, *, max_pages: int = DEFAULT_PAGES, **filters: Any) -> Listing:
    """Every matching instance (filters as for `pages`), at most `max_pages` requests."""
    items: list[Any] = []
    requests = 0
    async for page in pages(client, upstream, **filters):
        items += page
        requests += 1
        if requests >= max_pages:
            return Listing(items, False, requests)  # whether more follow is not known: said not complete
    return Listing(items, True, requests)


async def _request(upstream: Upstream, url: str, token: str | None) -> tuple[list[Any], str | None]:
    """One page, and the token for the next one (None: this was the last)."""
    headers = {CONTINUATION: token} if token else {}
    # Not the backends' timeouts: a filtered query of the Instances table may take seconds on Azure.
    answer = await upstream.send("GET", url, headers, None, total_s=_TIMEOUT_S, connect_s=5.0, read_s=_TIMEOUT_S)
    try:
        body = await answer.read()
    except BaseException:
        answer.close()
        raise
    answer.release()
    if answer.status != 200:
        raise RuntimeError(f"The Durable instance query answered {answer.status}")
    value = json.loads(body or b"[]")
    if not isinstance(value, list):
        raise RuntimeError("The Durable instance query did not answer a list")
    following = answer.headers.get(CONTINUATION, "").strip()
    return [DurableOrchestrationStatus.from_json(item) for item in value], (
        None if following in _NO_MORE else following
    )


def _url(
    client: Any,
    created_from: datetime | None,
    created_to: datetime | None,
    runtime_status: Sequence[Any],
    prefix: str | None,
    show_input: bool,
    top: int,
) -> str:
    params: dict[str, str] = {"top": str(top), "showInput": "true" if show_input else "false"}
    if created_from is not None:
        params["createdTimeFrom"] = created_from.strftime(DATETIME_STRING_FORMAT)
    if created_to is not None:
        params["createdTimeTo"] = created_to.strftime(DATETIME_STRING_FORMAT)
    if runtime_status:
        params["runtimeStatus"] = ",".join(getattr(s, "value", str(s)) for s in runtime_status)
    if prefix:
        params["instanceIdPrefix"] = prefix
    return f"{_rpc_base_url(client)}instances/?{urlencode(params)}"


def newest_first(statuses: Any) -> list[Any]:
    """By creation time (whole seconds in the query's answer), then instance id, newest first."""

    def created(status: Any) -> tuple[float, str]:
        return (status.created_time.timestamp() if status.created_time else 0.0, status.instance_id)

    return sorted(statuses, key=created, reverse=True)


def _rpc_base_url(client: Any) -> str:
    """The extension's local RPC address from the client binding. The SDK keeps the parsed binding as
    `_orchestration_bindings` (public type DurableOrchestrationBindings, `rpc_base_url`); the SDK is pinned."""
    base = client._orchestration_bindings.rpc_base_url
    if not base:
        raise RuntimeError("The durable client binding has no rpcBaseUrl")
    return str(base)
