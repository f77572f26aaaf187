"""Breakers and health shared through real Table Storage (Azurite), two gateway instances, real fake backends.

Time inside the pool is a controllable clock, so "after the 30 s window" needs no sleeping; storage and
backends are real servers on loopback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator

import pytest
from azure.core.exceptions import ClientAuthenticationError

from gateway import errors, operations
from gateway.bootstrap import Services, build_services
from gateway.breakers import SAME_UNTIL_S
from gateway.config import load_settings
from gateway.credentials import storage_credential
from gateway.messages import Inbound
from gateway.state_store import StateStore
from gateway.storage import storage_account
from tests.support.azurite import Azurite
from tests.support.clock import Clock
from tests.support.fake_openai import FakeAzureOpenAI, Fault

KEY = "k"
CHAT = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode()


@pytest.fixture
async def backends() -> AsyncIterator[tuple[FakeAzureOpenAI, FakeAzureOpenAI]]:
    async with FakeAzureOpenAI(name="weu") as weu, FakeAzureOpenAI(name="neu") as neu:
        yield weu, neu


def env_for(weu: FakeAzureOpenAI, neu: FakeAzureOpenAI | None, connection: str, table: str, **extra: str) -> dict:
    env = {
        "GATEWAY_BACKEND_1": f"name=weu;host={weu.url};mode=direct;api-key=fake-key;priority=1;deployments=gpt-4o-mini",
        "GATEWAY_API_KEYS": KEY,
        "AzureWebJobsStorage": connection,
        "GATEWAY_STATE_TABLE": table,
        **extra,
    }
    if neu is not None:
        env["GATEWAY_BACKEND_2"] = (
            f"name=neu;host={neu.url};mode=direct;api-key=fake-key;priority=2;deployments=gpt-4o-mini"
        )
    return env


def instance(env: dict, name: str, clock: Clock | None = None, store_class: type[StateStore] = StateStore) -> Services:
    settings = load_settings(env)
    account = storage_account(env, settings.state_storage)
    store = store_class(lambda: account.table_client(settings.state_table, storage_credential), name)
    return build_services(settings, store=store, clock=clock or Clock())


class BuggyStore(StateStore):
    """The real store on Azurite, with a programming error the test switches on for one read or one write."""

    bug_in: str | None = None  # "refresh" or "write"

    def _bug(self, where: str) -> None:
        if self.bug_in == where:
            self.bug_in = None
            raise TypeError(f"a programming error in the state store's {where}")

    async def read_versions(self):
        self._bug("refresh")
        return await super().read_versions()

    async def update_breaker(self, *args, **kwargs):
        self._bug("write")
        return await super().update_breaker(*args, **kwargs)


def chat() -> Inbound:
    return Inbound("POST", "/v1/chat/completions", "", {"content-type": "application/json", "api-key": KEY}, CHAT)


async def stored_breakers(gateway: Services) -> dict:
    return (await gateway.pool.store.load()).breakers


@pytest.fixture
def table() -> str:
    return "t" + uuid.uuid4().hex[:12]


async def test_429_opens_the_breaker_then_half_open_trial_closes_it(backends, azurite, table):
    weu, neu = backends
    clock = Clock()
    gw = instance(env_for(weu, neu, azurite.connection_string, table), "A", clock)
    weu.enqueue(Fault.status(429, retry_after=30))
    first = await gw.pipeline.handle(chat())
    assert first.status == 200 and first.headers["x-gateway-attempts"] == "2"
    await gw.pool.settle()
    row = (await stored_breakers(gw))["weu:gpt-4o-mini"]  # a 429 is the deployment's, not the host's
    assert row.tripped and row.open_until == pytest.approx(clock.now + 30)
    assert "weu" not in await stored_breakers(gw)

    second = await gw.pipeline.handle(chat())  # straight to neu: no extra attempt on the open backend
    assert second.headers["x-gateway-backend"] == "neu" and second.headers["x-gateway-attempts"] == "1"
    assert len(weu.requests) == 1

    clock.now += 30  # the window has passed: half-open, one trial
    third = await gw.pipeline.handle(chat())
    assert third.headers["x-gateway-backend"] == "weu" and len(weu.requests) == 2
    await gw.pool.settle()
    assert gw.pool.status("weu", "gpt-4o-mini") == "closed"
    assert not (await stored_breakers(gw))["weu:gpt-4o-mini"].tripped
    await gw.close()


async def test_a_breaker_opened_by_one_instance_stops_the_other(backends, azurite, table):
    weu, neu = backends
    env = env_for(weu, neu, azurite.connection_string, table)
    a, b = instance(env, "A"), instance(env, "B")
    assert (await b.pipeline.handle(chat())).headers["x-gateway-backend"] == "weu"  # B has loaded its state
    weu.enqueue(Fault.status(429, retry_after=30))
    await a.pipeline.handle(chat())
    await a.pool.settle()
    await b.pool.refresh()  # what B's next periodic refresh does
    sent_before = len(weu.requests)
    for _ in range(5):
        assert (await b.pipeline.handle(chat())).headers["x-gateway-backend"] == "neu"
    assert len(weu.requests) == sent_before
    await a.close()
    await b.close()


async def test_concurrent_writers_merge_to_the_latest_open_until(azurite, table, backends):
    weu, neu = backends
    env = env_for(weu, neu, azurite.connection_string, table)
    gateways = [instance(env, f"I{i}") for i in range(4)]
    base = Clock().now
    untils = [base + s for s in (5, 40, 12, 33, 7, 21, 39, 1)]
    await asyncio.gather(
        *(
            gateways[i % 4].pool.store.update_breaker("weu", lambda cur, u=u: cur.extended_to(u, "429"))
            for i, u in enumerate(untils)
        )
    )
    # The latest open-until wins, except that one within SAME_UNTIL_S of the stored one is not worth a write
    # (40 after 39 here): no writer's open-until is lost by more than that.
    stored = (await stored_breakers(gateways[0]))["weu"].open_until
    assert max(untils) - SAME_UNTIL_S <= stored <= max(untils)
    for gw in gateways:
        await gw.close()


async def test_only_one_instance_gets_the_half_open_trial(backends, azurite, table):
    weu, neu = backends
    env = env_for(weu, neu, azurite.connection_string, table)
    clock = Clock()
    a, b, c = (instance(env, n, clock) for n in "ABC")
    await a.pool.store.update_breaker("weu:gpt-4o-mini", lambda cur: cur.tripped_until(clock.now + 10, "429"))
    clock.now += 10
    for gw in (a, b, c):
        await gw.pool.refresh()
        assert gw.pool.status("weu", "gpt-4o-mini") == "half-open"
    target = a.pool.candidates("gpt-4o-mini")[0]
    granted = await asyncio.gather(a.pool.acquire(target), b.pool.acquire(target), c.pool.acquire(target))
    assert sorted(granted) == [False, False, True]
    for gw in (a, b, c):
        await gw.close()


async def test_content_filter_never_opens_a_breaker(backends, azurite, table):
    weu, neu = backends
    gw = instance(env_for(weu, neu, azurite.connection_string, table, GATEWAY_BREAKER_FAILURES="1"), "A")
    weu.always(Fault.content_filter())
    for _ in range(3):
        assert (await gw.pipeline.handle(chat())).status == 400
    await gw.pool.settle()
    assert gw.pool.status("weu") == "closed" and await stored_breakers(gw) == {}
    assert neu.requests == []
    await gw.close()


async def test_the_happy_path_makes_no_storage_operation(backends, azurite, table):
    weu, neu = backends
    gw = instance(env_for(weu, neu, azurite.connection_string, table, GATEWAY_STATE_REFRESH_MS="600000"), "A")
    assert (await gw.pipeline.handle(chat())).status == 200  # the first request loads the state once
    await gw.pool.settle()
    before = gw.pool.store.operations
    for _ in range(20):
        assert (await gw.pipeline.handle(chat())).status == 200
    await gw.pool.settle()
    assert gw.pool.store.operations == before
    assert operations.stats(gw.pool, gw.pipeline.requests)["requests"] == 21
    await gw.close()


async def test_storage_outage_degrades_to_local_state_and_resynchronises(backends, table, caplog):
    weu, neu = backends
    caplog.set_level(logging.WARNING, logger="gateway.pool")
    storage = Azurite().start()
    try:
        gw = instance(env_for(weu, neu, storage.connection_string, table, GATEWAY_STATE_REFRESH_MS="50"), "A")
        assert (await gw.pipeline.handle(chat())).status == 200
        storage.stop()
        weu.enqueue(Fault.status(429, retry_after=30))
        for _ in range(3):  # requests keep succeeding, the breaker works locally
            out = await gw.pipeline.handle(chat())
            assert out.status == 200 and out.headers["x-gateway-backend"] == "neu"
        await gw.pool.settle()
        await gw.pool.refresh()
        assert not gw.pool.storage_ok and gw.pool.status("weu", "gpt-4o-mini") == "open"
        assert gw.pool.sync.unexpected_errors == 0  # an outage, not a bug
        unreachable = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(unreachable) == 1  # said once, not per request

        storage.start()  # back, empty (in-memory): our pending transition is written again
        await gw.pool.refresh()
        await gw.pool.settle()
        assert gw.pool.storage_ok
        assert (await stored_breakers(gw))["weu:gpt-4o-mini"].tripped
        assert any("reachable again" in r.getMessage() for r in caplog.records)
        await gw.close()
    finally:
        storage.stop()


@pytest.mark.parametrize("bug_in", ["refresh", "write"])
async def test_a_bug_in_the_store_is_logged_and_counted_never_taken_for_an_outage(
    backends, azurite, table, caplog, bug_in
):
    weu, neu = backends
    caplog.set_level(logging.WARNING, logger="gateway.pool")
    gw = instance(env_for(weu, neu, azurite.connection_string, table), "A", store_class=BuggyStore)
    assert (await gw.pipeline.handle(chat())).status == 200  # the state is loaded
    await gw.pool.settle()
    store = gw.pool.store
    assert isinstance(store, BuggyStore)
    store.bug_in = bug_in
    if bug_in == "refresh":
        await gw.pool.refresh()
    else:
        weu.enqueue(Fault.status(429, retry_after=30))  # the breaker's background write meets the bug
        assert (await gw.pipeline.handle(chat())).headers["x-gateway-backend"] == "neu"
        await gw.pool.settle()
    assert store.bug_in is None  # the bug was met
    assert gw.pool.storage_ok and gw.pool.sync.unexpected_errors == 1  # shared state still in use
    assert operations.stats(gw.pool, gw.pipeline.requests)["unexpected_storage_errors"] == 1
    assert operations.unexpected_errors(gw) == {"state": 1, "limits": 0, "probes": 0, "entra": 0}  # /gateway/stats
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.exc_info is not None and record.exc_info[0] is TypeError  # with its traceback
    assert not any("unreachable" in r.getMessage() for r in caplog.records)
    assert (await gw.pipeline.handle(chat())).status == 200
    await gw.pool.refresh()  # the next refresh reads storage as before
    assert gw.pool.storage_ok and gw.pool.sync.unexpected_errors == 1
    await gw.close()


async def test_probes_are_shared_and_steer_traffic(azurite, table):
    async with FakeAzureOpenAI(name="apim1") as apim1, FakeAzureOpenAI(name="neu") as neu:
        env = env_for(neu, None, azurite.connection_string, table)
        env["GATEWAY_BACKEND_1"] = (
            f"name=apim1;host={apim1.url};mode=apim;probe=/status;api-key=fake-key;priority=1;deployments=gpt-4o-mini"
        )
        env["GATEWAY_BACKEND_2"] = (
            f"name=neu;host={neu.url};mode=direct;probe=/status;api-key=fake-key;priority=2;deployments=gpt-4o-mini"
        )
        a, b = instance(env, "A"), instance(env, "B")
        apim1.always(Fault.status(503))
        results = await operations.probe(a.attempts)
        assert results == {"apim1": {"ok": False, "latency_ms": results["apim1"]["latency_ms"], "error": "HTTP 503"}}
        assert [r.path for r in neu.requests] == []  # direct backends are never probed
        await b.pool.refresh()
        assert b.pool.state.backends["apim1"].health.ok is False
        apim1.always(None)
        assert (await b.pipeline.handle(chat())).headers["x-gateway-backend"] == "neu"
        assert [r.path for r in apim1.requests] == ["/status"]  # only the probe reached it

        results = await operations.probe(a.attempts)
        assert results["apim1"]["ok"] and results["apim1"]["latency_ms"] > 0
        await b.pool.refresh()
        assert (await b.pipeline.handle(chat())).headers["x-gateway-backend"] == "apim1"
        assert b.pool.state.backends["apim1"].ttfb_ms is not None  # probes feed the latency strategy
        await a.close()
        await b.close()


class FailingCredential:
    """A token credential the test owns: fails with `error` as azure-identity (or a bug) would."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def get_token(self, *scopes: str, **kwargs: object):
        raise self.error

    async def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("error", "shown", "bug"),
    [
        (ClientAuthenticationError("no managed identity endpoint"), "ClientAuthenticationError", False),
        (TypeError("a programming error in the credential"), "internal error", True),
    ],
)
async def test_a_probe_that_fails_before_sending_is_a_failed_probe_and_a_bug_is_logged_as_one(
    azurite, table, caplog, error, shown, bug
):
    caplog.set_level(logging.WARNING, logger="gateway.health")
    async with FakeAzureOpenAI(name="apim1") as apim1:
        env = env_for(apim1, None, azurite.connection_string, table)
        env["GATEWAY_BACKEND_1"] = f"name=apim1;host={apim1.url};mode=apim;probe=/status;usemi=true;deployments=m"
        settings = load_settings(env)
        gw = build_services(settings, credential=FailingCredential(error))
        results = await operations.probe(gw.attempts)
        assert results["apim1"]["ok"] is False and results["apim1"]["error"] == shown
        assert apim1.requests == []  # nothing was sent without a credential
        assert gw.attempts.unexpected_errors == (1 if bug else 0)
        [record] = caplog.records
        if bug:
            assert record.levelno == logging.ERROR and record.exc_info is not None and record.exc_info[0] is TypeError
        else:
            assert record.levelno == logging.WARNING and record.exc_info is None
        await gw.close()


