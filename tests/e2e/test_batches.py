"""The Batch API end to end with the official `openai` client: devhost + Durable stand-in + Azurite + two fake
Azure OpenAI backends whose batches progress one step per poll (`batch_script`), so nothing depends on time."""

from __future__ import annotations

import base64
import contextlib
import json
import time
import uuid
from collections.abc import Iterator

import httpx
import openai
import pytest
from azure.data.tables import TableClient
from azure.storage.queue import QueueClient

from gateway.batch_index import batch_index_table, row_key
from tests.support.devhost import DevHost
from tests.support.fake_openai import BatchStep, FakeAzureOpenAI

KEY, OTHER_KEY = "batch-key", "other-batch-key"
OPERATOR = {"x-functions-key": "devhost-function-key"}
# The Durable stand-in answers an instance query with at most this many instances, sorted by instance id, as the
# extension does with its 100 on Azure; the list test makes more batches than that.
PAGE = 4


def requests_jsonl(n: int = 3) -> bytes:
    lines = [
        {
            "custom_id": f"req-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"question {i}"}]},
        }
        for i in range(n)
    ]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


class Stack:
    def __init__(self, weu: FakeAzureOpenAI, neu: FakeAzureOpenAI, host: DevHost, queue: QueueClient) -> None:
        self.weu, self.neu, self.host, self.queue = weu, neu, host, queue
        self.index: TableClient | None = None  # the batch index table, read directly
        self.v1 = openai.OpenAI(base_url=host.url + "/v1", api_key=KEY, max_retries=0)
        self.azure = openai.AzureOpenAI(azure_endpoint=host.url, api_key=KEY, api_version="2024-10-21", max_retries=0)

    def close(self) -> None:
        self.v1.close()
        self.azure.close()

    def wait(self, batch_id: str, statuses: tuple[str, ...] = ("completed", "failed", "expired", "cancelled")):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            batch = self.v1.batches.retrieve(batch_id)
            if batch.status in statuses:
                return batch
        raise AssertionError(f"batch {batch_id} still {batch.status}")

    def completion(self, batch_id: str) -> list[dict]:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = [
                m
                for m in (json.loads(base64.b64decode(x.content)) for x in self.queue.peek_messages(32))
                if m["id"] == batch_id
            ]
            if found:
                return found
        raise AssertionError("no completion message")


@pytest.fixture(scope="module")
def stack(azurite) -> Iterator[Stack]:
    weu, neu = FakeAzureOpenAI(name="weu"), FakeAzureOpenAI(name="neu")
    with weu.threaded(), neu.threaded():
        suffix = uuid.uuid4().hex[:8]
        env = {
            "AzureWebJobsStorage": azurite.connection_string,
            "GATEWAY_STATE_TABLE": "batch" + suffix,
            "GATEWAY_RESULTS_CONTAINER": "batch-" + suffix,
            "GATEWAY_COMPLETIONS_QUEUE": "done-" + suffix,
            "GATEWAY_API_KEYS": f"{KEY},{OTHER_KEY}",
            "GATEWAY_BATCH_POLL_MIN_S": "0.05",
            "GATEWAY_BATCH_POLL_MAX_S": "0.1",
            "DURABLE_STANDIN_PAGE_SIZE": str(PAGE),
            "GATEWAY_PURGE_AFTER_DAYS": "0",  # housekeeping (only on demand here) purges what has finished
            "GATEWAY_BACKEND_1": f"name=weu;host={weu.url};mode=direct;api-key=fake-key;priority=1;"
            "deployments=gpt-4o-mini;batch=gpt-4o-mini",
            "GATEWAY_BACKEND_2": f"name=neu;host={neu.url};mode=direct;api-key=fake-key;priority=2;"
            "deployments=gpt-4o-mini;batch=gpt-4o-mini",
        }
        with (
            DevHost(env=env) as host,
            QueueClient.from_connection_string(azurite.connection_string, "done-" + suffix) as queue,
            TableClient.from_connection_string(
                azurite.connection_string, batch_index_table(env["GATEWAY_STATE_TABLE"])
            ) as index,
            contextlib.closing(Stack(weu, neu, host, queue)) as stack,
        ):
            stack.index = index
            yield stack


@pytest.fixture
def fresh(stack: Stack) -> Stack:
    for fake in (stack.weu, stack.neu):
        fake.clear()
        fake.batch_script = []
    return stack


