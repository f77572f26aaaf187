"""The batch index on Azurite (and its in-process form): each caller's batches newest first, paged by `after`.

Two `BatchIndex` objects with their own table clients stand for two instances of the app. Ids are made by
`ids.new_batch_id` with chosen times, so "newest" is known.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from azure.data.tables.aio import TableServiceClient

from gateway import ids
from gateway.batch_index import BatchIndex, row_key
from gateway.storage import StorageAccount

ALICE, BOB = "alice", "bob"
T0 = 1_780_000_000_000  # epoch ms


def batch(caller: str, ms: int) -> str:
    return ids.new_batch_id(caller, ms, uuid.uuid4().hex)


@pytest.fixture(params=["azurite", "in-process"])
async def pair(request, azurite) -> AsyncIterator[tuple[BatchIndex, BatchIndex]]:
    """Two indexes over one table (Azurite), or one in-process index twice."""
    if request.param == "in-process":
        index = BatchIndex(None)
        yield index, index
        return
    table = "bidx" + uuid.uuid4().hex[:12]
    account = StorageAccount(connection_string=azurite.connection_string)
    made = [BatchIndex(lambda: account.table_client(table, None)) for _ in range(2)]
    yield made[0], made[1]
    for index in made:
        await index.close()


async def test_newest_first_paged_by_after_and_only_the_callers_own(pair) -> None:
    writer, reader = pair
    alices = [batch(ALICE, T0 + step * 1000) for step in range(7)]
    bobs = [batch(BOB, T0 + step * 1000 + 500) for step in range(3)]
    for batch_id in alices[:4] + bobs + alices[4:]:
        await writer.add(ALICE if batch_id in alices else BOB, batch_id)
    newest = alices[::-1]
    assert await reader.newest(ALICE, None, 3) == (newest[:3], True)
    assert await reader.newest(ALICE, newest[2], 3) == (newest[3:6], True)
    assert await reader.newest(ALICE, newest[5], 3) == (newest[6:], False)
    assert await reader.newest(ALICE, None, 100) == (newest, False)
    assert await reader.newest(BOB, None, 100) == (bobs[::-1], False)
    # Someone else's id as the cursor is only a point in time: still only the caller's own, older than it.
    assert await reader.newest(BOB, newest[0], 100) == (bobs[::-1], False)
    assert await reader.newest(BOB, alices[0], 100) == ([], False)
    legacy = "batch_" + uuid.uuid4().hex  # made before batch ids carried their caller and time: never indexed
    assert row_key(legacy) is None and await reader.newest(ALICE, legacy, 3) == ([], False)


async def test_same_millisecond_keeps_id_order(pair) -> None:
    writer, reader = pair
    same = sorted(batch(ALICE, T0) for _ in range(4))
    for batch_id in same:
        await writer.add(ALICE, batch_id)
    assert (await reader.newest(ALICE, None, 10))[0] == same[::-1]  # as the ids sort, newest first


async def test_remove_and_add_again(pair) -> None:
    writer, reader = pair
    first, second = batch(ALICE, T0), batch(ALICE, T0 + 1)
    await writer.add(ALICE, first)
    await writer.add(ALICE, second)
    await writer.add(ALICE, second)  # a retried create writes the same row
    await reader.remove(ALICE, first)
    await reader.remove(ALICE, first)  # already gone: fine
    assert await writer.newest(ALICE, None, 10) == ([second], False)


async def test_an_unknown_or_wiped_table_is_an_empty_index_and_is_made_again(azurite) -> None:
    table = "bidx" + uuid.uuid4().hex[:12]
    account = StorageAccount(connection_string=azurite.connection_string)
    index = BatchIndex(lambda: account.table_client(table, None))
    try:
        first = batch(ALICE, T0)
        await index.add(ALICE, first)
        async with TableServiceClient.from_connection_string(azurite.connection_string) as service:
            await service.delete_table(table)
        assert await index.newest(ALICE, None, 10) == ([], False)
        second = batch(ALICE, T0 + 1)
        await index.add(ALICE, second)  # the table is created again
        assert await index.newest(ALICE, None, 10) == ([second], False)
    finally:
        await index.close()


def test_row_keys_sort_newest_first() -> None:
    older, newer = row_key(batch(ALICE, T0)), row_key(batch(ALICE, T0 + 1))
    assert older is not None and newer is not None and newer < older and len(older) == 32
