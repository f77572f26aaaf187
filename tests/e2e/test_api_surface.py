"""The 2026 API surface with the official `openai` client, through two development hosts sharing one Azurite.

Two fake backends serve the same deployments, one with `api=deployments` and one with `api=v1`, under a
round-robin strategy: two calls of any operation from one host reach both backend styles, which the tests
check on what each fake received. The fakes keep their Responses per instance, so a follow-up sent to the
wrong backend is that backend's 404: a chain of five turns alternating between the hosts shows affinity works
across instances, and background responses are retrieved, resumed and deleted from either host; both run once
per backend style, with the path each call reached checked. Usage records come back through the hosts' shared
usage file.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.support.devhost import DevHost
from tests.support.fake_openai import FakeAzureOpenAI, RecordedRequest

KEY = "api-surface-key"
COMMON = "mode=direct;api-key=fake-key;deployments=gpt-4o-mini,whisper,dall-e-3"
STYLE_PATHS = {  # operation -> (what the api=deployments backend gets, what the api=v1 backend gets)
    "completions": ("/openai/deployments/gpt-4o-mini/completions", "/openai/v1/completions"),
    "audio/translations": ("/openai/deployments/whisper/audio/translations", "/openai/v1/audio/translations"),
    "images/edits": ("/openai/deployments/dall-e-3/images/edits", "/openai/v1/images/edits"),
    "images/generations": ("/openai/deployments/dall-e-3/images/generations", "/openai/v1/images/generations"),
    "responses": ("/openai/responses", "/openai/v1/responses"),
    "realtime/client_secrets": ("/openai/v1/realtime/client_secrets", "/openai/v1/realtime/client_secrets"),
}


class Stack:
    def __init__(self, legacy: FakeAzureOpenAI, v1: FakeAzureOpenAI, hosts: list[DevHost], usage_file: Path) -> None:
        self.legacy, self.v1, self.hosts, self.usage_file = legacy, v1, hosts, usage_file
        self._clients: list[openai.OpenAI] = []

    def client(self, host: int = 0, base: str = "/openai/v1") -> openai.OpenAI:
        client = openai.OpenAI(base_url=self.hosts[host].url + base, api_key=KEY, max_retries=0)
        self._clients.append(client)
        return client

    def usage(self) -> list[dict]:
        lines = self.usage_file.read_text().splitlines() if self.usage_file.exists() else []
        return [json.loads(line) for line in lines]

    def fake(self, name: str) -> FakeAzureOpenAI:
        return self.legacy if name == self.legacy.name else self.v1

    def keeper(self, response_id: str) -> FakeAzureOpenAI:
        """The fake that keeps this response (it made it)."""
        return self.legacy if response_id in self.legacy.responses.ids else self.v1

    def sent_since(self, seen: tuple[int, int]) -> tuple[list[RecordedRequest], list[RecordedRequest]]:
        """What each fake (legacy, v1) received since `seen` = (its request counts then)."""
        return self.legacy.requests[seen[0] :], self.v1.requests[seen[1] :]

    def seen(self) -> tuple[int, int]:
        return len(self.legacy.requests), len(self.v1.requests)

    def check_responses_calls(self, home: FakeAzureOpenAI, seen: tuple[int, int], calls: list[tuple[str, str]]) -> None:
        """Since `seen`, `home` got exactly these (method, path after `responses`) calls, in the form of its
        `api=` style, and the other fake got none."""
        legacy, v1 = self.sent_since(seen)
        sent, elsewhere = (legacy, v1) if home is self.legacy else (v1, legacy)
        base = STYLE_PATHS["responses"][home is self.v1]
        assert [(r.method, r.path) for r in sent] == [(method, base + rest) for method, rest in calls]
        assert all(("api-version" in r.query) == (home is self.legacy) for r in sent)
        assert elsewhere == []

    def close(self) -> None:
        for client in self._clients:
            client.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, azurite) -> Iterator[Stack]:
    usage_file = tmp_path_factory.mktemp("usage") / "usage.jsonl"
    legacy, v1 = FakeAzureOpenAI(name="legacy"), FakeAzureOpenAI(name="v1")
    with legacy.threaded(), v1.threaded():
        env = {
            "AzureWebJobsStorage": azurite.connection_string,
            "GATEWAY_STATE_TABLE": "surface" + uuid.uuid4().hex[:10],
            "GATEWAY_RESULTS_CONTAINER": "surface-" + uuid.uuid4().hex[:10],
            "GATEWAY_BACKEND_1": f"name=legacy;host={legacy.url};api=deployments;{COMMON}",
            "GATEWAY_BACKEND_2": f"name=v1;host={v1.url};api=v1;{COMMON}",
            "GATEWAY_STRATEGY": "round-robin",
            "GATEWAY_API_KEYS": KEY,
            "GATEWAY_USAGE_FILE": str(usage_file),
        }
        with (
            DevHost(env=env) as a,
            DevHost(env=env) as b,
            contextlib.closing(Stack(legacy, v1, [a, b], usage_file)) as s,
        ):
            yield s


def both_styles(stack: Stack, operation: str, call) -> list:
    """Makes the call twice from one host (round-robin: once per backend) and checks what each backend got."""
    before = (len(stack.legacy.requests), len(stack.v1.requests))
    answers = [call(), call()]
    sent: list[RecordedRequest] = stack.legacy.requests[before[0] :] + stack.v1.requests[before[1] :]
    legacy_path, v1_path = STYLE_PATHS[operation]
    assert [r.path for r in stack.legacy.requests[before[0] :]] == [legacy_path]
    assert [r.path for r in stack.v1.requests[before[1] :]] == [v1_path]
    assert all("api-version" not in r.query for r in sent if r.path.startswith("/openai/v1/"))
    assert all(KEY not in json.dumps(r.headers) for r in sent)
    return answers


def test_completions(stack: Stack):
    answers = both_styles(
        stack, "completions", lambda: stack.client().completions.create(model="gpt-4o-mini", prompt="Hi")
    )
    assert sorted(a.choices[0].text.split(".")[0] for a in answers) == ["Hello from legacy", "Hello from v1"]


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the client deprecates audio.translations
def test_audio_translations(stack: Stack):
    def call():
        return stack.client(base="/v1").audio.translations.create(model="whisper", file=("a.wav", b"RIFF1234"))

    answers = both_styles(stack, "audio/translations", call)
    assert [a.text for a in answers] == ["fake translation of 8 bytes"] * 2
    assert stack.v1.requests[-1].deployment == "whisper"  # the multipart model field, for the v1 backend


def test_images_generations_and_edits(stack: Stack):
    client = stack.client()
    generated = both_styles(
        stack, "images/generations", lambda: client.images.generate(model="dall-e-3", prompt="a cat")
    )
    assert [g.data[0].revised_prompt for g in generated] == ["a cat"] * 2

    def edit():
        return client.images.edit(model="dall-e-3", image=("cat.png", b"\x89PNG0000"), prompt="add a hat")

    before = len(stack.usage())
    edits = both_styles(stack, "images/edits", edit)
    assert all(e.data[0].b64_json for e in edits)
    records = stack.usage()[before:]
    assert sorted(r["total_tokens"] for r in records) == sorted(e.usage.total_tokens for e in edits)


def test_models_retrieve(stack: Stack):
    for base in ("/v1", "/openai/v1"):
        model = stack.client(base=base).models.retrieve("whisper")
        assert (model.id, model.object) == ("whisper", "model")
    with pytest.raises(openai.NotFoundError) as missing:
        stack.client().models.retrieve("gpt-5")
    assert missing.value.body["code"] == "model_not_found"


def test_realtime_client_secrets(stack: Stack):
    def mint():
        raw = stack.client().realtime.client_secrets.with_raw_response.create(
            session={"type": "realtime", "model": "gpt-4o-mini"}
        )
        return raw.headers, raw.parse()

    before = len(stack.usage())
    minted = both_styles(stack, "realtime/client_secrets", mint)
    endpoints = set()
    for headers, secret in minted:
        fake = stack.fake(headers["x-gateway-backend"])
        assert secret.value in [s["value"] for s in fake.realtime_secrets] and secret.session.model == "gpt-4o-mini"
        assert headers["x-gateway-realtime-endpoint"] == f"{fake.url}/openai/v1/realtime"
        assert secret.gateway_realtime_endpoint == headers["x-gateway-realtime-endpoint"]  # an extra the SDK keeps
        endpoints.add(headers["x-gateway-realtime-endpoint"])
    assert len(endpoints) == 2
    records = stack.usage()[before:]
    assert [r["operation"] for r in records] == ["realtime/client_secrets"] * 2  # one record per minted session


def test_responses_plain_and_streamed_record_their_tokens(stack: Stack):
    client = stack.client()
    before = len(stack.usage())
    plain = both_styles(stack, "responses", lambda: client.responses.create(model="gpt-4o-mini", input="Hello there"))
    streams = both_styles(
        stack, "responses", lambda: list(client.responses.create(model="gpt-4o-mini", input="Hi", stream=True))
    )
    finals = [events[-1].response for events in streams]
    assert all(events[-1].type == "response.completed" for events in streams)
    for events in streams:
        assert (
            "".join(e.delta for e in events if e.type == "response.output_text.delta")
            == events[-1].response.output_text
        )
    records = stack.usage()[before:]
    assert [r["streaming"] for r in records] == [False, False, True, True]
    for record, response in zip(records, plain + finals, strict=True):
        assert record["operation"] == "responses" and record["usage_estimated"] is False
        assert (record["prompt_tokens"], record["completion_tokens"], record["total_tokens"]) == (
            response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens,
        )  # fmt: skip
        assert record["cached_tokens"] == 0 and record["reasoning_tokens"] == 0
    assert all("stream_options" not in (r.json or {}) for r in stack.legacy.requests + stack.v1.requests)


def test_a_chain_of_five_across_two_hosts_stays_where_it_began(stack: Stack):
    clients = [stack.client(0), stack.client(1, "/v1")]
    homes = []
    for _ in range(2):  # each chain starts on host 0: round-robin puts the second on the other backend style
        before, seen = len(stack.usage()), stack.seen()
        raw = clients[0].responses.with_raw_response.create(model="gpt-4o-mini", input="Turn 1")
        home, previous = raw.headers["x-gateway-backend"], raw.parse()
        chain = [previous.id]
        for turn in range(2, 6):  # alternating hosts; each one's round-robin would otherwise move every other turn
            raw = clients[(turn - 1) % 2].responses.with_raw_response.create(
                model="gpt-4o-mini", input=f"Turn {turn}", previous_response_id=previous.id
            )
            response = raw.parse()
            assert raw.headers["x-gateway-backend"] == home
            assert response.output_text == f"Hello from {home}. This is a fake reply (turn {turn})"
            assert response.usage.input_tokens_details.cached_tokens == previous.usage.total_tokens
            previous = response
            chain.append(response.id)
        records = stack.usage()[before:]
        assert [r["backend"] for r in records] == [home] * 5
        assert records[-1]["cached_tokens"] == previous.usage.input_tokens_details.cached_tokens > 0
        fake = stack.fake(home)
        stack.check_responses_calls(fake, seen, [("POST", "")] * 5)
        sent = fake.requests[len(fake.requests) - 5 :]
        assert [r.json.get("previous_response_id") for r in sent] == [None, *chain[:-1]]
        assert {r.json["model"] for r in sent} == {"gpt-4o-mini"}  # the backend's deployment, in either style
        homes.append(home)
    assert set(homes) == {stack.legacy.name, stack.v1.name}


@pytest.mark.parametrize("streamed", [False, True], ids=["queued", "streamed"])
def test_background_responses_on_both_styles_retrieved_and_deleted_from_both_hosts(stack: Stack, streamed: bool):
    clients = [stack.client(0), stack.client(1, "/v1")]
    homes = set()
    for _ in range(2):  # two creates from host 0: round-robin puts one on each backend style
        before, seen = len(stack.usage()), stack.seen()
        if streamed:  # read to the end: the create stream reports the tokens
            events = list(clients[0].responses.create(model="gpt-4o-mini", input="Hi", background=True, stream=True))
            assert events[-1].type == "response.completed" and events[-1].response.background is True
            response_id = events[0].response.id
        else:
            queued = clients[0].responses.create(model="gpt-4o-mini", input="Hi", background=True)
            assert queued.status == "queued"
            response_id = queued.id
        home = stack.keeper(response_id)
        seen_statuses = []
        for host in (1, 0, 1):  # one step per retrieval on the fake (queued -> in_progress -> completed)
            got = clients[host].responses.with_raw_response.retrieve(response_id)
            seen_statuses.append((got.headers["x-gateway-backend"], got.parse().status))
        expected = ["in_progress", "completed", "completed"] if not streamed else ["completed"] * 3
        assert seen_statuses == [(home.name, status) for status in expected]
        resumed = list(clients[0].responses.retrieve(response_id, stream=True))
        assert resumed[-1].type == "response.completed"
        assert clients[1].responses.delete(response_id) is None and response_id not in home.responses.ids
        with pytest.raises(openai.NotFoundError):
            clients[0].responses.retrieve(response_id)
        rest = f"/{response_id}"
        calls = [("POST", ""), *[("GET", rest)] * 4, ("DELETE", rest), ("GET", rest)]
        stack.check_responses_calls(home, seen, calls)
        assert home.requests[-3].query.get("stream") == "true"  # the resumption
        records = stack.usage()[before:]
        assert [r["operation"] for r in records] == ["responses"] + ["responses/{id}"] * 6
        assert {r["backend"] for r in records} == {home.name}
        counted = [(i, r["total_tokens"]) for i, r in enumerate(records) if r["total_tokens"] is not None]
        # Once, across both hosts: by the create stream read to its end, else by the first completed retrieval.
        assert counted == [(0 if streamed else 2, resumed[-1].response.usage.total_tokens)]
        homes.add(home.name)
    assert homes == {stack.legacy.name, stack.v1.name}