def test_files_create_batches_create_retrieve_and_merged_content(fresh: Stack):
    fresh.weu.batch_script = ["in_progress", "completed"]
    uploaded = fresh.v1.files.create(file=("requests.jsonl", requests_jsonl()), purpose="batch")
    assert uploaded.id.startswith("file-") and uploaded.purpose == "batch" and uploaded.bytes == len(requests_jsonl())
    batch = fresh.v1.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"team": "search"}
    )
    assert batch.status == "validating" and batch.id.startswith("batch_")
    done = fresh.wait(batch.id)
    assert done.status == "completed" and done.request_counts.completed == 3 and done.request_counts.failed == 0
    assert done.completed_at and done.metadata == {"team": "search"}

    lines = [json.loads(x) for x in fresh.v1.files.content(done.output_file_id).text.splitlines()]
    assert sorted(line["custom_id"] for line in lines) == ["req-0", "req-1", "req-2"]
    assert all(line["response"]["body"]["object"] == "chat.completion" for line in lines)
    # The backend got the gateway's rewrite: its own batch deployment, Azure's url spelling.
    backend_batch = list(fresh.weu.batches.values())[-1]
    assert {r["url"] for r in backend_batch.requests} == {"/chat/completions"}

    [message] = fresh.completion(batch.id)
    assert (message["kind"], message["status"], message["batch_status"]) == ("batch", "succeeded", "completed")
    assert message["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
    assert message["usage"]["total_tokens"] == sum(line["response"]["body"]["usage"]["total_tokens"] for line in lines)
    assert fresh.v1.batches.list().data[0].id == batch.id


def test_an_expired_batch_is_resubmitted_elsewhere_with_only_the_unfinished_lines(fresh: Stack):
    fresh.weu.batch_script = ["in_progress", BatchStep("expired", completed_lines=2)]
    fresh.neu.batch_script = ["in_progress", "completed"]
    uploaded = fresh.azure.files.create(file=("requests.jsonl", requests_jsonl()), purpose="batch")
    batch = fresh.azure.batches.create(input_file_id=uploaded.id, endpoint="/chat/completions", completion_window="24h")
    done = fresh.wait(batch.id)
    assert done.status == "completed" and done.request_counts.completed == 3
    second = list(fresh.neu.batches.values())[-1]
    assert [r["custom_id"] for r in second.requests] == ["req-2"]  # only what weu did not finish
    lines = [json.loads(x) for x in fresh.azure.files.content(done.output_file_id).text.splitlines()]
    assert sorted(line["custom_id"] for line in lines) == ["req-0", "req-1", "req-2"]
    assert fresh.completion(batch.id)[0]["attempts"] == 2


def test_cancel_cancels_the_backend_batch(fresh: Stack):
    fresh.weu.batch_script = ["in_progress"] * 500  # stays in progress until cancelled
    uploaded = fresh.v1.files.create(file=("requests.jsonl", requests_jsonl()), purpose="batch")
    batch = fresh.v1.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    fresh.wait(batch.id, ("in_progress",))
    assert fresh.v1.batches.cancel(batch.id).status == "cancelling"
    done = fresh.wait(batch.id)
    assert done.status == "cancelled" and done.cancelled_at
    assert list(fresh.weu.batches.values())[-1].status == "cancelled"
    assert fresh.completion(batch.id)[0]["status"] == "cancelled"


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (
            b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",'
            b' "body": {"model": "m", "messages": []}}\n{oops\n',
            "Line 2 is not valid JSON",
        ),
        (requests_jsonl(1) + requests_jsonl(1), "Line 2: custom_id 'req-0' is used more than once"),
        (
            b'{"custom_id": "a", "method": "GET", "url": "/v1/chat/completions",'
            b' "body": {"model": "m", "messages": []}}\n',
            "Line 1: 'method' must be POST",
        ),
    ],
)
def test_malformed_files_are_refused_before_anything_is_sent(fresh: Stack, content, fragment):
    with pytest.raises(openai.BadRequestError) as info:
        fresh.v1.files.create(file=("bad.jsonl", content), purpose="batch")
    assert fragment in info.value.body["message"] and info.value.body["code"] == "invalid_batch_file"
    assert not any(r.path.startswith("/openai/files") for fake in (fresh.weu, fresh.neu) for r in fake.requests)


