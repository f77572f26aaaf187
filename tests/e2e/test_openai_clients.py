"""The official `openai` clients against the development host over real HTTP, two fake backends behind it.

This is what a user does: point `AzureOpenAI(azure_endpoint=...)` or `OpenAI(base_url=.../v1)` at the gateway.
The devhost runs in its own process with the settings `func start` would use; usage records come back
through the usage file, the way an operator would read them locally.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.devhost import DevHost
from tests.support.fake_openai import FakeAzureOpenAI, Fault

KEY = "e2e-client-key"
OPERATOR = {"x-functions-key": "devhost-function-key"}
MESSAGES = [{"role": "user", "content": "Say hello to the gateway"}]


class Stack:
    def __init__(self, weu: FakeAzureOpenAI, neu: FakeAzureOpenAI, host: DevHost, usage_file: Path) -> None:
        self.weu, self.neu, self.host, self.usage_file = weu, neu, host, usage_file
        self._clients: list[openai.OpenAI] = []  # every client handed out, closed with the stack

    def close(self) -> None:
        for client in self._clients:
            client.close()

    def usage(self) -> list[dict]:
        if not self.usage_file.exists():
            return []
        return [json.loads(line) for line in self.usage_file.read_text().splitlines()]

    def azure(self) -> openai.AzureOpenAI:
        client = openai.AzureOpenAI(azure_endpoint=self.host.url, api_key=KEY, api_version="2024-10-21", max_retries=0)
        self._clients.append(client)
        return client

    def v1(self) -> openai.OpenAI:
        client = openai.OpenAI(base_url=self.host.url + "/v1", api_key=KEY, max_retries=0)
        self._clients.append(client)
        return client


@pytest.fixture(scope="module")
def stack(tmp_path_factory, azurite) -> Iterator[Stack]:
    usage_file = tmp_path_factory.mktemp("usage") / "usage.jsonl"
    weu = FakeAzureOpenAI(name="weu", api_key="weu-key")
    neu = FakeAzureOpenAI(name="neu", api_key="neu-key")
    with weu.threaded(), neu.threaded():
        env = {
            "AzureWebJobsStorage": azurite.connection_string,
            "GATEWAY_BACKEND_1": f"name=weu;host={weu.url};mode=direct;processor=OpenAI;api-key=weu-key;priority=1;"
            "deployments=gpt-4o-mini,text-embedding-3-small",
            "GATEWAY_BACKEND_2": f"name=neu;host={neu.url};mode=direct;processor=OpenAI;api-key=neu-key;priority=2;"
            "deployments=gpt-4o-mini,text-embedding-3-small",
            "GATEWAY_API_KEYS": KEY,
            "GATEWAY_USAGE_FILE": str(usage_file),
        }
        with DevHost(env=env) as host, contextlib.closing(Stack(weu, neu, host, usage_file)) as stack:
            yield stack


@pytest.fixture
def fresh(stack: Stack) -> Stack:
    """Each test starts with quiet backends and closed breakers (reset through the operator API)."""
    for fake in (stack.weu, stack.neu):
        fake.clear()
        reset = httpx.post(f"{stack.host.url}/gateway/backends/{fake.name}/reset", headers=OPERATOR)
        assert reset.status_code == 200 and reset.json()["breaker"] == "closed"
    return stack


@pytest.mark.parametrize("style", ["azure", "v1"])
def test_chat(fresh: Stack, style: str):
    client = fresh.azure() if style == "azure" else fresh.v1()
    before = len(fresh.usage())
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    completion = raw.parse()
    assert "weu" in completion.choices[0].message.content
    assert raw.headers["x-gateway-backend"] == "weu" and raw.headers["x-gateway-attempts"] == "1"
    assert completion.usage.total_tokens > 0
    assert fresh.weu.requests[-1].path == "/openai/deployments/gpt-4o-mini/chat/completions"
    record = fresh.usage()[before]
    assert (record["api_style"], record["total_tokens"], record["streaming"]) == (
        style,
        completion.usage.total_tokens,
        False,
    )


@pytest.mark.parametrize("style", ["azure", "v1"])
def test_streamed_chat_records_usage_the_client_did_not_ask_for(fresh: Stack, style: str):
    client = fresh.azure() if style == "azure" else fresh.v1()
    before = len(fresh.usage())
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "weu" in text
    # The client sees no extra chunk: every chunk has choices except Azure's own prompt-filter chunk, none has usage.
    assert all(c.usage is None for c in chunks)
    assert [c for c in chunks if not c.choices and not getattr(c, "prompt_filter_results", None)] == []
    assert fresh.weu.requests[-1].json["stream_options"] == {"include_usage": True}
    record = fresh.usage()[before]
    assert record["streaming"] is True and record["usage_estimated"] is False
    assert record["completion_tokens"] > 0 and record["prompt_tokens"] > 0


def test_streamed_chat_with_usage_requested_keeps_it(fresh: Stack):
    chunks = list(
        fresh.v1().chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0 and chunks[-1].choices == []


@pytest.mark.parametrize("style", ["azure", "v1"])
def test_embeddings(fresh: Stack, style: str):
    client = fresh.azure() if style == "azure" else fresh.v1()
    result = client.embeddings.create(model="text-embedding-3-small", input=["one", "two"])
    assert len(result.data) == 2 and len(result.data[0].embedding) == 8
    assert result.usage.prompt_tokens > 0


@pytest.mark.parametrize("style", ["azure", "v1"])
def test_failover_when_the_first_backend_answers_429(fresh: Stack, style: str):
    client = fresh.azure() if style == "azure" else fresh.v1()
    fresh.weu.enqueue(Fault.status(429, retry_after=30))
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    assert "neu" in raw.parse().choices[0].message.content
    assert raw.headers["x-gateway-backend"] == "neu" and raw.headers["x-gateway-attempts"] == "2"
    assert len(fresh.weu.requests) == 1 and len(fresh.neu.requests) == 1


def test_streamed_failover_when_the_first_backend_answers_429(fresh: Stack):
    fresh.weu.enqueue(Fault.status(429, retry_after=30))
    chunks = list(fresh.azure().chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))
    assert "neu" in "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_the_first_chunk_arrives_before_the_backend_sends_the_last(fresh: Stack):
    """No buffering anywhere: the backend holds its stream after two events until the client has seen them."""
    hold = fresh.weu.hold_stream(after_chunks=2)  # Azure's prompt-filter event, then the role chunk
    try:
        stream = iter(fresh.v1().chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))
        # Each next() would block until release() if anything between backend and client buffered.
        prompt_filter, role = next(stream), next(stream)
        assert prompt_filter.choices == [] and role.choices[0].delta.role == "assistant"
        assert hold.reached.wait(10)
    finally:
        hold.release()
    rest = list(stream)
    assert rest[-1].choices[0].finish_reason == "stop"
    assert "weu" in "".join(c.choices[0].delta.content or "" for c in rest if c.choices)


def test_gateway_errors_reach_the_sdk_as_typed_errors(fresh: Stack):
    wrong = openai.OpenAI(base_url=fresh.host.url + "/v1", api_key="wrong", max_retries=0)
    with wrong, pytest.raises(openai.AuthenticationError) as auth:
        wrong.models.list()
    assert auth.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.NotFoundError) as missing:
        fresh.v1().chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert missing.value.body["code"] == "model_not_found"
    fresh.weu.enqueue(Fault.content_filter())
    with pytest.raises(openai.BadRequestError) as filtered:
        fresh.azure().chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert filtered.value.body["code"] == "content_filter"
    assert fresh.neu.requests == []


def test_models_and_health(fresh: Stack):
    assert [m.id for m in fresh.v1().models.list()] == ["gpt-4o-mini", "text-embedding-3-small"]
    health = httpx.get(fresh.host.url + "/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert httpx.get(fresh.host.url + "/api/health").status_code == 404  # no api/ prefix


@pytest.mark.parametrize("style", ["azure", "v1"])
def test_an_unmodified_client_with_a_large_max_tokens_gets_its_completion(fresh: Stack, style: str):
    """16,384 is a normal max_tokens for gpt-4o-class models: a cap, not an expectation. Never a surprise 202."""
    client = fresh.azure() if style == "azure" else fresh.v1()
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=16384)
    assert raw.http_response.status_code == 200
    assert raw.parse().choices[0].message.content and raw.parse().object == "chat.completion"


def test_relayed_answers_carry_one_date_and_one_server_header(fresh: Stack):
    answer = httpx.post(
        f"{fresh.host.url}/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": MESSAGES},
        headers={"api-key": KEY},
    )  # fmt: skip
    assert answer.status_code == 200
    for name in ("date", "server"):
        assert len(answer.headers.get_list(name)) <= 1, answer.headers.get_list(name)


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/v1/chat/completions", "POST"),
        ("DELETE", "/v1/embeddings", "POST"),
        ("PUT", "/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21", "POST"),
        ("POST", "/v1/models", "GET"),
        ("POST", "/openai/models", "GET"),
        ("GET", "/openai/v1/embeddings", "POST"),
        ("POST", "/v1/models/gpt-4o-mini", "GET"),
        ("PUT", "/v1/responses/resp_1", "GET, DELETE"),
        ("GET", "/v1/realtime/client_secrets", "POST"),
        ("POST", "/results/" + "0" * 32, "GET, DELETE"),
        ("PUT", "/results/not-even-an-id", "GET, DELETE"),
        ("DELETE", "/status/" + "0" * 32, "GET"),
        ("POST", "/status/" + "0" * 32, "GET"),
    ],
)
def test_a_wrong_method_gets_openais_405_with_allow(fresh: Stack, method: str, path: str, allow: str):
    answer = httpx.request(method, f"{fresh.host.url}{path}", headers={"api-key": KEY})
    assert answer.status_code == 405 and answer.headers["allow"] == allow
    assert answer.json()["error"]["code"] == "method_not_allowed"
