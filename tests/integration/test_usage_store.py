"""Per-minute usage counters on Azurite: nothing written per request, flushes rate-limited, sums across instances.

Two `UsageTable`s with different instance ids on one table stand for two instances here; the same through two
devhost processes is tests/e2e/test_usage_api.py.
"""

from __future__ import annotations

import time
import uuid

import pytest
from azure.data.tables.aio import TableClient

from gateway.state_sync import STORAGE_ERRORS
from gateway.storage import CLIENT_OPTIONS, StorageAccount
from gateway.usage import Usage, UsageRecord
from gateway.usage_store import UsageCounters, UsageTable, group

THIS_MINUTE = time.time() // 60 * 60
DEFAULT_USAGE = Usage(10, 5, 15, cached_tokens=4)


def record(caller: str = "team-a", status: int = 200, usage: Usage | None = DEFAULT_USAGE, **kw) -> UsageRecord:
    kw.setdefault("timestamp", THIS_MINUTE + 1)  # every record of a test in one minute, whenever it runs
    return UsageRecord(
        request_id=uuid.uuid4().hex,
        api_style="v1",
        operation="chat/completions",
        model=kw.pop("model", "gpt-4o"),
        deployment="gpt-4o-weu",
        backend=kw.pop("backend", "weu"),
        status=status,
        streaming=False,
        attempts=1,
        duration_ms=10.0,
        usage=usage,
        caller=caller,
        **kw,
    )


def table(azurite, name: str, instance: str) -> UsageTable:
    """The table as the gateway builds it (fail-fast client options)."""
    account = StorageAccount(connection_string=azurite.connection_string)
    return UsageTable(lambda: account.table_client(name, None), instance)


def counted_table(azurite, name: str, instance: str, sent: list[tuple[str, str]]) -> UsageTable:
    """The table through the real client, every HTTP request it sends noted as (method, path) by azure-core's
    request hook: what reaches Azurite, not what the store says it did."""

    def client() -> TableClient:
        def note(request) -> None:
            sent.append((request.http_request.method, request.http_request.url.split("?")[0]))

        return TableClient.from_connection_string(
            azurite.connection_string, name, **CLIENT_OPTIONS, raw_request_hook=note
        )

    return UsageTable(client, instance)


def writes(sent: list[tuple[str, str]]) -> int:
    """Row writes: the flush's transactions (POST .../$batch)."""
    return sum(1 for method, path in sent if method == "POST" and path.endswith("$batch"))


