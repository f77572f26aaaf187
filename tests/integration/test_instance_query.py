"""The Durable instance query page by page: the stand-in pages as the extension does, the SDK sees one page only,
and `orchestrations.instance_query` reads them all through the real SDK client's binding.

A devhost serves the sample durable app with a page of 5 (`DURABLE_STANDIN_PAGE_SIZE`; the extension's is 100).
Instance ids are chosen so that id order is creation order, as for batch ids: the first page by id holds the
*oldest* instances, which is what the SDK's `get_status_by` returns on Azure.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from azure.durable_functions import DurableOrchestrationClient

from gateway.upstream import Upstream
from orchestrations import instance_query
from tests.support.devhost import DevHost

pytestmark = pytest.mark.usefixtures("durable_sdk_session")

PAGE = 5
COUNT = 23
IDS = [f"q-{number:02d}" for number in range(COUNT)]  # created in this order


@pytest.fixture(scope="module")
def host() -> Iterator[DevHost]:
    env = {"DURABLE_STANDIN_PAGE_SIZE": str(PAGE), "DURABLE_STANDIN_TIME_SCALE": "0.001"}
    with DevHost(env, app="tests.support.sample_app.durable_app") as devhost:
        with httpx.Client(base_url=devhost.url, timeout=10) as http:
            for instance_id in IDS:
                started = http.post("/orchestrators/hello_sequence", params={"instanceId": instance_id}, json=[])
                assert started.status_code == 202, started.text
        yield devhost


@pytest.fixture
def client(host: DevHost) -> DurableOrchestrationClient:
    """The SDK client as a function gets it: built from the binding JSON (rpcBaseUrl is the stand-in's)."""
    binding = {
        "taskHubName": "TestHubName",
        "creationUrls": {},
        "managementUrls": {},
        "rpcBaseUrl": host.url + "/durabletask/",
    }
    return DurableOrchestrationClient(json.dumps(binding))


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    transport = Upstream(5.0, 10.0)
    yield transport
    await transport.close()


def window() -> tuple[datetime, datetime]:
    now = datetime.now(UTC)
    return now - timedelta(hours=1), now + timedelta(seconds=1)


async def test_the_sdk_query_sees_the_first_page_only(client: DurableOrchestrationClient) -> None:
    """azure-functions-durable-python#580: no `top`, no continuation token; on Azure the page is 100."""
    start, _ = window()
    statuses = await client.get_status_by(created_time_from=start)
    assert [s.instance_id for s in statuses] == IDS[:PAGE]  # the oldest, by instance id


@pytest.mark.parametrize(("top", "longest"), [("3", 3), ("7", PAGE), (None, PAGE)])
def test_the_standin_pages_as_the_extension_does(host: DevHost, top: str | None, longest: int) -> None:
    """`top` per page (never more than the stand-in's page), the token header followed to the end, id order."""
    pages: list[list[str]] = []
    token = None
    params = {"instanceIdPrefix": "q-"} | ({"top": top} if top else {})
    with httpx.Client(base_url=host.url, timeout=10) as http:
        for _ in range(COUNT):
            headers = {instance_query.CONTINUATION: token} if token else {}
            answer = http.get("/durabletask/instances/", params=params, headers=headers)
            assert answer.status_code == 200
            pages.append([item["instanceId"] for item in answer.json()])
            token = answer.headers.get(instance_query.CONTINUATION)
            if token is None:
                break
            json.loads(base64.b64decode(token))  # opaque to clients, but well formed
    assert [i for page in pages for i in page] == IDS and token is None
    assert {len(page) for page in pages[:-1]} == {longest}


async def test_query_follows_the_token_through_every_page(client, upstream) -> None:
    start, end = window()
    listing = await instance_query.query(client, upstream, created_from=start, created_to=end, top=PAGE)
    assert sorted(s.instance_id for s in listing.items) == IDS
    assert listing.complete and listing.requests == -(-COUNT // PAGE)
    asks_for_100 = await instance_query.query(client, upstream, created_from=start, created_to=end, top=100)
    assert [s.instance_id for s in asks_for_100.items] == IDS and asks_for_100.requests == -(-COUNT // PAGE)


async def test_query_stops_at_its_bound_and_says_so(client, upstream) -> None:
    start, _ = window()
    listing = await instance_query.query(client, upstream, max_pages=2, created_from=start, top=PAGE)
    assert [s.instance_id for s in listing.items] == IDS[: 2 * PAGE] and not listing.complete


async def test_newest_first_orders_by_creation_then_id(client, upstream) -> None:
    start, _ = window()
    listing = await instance_query.query(client, upstream, created_from=start, top=PAGE)
    assert [s.instance_id for s in instance_query.newest_first(listing.items)] == IDS[::-1]
