"""The fake's Azure v1 surface, Responses and Realtime client secrets, driven by the official `openai` client.

If the official client works against the fake directly, a test of the gateway in front of it tests the gateway,
not a fake that only the gateway understands. The fake's Responses are kept per instance, so an id made on one
fake is unknown to another: that is what makes affinity mistakes visible in the gateway's tests.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.support.fake_openai import FakeAzureOpenAI

KEY = "fake-key"
RESPONSES_VERSION = "2025-04-01-preview"


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[FakeAzureOpenAI, FakeAzureOpenAI]]:
    weu, neu = FakeAzureOpenAI(name="weu"), FakeAzureOpenAI(name="neu")
    with weu.threaded(), neu.threaded():
        yield weu, neu


@contextlib.contextmanager
def v1(fake: FakeAzureOpenAI) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{fake.url}/openai/v1", api_key=KEY, max_retries=0) as client:
        yield client


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the client deprecates audio.translations
def test_every_operation_on_the_v1_surface_takes_its_deployment_from_the_body(fakes):
    weu, _ = fakes
    with v1(weu) as client:
        chat = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert "weu" in chat.choices[0].message.content
        assert (weu.requests[-1].path, weu.requests[-1].deployment) == ("/openai/v1/chat/completions", "gpt-4o-mini")
        completion = client.completions.create(model="gpt-4o-mini", prompt="Say hi")
        assert "weu" in completion.choices[0].text
        translation = client.audio.translations.create(model="whisper", file=("a.wav", b"RIFF0000"))
        assert translation.text == "fake translation of 8 bytes" and weu.requests[-1].deployment == "whisper"
        edit = client.images.edit(model="dall-e-3", image=("a.png", b"\x89PNG...."), prompt="add a hat")
        assert edit.data[0].b64_json and edit.usage.total_tokens > 0
        with pytest.raises(openai.NotFoundError) as unknown:
            client.chat.completions.create(model="no-such", messages=[{"role": "user", "content": "hi"}])
        assert unknown.value.body["code"] == "DeploymentNotFound"


def test_the_v1_surface_refuses_a_dated_api_version_and_a_missing_model(fakes):
    weu, _ = fakes
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    url = f"{weu.url}/openai/v1/chat/completions"
    dated = httpx.post(url, params={"api-version": "2024-10-21"}, json={**chat, "model": "gpt-4o-mini"},
                       headers={"api-key": KEY})  # fmt: skip
    assert dated.status_code == 400 and dated.json()["error"]["param"] == "api-version"
    preview = httpx.post(url, params={"api-version": "preview"}, json={**chat, "model": "gpt-4o-mini"},
                         headers={"api-key": KEY})  # fmt: skip
    assert preview.status_code == 200
    missing = httpx.post(url, json=chat, headers={"api-key": KEY})
    assert missing.status_code == 400 and "'model'" in missing.json()["error"]["message"]


def test_responses_are_kept_per_fake_and_chain_by_turn(fakes):
    weu, neu = fakes
    with v1(weu) as on_weu, v1(neu) as on_neu:
        first = on_weu.responses.create(model="gpt-4o-mini", input="Hello there")
        assert first.output_text == "Hello from weu. This is a fake reply (turn 1)"
        assert first.usage.input_tokens == 2 and first.usage.output_tokens == weu.chunks
        second = on_weu.responses.create(model="gpt-4o-mini", input="Again", previous_response_id=first.id)
        assert second.output_text.endswith("(turn 2)")
        assert second.usage.input_tokens_details.cached_tokens == first.usage.total_tokens
        with pytest.raises(openai.NotFoundError) as elsewhere:  # the other resource never saw it
            on_neu.responses.create(model="gpt-4o-mini", input="Again", previous_response_id=first.id)
        assert elsewhere.value.body["code"] == "previous_response_not_found"
        with pytest.raises(openai.NotFoundError):
            on_neu.responses.retrieve(first.id)
        assert on_weu.responses.retrieve(first.id).output_text == first.output_text
        assert [i.content[0].text for i in on_weu.responses.input_items.list(second.id)] == ["Again"]
        on_weu.responses.delete(first.id)
        with pytest.raises(openai.NotFoundError):
            on_weu.responses.retrieve(first.id)


def test_a_streamed_response_ends_with_its_usage_and_no_done_marker(fakes):
    weu, _ = fakes
    with v1(weu) as client:
        events = list(client.responses.create(model="gpt-4o-mini", input="Hi", stream=True))
    assert [e.type for e in events[:2]] == ["response.created", "response.in_progress"]
    assert events[-1].type == "response.completed" and events[-1].response.usage.output_tokens == weu.chunks
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == events[-1].response.output_text
    with openai.OpenAI(base_url=f"{weu.url}/openai/v1", api_key=KEY, max_retries=0) as client:
        short = list(client.responses.create(model="gpt-4o-mini", input="Hi", stream=True, max_output_tokens=2))
    assert short[-1].type == "response.incomplete" and short[-1].response.usage.output_tokens == 2


def test_a_background_response_moves_one_step_per_retrieval_and_can_be_resumed_as_a_stream(fakes):
    weu, _ = fakes
    with v1(weu) as client:
        queued = client.responses.create(model="gpt-4o-mini", input="Hi", background=True)
        assert (queued.status, queued.usage) == ("queued", None)
        assert client.responses.retrieve(queued.id).status == "in_progress"
        done = client.responses.retrieve(queued.id)
        assert done.status == "completed" and done.usage.total_tokens > 0
        resumed = list(client.responses.retrieve(queued.id, stream=True, starting_after=5))
        assert resumed[0].sequence_number == 6 and resumed[-1].type == "response.completed"
        with pytest.raises(openai.BadRequestError):  # only background responses can be cancelled
            client.responses.cancel(client.responses.create(model="gpt-4o-mini", input="x").id)
        pending = client.responses.create(model="gpt-4o-mini", input="Hi", background=True)
        assert client.responses.cancel(pending.id).status == "cancelled"


def test_responses_on_the_dated_api_live_on_the_resource(fakes):
    weu, _ = fakes
    client = openai.AzureOpenAI(azure_endpoint=weu.url, api_key=KEY, api_version=RESPONSES_VERSION, max_retries=0)
    with client:
        answer = client.responses.create(model="gpt-4o-mini", input="Hi")
        assert weu.requests[-1].path == "/openai/responses" and weu.requests[-1].deployment == "gpt-4o-mini"
        assert client.responses.retrieve(answer.id).id == answer.id
    old = openai.AzureOpenAI(azure_endpoint=weu.url, api_key=KEY, api_version="2024-10-21", max_retries=0)
    with old, pytest.raises(openai.BadRequestError) as too_old:
        old.responses.create(model="gpt-4o-mini", input="Hi")
    assert "2025-03-01-preview" in too_old.value.message


def test_realtime_client_secrets_are_minted_on_the_v1_surface_only(fakes):
    weu, _ = fakes
    with v1(weu) as client:
        secret = client.realtime.client_secrets.create(session={"type": "realtime", "model": "gpt-4o-mini"})
    assert secret.value.startswith("ek_") and secret.session.model == "gpt-4o-mini"
    assert weu.realtime_secrets[-1]["value"] == secret.value
    legacy = httpx.post(
        f"{weu.url}/openai/deployments/gpt-4o-mini/realtime/client_secrets",
        params={"api-version": "2024-10-21"}, json={"session": {"type": "realtime"}}, headers={"api-key": KEY},
    )  # fmt: skip
    assert legacy.status_code == 404
