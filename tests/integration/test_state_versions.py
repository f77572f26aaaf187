"""The version entity on real Table Storage (Azurite): what a refresh reads, bumps under contention, resync,
and what a 429 storm writes. Several gateway instances in one process, each with its own store and counters;
backends are the fake Azure OpenAI on loopback.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from gateway.bootstrap import Services, build_services
from gateway.config import load_settings
from gateway.credentials import storage_credential
from gateway.messages import Inbound
from gateway.state_rows import BREAKER, CALLER, bucket_of
from gateway.state_store import StateStore
from gateway.storage import storage_account
from tests.support.azurite import Azurite
from tests.support.fake_openai import FakeAzureOpenAI, Fault

KEY = "k"
CHAT = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}'
DEPLOYMENT_ROW = "weu:gpt-4o-mini"


@pytest.fixture
async def backends() -> AsyncIterator[tuple[FakeAzureOpenAI, FakeAzureOpenAI]]:
    async with FakeAzureOpenAI(name="weu") as weu, FakeAzureOpenAI(name="neu") as neu:
        yield weu, neu


@pytest.fixture
def table() -> str:
    return "v" + uuid.uuid4().hex[:12]


def env_for(backends: tuple[FakeAzureOpenAI, FakeAzureOpenAI], connection: str, table: str) -> dict[str, str]:
    weu, neu = backends
    backend = "mode=direct;api-key=fake-key;deployments=gpt-4o-mini"
    return {
        "GATEWAY_BACKEND_1": f"name=weu;host={weu.url};priority=1;{backend}",
        "GATEWAY_BACKEND_2": f"name=neu;host={neu.url};priority=2;{backend}",
        "GATEWAY_API_KEYS": KEY,
        "AzureWebJobsStorage": connection,
        "GATEWAY_STATE_TABLE": table,
        "GATEWAY_STATE_REFRESH_MS": "600000",  # refreshes happen when a test calls refresh(), not by themselves
    }


def instance(env: dict[str, str], name: str) -> Services:
    settings = load_settings(env)
    account = storage_account(env, settings.state_storage)
    store = StateStore(lambda: account.table_client(settings.state_table, storage_credential), name)
    return build_services(settings, store=store)


def chat() -> Inbound:
    return Inbound("POST", "/v1/chat/completions", "", {"content-type": "application/json", "api-key": KEY}, CHAT)


def suspended(gateway: Services) -> set[str]:
    return {c["caller"] for c in gateway.governance.callers() if c["suspended"]}


async def test_a_refresh_reads_the_version_entity_and_only_the_buckets_that_changed(backends, azurite, table):
    env = env_for(backends, azurite.connection_string, table)
    a, b = instance(env, "A"), instance(env, "B")
    callers = [f"caller-{i}" for i in range(40)]
    for name in callers:
        await a.governance.set_suspended(name, True, "test")
    await b.pool.refresh()
    assert b.pool.sync.reads["full"] == 1 and suspended(b) == set(callers)

    reads = b.pool.store.meter.reads
    await b.pool.refresh()  # nothing changed: one point read, whatever the table holds
    assert b.pool.store.meter.reads - reads == 1 and b.pool.sync.reads["buckets"] == 0

    backends[0].enqueue(Fault.status(429, retry_after=300))
    assert (await a.pipeline.handle(chat())).headers["x-gateway-backend"] == "neu"
    await a.pool.settle()
    await a.governance.set_suspended("caller-0", False)
    changed = {bucket_of(BREAKER, DEPLOYMENT_ROW), bucket_of(CALLER, "caller-0")}
    reads = b.pool.store.meter.reads
    await b.pool.refresh()
    assert b.pool.store.meter.reads - reads == 1 + len(changed)  # the version entity, then one query per bucket
    assert b.pool.sync.reads == {"full": 1, "partial": 2, "buckets": len(changed)}
    assert b.pool.status("weu", "gpt-4o-mini") == "open" and suspended(b) == set(callers[1:])
    assert b.pool.store.meter.writes == 1  # B wrote nothing but its table check
    for gateway in (a, b):
        await gateway.close()


async def test_concurrent_bumps_from_several_instances_are_never_lost(azurite, table):
    account = storage_account({"AzureWebJobsStorage": azurite.connection_string})
    stores = [StateStore(lambda: account.table_client(table, storage_credential), f"I{i}") for i in range(6)]
    shared, rounds = 7, 8
    made: dict[int, int] = {}

    async def bump(store: StateStore, bucket: int) -> None:
        if await store.bump(bucket):
            made[bucket] = made.get(bucket, 0) + 1

    async def bump_many(i: int, store: StateStore) -> None:
        for _ in range(rounds):
            await bump(store, shared)  # everyone on one counter
            await bump(store, 20 + i)  # and each on its own, in the same entity

    await asyncio.gather(*(bump_many(i, s) for i, s in enumerate(stores)))
    for i, store in enumerate(stores):  # a bump that lost too many races is kept and made at the next refresh
        pending = set(store.pending_bumps)
        assert await store.flush_bumps() == len(pending) and store.pending_bumps == set()
        for bucket in pending:
            made[bucket] += 1
        assert 20 + i in made  # every bucket that changed has moved
    counters = await stores[0].read_versions()
    assert {b: counters.get(b) for b in made} == made  # every bump made counts: none overwrote another
    assert made[shared] > rounds  # and they did race on the shared counter
    for store in stores:
        await store.close()


async def test_a_bump_lost_with_its_writer_is_caught_by_the_periodic_full_read(backends, azurite, table):
    env = env_for(backends, azurite.connection_string, table)
    a, b = instance(env, "A"), instance(env, "B")
    await b.pool.refresh()
    # A writer that died between its row and its bump: the row is stored, the counter never moves.
    until = time.time() + 300
    await a.pool.store.update_breaker("weu", lambda cur: cur.tripped_until(until, "5 failures"), bump_now=False)
    a.pool.store.pending_bumps.clear()
    await b.pool.refresh()
    assert b.pool.status("weu") == "closed"  # nothing moved, so nothing was re-read
    b.pool.sync.resync_s = 0.0  # the minute has passed
    await b.pool.refresh()
    assert b.pool.status("weu") == "open" and b.pool.sync.reads["full"] == 2
    for gateway in (a, b):
        await gateway.close()


async def test_a_busy_instance_reads_on_time_and_an_idle_one_stops_reading(backends, azurite, table):
    """While requests come, the next refresh is timed from the last one, not from the first request after it: a
    change reaches B within about one interval although no request reaches B after the change. Then B, idle,
    makes no storage call."""
    interval = 0.3
    env = env_for(backends, azurite.connection_string, table) | {"GATEWAY_STATE_REFRESH_MS": str(int(interval * 1000))}
    a, b = instance(env, "A"), instance(env, "B")
    assert (await b.pipeline.handle(chat())).status == 200  # the first load, awaited
    assert (await b.pipeline.handle(chat())).status == 200  # a request after it: B is busy
    seen = asyncio.Event()
    b.pool.sync.listeners.append(lambda snapshot: "team-z" in snapshot.suspended and seen.set())
    await a.governance.set_suspended("team-z", True)
    changed = time.monotonic()
    try:
        await asyncio.wait_for(seen.wait(), 10 * interval)
    except TimeoutError:
        pytest.fail("B learned nothing without a request (its refresh waited for one)")
    learned = time.monotonic() - changed
    assert learned < 3 * interval, learned  # one interval and two reads, with room for a busy machine
    assert "team-z" in suspended(b)
    reads = b.pool.store.meter.reads
    await asyncio.sleep(4 * interval)  # idle: at most the refresh under way when B learned
    assert b.pool.store.meter.reads - reads <= 1
    for gateway in (a, b):
        await gateway.close()


async def test_after_an_outage_the_first_refresh_reads_everything(backends, table):
    storage = Azurite().start()
    try:
        env = env_for(backends, storage.connection_string, table)
        a, b = instance(env, "A"), instance(env, "B")
        await a.governance.set_suspended("team-x", True)
        await b.pool.refresh()
        assert suspended(b) == {"team-x"}
        storage.stop()
        await b.pool.refresh()
        assert not b.pool.storage_ok and suspended(b) == {"team-x"}  # local state kept through the outage
        storage.start()  # back, and empty (in memory): a new table, a new epoch
        await a.governance.set_suspended("team-y", True)
        full = b.pool.sync.reads["full"]
        await b.pool.refresh()
        assert b.pool.storage_ok and b.pool.sync.reads["full"] == full + 1
        assert suspended(b) == {"team-y"}  # what storage holds now, nothing kept from before
        for gateway in (a, b):
            await gateway.close()
    finally:
        storage.stop()


async def test_a_429_storm_writes_the_breaker_once(backends, azurite, table):
    env = env_for(backends, azurite.connection_string, table)
    gateways = [instance(env, f"I{i}") for i in range(12)]
    await asyncio.gather(*(g.pool.refresh() for g in gateways))  # all warm: every breaker closed
    before = [(g.pool.store.meter.reads, g.pool.store.meter.writes) for g in gateways]
    backends[0].always(Fault.status(429, retry_after=30))
    answers = await asyncio.gather(*(g.pipeline.handle(chat()) for g in gateways))  # each sees its own 429
    assert {a.headers["x-gateway-backend"] for a in answers} == {"neu"}
    await asyncio.gather(*(g.pool.settle() for g in gateways))

    n = len(gateways)
    ops = sum(g.pool.store.meter.total - r - w for g, (r, w) in zip(gateways, before, strict=True))
    counters = await gateways[0].pool.store.read_versions()
    assert counters.get(bucket_of(BREAKER, DEPLOYMENT_ROW)) == 1  # one transition written, one bump
    assert (await gateways[0].pool.store.load()).breakers[DEPLOYMENT_ROW].tripped
    # Each writer: a read and a conditional write; the losers read once more and find the stored open-until
    # within a second of their own. Rewriting it (as before) made every loser write again: O(n²) operations.
    assert ops <= 3 * n + 2, ops
    for gateway in gateways:
        await gateway.close()


async def test_rows_of_the_previous_layout_are_read_and_moved(backends, azurite, table):
    env = env_for(backends, azurite.connection_string, table)
    a, b = instance(env, "A"), instance(env, "B")
    client = storage_account(env).table_client(table, storage_credential)
    async with client:
        await client.create_table()
        await client.create_entity({"PartitionKey": "caller", "RowKey": "team-old", "Suspended": True, "Reason": "r"})
        until = time.time() + 300
        await client.create_entity({"PartitionKey": "breaker", "RowKey": "weu", "OpenUntil": until, "Tripped": True})
        await a.pool.refresh()  # its full read understands them at once, and moves them
        assert suspended(a) == {"team-old"} and a.pool.status("weu") == "open"
        await a.pool.settle()
        left = [e["PartitionKey"] async for e in client.list_entities() if e["PartitionKey"] in ("caller", "breaker")]
        assert left == []
    await b.pool.refresh()
    assert suspended(b) == {"team-old"} and b.pool.status("weu") == "open"
    await a.governance.set_suspended("team-old", False)  # the moved row is an ordinary row now
    await b.pool.refresh()
    assert suspended(b) == set() and b.pool.sync.reads["partial"] == 1
    for gateway in (a, b):
        await gateway.close()