async def test_records_cost_no_storage_call_and_a_flush_writes_each_row_whole(azurite):
    name = "usage" + uuid.uuid4().hex[:10]
    counters = UsageCounters(table(azurite, name, "i1"), flush_interval_s=3600)
    try:
        counters(record())  # starts the background flusher, which writes at once (nothing was written before)
        await counters.idle()
        assert counters.flushes == 1
        written = counters.table.operations
        for _ in range(50):
            counters(record())
        assert counters.table.operations == written  # 50 requests, no storage call: the next flush is an hour away
        await counters.flush()
        await counters.flush()  # nothing changed: no write
        rows, instances = await counters.query(0, int(time.time() // 60))
        [(_, counts)] = rows
        assert instances == 1
        assert counts.as_dict() == {
            "requests": 51,
            "input_tokens": 510,
            "output_tokens": 255,
            "cached_tokens": 204,
            "failed": 0,
            "throttled": 0,
        }
    finally:
        await counters.close()


async def test_background_flushes_are_at_most_one_per_interval(azurite):
    counters = UsageCounters(table(azurite, "usage" + uuid.uuid4().hex[:10], "i1"), flush_interval_s=0.5)
    try:
        counters(record())
        await counters.idle()
        first = counters.last_flush_at
        counters(record())
        await counters.idle()
        assert counters.flushes == 2 and counters.last_flush_at - first >= 0.5
    finally:
        await counters.close()


async def test_two_instances_sum_and_group_by_any_dimensions(azurite):
    name = "usage" + uuid.uuid4().hex[:10]
    a = UsageCounters(table(azurite, name, "instance-a"), flush_interval_s=3600)
    b = UsageCounters(table(azurite, name, "instance-b"), flush_interval_s=3600)
    try:
        a(record("team-a"))
        a(record("team-b", model="gpt-4o-mini", backend="neu"))
        b(record("team-a"))
        b(record("team-a", status=429, usage=None, error="throttled"))
        b(record("team-b", status=503, usage=None, error="failed"))
        b(record("<script>alert(1)</script>", usage=Usage(1, 1, 2)))  # names come from outside: never in a key
        await a.flush()
        await b.flush()
        rows, instances = await a.query(0, int(time.time() // 60))
        assert instances == 2
        by_caller = {r["caller"]: r for r in group(rows, ("caller",), per_minute=False)}
        assert by_caller["team-a"]["requests"] == 3 and by_caller["team-a"]["input_tokens"] == 20
        assert by_caller["team-a"]["throttled"] == 1 and by_caller["team-b"]["failed"] == 1
        assert by_caller["<script>alert(1)</script>"]["output_tokens"] == 1
        by_backend = {
            (r["backend"], r["deployment"]): r["requests"]
            for r in group(rows, ("backend", "deployment"), per_minute=False)
        }
        assert by_backend == {("weu", "gpt-4o-weu"): 5, ("neu", "gpt-4o-weu"): 1}
        [minute] = group(rows, (), per_minute=True)
        assert minute["requests"] == 6 and minute["minute"].endswith(":00Z")
    finally:
        await a.close()
        await b.close()


async def test_a_storage_outage_keeps_the_counts_for_the_next_flush():
    from tests.support.azurite import Azurite

    with Azurite() as storage:
        counters = UsageCounters(table(storage, "usage" + uuid.uuid4().hex[:10], "i1"), flush_interval_s=3600)
        try:
            counters(record())
            await counters.idle()
            storage.stop()
            counters(record())  # the background flusher waits an interval: flush now
            with pytest.raises(STORAGE_ERRORS):
                await counters.flush()
            storage.start()  # in-memory Azurite: the table is gone, as after a wiped account
            await counters.flush()
            rows, _ = await counters.query(0, int(time.time() // 60))
            assert [c.requests for _, c in rows] == [2]  # the row is written whole: both records, once each
        finally:
            await counters.close()


async def test_housekeeping_purges_rows_older_than_the_usage_windows(azurite):
    name = "usage" + uuid.uuid4().hex[:10]
    old = UsageCounters(table(azurite, name, "i1"), flush_interval_s=3600)
    try:
        old(record(timestamp=THIS_MINUTE - 40 * 86400))  # 40 days ago
        old(record())
        await old.flush()
        assert await old.table.purge(int(THIS_MINUTE // 60) - 32 * 1440) == 1
        rows, _ = await old.query(0, int(time.time() // 60))
        assert [key[0] for key, _ in rows] == [int(THIS_MINUTE // 60)]
    finally:
        await old.close()


async def test_a_late_record_of_an_earlier_minute_adds_to_it(azurite):
    """A long stream's record is stamped when it started: arriving minutes later, it must add to that minute's
    row, not replace it."""
    name = "usage" + uuid.uuid4().hex[:10]
    counters = UsageCounters(table(azurite, name, "i1"), flush_interval_s=3600)
    earlier = time.time() // 60 * 60 - 5 * 60 + 1  # five minutes ago
    try:
        counters(record(timestamp=earlier))
        await counters.flush()
        counters(record(timestamp=time.time()))  # this minute: the earlier one may be forgotten now
        await counters.flush()
        counters(record(timestamp=earlier))  # the late one
        await counters.flush()
        rows, _ = await counters.query(int(earlier // 60), int(earlier // 60))
        [(_, counts)] = rows
        assert counts.as_dict()["requests"] == 2
    finally:
        await counters.close()


async def test_queries_under_traffic_write_nothing_and_count_unflushed_traffic_once(azurite):
    """The console asks for usage three times per refresh: a query must never make the instance flush sooner.
    Its own rows come from memory in place of its stored ones, so the totals include its unflushed traffic
    exactly once; another instance's rows come from the table."""
    name = "usage" + uuid.uuid4().hex[:10]
    other = UsageCounters(table(azurite, name, "instance-b"), flush_interval_s=3600)
    sent: list[tuple[str, str]] = []
    counters = UsageCounters(counted_table(azurite, name, "instance-a", sent), flush_interval_s=3600)
    now = int(time.time() // 60)
    minute = int(THIS_MINUTE // 60)  # the records' minute: the module's import, maybe minutes before this test runs
    try:
        other(record("team-b"))
        await other.flush()
        counters(record(timestamp=THIS_MINUTE - 70 * 60))  # past KEEP_MINUTES: memory forgets it once written
        counters(record())  # the first record starts the flusher, which writes at once (nothing written before)
        await counters.idle()
        assert writes(sent) == 2 and counters.flushes == 1  # one transaction per minute partition
        sent_before = len(sent)
        for n in range(2, 22):
            counters(record())  # traffic: the flusher's next turn is an hour away
            rows, instances = await counters.query(minute - 90, now)
            by_caller = {r["caller"]: r["requests"] for r in group(rows, ("caller",), per_minute=False)}
            assert by_caller == {"team-a": n + 1, "team-b": 1}  # unflushed ones once, the forgotten minute too
            assert instances == 2
            this_minute = [c for key, c in rows if key[0] == minute and key[1] == "team-a"]
            assert [c.input_tokens for c in this_minute] == [10 * n]
        assert writes(sent) == 2 and counters.flushes == 1  # 20 queries under traffic: not one write
        assert [m for m, _ in sent[sent_before:]] == ["GET"] * 20  # one range read per query, nothing else

        await counters.flush()  # the flusher's own turn: the other instance now reads the same totals
        assert writes(sent) == 3  # this minute's partition only: the old one did not change
        rows, instances = await other.query(minute - 90, now)
        by_caller = {r["caller"]: r["requests"] for r in group(rows, ("caller",), per_minute=False)}
        assert by_caller == {"team-a": 22, "team-b": 1} and instances == 2
    finally:
        await counters.close()
        await other.close()
