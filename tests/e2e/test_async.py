"""The async path end to end: devhost + Durable stand-in + Azurite + fake backends, over real HTTP.

The client does what the README shows: POST with `Prefer: respond-async`, get 202, poll the gateway's own
status URL (`Location`, `GET /status/{id}`, with the same key), fetch `/results/{id}`. Completion messages are
read back from the Storage queue (no Service Bus configured).
Polling with a deadline is how clients wait; nothing here sleeps to synchronise.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from azure.storage.queue import QueueClient

from tests.support.azurite import Azurite
from tests.support.devhost import DevHost
from tests.support.fake_openai import FakeAzureOpenAI, Fault

KEY, OTHER_KEY = "async-key", "someone-else"
OPERATOR = {"x-functions-key": "devhost-function-key"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello asynchronously"}]}
ASYNC = {"api-key": KEY, "Prefer": "respond-async"}
# What GET /status/{id} answers (README): the Durable status object without its input.
FINAL = ("Completed", "Failed", "Terminated")
STATUS_KEYS = {"name", "instanceId", "runtimeStatus", "customStatus", "output", "createdTime", "lastUpdatedTime"}


class Stack:
    def __init__(self, weu, neu, host: DevHost, queue: QueueClient, http: httpx.Client) -> None:
        self.weu, self.neu, self.host, self.queue, self.http = weu, neu, host, queue, http

    def completions(self, instance_id: str) -> list[dict]:
        messages = [json.loads(base64.b64decode(m.content)) for m in self.queue.peek_messages(max_messages=32)]
        return [m for m in messages if m["id"] == instance_id]

    def wait_for_completion_message(self, instance_id: str, timeout_s: float = 30) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if found := self.completions(instance_id):
                return found[0]
        raise AssertionError(f"no completion message for {instance_id}")

    def poll(self, status_url: str, timeout_s: float = 30) -> dict:
        """What a client does with the 202's Location: poll (with its key) until the runtime status is final."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            answer = self.http.get(status_url)
            status = answer.json()
            assert set(status) == STATUS_KEYS  # the documented seven: never `input`, nothing else
            if status["runtimeStatus"] not in FINAL:  # Pending, Running, ...: still running
                assert answer.status_code == 202 and int(answer.headers["Retry-After"]) >= 1, answer.headers
                continue
            assert answer.status_code == 200 and "retry-after" not in answer.headers
            return status
        raise AssertionError(f"still {status['runtimeStatus']} after {timeout_s} s: {status}")

    def submit(self, body: dict, **headers: str) -> httpx.Response:
        answer = self.http.post("/v1/chat/completions", json=body, headers={**ASYNC, **headers})
        assert answer.status_code == 202, answer.text
        return answer


@contextlib.contextmanager
def running_stack(azurite, weu, neu, **extra: str) -> Iterator[Stack]:
    """A devhost over the two fakes, with a client for it and the completions queue; all closed on exit."""
    suffix = uuid.uuid4().hex[:8]
    queue_name = "done-" + suffix
    env = {
        "AzureWebJobsStorage": azurite.connection_string,
        "GATEWAY_STATE_TABLE": "async" + suffix,
        "GATEWAY_RESULTS_CONTAINER": "results-" + suffix,
        "GATEWAY_COMPLETIONS_QUEUE": queue_name,
        "GATEWAY_API_KEYS": f"{KEY},{OTHER_KEY}",
        "GATEWAY_MAX_WAIT_S": "1",
        "GATEWAY_BACKEND_1": f"name=weu;host={weu.url};mode=direct;api-key=fake-key;priority=1;deployments=gpt-4o-mini",
        "GATEWAY_BACKEND_2": f"name=neu;host={neu.url};mode=direct;api-key=fake-key;priority=2;deployments=gpt-4o-mini",
        **extra,
    }
    with (
        DevHost(env=env) as host,
        QueueClient.from_connection_string(azurite.connection_string, queue_name) as queue,
        httpx.Client(base_url=host.url, headers={"api-key": KEY}, timeout=30) as http,
    ):
        yield Stack(weu, neu, host, queue, http)


@pytest.fixture(scope="module")
def stack(azurite) -> Iterator[Stack]:
    weu, neu = FakeAzureOpenAI(name="weu"), FakeAzureOpenAI(name="neu")
    with weu.threaded(), neu.threaded(), running_stack(azurite, weu, neu) as stack:
        yield stack


@pytest.fixture
def fresh(stack: Stack) -> Stack:
    for fake in (stack.weu, stack.neu):
        fake.clear()
        assert stack.http.post(f"/gateway/backends/{fake.name}/reset", headers=OPERATOR).status_code == 200
    return stack


