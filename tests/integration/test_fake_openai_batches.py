"""Tests of the fake Azure OpenAI Files and Batches APIs, over real HTTP.

The gateway's batch support is tested against this fake, so these tests pin down its Azure
shapes and that batches move only when the test (or ``batch_script``) says so.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from openai import AzureOpenAI

from tests.support.fake_openai import BatchStep, FakeAzureOpenAI, Fault

API_VERSION = "2024-10-21"
KEY = {"api-key": "fake-key"}
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello to me"}]
BATCH_KEYS = {
    "id",
    "object",
    "endpoint",
    "errors",
    "input_file_id",
    "completion_window",
    "status",
    "output_file_id",
    "error_file_id",
    "created_at",
    "in_progress_at",
    "expires_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
    "request_counts",
    "metadata",
}


def api_url(fake: FakeAzureOpenAI, path: str, query: str = "") -> str:
    return f"{fake.url}/openai/{path}?api-version={API_VERSION}{query}"


def task(custom_id: str, model: str = "gpt-4o-mini", url: str = "/chat/completions") -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": {"model": model, "messages": MESSAGES}}


def jsonl(*lines: dict[str, Any]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def tasks(count: int) -> bytes:
    return jsonl(*(task(f"task-{i}") for i in range(count)))


async def call(
    session: aiohttp.ClientSession, method: str, url: str, expect: int = 200, **kwargs: Any
) -> dict[str, Any]:
    async with session.request(method, url, headers=KEY, **kwargs) as response:
        answer = await response.json()
        assert response.status == expect, answer
        return answer


async def upload(
    session: aiohttp.ClientSession, fake: FakeAzureOpenAI, content: bytes, purpose: str = "batch"
) -> dict[str, Any]:
    form = aiohttp.FormData()
    form.add_field("purpose", purpose)
    form.add_field("file", content, filename="tasks.jsonl", content_type="application/json")
    return await call(session, "POST", api_url(fake, "files"), data=form)


async def create_batch(
    session: aiohttp.ClientSession, fake: FakeAzureOpenAI, content: bytes, **extra: Any
) -> dict[str, Any]:
    uploaded = await upload(session, fake, content)
    body = {"input_file_id": uploaded["id"], "endpoint": "/chat/completions", "completion_window": "24h", **extra}
    return await call(session, "POST", api_url(fake, "batches"), json=body)


async def get_batch(session: aiohttp.ClientSession, fake: FakeAzureOpenAI, batch_id: str) -> dict[str, Any]:
    return await call(session, "GET", api_url(fake, f"batches/{batch_id}"))


async def download(session: aiohttp.ClientSession, fake: FakeAzureOpenAI, file_id: str) -> list[dict[str, Any]]:
    async with session.get(api_url(fake, f"files/{file_id}/content"), headers=KEY) as response:
        assert response.status == 200
        return [json.loads(line) for line in (await response.read()).splitlines()]


# --------------------------------------------------------------------------- the happy path


async def test_upload_create_poll_complete_and_download(fake: FakeAzureOpenAI, session: aiohttp.ClientSession) -> None:
    content = tasks(3)
    uploaded = await upload(session, fake, content)
    assert uploaded["id"].startswith("file-") and isinstance(uploaded["created_at"], int)
    assert {k: v for k, v in uploaded.items() if k not in ("id", "created_at")} == {
        "object": "file",
        "bytes": len(content),
        "filename": "tasks.jsonl",
        "purpose": "batch",
        "status": "processed",
        "status_details": None,
    }
    assert await call(session, "GET", api_url(fake, f"files/{uploaded['id']}")) == uploaded
    listed = await call(session, "GET", api_url(fake, "files"))
    assert listed["object"] == "list" and listed["data"] == [uploaded]
    assert fake.files[uploaded["id"]].content == content

    body = {
        "input_file_id": uploaded["id"],
        "endpoint": "/chat/completions",
        "completion_window": "24h",
        "metadata": {"job": "nightly"},
    }
    batch = await call(session, "POST", api_url(fake, "batches"), json=body)
    assert set(batch) == BATCH_KEYS
    assert batch["id"].startswith("batch_") and batch["object"] == "batch"
    assert batch["status"] == "validating" and batch["errors"] is None
    assert batch["input_file_id"] == uploaded["id"] and batch["metadata"] == {"job": "nightly"}
    assert batch["expires_at"] == batch["created_at"] + 24 * 3600
    assert batch["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    assert batch["in_progress_at"] is None and batch["output_file_id"] is None

    assert (await get_batch(session, fake, batch["id"]))["status"] == "validating"  # no timers
    fake.advance_batch(batch["id"], "in_progress")
    running = await get_batch(session, fake, batch["id"])
    assert running["status"] == "in_progress" and running["in_progress_at"] is not None
    assert running["request_counts"] == {"total": 3, "completed": 0, "failed": 0}

    fake.advance_batch(batch["id"], "completed")
    done = await get_batch(session, fake, batch["id"])
    assert done["status"] == "completed" and done["completed_at"] is not None
    assert done["finalizing_at"] is not None and done["in_progress_at"] == running["in_progress_at"]
    assert done["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
    assert done["error_file_id"] is None and done["errors"] is None

    lines = await download(session, fake, done["output_file_id"])
    async with session.post(
        f"{fake.url}/openai/deployments/gpt-4o-mini/chat/completions?api-version={API_VERSION}",
        json={"messages": MESSAGES},
        headers=KEY,
    ) as response:
        online = await response.json()
    assert [line["custom_id"] for line in lines] == ["task-0", "task-1", "task-2"]
    for line in lines:
        assert line["id"].startswith("batch_req_") and line["error"] is None
        assert line["response"]["status_code"] == 200 and line["response"]["request_id"]
        answer = line["response"]["body"]
        assert answer["object"] == "chat.completion" and answer["id"].startswith("chatcmpl-")
        same = {k: v for k, v in answer.items() if k not in ("id", "created")}
        assert same == {k: v for k, v in online.items() if k not in ("id", "created")}
        assert answer["usage"]["total_tokens"] == 17
    output = fake.files[done["output_file_id"]]
    assert output.purpose == "batch_output" and output.jsonl() == lines


async def test_v1_urls_and_the_latest_batch_default(fake: FakeAzureOpenAI, session: aiohttp.ClientSession) -> None:
    await create_batch(session, fake, tasks(1))
    latest = await create_batch(session, fake, jsonl(task("a", url="/v1/chat/completions")))
    assert fake.advance_batch(to="completed").id == latest["id"]  # batch_id=None: the latest one
    assert fake.batches[latest["id"]].request_counts == {"total": 1, "completed": 1, "failed": 0}
    assert [b.status for b in fake.batches.values()] == ["validating", "completed"]


# --------------------------------------------------------------------------- failures and partial results


async def test_failed_custom_ids_and_unknown_deployments_land_in_the_error_file(
    fake: FakeAzureOpenAI, session: aiohttp.ClientSession
) -> None:
    content = jsonl(task("ok-0"), task("bad"), task("ok-1"), task("nodeploy", model="gpt-5"))
    batch = await create_batch(session, fake, content)
    fake.advance_batch(batch["id"], "in_progress")
    fake.advance_batch(batch["id"], "completed", failed_custom_ids=["bad"])

    done = await get_batch(session, fake, batch["id"])
    assert done["status"] == "completed"
    assert done["request_counts"] == {"total": 4, "completed": 2, "failed": 2}
    assert [line["custom_id"] for line in await download(session, fake, done["output_file_id"])] == ["ok-0", "ok-1"]
    errors = {line["custom_id"]: line for line in await download(session, fake, done["error_file_id"])}
    assert set(errors) == {"bad", "nodeploy"}
    for line in errors.values():
        assert line["id"].startswith("batch_req_") and line["error"] is None and line["response"]["request_id"]
    assert errors["bad"]["response"]["status_code"] == 400
    assert errors["bad"]["response"]["body"]["error"]["message"]
    assert errors["nodeploy"]["response"]["status_code"] == 404
    assert errors["nodeploy"]["response"]["body"]["error"]["code"] == "DeploymentNotFound"


async def test_expired_with_completed_lines_keeps_the_partial_output(
    fake: FakeAzureOpenAI, session: aiohttp.ClientSession
) -> None:
    batch = await create_batch(session, fake, tasks(4))
    fake.advance_batch(batch["id"], "in_progress")
    fake.advance_batch(batch["id"], "expired", completed_lines=2)

    expired = await get_batch(session, fake, batch["id"])
    assert expired["status"] == "expired" and expired["expired_at"] is not None
    assert expired["completed_at"] is None
    assert expired["request_counts"] == {"total": 4, "completed": 2, "failed": 0}
    output = await download(session, fake, expired["output_file_id"])
    assert [line["custom_id"] for line in output] == ["task-0", "task-1"]
    unrun = await download(session, fake, expired["error_file_id"])
    assert [line["custom_id"] for line in unrun] == ["task-2", "task-3"]
    assert all(line["response"] is None and line["error"]["code"] == "batch_expired" for line in unrun)


async def test_failed_batch_sets_errors(fake: FakeAzureOpenAI, session: aiohttp.ClientSession) -> None:
    plain = await create_batch(session, fake, tasks(2))
    fake.advance_batch(plain["id"], "failed")
    failed = await get_batch(session, fake, plain["id"])
    assert failed["status"] == "failed" and failed["failed_at"] is not None
    assert failed["output_file_id"] is None and failed["error_file_id"] is None
    [error] = failed["errors"]["data"]
    assert failed["errors"]["object"] == "list"
    assert set(error) == {"code", "message", "param", "line"} and error["code"] == "invalid_request"

    partial = await create_batch(session, fake, tasks(3))
    quota = {"code": "token_limit_exceeded", "message": "Enqueued token limit reached."}
    fake.advance_batch(partial["id"], "failed", completed_lines=1, errors=[quota])
    failed = await get_batch(session, fake, partial["id"])
    assert failed["errors"]["data"] == [{**quota, "param": None, "line": None}]
    assert [line["custom_id"] for line in await download(session, fake, failed["output_file_id"])] == ["task-0"]
    assert failed["error_file_id"] is None  # the other lines of a failed batch are simply missing


async def test_an_invalid_input_file_fails_the_batch_when_it_leaves_validating(
    fake: FakeAzureOpenAI, session: aiohttp.ClientSession
) -> None:
    content = jsonl(task("a"), task("a"), task("b", url="/embeddings")) + b"{not json\n"
    batch = await create_batch(session, fake, content)
    assert batch["status"] == "validating"  # Azure validates asynchronously
    fake.advance_batch(batch["id"], "completed")
    failed = await get_batch(session, fake, batch["id"])
    assert failed["status"] == "failed" and failed["output_file_id"] is None
    codes = [(e["code"], e["line"]) for e in failed["errors"]["data"]]
    assert codes == [("duplicate_custom_id", 2), ("url_mismatch", 3), ("invalid_json_line", 4)]

    empty = await create_batch(session, fake, b"")
    fake.advance_batch(empty["id"], "in_progress")
    assert [e["code"] for e in (await get_batch(session, fake, empty["id"]))["errors"]["data"]] == ["empty_file"]


async def test_cancel_goes_cancelling_then_cancelled(fake: FakeAzureOpenAI, session: aiohttp.ClientSession) -> None:
    batch = await create_batch(session, fake, tasks(3))
    fake.advance_batch(batch["id"], "in_progress")
    cancelling = await call(session, "POST", api_url(fake, f"batches/{batch['id']}/cancel"))
    assert cancelling["status"] == "cancelling" and cancelling["cancelling_at"] is not None
    assert (await get_batch(session, fake, batch["id"]))["status"] == "cancelling"

    fake.advance_batch(batch["id"], "completed", completed_lines=None)  # any advance finishes the cancel
    cancelled = await get_batch(session, fake, batch["id"])
    assert cancelled["status"] == "cancelled" and cancelled["cancelled_at"] is not None
    assert cancelled["output_file_id"] is None
    unrun = await download(session, fake, cancelled["error_file_id"])
    assert {line["error"]["code"] for line in unrun} == {"batch_cancelled"} and len(unrun) == 3
    again = await call(session, "POST", api_url(fake, f"batches/{batch['id']}/cancel"))
    assert again["status"] == "cancelled"

    partial = await create_batch(session, fake, tasks(3))
    fake.advance_batch(partial["id"], "in_progress")
    await call(session, "POST", api_url(fake, f"batches/{partial['id']}/cancel"))
    state = fake.advance_batch(partial["id"], "cancelled", completed_lines=1)
    assert state.status == "cancelled" and state.request_counts["completed"] == 1
    assert [line["custom_id"] for line in fake.files[state.output_file_id or ""].jsonl()] == ["task-0"]

    done = await create_batch(session, fake, tasks(1))
    fake.advance_batch(done["id"], "completed")
    refused = await call(session, "POST", api_url(fake, f"batches/{done['id']}/cancel"), expect=400)
    assert "completed" in refused["error"]["message"]


async def test_advance_batch_refuses_impossible_moves(fake: FakeAzureOpenAI, session: aiohttp.ClientSession) -> None:
    with pytest.raises(LookupError):
        fake.advance_batch(to="in_progress")
    batch = await create_batch(session, fake, tasks(2))
    with pytest.raises(KeyError):
        fake.advance_batch("batch_nope", "in_progress")
    with pytest.raises(ValueError, match="no custom_id"):
        fake.advance_batch(batch["id"], "completed", failed_custom_ids=["task-9"])
    with pytest.raises(ValueError, match="completed_lines"):
        fake.advance_batch(batch["id"], "completed", completed_lines=1)
    with pytest.raises(ValueError, match="unknown batch status"):
        fake.advance_batch(batch["id"], "done")  # type: ignore[arg-type]
    assert fake.batches[batch["id"]].status == "validating"  # refused moves change nothing
    fake.advance_batch(batch["id"], "in_progress")
    assert fake.advance_batch(batch["id"], "in_progress").status == "in_progress"  # no-op
    with pytest.raises(ValueError, match="validating"):
        fake.advance_batch(batch["id"], "validating")
    fake.advance_batch(batch["id"], "completed")
    with pytest.raises(ValueError, match="already completed"):
        fake.advance_batch(batch["id"], "expired")


# --------------------------------------------------------------------------- auto progress


async def test_batch_script_moves_one_step_per_poll(fake: FakeAzureOpenAI, session: aiohttp.ClientSession) -> None:
    fake.batch_script = ["validating", "in_progress", "in_progress", "finalizing", "completed"]
    batch = await create_batch(session, fake, tasks(2))
    assert batch["status"] == "validating"  # creating does not consume a step
    await call(session, "GET", api_url(fake, "batches"))  # neither does listing
    seen = [(await get_batch(session, fake, batch["id"]))["status"] for _ in range(7)]
    assert seen == ["validating", "in_progress", "in_progress", "finalizing", "completed", "completed", "completed"]
    final = fake.batches[batch["id"]]
    assert final.request_counts == {"total": 2, "completed": 2, "failed": 0} and not final.script

    fake.batch_script = ["in_progress", BatchStep("expired", completed_lines=1, failed_custom_ids=("task-0",))]
    expiring = await create_batch(session, fake, tasks(3))
    assert (await get_batch(session, fake, expiring["id"]))["status"] == "in_progress"
    expired = await get_batch(session, fake, expiring["id"])
    assert expired["status"] == "expired" and expired["output_file_id"] is None
    assert expired["request_counts"] == {"total": 3, "completed": 0, "failed": 1}
    errors = await download(session, fake, expired["error_file_id"])
    assert [(e["custom_id"], (e["error"] or {}).get("code")) for e in errors] == [
        ("task-0", None),
        ("task-1", "batch_expired"),
        ("task-2", "batch_expired"),
    ]

    fake.batch_script = None  # batches created from now on stay put
    still = await create_batch(session, fake, tasks(1))
    assert [(await get_batch(session, fake, still["id"]))["status"] for _ in range(2)] == ["validating"] * 2


async def test_a_scripted_batch_that_is_cancelled_finishes_cancelling_on_the_next_poll(
    fake: FakeAzureOpenAI, session: aiohttp.ClientSession
) -> None:
    fake.batch_script = ["in_progress", "in_progress", "completed"]
    batch = await create_batch(session, fake, tasks(1))
    assert (await get_batch(session, fake, batch["id"]))["status"] == "in_progress"
    await call(session, "POST", api_url(fake, f"batches/{batch['id']}/cancel"))
    assert (await get_batch(session, fake, batch["id"]))["status"] == "cancelled"
    assert (await get_batch(session, fake, batch["id"]))["status"] == "cancelled"


# --------------------------------------------------------------------------- listing, deleting, errors


async def test_list_batches_pages_in_creation_order(fake: FakeAzureOpenAI, session: aiohttp.ClientSession) -> None:
    ids = [(await create_batch(session, fake, tasks(1)))["id"] for _ in range(3)]
    first = await call(session, "GET", api_url(fake, "batches", "&limit=2"))
    assert first["object"] == "list" and [b["id"] for b in first["data"]] == ids[:2]
    assert first["has_more"] is True and first["first_id"] == ids[0] and first["last_id"] == ids[1]
    rest = await call(session, "GET", api_url(fake, "batches", f"&limit=2&after={ids[1]}"))
    assert [b["id"] for b in rest["data"]] == ids[2:] and rest["has_more"] is False
    assert list(fake.batches) == ids


async def test_unknown_and_invalid_ids_look_like_azure(fake: FakeAzureOpenAI, session: aiohttp.ClientSession) -> None:
    for path in ("files/file-nope", "files/file-nope/content", "batches/batch_nope"):
        answer = await call(session, "GET", api_url(fake, path), expect=404)
        assert "nope" in answer["error"]["message"]
    await call(session, "DELETE", api_url(fake, "files/file-nope"), expect=404)
    body = {"input_file_id": "file-nope", "endpoint": "/chat/completions", "completion_window": "24h"}
    assert (await call(session, "POST", api_url(fake, "batches"), json=body, expect=404))["error"]["code"] == "404"

    uploaded = await upload(session, fake, tasks(1))
    body["input_file_id"] = uploaded["id"]
    await call(session, "POST", api_url(fake, "batches"), json={**body, "endpoint": "/images"}, expect=400)
    await call(session, "POST", api_url(fake, "batches"), json={"endpoint": "/chat/completions"}, expect=400)
    form = aiohttp.FormData()
    form.add_field("purpose", "nonsense")
    form.add_field("file", tasks(1), filename="tasks.jsonl")
    await call(session, "POST", api_url(fake, "files"), data=form, expect=400)
    form = aiohttp.FormData()
    form.add_field("purpose", "batch")
    await call(session, "POST", api_url(fake, "files"), data=form, expect=400)  # no file part

    deleted = await call(session, "DELETE", api_url(fake, f"files/{uploaded['id']}"))
    assert deleted == {"id": uploaded["id"], "object": "file", "deleted": True}
    await call(session, "GET", api_url(fake, f"files/{uploaded['id']}"), expect=404)
    await call(session, "POST", api_url(fake, "batches"), json=body, expect=404)

    produced = fake.add_file(b"{}\n", "out.jsonl", purpose="batch_output")
    body["input_file_id"] = produced.id
    await call(session, "POST", api_url(fake, "batches"), json=body, expect=400)


async def test_auth_and_api_version_are_required(fake: FakeAzureOpenAI, session: aiohttp.ClientSession) -> None:
    async with session.get(f"{fake.url}/openai/batches", headers=KEY) as response:
        assert response.status == 404
    async with session.get(api_url(fake, "files")) as response:
        assert response.status == 401
        assert (await response.json())["error"]["code"] == "401"
    async with session.get(api_url(fake, "files"), headers={"Authorization": "Bearer aad-token"}) as response:
        assert response.status == 200


async def test_faults_apply_to_files_and_batches(fake: FakeAzureOpenAI, session: aiohttp.ClientSession) -> None:
    fake.enqueue(Fault.status(429, retry_after=7))
    form = aiohttp.FormData()
    form.add_field("purpose", "batch")
    form.add_field("file", tasks(1), filename="tasks.jsonl")
    async with session.post(api_url(fake, "files"), data=form, headers=KEY) as response:
        assert response.status == 429 and response.headers["Retry-After"] == "7"
    assert fake.files == {}  # the faulted upload stored nothing

    uploaded = await upload(session, fake, tasks(2))
    body = {"input_file_id": uploaded["id"], "endpoint": "/chat/completions", "completion_window": "24h"}
    fake.enqueue(Fault.status(503))
    answer = await call(session, "POST", api_url(fake, "batches"), json=body, expect=503)
    assert answer["error"]["type"] == "server_error"
    assert fake.batches == {}
    batch = await call(session, "POST", api_url(fake, "batches"), json=body)

    fake.always(Fault.reset())  # an unreachable backend
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await get_batch(session, fake, batch["id"])
    fake.always(None)
    assert (await get_batch(session, fake, batch["id"]))["status"] == "validating"

    recorded = [(r.method, r.path, r.deployment, r.operation) for r in fake.requests]
    assert recorded[:4] == [
        ("POST", "/openai/files", None, None),
        ("POST", "/openai/files", None, None),
        ("POST", "/openai/batches", None, None),
        ("POST", "/openai/batches", None, None),
    ]
    # aiohttp retries an idempotent GET once when a reused connection is reset, so 2 or 3 polls.
    assert set(recorded[4:]) == {("GET", f"/openai/batches/{batch['id']}", None, None)}
    assert fake.requests[2].json == body


async def test_a_script_the_batch_cannot_follow_answers_500(
    fake: FakeAzureOpenAI, session: aiohttp.ClientSession
) -> None:
    fake.batch_script = ["in_progress", "validating"]
    batch = await create_batch(session, fake, tasks(1))
    await get_batch(session, fake, batch["id"])
    answer = await call(session, "GET", api_url(fake, f"batches/{batch['id']}"), expect=500)
    assert answer["error"]["code"] == "FakeBatchScriptError" and "validating" in answer["error"]["message"]


async def test_a_faulted_poll_does_not_consume_a_script_step(
    fake: FakeAzureOpenAI, session: aiohttp.ClientSession
) -> None:
    fake.batch_script = ["in_progress", "completed"]
    batch = await create_batch(session, fake, tasks(1))
    fake.enqueue(Fault.status(500))
    await call(session, "GET", api_url(fake, f"batches/{batch['id']}"), expect=500)
    assert (await get_batch(session, fake, batch["id"]))["status"] == "in_progress"
    assert (await get_batch(session, fake, batch["id"]))["status"] == "completed"


# --------------------------------------------------------------------------- the official client


def test_threaded_mode_serves_the_sync_openai_client_batches() -> None:
    fake = FakeAzureOpenAI(name="neu")
    with fake.threaded():
        client = AzureOpenAI(azure_endpoint=fake.url, api_key="fake-key", api_version=API_VERSION)
        with client:
            uploaded = client.files.create(file=("tasks.jsonl", tasks(2)), purpose="batch")
            batch = client.batches.create(
                input_file_id=uploaded.id,
                endpoint="/chat/completions",
                completion_window="24h",
                metadata={"owner": "gateway"},
            )
            validating = client.batches.retrieve(batch.id)
            fake.advance_batch(batch.id, "in_progress")
            fake.advance_batch(batch.id, "completed", failed_custom_ids=["task-1"])
            done = client.batches.retrieve(batch.id)
            assert done.output_file_id is not None and done.error_file_id is not None
            output = client.files.content(done.output_file_id).text
            errors = client.files.content(done.error_file_id).text
            listed = [b.id for b in client.batches.list()]
            retrieved = client.files.retrieve(uploaded.id)

    assert uploaded.id.startswith("file-") and uploaded.status == "processed" and uploaded.bytes == len(tasks(2))
    assert retrieved == uploaded
    assert batch.status == validating.status == "validating" and batch.metadata == {"owner": "gateway"}
    assert done.status == "completed" and done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (2, 1, 1)
    [line] = [json.loads(text) for text in output.splitlines()]
    assert line["custom_id"] == "task-0"
    assert line["response"]["body"]["choices"][0]["message"]["content"] == "Hello from neu. This is a fake reply."
    assert [json.loads(text)["custom_id"] for text in errors.splitlines()] == ["task-1"]
    assert listed == [batch.id]
    assert [r.path for r in fake.requests][:2] == ["/openai/files", "/openai/batches"]