async def test_disable_enable_and_reset_reach_every_instance(backends, azurite, table):
    weu, neu = backends
    env = env_for(weu, neu, azurite.connection_string, table)
    a, b = instance(env, "A"), instance(env, "B")
    assert (await operations.change_backend(a.pool, "weu", "disable"))["breaker"] == "disabled"
    await b.pool.refresh()
    assert (await b.pipeline.handle(chat())).headers["x-gateway-backend"] == "neu"
    assert operations.backends_view(b.pool)["backends"][0]["breaker"] == "disabled"
    await operations.change_backend(a.pool, "weu", "enable")
    await b.pool.refresh()
    assert (await b.pipeline.handle(chat())).headers["x-gateway-backend"] == "weu"

    weu.enqueue(Fault.status(429, retry_after=300))
    await b.pipeline.handle(chat())
    await b.pool.settle()
    await a.pool.refresh()
    assert a.pool.status("weu", "gpt-4o-mini") == "open"
    await operations.change_backend(a.pool, "weu", "reset")
    await b.pool.refresh()
    assert b.pool.status("weu", "gpt-4o-mini") == "closed"
    for name, action in (("nope", "reset"), ("weu", "explode")):
        with pytest.raises(errors.GatewayError) as refused:
            await operations.change_backend(a.pool, name, action)
        assert refused.value.status == 404
    await a.close()
    await b.close()
