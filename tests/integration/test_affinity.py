"""Response affinity on Azurite: two instances (two `Affinity` objects, each with its own table client) share rows.

What one instance records, the other finds with one point read and then from its cache; rows past their expiry
are ignored and purged; a background response's tokens are counted by one instance only; and when storage is
unreachable a lookup is a fast 503 with Retry-After, never a guess.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest

from gateway.affinity import RETENTION_S, Affinity
from gateway.errors import GatewayError
from gateway.storage import StorageAccount
from gateway.translate import resolve
from tests.support.clock import Clock
from tests.support.ports import closed_port

ROUTE = resolve("POST", "/v1/responses", "", "application/json", b'{"model": "gpt-4o", "input": "x"}', "v")
BACKGROUND = resolve("POST", "/v1/responses", "", "application/json", b'{"model": "gpt-4o", "background": true}', "v")


@pytest.fixture
async def instances(azurite) -> AsyncIterator[Callable[[Clock], tuple[Affinity, Affinity]]]:
    table = "resp" + uuid.uuid4().hex[:12]
    account = StorageAccount(connection_string=azurite.connection_string)
    made: list[Affinity] = []

    def make(clock: Clock) -> tuple[Affinity, Affinity]:
        pair = (
            Affinity(lambda: account.table_client(table, None), clock),
            Affinity(lambda: account.table_client(table, None), clock),
        )
        made.extend(pair)
        return pair

    yield make
    for affinity in made:
        await affinity.close()


async def test_one_instance_finds_what_the_other_recorded_and_then_caches_it(instances):
    a, b = instances(Clock())
    await a.remember("resp_1", "weu", ROUTE, "team-a")
    await a.remember("resp_1", "neu", ROUTE, "team-a")  # once per response: the second sighting writes nothing
    assert a.operations == 2  # the table's creation, then one insert
    before = b.operations
    holder = await b.lookup("resp_1")
    assert (holder.backend, holder.model, holder.caller) == ("weu", "gpt-4o", "team-a")
    reads = b.operations - before
    for _ in range(5):
        assert (await b.lookup("resp_1")).backend == "weu"
    assert b.operations - before == reads  # the rest came from the cache
    assert await b.lookup("resp_unknown") is None


async def test_expired_rows_are_ignored_and_purged(instances):
    clock = Clock()
    a, b = instances(clock)
    await a.remember("resp_old", "weu", ROUTE, "team-a")
    await a.remember("resp_new", "weu", ROUTE, "team-a")
    clock.now += RETENTION_S + 1
    assert await a.lookup("resp_old") is None  # the cached copy expired too
    clock.now -= 10  # another instance, a little behind: resp_new has not expired for it
    assert (await b.lookup("resp_new")).backend == "weu"
    clock.now += 20
    assert await b.purge_expired() >= 1
    clock.now -= RETENTION_S  # would be live again if the row were still there
    fresh = instances(clock)[0]
    assert await fresh.lookup("resp_old") is None and await fresh.lookup("resp_new") is None


async def test_a_background_responses_tokens_are_counted_by_one_instance(instances):
    a, b = instances(Clock())
    await a.remember("resp_bg", "weu", BACKGROUND, "team-a")
    await a.remember("resp_fg", "weu", ROUTE, "team-a")
    await b.lookup("resp_bg")
    await b.lookup("resp_fg")
    assert await b.count_once("resp_bg") is True
    assert await a.count_once("resp_bg") is False  # the row says another instance counted it
    assert await b.count_once("resp_bg") is False
    assert await a.count_once("resp_fg") is False  # counted when it was created


async def test_the_stream_that_created_a_background_response_can_claim_its_tokens(instances):
    a, b = instances(Clock())
    await a.remember("resp_early", "weu", BACKGROUND, "team-a")
    await b.lookup("resp_early")  # another instance knows it before its create stream ends
    before = a.operations
    assert await a.count_once("resp_early") is True  # the create stream, read to its end
    assert a.operations - before == 1  # one conditional update: the version came with the row's insert
    before = b.operations
    assert await b.count_once("resp_early") is False  # a retrieval elsewhere: its version of the row is stale
    assert b.operations - before == 1
    await a.remember("resp_late", "weu", BACKGROUND, "team-a")
    assert await a.count_once("resp_late") is True
    fresh = instances(Clock())[0]
    await fresh.lookup("resp_late")  # read after the claim: known counted, no storage call to find out
    before = fresh.operations
    assert await fresh.count_once("resp_late") is False and fresh.operations == before


async def test_a_background_response_without_its_row_is_counted_by_the_instance_that_knows_it(azurite):
    """A row never written (storage was down) or gone: no other instance can find the response, so this one counts."""
    account = StorageAccount(connection_string=azurite.connection_string)
    table = "resp" + uuid.uuid4().hex[:12]
    affinity = Affinity(lambda: account.table_client(table, None))
    try:
        await affinity.remember("resp_gone", "weu", BACKGROUND, "team-a")
        async with account.table_client(table, None) as client:
            rows = [(e["PartitionKey"], e["RowKey"]) async for e in client.list_entities()]
            assert [row for _, row in rows] == ["resp_gone"]
            await client.delete_entity(*rows[0])
        assert [await affinity.count_once("resp_gone") for _ in range(2)] == [True, False]
    finally:
        await affinity.close()


async def test_unreachable_storage_is_a_fast_503_for_an_unknown_id_and_no_failure_for_a_new_one():
    with closed_port() as port:
        connection = (
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
            f"TableEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"
        )
        account = StorageAccount(connection_string=connection)
        affinity = Affinity(lambda: account.table_client("unreachable", None))
        try:
            await affinity.remember("resp_new", "weu", ROUTE, "team-a")  # logged; this instance still knows it
            assert (await affinity.lookup("resp_new")).backend == "weu"
            await affinity.remember("resp_bg", "weu", BACKGROUND, "team-a")
            assert [await affinity.count_once("resp_bg") for _ in range(2)] == [True, False]  # counted here, once
            started = time.monotonic()
            with pytest.raises(GatewayError) as unavailable:
                await affinity.lookup("resp_elsewhere")
            assert time.monotonic() - started < 10
            assert unavailable.value.status == 503 and unavailable.value.code == "conversation_unavailable"
            assert int(unavailable.value.headers["Retry-After"]) >= 1
        finally:
            await affinity.close()
