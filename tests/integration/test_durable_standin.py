"""The development host's Durable stand-in runs the real orchestrators behind the real SDK client.

HTTP tests go through a devhost child process serving tests/support/sample_app/durable_app.py: the sample's
HTTP starter uses the SDK's ``DurableOrchestrationClient``, and the tests poll the status URL it returns, as
clients do. Replay tests call ``durable_history.run_orchestrator`` on the same orchestrators, without HTTP.
"""

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request

from tests.support.devhost import DevHost
from tests.support.durable_history import EventType, HistoryBuilder, flatten_actions, run_orchestrator
from tests.support.durable_standin import (
    CRASH_REASON,
    DurableEngine,
    DurableStandIn,
    RuntimeStatus,
    discover_durable_functions,
    parse_crash_rate,
    parse_crash_setting,
    parse_time_scale,
)
from tests.support.indexing import index_app_report
from tests.support.sample_app import durable_app

SAMPLE_APP = "tests.support.sample_app.durable_app"
KEY = "standin-test-key"
TERMINAL = {"Completed", "Failed", "Terminated", "Canceled"}
STATUS_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
ENV = {
    "DEVHOST_FUNCTION_KEY": KEY,
    "DURABLE_STANDIN_TIME_SCALE": "0.001",  # a 20 s retry interval waits 20 ms
    "DURABLE_STANDIN_CRASH_ACTIVITY": "record_side_effect:1",
}


@pytest.fixture(scope="module")
def host() -> Iterator[DevHost]:
    with DevHost(ENV, app=SAMPLE_APP) as devhost:
        yield devhost


@pytest.fixture
async def http(host: DevHost) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=host.url, timeout=10) as client:
        yield client


async def start(http: httpx.AsyncClient, orchestrator: str, payload: Any = None) -> dict[str, str]:
    """Start through the sample's HTTP starter (SDK client start_new); returns the management payload."""
    response = await http.post(f"/orchestrators/{orchestrator}", json=payload)
    assert response.status_code == 202, response.text
    urls = response.json()
    assert response.headers["location"] == urls["statusQueryGetUri"]
    return urls