def strip_ids(completion: dict) -> dict:
    return {k: v for k, v in completion.items() if k not in ("id", "created")}


def test_respond_async_completes_with_what_the_sync_call_gives(fresh: Stack):
    sync = fresh.http.post("/v1/chat/completions", json=CHAT).json()
    answer = fresh.submit(CHAT, **{"x-request-id": "client-req-42"})
    accepted = answer.json()
    assert answer.headers["Location"] == accepted["status_url"] == f"{fresh.host.url}/status/{accepted['id']}"
    assert answer.headers["Retry-After"] and answer.headers["Preference-Applied"] == "respond-async"
    assert accepted["status"] == "accepted" and accepted["result_url"].endswith(f"/results/{accepted['id']}")
    assert "Prefer" in accepted["reason"]
    assert "code=" not in answer.text and "statusQueryGetUri" not in accepted  # no Durable system key
    assert fresh.http.get(answer.headers["Location"], headers={"api-key": OTHER_KEY}).status_code == 404
    assert fresh.http.get(answer.headers["Location"], headers={"api-key": ""}).status_code == 401

    status = fresh.poll(answer.headers["Location"])
    output = status["output"]
    assert status["runtimeStatus"] == "Completed" and output["status"] == "succeeded"
    assert strip_ids(output["result"]) == strip_ids(sync)
    assert output["usage"]["total_tokens"] == sync["usage"]["total_tokens"]
    assert status["createdTime"] and status["lastUpdatedTime"]

    result = fresh.http.get(accepted["result_url"])
    assert result.status_code == 200 and result.json() == output["result"]
    assert fresh.http.get(accepted["result_url"], headers={"api-key": OTHER_KEY}).status_code == 404

    message = fresh.wait_for_completion_message(accepted["id"])
    assert (message["status"], message["request_id"], message["backend"]) == ("succeeded", "client-req-42", "weu")
    assert message["usage"]["total_tokens"] == sync["usage"]["total_tokens"]
    assert len(fresh.completions(accepted["id"])) == 1  # exactly once


def test_a_streamed_request_run_async_returns_the_assembled_completion(fresh: Stack):
    answer = fresh.submit({**CHAT, "stream": True})
    output = fresh.poll(answer.headers["Location"])["output"]
    completion = output["result"]
    assert completion["object"] == "chat.completion"
    assert completion["choices"][0]["message"]["content"] == fresh.weu.reply_text()
    assert completion["usage"]["total_tokens"] == output["usage"]["total_tokens"] > 0


def test_throttling_is_waited_out_on_a_durable_timer(fresh: Stack):
    fresh.weu.enqueue(Fault.status(429, retry_after_ms=1200))
    fresh.neu.enqueue(Fault.status(429, retry_after_ms=3000))
    answer = fresh.submit(CHAT)
    status = fresh.poll(answer.headers["Location"])
    output = status["output"]
    assert output["status"] == "succeeded" and output["backend"] == "weu" and output["attempts"] == 3
    assert len(fresh.weu.requests) == 2 and len(fresh.neu.requests) == 1


def test_backend_errors_end_as_failed_with_the_backends_answer(fresh: Stack):
    fresh.weu.enqueue(Fault.content_filter())
    answer = fresh.submit(CHAT)
    output = fresh.poll(answer.headers["Location"])["output"]
    assert output["status"] == "failed" and output["http_status"] == 400
    result = fresh.http.get(answer.json()["result_url"])
    assert result.status_code == 400 and result.json()["error"]["code"] == "content_filter"
    assert fresh.wait_for_completion_message(answer.json()["id"])["status"] == "failed"


def test_cancel_with_delete_ends_the_work_and_publishes_cancelled_once(fresh: Stack):
    for fake in (fresh.weu, fresh.neu):
        fake.always(Fault.status(429, retry_after=600))
    answer = fresh.submit(CHAT)
    result_url = answer.json()["result_url"]
    pending = fresh.http.get(result_url)
    assert pending.status_code == 202 and pending.json()["status"] == "running"
    running = fresh.http.get(answer.headers["Location"])  # the status route while the work waits out the 429s
    assert running.status_code == 202 and int(running.headers["Retry-After"]) >= 1
    assert set(running.json()) == STATUS_KEYS and running.json()["runtimeStatus"] not in FINAL
    cancelled = fresh.http.delete(result_url)
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
    assert fresh.poll(answer.headers["Location"])["runtimeStatus"] == "Terminated"
    message = fresh.wait_for_completion_message(answer.json()["id"])
    assert message["status"] == "cancelled" and message["error"]["code"] == "cancelled"
    housekeeping = fresh.http.post("/gateway/async/housekeeping", headers=OPERATOR).json()
    assert housekeeping["cancelled_published"] == 0 and len(fresh.completions(answer.json()["id"])) == 1
    assert fresh.http.get(result_url).status_code == 409


