"""The fault matrix: every backend and infrastructure fault, through the devhost, on the sync and the async path.

One parametrized test, `test_fault_matrix[<fault>-<path>]`; docs/reliability.md holds the table it produces.
Two fake backends (weu priority 1, neu priority 2), an Azurite that keeps its data across a restart, and
completions on the AMQP test broker through the real Service Bus client. Each case asserts what the client
gets (status, headers, body), the breakers `/gateway/backends` shows, the usage record the devhost writes
(GATEWAY_USAGE_FILE) and the completion message (none on the sync path; exactly one on the async path).
Waiting is on request counts, the orchestration's history and the broker's record, each with a deadline.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.data.tables import TableClient

from gateway.state_rows import BREAKER, partition_key
from tests.support.amqp_broker import AmqpBroker, ReceivedMessage
from tests.support.azurite import Azurite
from tests.support.devhost import DevHost
from tests.support.fake_openai import FakeAzureOpenAI, Fault

KEY = "matrix-key"
OPERATOR_KEY = "devhost-function-key"
OPERATOR = {"x-functions-key": OPERATOR_KEY}
ENTITY = "completions"
STATE_TABLE = "matrixstate"
READ_TIMEOUT_S = 1.5
BACKEND = "mode=direct;api-key=fake-key;deployments=gpt-4o-mini,tts"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello through the fault matrix"}]}
PATHS = ("sync", "async")
CLOSED = {"weu": "closed", "neu": "closed", "weu/gpt-4o-mini": "closed", "neu/gpt-4o-mini": "closed"}


class Stack:
    """The running stack and what a case reads from it."""

    def __init__(
        self,
        weu: FakeAzureOpenAI,
        neu: FakeAzureOpenAI,
        azurite: Azurite,
        broker: AmqpBroker,
        host: DevHost,
        usage: Path,
    ) -> None:
        self.weu, self.neu = weu, neu
        self.azurite, self.broker, self.host = azurite, broker, host
        self.usage_file = usage
        self.http = httpx.Client(base_url=host.url, headers={"api-key": KEY}, timeout=60)

    # -- requests

    def chat(self, request_id: str, *, stream: bool = False, prefer_async: bool = False) -> httpx.Response:
        headers = {"x-request-id": request_id, **({"Prefer": "respond-async"} if prefer_async else {})}
        return self.http.post("/v1/chat/completions", json={**CHAT, "stream": stream}, headers=headers)

    def submit(self, request_id: str, *, stream: bool = False) -> str:
        """An async request: 202 with Location and Retry-After; returns the instance id."""
        answer = self.chat(request_id, stream=stream, prefer_async=True)
        assert answer.status_code == 202, answer.text
        assert answer.headers["Retry-After"] and answer.headers["x-request-id"] == request_id
        # The id is the last segment of Location, whichever status route it names.
        return answer.headers["Location"].split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]

    def result(self, instance_id: str, timeout_s: float = 30) -> httpx.Response:
        """GET /results/{id} until it is no longer 202 (running)."""
        deadline = time.monotonic() + timeout_s
        while (answer := self.http.get(f"/results/{instance_id}")).status_code == 202:
            assert time.monotonic() < deadline, f"{instance_id} still running after {timeout_s} s"
        return answer

    # -- what the stack shows

    def usage(self, request_id: str) -> list[dict[str, Any]]:
        if not self.usage_file.exists():
            return []
        records = (json.loads(line) for line in self.usage_file.read_text().splitlines())
        return [r for r in records if r["request_id"] == request_id]

    def backends(self) -> dict[str, Any]:
        """`/gateway/backends`, keyed: `name` for a backend and `name/deployment` for each deployment."""
        view = self.http.get("/gateway/backends", headers=OPERATOR).json()
        scopes: dict[str, Any] = {"storage": view["storage"]}
        for backend in view["backends"]:
            name = backend["config"]["name"]
            scopes[name] = backend
            for deployment in backend["deployments"]:
                scopes[f"{name}/{deployment['deployment']}"] = deployment
        return scopes

    def completions(self, instance_id: str) -> list[ReceivedMessage]:
        return [m for m in self.broker.messages(ENTITY) if m.message_id == instance_id]

    def sent_for(self, request_id: str) -> list[ReceivedMessage]:
        return [m for m in self.broker.messages(ENTITY) if m.correlation_id == request_id]

    def completion(self, instance_id: str, timeout_s: float = 30) -> dict[str, Any]:
        """The one completion message of a finished request (waits for it on the broker's record)."""
        deadline = time.monotonic() + timeout_s
        while not (found := self.completions(instance_id)):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no completion message for {instance_id} within {timeout_s} s"
            try:
                self.broker.wait_for(ENTITY, len(self.broker.messages(ENTITY)) + 1, timeout_s=remaining)
            except TimeoutError:
                pass
        assert len(found) == 1, f"{len(found)} completion messages for {instance_id}"
        message = found[0]
        body = json.loads(message.body)
        assert (message.subject, message.application_properties["status"]) == (body["status"], body["status"])
        return body

    def history(self, instance_id: str) -> list[dict[str, Any]]:
        """The orchestration's history, from the Durable stand-in's management API (operator key)."""
        url = f"/runtime/webhooks/durabletask/instances/{instance_id}"
        answer = self.http.get(url, params={"code": OPERATOR_KEY, "showHistory": "true"})
        return answer.json().get("historyEvents") or []

    def wait_for_failed_activity(self, instance_id: str, activity: str, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while not any(
            e["EventType"] == "TaskFailed" and e["FunctionName"] == activity for e in self.history(instance_id)
        ):
            assert time.monotonic() < deadline, f"{activity} of {instance_id} did not fail within {timeout_s} s"

    def stored_breaker(self, key: str) -> dict[str, Any] | None:
        partition = partition_key(BREAKER, key)  # the state table's layout: a partition per row
        with TableClient.from_connection_string(self.azurite.connection_string, STATE_TABLE) as table:
            entities = list(table.query_entities(f"PartitionKey eq '{partition}' and RowKey eq ''"))
        return entities[0] if entities else None


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    usage = tmp_path_factory.mktemp("usage") / "usage.jsonl"
    azurite = Azurite(location=tmp_path_factory.mktemp("azurite"))  # goes down and comes back with its data
    weu, neu = FakeAzureOpenAI(name="weu"), FakeAzureOpenAI(name="neu")
    with azurite, AmqpBroker() as broker, weu.threaded(), neu.threaded():
        env = {
            "AzureWebJobsStorage": azurite.connection_string,
            "GATEWAY_STATE_TABLE": STATE_TABLE,
            "GATEWAY_API_KEYS": KEY,
            "GATEWAY_BACKEND_1": f"name=weu;host={weu.url};{BACKEND};priority=1",
            "GATEWAY_BACKEND_2": f"name=neu;host={neu.url};{BACKEND};priority=2",
            "GATEWAY_USAGE_FILE": str(usage),
            "GATEWAY_READ_TIMEOUT_S": str(READ_TIMEOUT_S),
            "COMPLETIONS_SERVICEBUS": broker.connection_string,
            "GATEWAY_COMPLETIONS_ENTITY": ENTITY,
        }
        with DevHost(env=env) as host:
            running = Stack(weu, neu, azurite, broker, host, usage)
            try:
                yield running
            finally:
                running.http.close()


@pytest.fixture
def fresh(stack: Stack) -> Iterator[Stack]:
    """Quiet backends with closed breakers and empty failure windows; storage and broker up."""
    if not stack.azurite.running:
        stack.azurite.start()
    if not stack.broker.running:
        stack.broker.start()
    for fake in (stack.weu, stack.neu):
        fake.release_stalls()
        fake.clear()
        assert stack.http.post(f"/gateway/backends/{fake.name}/reset", headers=OPERATOR).status_code == 200
    yield stack
    for fake in (stack.weu, stack.neu):
        fake.release_stalls()


# ------------------------------------------------------------------------------------------ checks


def sse_events(answer: httpx.Response) -> list[str]:
    return [line[len("data: ") :] for line in answer.text.splitlines() if line.startswith("data: ")]


def relayed(answer: httpx.Response, status: int, request_id: str, backend: str, attempts: int) -> None:
    """A backend's answer relayed: its status and the gateway's headers."""
    assert answer.status_code == status, answer.text
    assert answer.headers["x-request-id"] == request_id
    assert (answer.headers["x-gateway-backend"], answer.headers["x-gateway-attempts"]) == (backend, str(attempts))


def gateway_error(answer: httpx.Response, status: int, request_id: str, retry_after: str | None, code: str) -> None:
    """The gateway's own error after every attempt failed: status, Retry-After (or none), OpenAI error body."""
    assert answer.status_code == status, answer.text
    assert answer.headers["x-request-id"] == request_id
    assert answer.headers.get("Retry-After") == retry_after
    assert "x-gateway-backend" not in answer.headers
    assert answer.json()["error"]["code"] == code


def one_usage(stack: Stack, request_id: str, **expected: Any) -> dict[str, Any]:
    [record] = stack.usage(request_id)
    assert {k: record[k] for k in expected} == expected
    return record


def breakers(stack: Stack, expected: dict[str, str]) -> dict[str, Any]:
    """`{"weu": "closed", "neu/gpt-4o-mini": "open"}`: the breaker of each scope named (others not checked)."""
    scopes = stack.backends()
    assert {key: scopes[key]["breaker"] for key in expected} == expected
    return scopes


def succeeded_async(stack: Stack, instance_id: str, request_id: str, backend: str, attempts: int) -> dict[str, Any]:
    """The async request ended with the backend's 200: result, exactly one completion, one usage record."""
    result = stack.result(instance_id)
    assert result.status_code == 200 and result.headers["x-gateway-status"] == "succeeded"
    completion = result.json()
    assert completion["object"] == "chat.completion"
    assert completion["choices"][0]["message"]["content"] == getattr(stack, backend).reply_text()
    message = stack.completion(instance_id)
    assert (message["status"], message["http_status"], message["backend"]) == ("succeeded", 200, backend)
    assert (message["attempts"], message["request_id"], message["error"]) == (attempts, request_id, None)
    assert message["usage"]["total_tokens"] == completion["usage"]["total_tokens"]
    one_usage(stack, request_id, status=200, backend=backend, attempts=attempts, error=None,
              total_tokens=completion["usage"]["total_tokens"])  # fmt: skip
    return message


def no_completion(stack: Stack, request_id: str) -> None:
    """The sync path never publishes a completion message."""
    assert stack.sent_for(request_id) == []


def roughly(value: float | None, expected: float, slack_s: float = 1.0) -> bool:
    return value is not None and expected - slack_s <= value <= expected + slack_s


# ------------------------------------------------------------------------------------------- cases
# Each case runs one fault on one path and returns the outcome line printed with the matrix.

Case = Callable[[Stack, str, str], str]
CASES: dict[str, tuple[str, Case]] = {}


def case(name: str, fault: str) -> Callable[[Case], Case]:
    def register(run: Case) -> Case:
        CASES[name] = (fault, run)
        return run

    return register


@case("429-retry-after", "429 + Retry-After: 2 s on weu, 4 s on neu (once each)")
def throttled_retry_after(s: Stack, path: str, rid: str) -> str:
    s.weu.enqueue(Fault.status(429, retry_after=2))
    s.neu.enqueue(Fault.status(429, retry_after=4))
    return throttled(s, path, rid, weu_s=2, neu_s=4, retry_after="2")


@case("429-retry-after-ms", "429 + retry-after-ms: 1500 on weu, 3500 on neu (once each)")
def throttled_retry_after_ms(s: Stack, path: str, rid: str) -> str:
    s.weu.enqueue(Fault.status(429, retry_after_ms=1500))
    s.neu.enqueue(Fault.status(429, retry_after_ms=3500))
    return throttled(s, path, rid, weu_s=1.5, neu_s=3.5, retry_after="2")


def throttled(s: Stack, path: str, rid: str, weu_s: float, neu_s: float, retry_after: str) -> str:
    if path == "sync":
        sent = time.time()
        answer = s.chat(rid)
        gateway_error(answer, 429, rid, retry_after, "backends_unavailable")
        one_usage(s, rid, status=429, error="throttled", attempts=2, backend="neu", total_tokens=None)
        scopes = breakers(s, {**CLOSED, "weu/gpt-4o-mini": "open", "neu/gpt-4o-mini": "open"})
        assert roughly(scopes["weu/gpt-4o-mini"]["open_until"], sent + weu_s)
        assert roughly(scopes["neu/gpt-4o-mini"]["open_until"], sent + neu_s)
        no_completion(s, rid)
        return f"429, Retry-After {retry_after}; both deployments open for their wait; usage error=throttled"
    instance_id = s.submit(rid)
    succeeded_async(s, instance_id, rid, "weu", attempts=3)  # weu, neu, then weu after its wait (durable timer)
    assert (len(s.weu.requests), len(s.neu.requests)) == (2, 1)
    scopes = s.backends()
    assert scopes["weu/gpt-4o-mini"]["breaker"] == "closed"  # the trial after the wait succeeded
    assert scopes["neu/gpt-4o-mini"]["reason"] == "429" and scopes["neu/gpt-4o-mini"]["breaker"] != "closed"
    return "succeeded on weu after a durable timer (3 attempts); weu deployment closed again, neu still tripped"


@case("500", "500 on weu and on neu (once each)")
def server_error(s: Stack, path: str, rid: str) -> str:
    s.weu.enqueue(Fault.status(500))
    s.neu.enqueue(Fault.status(500))
    return failed_hosts(s, path, rid, 503, "10", "failed", "backends_unavailable", "HTTP 500")


@case("503", "503 + Retry-After: 1 on weu and on neu (once each)")
def unavailable(s: Stack, path: str, rid: str) -> str:
    s.weu.enqueue(Fault.status(503, retry_after=1))
    s.neu.enqueue(Fault.status(503, retry_after=1))
    return failed_hosts(s, path, rid, 503, "1", "failed", "backends_unavailable", "HTTP 503")


@case("reset", "connection reset by weu and by neu (once each)")
def reset(s: Stack, path: str, rid: str) -> str:
    s.weu.enqueue(Fault.reset())
    s.neu.enqueue(Fault.reset())
    return failed_hosts(s, path, rid, 502, None, "connect", "bad_gateway", "connect")


@case("stall", f"weu and neu stall past the {READ_TIMEOUT_S:g} s read timeout (once each)")
def stall(s: Stack, path: str, rid: str) -> str:
    s.weu.enqueue(Fault.stall())
    s.neu.enqueue(Fault.stall())
    return failed_hosts(s, path, rid, 504, None, "timeout", "timeout", "timeout")


def failed_hosts(
    s: Stack, path: str, rid: str, status: int, retry_after: str | None, error: str, code: str, last_error: str
) -> str:
    """A host-level failure on both backends: counted against each host, below the breaker threshold."""
    if path == "sync":
        answer = s.chat(rid)
        gateway_error(answer, status, rid, retry_after, code)
        one_usage(s, rid, status=status, error=error, attempts=2, backend="neu", total_tokens=None)
        scopes = breakers(s, CLOSED)
        assert scopes["weu"]["last_error"] == scopes["neu"]["last_error"] == last_error
        no_completion(s, rid)
        return f"{status}{f', Retry-After {retry_after}' if retry_after else ''}; usage error={error}; " \
               "breakers closed (1 failure per host, 5 open one)"  # fmt: skip
    instance_id = s.submit(rid)
    succeeded_async(s, instance_id, rid, "weu", attempts=3)  # weu, neu, weu again at once
    assert (len(s.weu.requests), len(s.neu.requests)) == (2, 1)
    scopes = breakers(s, {"weu": "closed", "neu": "closed"})
    assert scopes["neu"]["last_error"] == last_error
    return "succeeded on weu at the 3rd attempt, no wait; breakers closed"


@case("stream-cut", "weu cuts its stream after 3 events (once)")
def stream_cut(s: Stack, path: str, rid: str) -> str:
    s.weu.enqueue(Fault.cut_stream(after_chunks=3))
    if path == "sync":
        answer = s.chat(rid, stream=True)
        relayed(answer, 200, rid, "weu", 1)
        events = sse_events(answer)
        assert len(events) == 4 and "[DONE]" not in events  # relayed as far as it came, never completed
        error = json.loads(events[-1])["error"]  # then an error event, so the client knows (SDKs raise)
        assert (error["type"], error["code"]) == ("upstream_error", "bad_gateway") and "weu" in error["message"]
        one_usage(s, rid, status=200, error="connect", streaming=True, backend="weu", attempts=1)
        scopes = breakers(s, {"weu": "closed", "weu/gpt-4o-mini": "closed"})
        assert scopes["weu"]["last_error"] == "connect"
        no_completion(s, rid)
        return "200 stream relayed up to the cut, then an error event, no [DONE]; usage error=connect; weu charged"
    instance_id = s.submit(rid, stream=True)
    message = succeeded_async(s, instance_id, rid, "neu", attempts=2)  # the cut answer is not used
    assert (len(s.weu.requests), len(s.neu.requests)) == (1, 1)
    assert s.usage(rid)[0]["streaming"] is True and message["usage"]["estimated"] is False
    assert s.backends()["weu"]["last_error"] == "connect"
    return "succeeded on neu (2nd attempt), stream assembled; weu charged one failure"


@case("stream-error-event", "weu ends its stream with an error event after 3 events (once)")
def stream_error_event(s: Stack, path: str, rid: str) -> str:
    s.weu.enqueue(Fault.error_event(after_chunks=3))
    if path == "sync":
        answer = s.chat(rid, stream=True)
        relayed(answer, 200, rid, "weu", 1)
        events = sse_events(answer)
        assert len(events) == 4 and "[DONE]" not in events
        assert json.loads(events[-1])["error"]["type"] == "server_error"  # the client gets the backend's error
        one_usage(s, rid, status=200, streaming=True, backend="weu", attempts=1, error="stream_error",
                  outcome="failed")
        breakers(s, {"weu": "closed", "weu/gpt-4o-mini": "closed"})
        no_completion(s, rid)
        return "200 stream relayed with the error event, no [DONE]; recorded as failed (stream_error)"
    instance_id = s.submit(rid, stream=True)
    result = s.result(instance_id)
    assert result.status_code == 502 and result.headers["x-gateway-status"] == "failed"
    assert result.json()["error"]["type"] == "server_error"  # the backend's own error event
    message = s.completion(instance_id)
    assert (message["status"], message["http_status"], message["attempts"]) == ("failed", 502, 1)
    assert message["error"]["type"] == "server_error"
    assert (len(s.weu.requests), len(s.neu.requests)) == (1, 0)  # never sent again: it was billed
    one_usage(s, rid, status=502, streaming=True, backend="weu", attempts=1, error="stream_error", outcome="failed")
    breakers(s, {"weu": "closed", "weu/gpt-4o-mini": "closed"})
    return "failed: result 502 with the backend's error event, not retried; one completion (failed)"


@case("content-filter", "weu answers 400 content_filter (once)")
def content_filter(s: Stack, path: str, rid: str) -> str:
    s.weu.enqueue(Fault.content_filter())
    if path == "sync":
        answer = s.chat(rid)
        relayed(answer, 400, rid, "weu", 1)
        assert answer.json()["error"]["code"] == "content_filter"
        one_usage(s, rid, status=400, error=None, backend="weu", attempts=1, total_tokens=None)
        scopes = breakers(s, {"weu": "closed", "weu/gpt-4o-mini": "closed"})
        assert scopes["weu/gpt-4o-mini"]["last_status"] == scopes["weu"]["last_status"] == 400
        no_completion(s, rid)
        return "400 relayed unchanged, not retried; no breaker effect"
    instance_id = s.submit(rid)
    result = s.result(instance_id)
    assert result.status_code == 400 and result.json()["error"]["code"] == "content_filter"
    message = s.completion(instance_id)
    assert (message["status"], message["http_status"], message["error"]["code"]) == ("failed", 400, "content_filter")
    assert (len(s.weu.requests), len(s.neu.requests)) == (1, 0)
    one_usage(s, rid, status=400, backend="weu", attempts=1)
    breakers(s, {"weu": "closed", "weu/gpt-4o-mini": "closed"})
    return "failed: result 400 content_filter, not retried; one completion (failed)"


@case("azurite-outage", "Azurite stopped mid-run, restarted with its data")
def azurite_outage(s: Stack, path: str, rid: str) -> str:
    if path == "sync":
        s.weu.enqueue(Fault.status(429, retry_after=30))
        s.azurite.stop()
        answer = s.chat(rid)
        relayed(answer, 200, rid, "neu", 2)  # failover on local state
        breakers(s, {"weu/gpt-4o-mini": "open"})
        deadline = time.monotonic() + 10
        while s.backends()["storage"]["ok"]:  # the breaker's background write fails: local state from now on
            assert time.monotonic() < deadline, "the gateway did not notice that storage is down"
        s.azurite.start()
        deadline = time.monotonic() + 20
        while not ((stored := s.stored_breaker("weu:gpt-4o-mini")) and stored["OpenUntil"] > time.time() + 20):
            assert time.monotonic() < deadline, "the breaker opened during the outage never reached storage"
            s.backends()  # traffic (here the operator view) triggers the refresh that writes pending transitions
        assert s.backends()["storage"]["ok"] is True
        one_usage(s, rid, status=200, backend="neu", attempts=2, error=None)
        no_completion(s, rid)
        return "200 from neu on local state; the weu breaker is written to the table once storage is back"
    s.weu.enqueue(Fault.stall())
    instance_id = s.submit(rid)
    s.weu.wait_for_requests(1)
    s.azurite.stop()  # the attempt is in flight: its result cannot be stored
    # Released at once, well inside the read timeout (READ_TIMEOUT_S), so weu answers this attempt.
    s.weu.release_stalls()
    started = time.monotonic()
    refused = s.chat(rid + "-while-down", prefer_async=True)
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "5"  # cannot keep the body
    assert time.monotonic() - started < 5  # and says so at once
    s.wait_for_failed_activity(instance_id, "attempt_backend")
    s.azurite.start()
    succeeded_async(s, instance_id, rid, "weu", attempts=1)  # the activity's retry ran the attempt again
    assert len(s.weu.requests) == 2
    return "a submission during the outage gets 503 + Retry-After; work in flight succeeds after the restart, once"


@case("broker-outage", "Service Bus (AMQP test broker) stopped when the completion is due, restarted")
def broker_outage(s: Stack, path: str, rid: str) -> str:
    if path == "sync":
        s.broker.stop()
        answer = s.chat(rid)
        relayed(answer, 200, rid, "weu", 1)  # the sync path does not need Service Bus
        one_usage(s, rid, status=200, backend="weu", attempts=1, error=None)
        s.broker.start()
        no_completion(s, rid)
        return "200, unaffected (the sync path publishes nothing)"
    s.weu.enqueue(Fault.stall())
    instance_id = s.submit(rid)
    s.weu.wait_for_requests(1)
    s.broker.stop()
    s.weu.release_stalls()
    s.wait_for_failed_activity(instance_id, "publish_completion")
    assert s.completions(instance_id) == []
    s.broker.start()
    succeeded_async(s, instance_id, rid, "weu", attempts=1)  # exactly one message, sent after the restart
    return "the publish fails while the broker is down; delivered once after it returns"


# -------------------------------------------------------------------------------------------- test


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", list(CASES))
def test_fault_matrix(fresh: Stack, name: str, path: str, capsys: pytest.CaptureFixture[str]) -> None:
    fault, run = CASES[name]
    outcome = run(fresh, path, f"matrix-{name}-{path}-{uuid.uuid4().hex[:8]}")
    with capsys.disabled():
        if path == PATHS[0]:
            print(f"\n  fault matrix | {name} | {fault}", end="")
        print(f"\n  fault matrix | {name} | {path:<5} | {outcome}")


def test_reliability_doc_has_a_row_per_case(repo_root: Path) -> None:
    doc = (repo_root / "docs" / "reliability.md").read_text()
    assert "tests/e2e/test_fault_matrix.py" in doc
    assert [name for name in CASES if f"`{name}`" not in doc] == []


def test_audio_cut_off_by_the_backend_reaches_the_client_as_a_broken_transfer(fresh: Stack) -> None:
    """Bytes have no error event: the client's HTTP library must see an incomplete body, not a short file."""
    speech = {"model": "tts", "input": "a sentence long enough to come in four pieces", "voice": "alloy"}
    fresh.weu.enqueue(Fault.cut_stream(2))
    with fresh.http.stream("POST", "/v1/audio/speech", json=speech, headers={"x-request-id": "cut-audio"}) as answer:
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("audio/mpeg")
        with pytest.raises(httpx.RemoteProtocolError):  # "incomplete chunked read"
            answer.read()
    one_usage(fresh, "cut-audio", status=200, backend="weu", error="connect")
    whole = fresh.http.post("/v1/audio/speech", json=speech)
    assert whole.status_code == 200 and whole.content.endswith(b"four pieces")