async def poll(
    http: httpx.AsyncClient, url: str, until: Callable[[httpx.Response], bool], timeout_s: float = 20.0
) -> httpx.Response:
    """GET ``url`` until ``until(response)`` holds (what a client of the 202 pattern does), with a deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = await http.get(url)
        if until(response):
            return response
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{url}: condition not met within {timeout_s} s; last answer {response.status_code} {response.text}"
            )
        await asyncio.sleep(0.02)


def finished(response: httpx.Response) -> bool:
    return response.status_code != 404 and response.json().get("runtimeStatus") in TERMINAL


async def wait_finished(http: httpx.AsyncClient, urls: dict[str, str], **query: str) -> httpx.Response:
    url = urls["statusQueryGetUri"] + "".join(f"&{k}={v}" for k, v in query.items())
    return await poll(http, url, finished)


def events(status: dict[str, Any], event_type: str) -> list[dict[str, Any]]:
    return [e for e in status["historyEvents"] if e["EventType"] == event_type]


# ------------------------------------------------------------------------------- start and status


async def test_start_returns_the_management_payload(host: DevHost, http: httpx.AsyncClient) -> None:
    urls = await start(http, "hello_sequence", ["Tokyo"])
    instance_id = urls["id"]
    prefix = f"{host.url}/runtime/webhooks/durabletask/instances/{instance_id}"
    query = f"taskHub=TestHubName&connection=Storage&code={KEY}"
    assert urls == {
        "id": instance_id,
        "statusQueryGetUri": f"{prefix}?{query}",
        "sendEventPostUri": f"{prefix}/raiseEvent/{{eventName}}?{query}",
        "terminatePostUri": f"{prefix}/terminate?reason={{text}}&{query}",
        "rewindPostUri": f"{prefix}/rewind?reason={{text}}&{query}",
        "purgeHistoryDeleteUri": f"{prefix}?{query}",
        "restartPostUri": f"{prefix}/restart?{query}",
        "suspendPostUri": f"{prefix}/suspend?reason={{text}}&{query}",
        "resumePostUri": f"{prefix}/resume?reason={{text}}&{query}",
    }


async def test_orchestration_completes_with_its_output(http: httpx.AsyncClient) -> None:
    urls = await start(http, "hello_sequence", ["Tokyo", "Seattle", "London"])
    response = await wait_finished(http, urls)
    assert response.status_code == 200
    assert "location" not in response.headers
    status = response.json()
    assert status["runtimeStatus"] == "Completed"
    assert status["output"] == ["Hello Tokyo!", "Hello Seattle!", "Hello London!"]
    assert (status["name"], status["instanceId"]) == ("hello_sequence", urls["id"])
    assert json.loads(status["input"]) == ["Tokyo", "Seattle", "London"]  # the SDK client posts JSON text
    assert status["customStatus"] is None
    assert STATUS_TIME.match(status["createdTime"]) and STATUS_TIME.match(status["lastUpdatedTime"])
    assert status["lastUpdatedTime"] >= status["createdTime"]
    assert "historyEvents" not in status


async def test_sdk_client_get_status_reads_the_same_instance(http: httpx.AsyncClient) -> None:
    urls = await start(http, "hello_fan_out", ["a", "b", "c", "d"])
    await wait_finished(http, urls)
    status = (await http.get(f"/instances/{urls['id']}")).json()  # sample function: client.get_status()
    assert status["runtimeStatus"] == "Completed"
    assert status["output"] == ["Hello a!", "Hello b!", "Hello c!", "Hello d!"]  # task_all keeps order
    assert (await http.get("/instances/no-such-instance")).status_code == 404


async def test_custom_status_is_visible_while_waiting_on_a_timer(http: httpx.AsyncClient) -> None:
    urls = await start(http, "timer_then_hello", {"seconds": 1800})  # 1.8 s of real time at scale 0.001
    url = urls["statusQueryGetUri"]
    waiting = await poll(http, url, lambda r: (r.json().get("customStatus") or {}).get("stage") == "waiting")
    assert waiting.status_code == 202
    assert waiting.json()["runtimeStatus"] == "Running"
    assert waiting.headers["location"] == url
    assert waiting.headers["retry-after"] == "5"
    done = await poll(http, url, finished)
    assert done.json()["runtimeStatus"] == "Completed"
    assert done.json()["output"] == "Hello timer!"
    assert done.json()["customStatus"] == {"stage": "done"}


async def test_time_scale_shortens_timers_but_not_logical_time(http: httpx.AsyncClient) -> None:
    started = time.monotonic()
    urls = await start(http, "elapsed_after_timer", 30)
    status = (await wait_finished(http, urls, showHistory="true")).json()
    assert time.monotonic() - started < 10
    assert status["runtimeStatus"] == "Completed"
    assert 30 <= status["output"] < 31  # current_utc_datetime advanced by the timer's logical 30 s
    created, fired = events(status, "TimerCreated"), events(status, "TimerFired")
    assert len(created) == len(fired) == 1 and created[0]["FireAt"] == fired[0]["FireAt"]


# ----------------------------------------------------------------------------- retries and failure


async def test_retried_activity_fails_twice_then_succeeds(http: httpx.AsyncClient) -> None:
    key = uuid.uuid4().hex
    urls = await start(http, "retry_flaky", {"key": key, "fail_times": 2})
    status = (await wait_finished(http, urls, showHistory="true", showHistoryOutput="true")).json()
    assert status["runtimeStatus"] == "Completed"
    assert status["output"] == {"key": key, "attempts": 3}
    failures = events(status, "TaskFailed")
    assert [f["Reason"] for f in failures] == [
        f"Activity function 'flaky' failed: RuntimeError: flaky failure {n}" for n in (1, 2)
    ]
    assert len(events(status, "TimerFired")) == 2  # one retry interval after each failed attempt
    assert [e["Result"] for e in events(status, "TaskCompleted")] == [{"key": key, "attempts": 3}]
    assert (await http.get(f"/side_effects/flaky:{key}")).json()["count"] == 3


async def test_retries_exhausted_fail_the_orchestration(http: httpx.AsyncClient) -> None:
    key = uuid.uuid4().hex
    urls = await start(http, "retry_flaky", {"key": key, "fail_times": 5})
    status = (await wait_finished(http, urls)).json()
    assert status["runtimeStatus"] == "Failed"
    assert status["output"].startswith(
        "Orchestrator function 'retry_flaky' failed: Activity function 'flaky' failed: RuntimeError: flaky failure 3"
    )
    assert (await http.get(f"/side_effects/flaky:{key}")).json()["count"] == 3  # maxNumberOfAttempts


async def test_failing_activity_without_retry_fails_the_orchestration(http: httpx.AsyncClient) -> None:
    urls = await start(http, "call_failing", "boom")
    response = await wait_finished(http, urls)
    assert response.status_code == 200  # Failed is 200 unless returnInternalServerErrorOnFailure=true
    status = response.json()
    assert status["runtimeStatus"] == "Failed"
    assert status["output"].startswith(
        "Orchestrator function 'call_failing' failed: Activity function 'always_fails' failed: "
        "ValueError: cannot handle 'boom'"
    )
    strict = await http.get(urls["statusQueryGetUri"] + "&returnInternalServerErrorOnFailure=true")
    assert strict.status_code == 500
    assert strict.json()["runtimeStatus"] == "Failed"


async def test_crashed_worker_loses_the_result_and_the_retry_runs_it_again(http: httpx.AsyncClient) -> None:
    key = uuid.uuid4().hex
    urls = await start(http, "record_with_retry", key)
    status = (await wait_finished(http, urls, showHistory="true", showHistoryOutput="true")).json()
    assert status["runtimeStatus"] == "Completed"
    assert status["output"] == 2  # what the second execution counted
    assert (await http.get(f"/side_effects/{key}")).json()["count"] == 2  # the side effect happened twice
    assert [f["Reason"] for f in events(status, "TaskFailed")] == [CRASH_REASON]
    assert len(events(status, "TaskCompleted")) == 1
    assert [e["OrchestrationStatus"] for e in events(status, "ExecutionCompleted")] == ["Completed"]


async def test_instances_run_concurrently(http: httpx.AsyncClient) -> None:
    names = [[f"{i}-{j}" for j in range(3)] for i in range(8)]
    started = await asyncio.gather(*(start(http, "hello_fan_out", n) for n in names))
    statuses = await asyncio.gather(*(wait_finished(http, urls) for urls in started))
    assert [s.json()["output"] for s in statuses] == [[f"Hello {n}!" for n in group] for group in names]


async def test_external_event_through_the_send_event_url(http: httpx.AsyncClient) -> None:
    urls = await start(http, "wait_for_approval")
    await poll(http, urls["statusQueryGetUri"], lambda r: r.json().get("customStatus") == "awaiting approval")
    send = urls["sendEventPostUri"].replace("{eventName}", "approval")
    assert (await http.post(send, content=b"yes", headers={"content-type": "text/plain"})).status_code == 400
    assert (await http.post(send, json={"by": "ops", "ok": True})).status_code == 202
    status = (await wait_finished(http, urls)).json()
    assert (status["runtimeStatus"], status["output"]) == ("Completed", {"by": "ops", "ok": True})
    assert (await http.post(send, json={})).status_code == 410


# ---------------------------------------------------------------------------------------- terminate


async def test_terminate_through_the_sdk_client(http: httpx.AsyncClient) -> None:
    urls = await start(http, "long_wait")
    url = urls["statusQueryGetUri"]
    await poll(http, url, lambda r: r.json().get("customStatus") == "sleeping")  # waiting on a 1-day timer
    assert (await http.post(f"/instances/{urls['id']}/terminate", params={"reason": "enough"})).status_code == 202
    status = (await poll(http, url, finished)).json()
    assert (status["runtimeStatus"], status["output"]) == ("Terminated", "enough")
    # Terminating again answers 410 Gone, which the SDK client accepts.
    assert (await http.post(f"/instances/{urls['id']}/terminate", params={"reason": "again"})).status_code == 202


async def test_terminate_through_the_public_url(http: httpx.AsyncClient) -> None:
    urls = await start(http, "long_wait")
    await poll(http, urls["statusQueryGetUri"], lambda r: r.json().get("runtimeStatus") == "Running")
    terminate = urls["terminatePostUri"].replace("{text}", "stopped%20by%20test")
    assert (await http.post(terminate)).status_code == 202
    status = (await wait_finished(http, urls, showHistory="true")).json()
    assert (status["runtimeStatus"], status["output"]) == ("Terminated", "stopped by test")
    assert [e["Input"] for e in events(status, "ExecutionTerminated")] == ["stopped by test"]
    assert (await http.post(terminate)).status_code == 410
    unknown = terminate.replace(urls["id"], "no-such-instance")
    assert (await http.post(unknown)).status_code == 404


# ----------------------------------------------------------------------------------- HTTP API edges


async def test_public_urls_need_the_system_key_rpc_urls_do_not(host: DevHost, http: httpx.AsyncClient) -> None:
    urls = await start(http, "hello_sequence", ["x"])
    await wait_finished(http, urls)
    without_key = urls["statusQueryGetUri"].replace(f"&code={KEY}", "")
    assert (await http.get(without_key)).status_code == 401
    rpc = await http.get(f"{host.url}/durabletask/instances/{urls['id']}")  # what the SDK client calls
    assert rpc.status_code == 200 and rpc.json()["output"] == ["Hello x!"]
    unknown = await http.get(urls["statusQueryGetUri"].replace(urls["id"], "no-such-instance"))
    assert (unknown.status_code, unknown.content) == (404, b"")


async def test_start_errors(host: DevHost, http: httpx.AsyncClient) -> None:
    unknown = await http.post(f"{host.url}/durabletask/orchestrators/no_such_orchestrator")
    assert unknown.status_code == 400
    assert "no_such_orchestrator" in unknown.json()["ExceptionMessage"]
    bad_json = await http.post(f"{host.url}/durabletask/orchestrators/hello_sequence", content=b"{nope")
    assert bad_json.status_code == 400
    instance_id = uuid.uuid4().hex
    first = await http.post(f"{host.url}/durabletask/orchestrators/long_wait/{instance_id}")
    assert first.status_code == 202 and first.json()["id"] == instance_id
    duplicate = await http.post(f"{host.url}/durabletask/orchestrators/long_wait/{instance_id}")
    assert duplicate.status_code == 409  # a running instance is not replaced
    await http.post(f"{host.url}/durabletask/instances/{instance_id}/terminate", params={"reason": "cleanup"})


async def test_purge_and_list(host: DevHost, http: httpx.AsyncClient) -> None:
    done = await start(http, "hello_sequence", ["p"])
    await wait_finished(http, done)
    running = await start(http, "long_wait")
    listed = (await http.get(f"{host.url}/durabletask/instances/", params={"runtimeStatus": "Running"})).json()
    assert running["id"] in {s["instanceId"] for s in listed}
    assert done["id"] not in {s["instanceId"] for s in listed}
    assert (await http.delete(running["purgeHistoryDeleteUri"])).status_code == 412  # not terminal yet
    purged = await http.delete(done["purgeHistoryDeleteUri"])
    assert (purged.status_code, purged.json()) == (200, {"instancesDeleted": 1})
    assert (await http.get(done["statusQueryGetUri"])).status_code == 404
    assert (await http.delete(done["purgeHistoryDeleteUri"])).status_code == 404
    await http.post(running["terminatePostUri"].replace("{text}", "cleanup"))


def test_banner_says_durable_runs_on_the_standin(host: DevHost) -> None:
    log = host.log()
    assert "Durable Functions run on the development host's Durable stand-in, NOT the real Durable" in log
    assert "instances are lost on restart" in log


# ------------------------------------------------------------------------------ client binding shape


async def test_client_binding_has_the_shape_the_extension_injects() -> None:
    engine = DurableEngine({}, {})
    standin = DurableStandIn(engine, system_key="k")
    scope = {
        "type": "http",
        "method": "POST",
        "scheme": "http",
        "server": ("127.0.0.1", 7071),
        "path": "/start",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1:7071")],
    }
    binding = json.loads(await standin.client_binding({"type": "durableClient", "name": "client"}, Request(scope)))
    assert set(binding) == {
        "taskHubName",
        "connectionName",
        "creationUrls",
        "managementUrls",
        "baseUrl",
        "requiredQueryStringParameters",
        "rpcBaseUrl",
        "httpBaseUrl",
        "maxGrpcMessageSizeInBytes",
        "grpcHttpClientTimeout",
    }
    assert binding["taskHubName"] == "TestHubName"
    assert binding["rpcBaseUrl"] == "http://127.0.0.1:7071/durabletask/"
    assert binding["baseUrl"] == "http://127.0.0.1:7071/runtime/webhooks/durabletask"
    assert binding["managementUrls"]["id"] == "INSTANCEID"
    assert binding["managementUrls"]["statusQueryGetUri"] == (
        "http://127.0.0.1:7071/runtime/webhooks/durabletask/instances/INSTANCEID"
        "?taskHub=TestHubName&connection=Storage&code=k"
    )
    assert set(binding["creationUrls"]) == {"createNewInstancePostUri", "createAndWaitOnNewInstancePostUri"}


def test_sample_app_indexes_with_the_worker(repo_root: Path) -> None:
    report = index_app_report(repo_root / "tests" / "support" / "sample_app" / "durable_app.py")
    assert report["indexed"] == report["declared"]
    assert {"start_orchestration", "hello_sequence", "flaky", "say_hello"} <= set(report["indexed"])


def test_settings_parsing() -> None:
    assert parse_time_scale(None) == 1.0
    assert parse_time_scale("0.001") == 0.001
    assert parse_crash_setting("a:1, b:3") == {"a": 1, "b": 3}
    assert parse_crash_setting("") == {}
    for bad_scale in ("0", "-1", "fast"):
        with pytest.raises(ValueError):
            parse_time_scale(bad_scale)
    with pytest.raises(ValueError):
        parse_crash_setting("activity")
    assert parse_crash_rate(None) == (0.0, 0)
    assert parse_crash_rate("0.1", "42") == (0.1, 42)
    for bad_rate, bad_seed in (("1.5", None), ("-0.1", None), ("often", None), ("0.1", "x")):
        with pytest.raises(ValueError):
            parse_crash_rate(bad_rate, bad_seed)


async def run_with_random_crashes(seed: int, runs: int = 12) -> tuple[dict[str, int], list[tuple[str, int, int]]]:
    """``record_with_retry`` run ``runs`` times one after another on an in-process engine crashing half of the
    activity executions: the crashes injected, and per run (status, executions that ran, TaskFailed events)."""
    functions = discover_durable_functions(durable_app.app)
    engine = DurableEngine(functions.orchestrators, functions.activities, time_scale=0.001, crash_rate=0.5,
                           crash_seed=seed)
    runs_seen = []
    try:
        for number in range(runs):
            key = f"crash-rate-{uuid.uuid4().hex}-{number}"
            instance = engine.start_new("record_with_retry", json.dumps(json.dumps(key)))  # as the SDK client sends it
            async with asyncio.timeout(10):
                await engine.wait(instance.instance_id)
            failed = [e for e in instance.history.events if e["EventType"] == EventType.TASK_FAILED]
            assert {e["Reason"] for e in failed} <= {CRASH_REASON}
            runs_seen.append((str(instance.runtime_status), durable_app._counts[key], len(failed)))
    finally:
        await engine.stop()
    return engine.crashes, runs_seen


async def test_random_crashes_come_before_or_after_the_activity_and_repeat_with_the_seed() -> None:
    crashes, runs = await run_with_random_crashes(seed=5)
    assert crashes["before"] > 0 and crashes["after"] > 0
    executions = sum(failed + (status == RuntimeStatus.COMPLETED) for status, _, failed in runs)
    assert sum(failed for _, _, failed in runs) == crashes["before"] + crashes["after"]
    assert sum(ran for _, ran, _ in runs) == executions - crashes["before"]  # a crash before: it never ran
    assert {status for status, _, _ in runs} <= {RuntimeStatus.COMPLETED, RuntimeStatus.FAILED}
    assert await run_with_random_crashes(seed=5) == (crashes, runs)  # the same seed, the same run


# -------------------------------------------------------------------- replay level (no host, no HTTP)


START = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_replay_schedules_activities_one_after_another() -> None:
    history = HistoryBuilder("hello_sequence", ["Tokyo", "Seattle"], start=START)
    first = run_orchestrator(durable_app.hello_sequence, history)
    assert (first["isDone"], first["error"]) == (False, None)
    assert first["actions"] == [{"actionType": 0, "functionName": "say_hello", "input": '"Tokyo"'}]

    history.completed_activity(0, "say_hello", "Hello Tokyo!", input="Tokyo")
    second = run_orchestrator(durable_app.hello_sequence, history)
    assert [a["input"] for a in second["actions"]] == ['"Tokyo"', '"Seattle"']  # actions are cumulative

    history.completed_activity(1, "say_hello", "Hello Seattle!", input="Seattle")
    final = run_orchestrator(durable_app.hello_sequence, history)
    assert (final["isDone"], final["output"]) == (True, ["Hello Tokyo!", "Hello Seattle!"])


def test_replay_timer_and_custom_status_follow_the_history_clock() -> None:
    history = HistoryBuilder("timer_then_hello", {"seconds": 30}, start=START)
    state = run_orchestrator(durable_app.timer_then_hello, history)
    fire_at = START + timedelta(seconds=30)
    assert state["customStatus"] == {"stage": "waiting", "until": fire_at.isoformat()}
    assert state["actions"] == [{"actionType": 5, "fireAt": "2026-01-02T03:04:35.000000Z", "isCanceled": False}]

    history.fired_timer(0, fire_at)
    state = run_orchestrator(durable_app.timer_then_hello, history)
    assert state["customStatus"] == {"stage": "greeting"}
    assert state["actions"][-1]["functionName"] == "say_hello"

    elapsed = HistoryBuilder("elapsed_after_timer", 30, start=START)
    elapsed.fired_timer(0, START + timedelta(seconds=30))
    assert run_orchestrator(durable_app.elapsed_after_timer, elapsed)["output"] == 30.0


def test_replay_retry_interleaves_attempts_and_retry_timers() -> None:
    payload = {"key": "k", "fail_times": 2}
    history = HistoryBuilder("retry_flaky", payload, start=START)
    [action] = run_orchestrator(durable_app.retry_flaky, history)["actions"]
    assert action["actionType"] == 1  # flattened out of its compound wrapper
    assert action["retryOptions"] == {"firstRetryIntervalInMilliseconds": 20000, "maxNumberOfAttempts": 3}
    history.failed_activity(0, "flaky", "flaky failure 1", input=payload)
    history.fired_timer(1, history.now + timedelta(seconds=20))
    history.failed_activity(2, "flaky", "flaky failure 2", input=payload)
    history.fired_timer(3, history.now + timedelta(seconds=20))
    history.completed_activity(4, "flaky", {"key": "k", "attempts": 3}, input=payload)
    state = run_orchestrator(durable_app.retry_flaky, history)
    assert (state["isDone"], state["output"]) == (True, {"key": "k", "attempts": 3})


def test_replay_retry_fails_after_the_extra_timer_of_the_last_attempt() -> None:
    history = HistoryBuilder("retry_flaky", {"key": "k", "fail_times": 9}, start=START)
    for attempt in range(3):
        history.failed_activity(2 * attempt, "flaky", f"flaky failure {attempt + 1}", "details")
        assert run_orchestrator(durable_app.retry_flaky, history)["error"] is None  # still waiting
        history.fired_timer(2 * attempt + 1, history.now + timedelta(seconds=20))
    state = run_orchestrator(durable_app.retry_flaky, history)
    assert state["isDone"] is False
    assert state["error"] == "flaky failure 3 \n details"


def test_replay_fan_out_flattens_compound_actions() -> None:
    history = HistoryBuilder("hello_fan_out", ["a", "b"], start=START)
    state = run_orchestrator(durable_app.hello_fan_out, history)
    assert state["rawActions"][0][0]["actionType"] == 12  # WhenAll wrapping the two calls
    assert [a["input"] for a in state["actions"]] == ['"a"', '"b"']
    assert flatten_actions(state["rawActions"]) == state["actions"]


def test_replay_of_a_plain_generator_function_and_an_event_list() -> None:
    def orchestrator(context):
        value = yield context.wait_for_external_event("approval")
        return {"approved": value, "input": context.get_input()}

    history = HistoryBuilder("approval", start=START)
    assert run_orchestrator(orchestrator, history, input="x")["actions"] == [
        {"actionType": 6, "externalEventName": "approval", "reason": "ExternalEvent"}
    ]
    history.new_episode(START + timedelta(minutes=1))
    history.event_raised("approval", True)
    assert [e["EventType"] for e in history.events] == [
        EventType.ORCHESTRATOR_STARTED,
        EventType.EXECUTION_STARTED,
        EventType.ORCHESTRATOR_COMPLETED,
        EventType.ORCHESTRATOR_STARTED,
        EventType.EVENT_RAISED,
    ]
    state = run_orchestrator(orchestrator, list(history.events), input="x")
    assert (state["isDone"], state["output"]) == (True, {"approved": True, "input": "x"})