def test_durable_urls_only_by_opt_in_and_no_credential_in_durable_state(azurite):
    """GATEWAY_EXPOSE_DURABLE_URLS=true (single tenant): the management payload comes back; the durable state it
    opens holds no client credential; work terminated through it still ends in one `cancelled` completion."""
    weu, neu = FakeAzureOpenAI(name="weu"), FakeAzureOpenAI(name="neu")
    with weu.threaded(), neu.threaded():
        with running_stack(azurite, weu, neu, GATEWAY_EXPOSE_DURABLE_URLS="true") as stack:
            in_query = {
                "api-key": KEY, "code": "host-code-5e1", "sig": "sas-sig-9d2", "key": "plain-key-4b7",
                "token": "tok-8c3", "Subscription-Key": "apim-key-2f6", "x-my-apikey": "custom-key-1a0",
            }  # fmt: skip
            query = "api-version=2024-10-21&" + "&".join(f"{k}={v}" for k, v in in_query.items()) + "&keep=me"
            headers = {**ASYNC, "authorization": "Bearer not-a-gateway-key"}
            submitted = stack.http.post(f"/v1/chat/completions?{query}", json=CHAT, headers=headers)
            assert submitted.status_code == 202, submitted.text
            done = submitted.json()
            stack.poll(done["status_url"])
            durable = httpx.get(done["statusQueryGetUri"] + "&showInput=true&showHistory=true&showHistoryOutput=true")
            durable_input = json.loads(durable.json()["input"])
            assert durable.status_code == 200 and durable_input["caller"]
            assert durable_input["query"] == "api-version=2024-10-21&keep=me"  # only what is not a credential
            for secret in (KEY, "not-a-gateway-key", "fake-key", *in_query.values()):
                assert secret not in durable.text  # input, output, custom status and history

            for fake in (weu, neu):
                fake.always(Fault.status(429, retry_after=600))
            accepted = stack.submit(CHAT).json()
            terminate = httpx.post(accepted["terminatePostUri"].replace("{text}", "operator"))
            assert terminate.status_code == 202
            assert stack.poll(accepted["status_url"])["runtimeStatus"] == "Terminated"
            assert stack.http.post("/gateway/async/housekeeping", headers=OPERATOR).json()["cancelled_published"] >= 1
            assert [m["status"] for m in stack.completions(accepted["id"])] == ["cancelled"]
            assert stack.http.post("/gateway/async/housekeeping", headers=OPERATOR).status_code == 200
            assert len(stack.completions(accepted["id"])) == 1


def test_cooling_backends_defer_only_clients_that_can_take_a_202(fresh: Stack):
    for fake in (fresh.weu, fresh.neu):
        fake.enqueue(Fault.status(429, retry_after=600))
    first = fresh.http.post("/v1/chat/completions", json=CHAT)  # both throttle now: breakers open for 600 s
    assert first.status_code == 429 and int(first.headers["Retry-After"]) > 500
    stream = fresh.http.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert stream.status_code == 429 and int(stream.headers["Retry-After"]) > 500
    plain = fresh.http.post("/v1/chat/completions", json=CHAT)  # an unmodified client never gets a 202
    assert plain.status_code == 429 and plain.json()["error"]["code"] == "backends_unavailable"
    deferred = fresh.http.post("/v1/chat/completions", json=CHAT, headers={"Prefer": "respond-async, wait=5"})
    assert deferred.status_code == 202 and "cooling down" in deferred.json()["reason"]
    assert deferred.headers["Preference-Applied"] == "respond-async"
    assert fresh.http.delete(deferred.json()["result_url"]).status_code == 202


def test_long_generations_stay_synchronous_unless_the_client_waits_less(fresh: Stack):
    plain = fresh.http.post("/v1/chat/completions", json={**CHAT, "max_tokens": 100_000})
    assert plain.status_code == 200 and plain.json()["object"] == "chat.completion"  # never a surprise 202
    # wait=5: the only observation so far is the short answer above, so ~0 s expected: served synchronously.
    waited = fresh.http.post(
        "/v1/chat/completions", json={**CHAT, "max_tokens": 100_000}, headers={"Prefer": "respond-async, wait=5"}
    )
    assert waited.status_code == 200
    # wait=0: anything takes longer than that, so the client that can take a 202 gets one.
    answer = fresh.http.post(
        "/v1/chat/completions", json={**CHAT, "max_tokens": 100_000}, headers={"Prefer": "respond-async, wait=0"}
    )
    assert answer.status_code == 202 and "wait=0" in answer.json()["reason"]
    assert fresh.poll(answer.headers["Location"])["output"]["status"] == "succeeded"


