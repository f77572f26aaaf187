"""Backend slots shared by instances through one Table row on Azurite: several `Slots` in one process, each with
its own instance id, as several instances would be. What is asserted is what the row lets each one hold."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import pytest
from azure.data.tables.aio import TableClient

from gateway.backend_config import parse_backend
from gateway.slots import Slot, Slots

LIMIT = 16
BACKEND = parse_backend(
    f"name=ptu;host=http://127.0.0.1:9;mode=direct;api-key=k;concurrency={LIMIT};deployments=m", setting="TEST"
)


@pytest.fixture
async def instances(azurite) -> AsyncIterator[list[Slots]]:
    table = "slots" + uuid.uuid4().hex[:8]
    made = [
        Slots((BACKEND,), lambda: TableClient.from_connection_string(azurite.connection_string, table), f"i{n}", 5.0)
        for n in range(2)
    ]
    yield made
    for slots in made:
        await slots.close()


async def take(slots: Slots, n: int, priority: int = 5) -> list[Slot]:
    """`n` slots, each taken at once if one is free here, else after the renewal the wait triggers."""
    taken = []
    for _ in range(n):
        slot = slots.try_acquire("ptu", priority) or await slots.acquire("ptu", priority, time.monotonic() + 5)
        assert slot is not None
        taken.append(slot)
    return taken


async def test_an_instance_holds_its_demand_and_headroom_and_leaves_the_rest_to_the_others(instances):
    a, b = instances
    await take(a, 2)
    queue_a = a.queue("ptu")
    # Its demand (2 in flight, and a waiter weighs by its priority while it waits) plus headroom: not all 16.
    assert queue_a is not None and 2 <= queue_a.general.held < LIMIT // 2
    await take(b, 12)  # b bursts: what a leaves unheld is b's at its first renewals, a keeps its 2
    queue_b = b.queue("ptu")
    assert queue_b is not None and queue_b.general.held >= 12 and queue_a.general.held + queue_b.general.held <= LIMIT
    assert queue_a.general.in_flight == 2


async def test_past_the_limit_shares_follow_demand_and_a_holder_gives_back_to_a_starving_one(instances):
    a, b = instances
    held_by_a = await take(a, LIMIT)  # a alone holds everything
    queue_a, queue_b = a.queue("ptu"), b.queue("ptu")
    assert queue_a is not None and queue_b is not None and queue_a.general.held == LIMIT
    waiting = b.acquire("ptu", 5, time.monotonic() + 10)  # b starves: its demand reaches the row
    for slot in held_by_a[: LIMIT // 2]:
        slot.release()  # a, seeing b starve, renews at once and lets freed slots go
    assert await waiting is not None
    assert queue_a.general.held + queue_b.general.held <= LIMIT  # never more than the limit between them
    assert queue_b.general.held >= 1 and queue_a.general.in_flight == LIMIT // 2