@pytest.mark.parametrize(
    ("content_type", "body", "code", "param", "says"),
    [
        ("application/json", b'[{"input_file_id": "file-1", "endpoint": "/v1/chat/completions"}]', "invalid_json",
         None, "must be an object, not an array"),
        ("application/json", b'"batch"', "invalid_json", None, "not a string"),
        ("application/json", b'{"input_file_id": "f", "endpoint": "/v1/chat/completions", "metadata": {"t": "\xff"}}',
         "invalid_encoding", "metadata.t", "'metadata.t' is not valid UTF-8"),
        ("text/plain", b'{"input_file_id": "f", "endpoint": "/v1/chat/completions"}', "unsupported_content_type",
         "content-type", "application/json"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("path", ["/v1/batches", "/openai/batches?api-version=2024-10-21"])
def test_a_batch_body_that_is_not_a_json_object_is_a_400_naming_the_problem(
    fresh: Stack, path, content_type, body, code, param, says
):
    answer = httpx.post(
        fresh.host.url + path, content=body, headers={"api-key": KEY, "content-type": content_type}, timeout=30
    )
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", code, param)
    assert says in error["message"]
    assert not any(r.path.startswith("/openai/batches") for fake in (fresh.weu, fresh.neu) for r in fake.requests)


def test_files_and_batches_belong_to_their_caller(fresh: Stack):
    uploaded = fresh.v1.files.create(file=("requests.jsonl", requests_jsonl()), purpose="batch")
    stranger = openai.OpenAI(base_url=fresh.host.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        stranger.files.retrieve(uploaded.id)
    with pytest.raises(openai.NotFoundError):
        fresh.v1.batches.retrieve("batch_doesnotexist")
    assert fresh.v1.files.retrieve(uploaded.id).filename == "requests.jsonl"


def test_list_pages_the_callers_own_batches_newest_first(fresh: Stack):
    """`limit`/`after` as OpenAI pages them (the SDK's auto-pagination follows `has_more`), one caller only, with
    more batches than one page of the Durable instance query holds (which has the oldest first)."""
    uploaded = fresh.v1.files.create(file=("requests.jsonl", requests_jsonl()), purpose="batch")
    other = openai.OpenAI(base_url=fresh.host.url + "/v1", api_key=OTHER_KEY, max_retries=0)
    theirs_file = other.files.create(file=("requests.jsonl", requests_jsonl()), purpose="batch")

    def create(client: openai.OpenAI, file_id: str) -> str:
        return client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h").id

    created = [create(fresh.v1, uploaded.id) for _ in range(3)]
    theirs = create(other, theirs_file.id)  # another caller's, created in between
    created += [create(fresh.v1, uploaded.id) for _ in range(PAGE)]
    newest_first = created[::-1]
    try:
        first = fresh.v1.batches.list(limit=2)
        assert [b.id for b in first.data] == newest_first[:2] and first.has_more
        assert all(b.endpoint == "/v1/chat/completions" and b.request_counts.total == 3 for b in first.data)
        rest = fresh.v1.batches.list(limit=3, after=first.data[-1].id)
        assert [b.id for b in rest.data] == newest_first[2:5] and rest.has_more
        every = [b.id for b in fresh.v1.batches.list(limit=1)]  # follows `after` page by page
        assert every[: len(created)] == newest_first and len(every) == len(set(every))
        assert theirs not in every
        theirs_listed = [b.id for b in other.batches.list()]
        assert theirs in theirs_listed and not set(created) & set(theirs_listed)
        with pytest.raises(openai.BadRequestError):
            fresh.v1.batches.list(limit=1000)
    finally:
        for batch_id in created:
            fresh.v1.batches.cancel(batch_id)
        other.batches.cancel(theirs)
        other.close()


def test_housekeeping_purges_a_finished_batch_and_its_index_row(fresh: Stack):
    """Last in the module: with GATEWAY_PURGE_AFTER_DAYS=0 the housekeeping purges every finished batch."""
    fresh.weu.batch_script = ["completed"]
    uploaded = fresh.v1.files.create(file=("requests.jsonl", requests_jsonl()), purpose="batch")
    batch = fresh.v1.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert fresh.wait(batch.id).status == "completed"
    assert fresh.index is not None
    rows = list(fresh.index.query_entities("RowKey eq @key", parameters={"key": row_key(batch.id)}))
    assert [row["BatchId"] for row in rows] == [batch.id]  # written when the batch was created
    done = httpx.post(fresh.host.url + "/gateway/async/housekeeping", headers=OPERATOR, timeout=30).json()
    assert done["purged"] >= 1 and done["complete"] is True
    assert not list(fresh.index.query_entities("RowKey eq @key", parameters={"key": row_key(batch.id)}))
    with pytest.raises(openai.NotFoundError):
        fresh.v1.batches.retrieve(batch.id)
    assert batch.id not in {b.id for b in fresh.v1.batches.list(limit=100)}
