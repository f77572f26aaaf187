"""Tests of the fake Azure OpenAI server itself, over real HTTP.

Later tests trust the fake to look like Azure and to misbehave exactly as scripted; these
tests pin both down.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from openai import AzureOpenAI

from tests.support.fake_openai import FakeAzureOpenAI, Fault, embedding_for
from tests.support.ports import log_tail, stop_process_group, wait_for_output

API_VERSION = "2024-10-21"
KEY = {"api-key": "fake-key"}
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello to me"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
    },
}


def op_url(fake: FakeAzureOpenAI, operation: str, deployment: str = "gpt-4o-mini") -> str:
    return f"{fake.url}/openai/deployments/{deployment}/{operation}?api-version={API_VERSION}"


async def post_chat(session: aiohttp.ClientSession, fake: FakeAzureOpenAI, **body: Any) -> dict[str, Any]:
    async with session.post(op_url(fake, "chat/completions"), json=body, headers=KEY) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def read_sse(response: aiohttp.ClientResponse) -> list[str]:
    """The ``data:`` payloads of an SSE response, in order (``[DONE]`` included)."""
    events = []
    async for line in response.content:
        if line.startswith(b"data: "):
            events.append(line[len(b"data: ") :].decode().rstrip("\n"))
    return events


async def stream_chat(session: aiohttp.ClientSession, fake: FakeAzureOpenAI, **body: Any) -> list[str]:
    body = {"messages": MESSAGES, "stream": True, **body}
    async with session.post(op_url(fake, "chat/completions"), json=body, headers=KEY) as response:
        assert response.status == 200
        assert response.content_type == "text/event-stream"
        return await read_sse(response)


def stream_text(events: list[str]) -> str:
    chunks = [json.loads(e) for e in events if e != "[DONE]"]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


# --------------------------------------------------------------------------- chat


async def test_chat_completion_has_azure_shape(fake: FakeAzureOpenAI, session: aiohttp.ClientSession) -> None:
    answer = await post_chat(session, fake, messages=MESSAGES)

    assert answer["id"].startswith("chatcmpl-")
    assert answer["object"] == "chat.completion"
    assert answer["model"] == "gpt-4o-mini-2024-07-18"
    assert isinstance(answer["created"], int) and answer["system_fingerprint"]
    [choice] = answer["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop" and choice["logprobs"] is None
    assert choice["message"] == {
        "role": "assistant",
        "content": "Hello from weu. This is a fake reply.",
        "refusal": None,
    }
    assert choice["content_filter_results"]["violence"] == {"filtered": False, "severity": "safe"}
    assert answer["prompt_filter_results"][0]["prompt_index"] == 0
    # 2 + 4 words, plus 3 per message; one completion token per streamed piece (chunks=5).
    assert answer["usage"] == {
        "prompt_tokens": 12,
        "completion_tokens": 5,
        "total_tokens": 17,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


async def test_answers_carry_region_request_id_and_ratelimit_headers(
    fake: FakeAzureOpenAI, session: aiohttp.ClientSession
) -> None:
    fake.ratelimit_headers = {"x-ratelimit-remaining-requests": "99", "x-ratelimit-remaining-tokens": "9000"}
    headers = {**KEY, "x-request-id": "req-123"}
    body = {"messages": MESSAGES}
    async with session.post(op_url(fake, "chat/completions"), json=body, headers=headers) as response:
        assert response.headers["x-ms-region"] == "weu"
        assert response.headers["x-request-id"] == response.headers["apim-request-id"] == "req-123"
        assert response.headers["x-ratelimit-remaining-requests"] == "99"
        assert response.headers["x-ratelimit-remaining-tokens"] == "9000"


async def test_requests_are_recorded_in_order(fake: FakeAzureOpenAI, session: aiohttp.ClientSession) -> None:
    await post_chat(session, fake, messages=MESSAGES)
    async with session.get(f"{fake.url}/status") as response:
        assert await response.json() == {"status": "ok", "name": "weu"}

    chat, probe = fake.requests
    assert (chat.method, chat.path, chat.deployment, chat.operation) == (
        "POST",
        "/openai/deployments/gpt-4o-mini/chat/completions",
        "gpt-4o-mini",
        "chat/completions",
    )
    assert chat.query == {"api-version": API_VERSION}
    assert chat.headers["api-key"] == "fake-key"
    assert chat.json == {"messages": MESSAGES} and json.loads(chat.body) == chat.json
    assert (probe.path, probe.deployment, probe.json) == ("/status", None, None)

    fake.clear()
    assert fake.requests == []


async def test_stream_without_include_usage_has_no_usage(fake: FakeAzureOpenAI, session: aiohttp.ClientSession) -> None:
    events = await stream_chat(session, fake)

    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    first, role, *content, final = chunks
    assert first["choices"] == [] and first["prompt_filter_results"]
    assert role["choices"][0]["delta"]["role"] == "assistant"
    assert len(content) == fake.chunks
    assert final["choices"][0]["delta"] == {} and final["choices"][0]["finish_reason"] == "stop"
    assert all("usage" not in chunk for chunk in chunks)


async def test_stream_with_include_usage_ends_with_one_usage_chunk(
    fake: FakeAzureOpenAI, session: aiohttp.ClientSession
) -> None:
    events = await stream_chat(session, fake, stream_options={"include_usage": True})

    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    with_usage = [c for c in chunks if c["usage"] is not None]
    assert with_usage == [chunks[-1]]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == fake.chunks
    assert chunks[-1]["usage"]["total_tokens"] == 12 + fake.chunks


async def test_streamed_content_equals_non_streamed_content(session: aiohttp.ClientSession) -> None:
    async with FakeAzureOpenAI(name="swc", chunks=7) as fake:
        answer = await post_chat(session, fake, messages=MESSAGES)
        events = await stream_chat(session, fake)

    assert stream_text(events) == answer["choices"][0]["message"]["content"]
    assert "swc" in stream_text(events)


async def test_weather_question_with_tools_gets_a_tool_call(
    fake: FakeAzureOpenAI, session: aiohttp.ClientSession
) -> None:
    messages = [{"role": "user", "content": "What is the weather in Seattle?"}]
    answer = await post_chat(session, fake, messages=messages, tools=[WEATHER_TOOL])
    events = await stream_chat(session, fake, messages=messages, tools=[WEATHER_TOOL])

    [choice] = answer["choices"]
    assert choice["finish_reason"] == "tool_calls"
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"location": "Seattle", "unit": "celsius"}

    chunks = [json.loads(e) for e in events[:-1] if json.loads(e)["choices"]]
    deltas = [c["choices"][0]["delta"].get("tool_calls", [{}])[0] for c in chunks]
    assert deltas[0]["id"] == call["id"] and deltas[0]["function"]["name"] == "get_weather"
    pieces = [d.get("function", {}).get("arguments", "") for d in deltas]
    assert sum(1 for p in pieces if p) > 1  # really split across chunks
    assert "".join(pieces) == call["function"]["arguments"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


# --------------------------------------------------------------------------- faults


async def test_429_carries_retry_headers_and_azure_body(fake: FakeAzureOpenAI, session: aiohttp.ClientSession) -> None:
    fake.enqueue(Fault.status(429, retry_after=30, retry_after_ms=1500))
    body = {"messages": MESSAGES}
    async with session.post(op_url(fake, "chat/completions"), json=body, headers=KEY) as response:
        assert response.status == 429
        assert response.headers["Retry-After"] == "30"
        assert response.headers["retry-after-ms"] == "1500"
        error = (await response.json())["error"]
    assert error["code"] == "429"
    assert "ChatCompletions_Create" in error["message"] and "retry after 30 seconds" in error["message"]

    await post_chat(session, fake, messages=MESSAGES)  # the fault was used up
    assert len(fake.requests) == 2


async def test_queued_faults_go_first_then_the_persistent_one(
    fake: FakeAzureOpenAI, session: aiohttp.ClientSession
) -> None:
    fake.enqueue(Fault.status(500))
    fake.always(Fault.status(503))
    statuses = []
    for _ in range(3):
        async with session.post(op_url(fake, "chat/completions"), json={}, headers=KEY) as response:
            statuses.append(response.status)
            await response.read()
    assert statuses == [500, 503, 503]

    fake.always(None)
    await post_chat(session, fake, messages=MESSAGES)


async def test_reset_closes_the_connection_without_an_answer(
    fake: FakeAzureOpenAI, session: aiohttp.ClientSession
) -> None:
    fake.enqueue(Fault.reset())
    with pytest.raises(aiohttp.ServerDisconnectedError):
        async with session.post(op_url(fake, "chat/completions"), json={"messages": MESSAGES}, headers=KEY):
            pass
    assert len(fake.requests) == 1
    await post_chat(session, fake, messages=MESSAGES)


async def test_cut_stream_stops_after_n_events(fake: FakeAzureOpenAI, session: aiohttp.ClientSession) -> None:
    fake.enqueue(Fault.cut_stream(after_chunks=2))
    body = {"messages": MESSAGES, "stream": True}
    events: list[str] = []
    with pytest.raises(aiohttp.ClientPayloadError):
        async with session.post(op_url(fake, "chat/completions"), json=body, headers=KEY) as response:
            assert response.status == 200
            async for line in response.content:
                if line.startswith(b"data: "):
                    events.append(line.decode())
    assert len(events) == 2
    assert "[DONE]" not in "".join(events)


async def test_error_event_ends_the_stream_with_an_error_and_no_done(
    fake: FakeAzureOpenAI, session: aiohttp.ClientSession
) -> None:
    fake.enqueue(Fault.error_event(after_chunks=2), Fault.error_event(after_chunks=0))
    events = await stream_chat(session, fake)
    assert len(events) == 3 and "[DONE]" not in events
    assert json.loads(events[1])["choices"][0]["delta"]["role"] == "assistant"
    error = json.loads(events[2])
    assert list(error) == ["error"] and error["error"]["type"] == "server_error"
    async with session.post(op_url(fake, "chat/completions"), json={"messages": MESSAGES}, headers=KEY) as response:
        assert response.status == 500  # not streamed: the same error as a plain answer
        assert (await response.json())["error"]["type"] == "server_error"


async def test_content_filter_answers_azure_body(fake: FakeAzureOpenAI, session: aiohttp.ClientSession) -> None:
    fake.enqueue(Fault.content_filter())
    async with session.post(op_url(fake, "chat/completions"), json={}, headers=KEY) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert error["code"] == "content_filter" and error["param"] == "prompt" and error["status"] == 400
    assert error["innererror"]["code"] == "ResponsibleAIPolicyViolation"
    assert error["innererror"]["content_filter_result"]["violence"] == {"filtered": True, "severity": "medium"}


async def test_stall_never_answers_until_released(fake: FakeAzureOpenAI, session: aiohttp.ClientSession) -> None:
    fake.enqueue(Fault.stall())
    pending = asyncio.create_task(post_chat(session, fake, messages=MESSAGES))
    await fake.wait_for_requests_async(1)
    assert not pending.done()

    fake.release_stalls()
    answer = await pending
    assert "weu" in answer["choices"][0]["message"]["content"]


async def test_stall_trips_client_read_timeout_and_stop_resets_it(session: aiohttp.ClientSession) -> None:
    async with FakeAzureOpenAI() as fake:
        fake.always(Fault.stall())
        timeout = aiohttp.ClientTimeout(sock_read=0.2)
        with pytest.raises(asyncio.TimeoutError):
            async with session.post(op_url(fake, "chat/completions"), json={}, headers=KEY, timeout=timeout):
                pass

        pending = asyncio.create_task(session.post(op_url(fake, "embeddings"), json={}, headers=KEY))
        await fake.wait_for_requests_async(2)
    # Leaving the block stopped the fake: the stalled request is reset, not left hanging.
    with pytest.raises(aiohttp.ClientConnectionError):
        await pending


async def test_health_probe_sees_persistent_faults_but_not_queued_ones(
    fake: FakeAzureOpenAI, session: aiohttp.ClientSession
) -> None:
    fake.enqueue(Fault.status(500))
    async with session.get(f"{fake.url}/openai/status") as response:
        assert response.status == 200
    fake.always(Fault.status(503))
    async with session.get(f"{fake.url}/openai/status") as response:
        assert response.status == 503
    fake.clear()
    body = {"messages": MESSAGES}
    async with session.post(op_url(fake, "chat/completions"), json=body, headers=KEY) as response:
        assert response.status == 200  # clear() dropped the queued 500 as well


# --------------------------------------------------------------------------- auth and routing


async def test_auth_and_routing_errors_look_like_azure(fake: FakeAzureOpenAI, session: aiohttp.ClientSession) -> None:
    chat = op_url(fake, "chat/completions")
    cases = [
        (chat, {}, 401, "401"),
        (chat, {"api-key": "wrong"}, 401, "401"),
        (chat, {"Authorization": "Bearer "}, 401, "401"),
        (chat, {"Authorization": "Bearer aad-token"}, 200, None),
        (chat.split("?")[0], KEY, 404, "404"),
        (op_url(fake, "chat/completions", deployment="gpt-5"), KEY, 404, "DeploymentNotFound"),
        (op_url(fake, "no/such/operation"), KEY, 404, "404"),
    ]
    for url, headers, status, code in cases:
        async with session.post(url, json={"messages": MESSAGES}, headers=headers) as response:
            answer = await response.json()
        assert response.status == status, (url, headers)
        if code is not None:
            assert answer["error"]["code"] == code, (url, headers)


async def test_any_deployment_is_accepted_when_deployments_is_none(session: aiohttp.ClientSession) -> None:
    async with FakeAzureOpenAI(deployments=None) as fake:
        url = op_url(fake, "chat/completions", deployment="whatever-name")
        async with session.post(url, json={"messages": MESSAGES}, headers=KEY) as response:
            assert response.status == 200
            assert (await response.json())["model"] == "whatever-name"


# --------------------------------------------------------------------------- other operations


async def test_embeddings_floats_and_base64(fake: FakeAzureOpenAI, session: aiohttp.ClientSession) -> None:
    url = op_url(fake, "embeddings", deployment="text-embedding-3-small")
    async with session.post(url, json={"input": ["one two", "three"]}, headers=KEY) as response:
        floats = await response.json()
    body = {"input": ["one two", "three"], "encoding_format": "base64"}
    async with session.post(url, json=body, headers=KEY) as response:
        encoded = await response.json()

    assert floats["object"] == "list" and floats["model"] == "text-embedding-3-small"
    assert floats["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    assert [d["index"] for d in floats["data"]] == [0, 1]
    assert floats["data"][0]["embedding"] == embedding_for("one two")
    assert len(embedding_for("x")) == 8 and embedding_for("x") == embedding_for("x")
    for plain, packed in zip(floats["data"], encoded["data"], strict=True):
        decoded = list(struct.unpack("<8f", base64.b64decode(packed["embedding"])))
        assert decoded == plain["embedding"]


async def test_transcription_reads_the_multipart_upload(fake: FakeAzureOpenAI, session: aiohttp.ClientSession) -> None:
    audio = os.urandom(3000) + b"\r\n--not-a-boundary\r\n"
    form = aiohttp.FormData()
    form.add_field("file", audio, filename="clip.wav", content_type="audio/wav")
    form.add_field("model", "whisper")
    url = op_url(fake, "audio/transcriptions", deployment="whisper")
    async with session.post(url, data=form, headers=KEY) as response:
        assert response.status == 200
        assert await response.json() == {"text": f"fake transcription of {len(audio)} bytes"}


async def test_speech_images_and_legacy_completions(fake: FakeAzureOpenAI, session: aiohttp.ClientSession) -> None:
    url = op_url(fake, "audio/speech", deployment="tts")
    async with session.post(url, json={"input": "hi there", "voice": "alloy"}, headers=KEY) as response:
        assert response.content_type == "audio/mpeg"
        assert await response.read() == b"ID3hi there"

    url = op_url(fake, "images/generations", deployment="dall-e-3")
    async with session.post(url, json={"prompt": "a cat"}, headers=KEY) as response:
        assert (await response.json())["data"] == [{"url": "https://fake/img.png", "revised_prompt": "a cat"}]

    url = op_url(fake, "completions")
    async with session.post(url, json={"prompt": "Once upon"}, headers=KEY) as response:
        completion = await response.json()
    assert completion["object"] == "text_completion"
    assert "weu" in completion["choices"][0]["text"]
    async with session.post(url, json={"prompt": "Once upon", "stream": True}, headers=KEY) as response:
        events = await read_sse(response)
    streamed = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1])
    assert streamed == completion["choices"][0]["text"] and events[-1] == "[DONE]"


# --------------------------------------------------------------------------- hold_stream


async def test_hold_stream_lets_the_first_chunk_through_before_the_rest(
    fake: FakeAzureOpenAI, session: aiohttp.ClientSession
) -> None:
    hold = fake.hold_stream(after_chunks=1)
    body = {"messages": MESSAGES, "stream": True}
    async with session.post(op_url(fake, "chat/completions"), json=body, headers=KEY) as response:
        first = await response.content.readuntil(b"\n\n")
        assert json.loads(first.removeprefix(b"data: "))["prompt_filter_results"]
        assert await hold.wait_reached()
        # The fake is paused: nothing beyond the first event has reached the client yet.
        assert response.content.total_bytes == len(first)

        hold.release()
        rest = await read_sse(response)

    assert rest[-1] == "[DONE]"
    assert stream_text(rest) == "Hello from weu. This is a fake reply."


# --------------------------------------------------------------------------- threaded mode and CLI


def test_threaded_mode_serves_the_sync_openai_client() -> None:
    fake = FakeAzureOpenAI(name="neu")
    with fake.threaded():
        client = AzureOpenAI(azure_endpoint=fake.url, api_key="fake-key", api_version=API_VERSION)
        with client:
            chat = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            stream = client.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
            )
            chunks = list(stream)
            embedding = client.embeddings.create(model="text-embedding-3-small", input="hello world")

    assert chat.choices[0].message.content == "Hello from neu. This is a fake reply."
    assert chat.usage is not None and chat.usage.completion_tokens == 5
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == chat.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == chat.usage.total_tokens
    assert embedding.data[0].embedding == embedding_for("hello world")  # sent as base64 by the client
    assert [r.deployment for r in fake.requests] == ["gpt-4o-mini", "gpt-4o-mini", "text-embedding-3-small"]


def test_cli_serves_until_sigterm(tmp_path: Path) -> None:
    log = tmp_path / "fake.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(  # port 0: the OS picks it, and the banner (printed once listening) says which
            [sys.executable, "-m", "tests.support.fake_openai", "--port", "0", "--name", "cli"],
            cwd=Path(__file__).resolve().parents[2],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        port = wait_for_output(log, _banner_port, 20, check=lambda: _still_running(proc, log))
        client = AzureOpenAI(azure_endpoint=f"http://127.0.0.1:{port}", api_key="fake-key", api_version="1")
        with client:
            chat = client.chat.completions.create(model="any-name", messages=MESSAGES)
        assert chat.choices[0].message.content == "Hello from cli. This is a fake reply."
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        stop_process_group(proc)
    assert "FAKE Azure OpenAI" in log.read_text()


def _banner_port(output: str) -> int | None:
    found = re.search(r"^  endpoint    : http://127\.0\.0\.1:(\d+) ", output, re.MULTILINE)
    return None if found is None else int(found[1])


def _still_running(proc: subprocess.Popen[bytes], log: Path) -> None:
    if proc.poll() is not None:
        raise RuntimeError(f"fake CLI exited with {proc.returncode}:\n{log_tail(log)}")