def test_a_crashed_activity_is_retried_and_still_publishes_once(azurite):
    weu, neu = FakeAzureOpenAI(name="weu"), FakeAzureOpenAI(name="neu")
    with weu.threaded(), neu.threaded():
        with running_stack(azurite, weu, neu, DURABLE_STANDIN_CRASH_ACTIVITY="attempt_backend:1") as stack:
            answer = stack.submit(CHAT)
            output = stack.poll(answer.headers["Location"])["output"]
            assert output["status"] == "succeeded"
            assert len(weu.requests) == 2  # the crashed attempt really ran, then ran again
            stack.wait_for_completion_message(answer.json()["id"])
            assert len(stack.completions(answer.json()["id"])) == 1


def test_housekeeping_purges_finished_work_and_its_blobs(azurite):
    """More finished instances than one page of the Durable instance query (2 here, 100 on Azure, where the SDK's
    own query stops at the first page): the console's work view and the housekeeping read every page."""
    weu, neu = FakeAzureOpenAI(name="weu"), FakeAzureOpenAI(name="neu")
    with weu.threaded(), neu.threaded():
        with running_stack(azurite, weu, neu, GATEWAY_PURGE_AFTER_DAYS="0", DURABLE_STANDIN_PAGE_SIZE="2") as stack:
            accepted = [stack.submit(CHAT).json() for _ in range(5)]
            for one in accepted:
                assert stack.poll(one["status_url"])["runtimeStatus"] == "Completed"
                assert stack.http.get(one["result_url"]).status_code == 200
            work = stack.http.get("/gateway/work", headers=OPERATOR).json()
            assert {item["id"] for item in work["items"]} == {one["id"] for one in accepted} and work["complete"]
            created = [item["created"] for item in work["items"]]
            assert created == sorted(created, reverse=True)  # newest first
            done = stack.http.post("/gateway/async/housekeeping", headers=OPERATOR).json()
            assert done["purged"] == 5 and done["complete"] is True
            for one in accepted:
                assert stack.http.get(one["status_url"]).status_code == 404
                assert stack.http.get(one["result_url"]).status_code == 404


def test_malformed_unknown_and_someone_elses_ids_get_the_same_404(fresh: Stack):
    """No oracle: on each route, an id that cannot exist, one that does not, and another caller's look alike."""
    mine = fresh.submit(CHAT).json()["id"]
    fresh.poll(f"/status/{mine}")
    malformed = ["zz", "0" * 31, "F" * 32, "g" * 32, mine + "0"]
    for route, code in (("status", "status_not_found"), ("results", "result_not_found")):
        answers = [fresh.http.get(f"/{route}/{value}") for value in [*malformed, uuid.uuid4().hex]]
        answers.append(fresh.http.get(f"/{route}/{mine}", headers={"api-key": OTHER_KEY}))
        if route == "results":
            answers.append(fresh.http.delete(f"/results/{uuid.uuid4().hex}"))
            answers.append(fresh.http.delete("/results/zz"))
            answers.append(fresh.http.delete(f"/results/{mine}", headers={"api-key": OTHER_KEY}))
        assert {a.status_code for a in answers} == {404}
        assert [a.json() for a in answers] == [answers[0].json()] * len(answers)
        assert answers[0].json()["error"]["code"] == code and mine not in answers[-1].text
    assert fresh.http.get(f"/status/{mine}").status_code == 200  # the owner still gets it


def test_results_answer_503_with_retry_after_while_storage_is_down():
    """Azurite stopped: a result that cannot be read from Blob Storage is an outage to wait out, not a 500."""
    weu, neu = FakeAzureOpenAI(name="weu"), FakeAzureOpenAI(name="neu")
    storage = Azurite().start()
    try:
        with weu.threaded(), neu.threaded(), running_stack(storage, weu, neu) as stack:
            accepted = stack.submit(CHAT).json()
            assert stack.poll(accepted["status_url"])["runtimeStatus"] == "Completed"
            storage.stop()
            for method in ("GET", "DELETE"):
                answer = stack.http.request(method, accepted["result_url"])
                assert answer.status_code == 503 and int(answer.headers["Retry-After"]) >= 1, answer.text
                error = answer.json()["error"]
                assert (error["code"], error["type"]) == ("storage_unavailable", "service_unavailable")
            assert "Traceback" not in stack.host.log()  # an outage, logged as one: not a crash
    finally:
        storage.stop()
