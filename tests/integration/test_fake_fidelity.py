"""The fake refuses what Azure OpenAI refuses, the way Azure does, so tests built on it see what clients see.

Each behaviour here is one a client meets on Azure: a 400 with Azure's error body for a wrong type or a
missing required field (never a 500, whatever the body), ``model``-less bodies accepted on the deployments
route, audio translations, and transcripts as ``text/plain`` for the text formats.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import openai
import pytest

from tests.support.fake_openai import FakeAzureOpenAI

API_VERSION = "2024-10-21"
KEY = {"api-key": "fake-key"}
MESSAGES = [{"role": "user", "content": "Say hello"}]
DEPLOYMENTS = {
    "chat/completions": "gpt-4o-mini",
    "completions": "gpt-4o-mini",
    "embeddings": "text-embedding-3-small",
    "audio/speech": "tts",
    "images/generations": "dall-e-3",
    "audio/transcriptions": "whisper",
    "audio/translations": "whisper",
}
# The smallest body Azure accepts for each JSON operation (no `model`: Azure routes by the path).
MINIMAL = {
    "chat/completions": {"messages": MESSAGES},
    "completions": {"prompt": "Once upon"},
    "embeddings": {"input": "hello"},
    "audio/speech": {"input": "hello", "voice": "alloy"},
    "images/generations": {"prompt": "a cat"},
}


def url(fake: FakeAzureOpenAI, operation: str) -> str:
    return f"{fake.url}/openai/deployments/{DEPLOYMENTS[operation]}/{operation}?api-version={API_VERSION}"


async def post(
    session: aiohttp.ClientSession, fake: FakeAzureOpenAI, operation: str, **kwargs: Any
) -> tuple[int, str, str]:
    """(status, content type, body text) of one POST to ``operation``."""
    headers = {**KEY, **kwargs.pop("headers", {})}
    async with session.post(url(fake, operation), headers=headers, **kwargs) as response:
        return response.status, response.content_type, await response.text()


def azure_error(text: str) -> dict[str, Any]:
    """The error object of an Azure error body; fails unless the body has Azure's shape."""
    body = json.loads(text)
    assert set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error["code"], str) and error["code"], error
    assert isinstance(error["message"], str) and error["message"], error
    assert "param" in error
    return error


def audio_form(*, file: bool = True, **fields: str) -> aiohttp.FormData:
    form = aiohttp.FormData(default_to_multipart=True)
    if file:
        form.add_field("file", b"RIFF" + bytes(96), filename="clip.wav", content_type="audio/wav")
    for name, value in fields.items():
        form.add_field(name, value)
    return form


# --------------------------------------------------------------------------- accepted bodies


@pytest.mark.parametrize("operation", sorted(MINIMAL))
async def test_model_less_minimal_bodies_are_accepted(
    fake: FakeAzureOpenAI, session: aiohttp.ClientSession, operation: str
) -> None:
    status, _, text = await post(session, fake, operation, json=MINIMAL[operation])
    assert status == 200, text


async def test_null_optional_fields_are_accepted_as_azure_does(
    fake: FakeAzureOpenAI, session: aiohttp.ClientSession
) -> None:
    body = {"messages": MESSAGES, "max_tokens": None, "stream": None, "temperature": None, "model": "ignored"}
    status, _, text = await post(session, fake, "chat/completions", json=body)
    assert status == 200, text
    assert json.loads(text)["model"] == "gpt-4o-mini-2024-07-18"  # the path's deployment, not the body's model


# --------------------------------------------------------------------------- refused bodies


@pytest.mark.parametrize(
    ("operation", "body", "param", "code"),
    [
        ("chat/completions", {"messages": MESSAGES, "stream": "no"}, "stream", "invalid_type"),
        ("chat/completions", {"messages": "Say hello"}, "messages", "invalid_type"),
        ("chat/completions", {"messages": []}, "messages", "empty_array"),
        ("chat/completions", {"messages": ["hello"]}, "messages[0]", "invalid_type"),
        ("chat/completions", {"messages": [{"content": "hi"}]}, "messages[0].role", "missing_required_parameter"),
        ("chat/completions", {"messages": [{"role": "boss", "content": "hi"}]}, "messages[0].role", "invalid_value"),
        ("chat/completions", {"messages": MESSAGES, "max_tokens": "10"}, "max_tokens", "invalid_type"),
        ("chat/completions", {"messages": MESSAGES, "max_tokens": 1.5}, "max_tokens", "invalid_type"),
        ("chat/completions", {"messages": MESSAGES, "max_tokens": True}, "max_tokens", "invalid_type"),
        ("chat/completions", {"messages": MESSAGES, "max_tokens": -1}, "max_tokens", "integer_below_min_value"),
        (
            "chat/completions",
            {"messages": MESSAGES, "max_completion_tokens": 0},
            "max_completion_tokens",
            "integer_below_min_value",
        ),
        ("chat/completions", {"messages": MESSAGES, "temperature": 3}, "temperature", "integer_above_max_value"),
        ("chat/completions", {"messages": MESSAGES, "top_p": "all"}, "top_p", "invalid_type"),
        ("chat/completions", {"messages": MESSAGES, "n": 0}, "n", "integer_below_min_value"),
        (
            "chat/completions",
            {"messages": MESSAGES, "tools": [{"type": "function"}]},
            "tools[0].function.name",
            "missing_required_parameter",
        ),
        (
            "chat/completions",
            {"messages": MESSAGES, "stream_options": {"include_usage": True}},
            "stream_options",
            "invalid_value",
        ),
        ("completions", {"prompt": 42}, "prompt", "invalid_type"),
        ("completions", {"prompt": "Once", "max_tokens": "many"}, "max_tokens", "invalid_type"),
        ("embeddings", {"input": []}, "input", "empty_array"),
        ("embeddings", {"input": [{"text": "a"}]}, "input[0]", "invalid_type"),
        ("embeddings", {"input": "a", "encoding_format": "int8"}, "encoding_format", "invalid_value"),
        ("audio/speech", {"input": "hi", "voice": "alloy", "speed": 10}, "speed", "integer_above_max_value"),
        ("audio/speech", {"input": "hi", "voice": 7}, "voice", "invalid_type"),
        ("images/generations", {"prompt": "a cat", "n": "two"}, "n", "invalid_type"),
        ("images/generations", {"prompt": ["a cat"]}, "prompt", "invalid_type"),
    ],
)
async def test_wrong_types_and_values_get_azures_400(
    fake: FakeAzureOpenAI, session: aiohttp.ClientSession, operation: str, body: dict, param: str, code: str
) -> None:
    status, content_type, text = await post(session, fake, operation, json=body)
    assert (status, content_type) == (400, "application/json"), text
    error = azure_error(text)
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")
    if code != "invalid_value":  # Azure's invalid-value message names the value, not the field
        assert param.split("[")[0].split(".")[0] in error["message"]


@pytest.mark.parametrize(
    ("operation", "body", "missing"),
    [
        ("chat/completions", {"model": "gpt-4o-mini"}, "messages"),
        ("completions", {"max_tokens": 5}, "prompt"),
        ("embeddings", {"encoding_format": "float"}, "input"),
        ("audio/speech", {"voice": "alloy"}, "input"),
        ("audio/speech", {"input": "hello"}, "voice"),
        ("images/generations", {"n": 1}, "prompt"),
    ],
)
async def test_missing_required_fields_get_azures_400(
    fake: FakeAzureOpenAI, session: aiohttp.ClientSession, operation: str, body: dict, missing: str
) -> None:
    status, _, text = await post(session, fake, operation, json=body)
    assert status == 400, text
    error = azure_error(text)
    assert (error["param"], error["code"]) == (missing, "missing_required_parameter")
    assert error["message"] == f"Missing required parameter: '{missing}'."


@pytest.mark.parametrize("operation", ["audio/transcriptions", "audio/translations"])
async def test_audio_without_a_file_or_not_multipart_gets_400(
    fake: FakeAzureOpenAI, session: aiohttp.ClientSession, operation: str
) -> None:
    status, _, text = await post(session, fake, operation, data=audio_form(file=False, model="whisper"))
    assert status == 400 and azure_error(text)["param"] == "file"
    status, _, text = await post(session, fake, operation, json={"file": "clip.wav"})
    assert status == 400 and azure_error(text)["code"] == "invalid_content_type"
    status, _, text = await post(session, fake, operation, data=audio_form(response_format="xml"))
    assert status == 400 and azure_error(text)["param"] == "response_format"
    status, _, text = await post(session, fake, operation, data=audio_form(temperature="hot"))
    assert status == 400 and azure_error(text)["param"] == "temperature"


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b"not json", b"[1, 2]", b'"a string"', b"null", b"42", b"\xff\xfe{}", b'{"messages": [}'],
    ids=["empty", "truncated", "text", "array", "string", "null", "number", "bad-utf8", "broken"],
)
@pytest.mark.parametrize("operation", sorted(MINIMAL))
async def test_bodies_that_are_not_a_json_object_get_400_never_500(
    fake: FakeAzureOpenAI, session: aiohttp.ClientSession, operation: str, raw: bytes
) -> None:
    headers = {"content-type": "application/json"}
    status, _, text = await post(session, fake, operation, data=raw, headers=headers)
    assert status == 400, text
    assert "JSON" in azure_error(text)["message"]


async def test_rejected_requests_are_recorded_like_any_other(
    fake: FakeAzureOpenAI, session: aiohttp.ClientSession
) -> None:
    await post(session, fake, "chat/completions", json={"messages": "hi"})
    [record] = fake.requests
    assert record.operation == "chat/completions" and record.json == {"messages": "hi"}


# --------------------------------------------------------------------------- audio


@pytest.mark.parametrize("operation", ["audio/transcriptions", "audio/translations"])
async def test_audio_json_formats_answer_json(
    fake: FakeAzureOpenAI, session: aiohttp.ClientSession, operation: str
) -> None:
    what = "transcription" if operation.endswith("transcriptions") else "translation"
    status, content_type, text = await post(session, fake, operation, data=audio_form(model="whisper"))
    assert (status, content_type) == (200, "application/json")
    assert json.loads(text) == {"text": f"fake {what} of 100 bytes"}

    status, content_type, text = await post(session, fake, operation, data=audio_form(response_format="verbose_json"))
    verbose = json.loads(text)
    assert (status, content_type) == (200, "application/json")
    assert verbose["task"] == ("transcribe" if what == "transcription" else "translate")
    assert verbose["text"] == verbose["segments"][0]["text"] == f"fake {what} of 100 bytes"
    assert verbose["duration"] == verbose["segments"][0]["end"] > 0


@pytest.mark.parametrize("operation", ["audio/transcriptions", "audio/translations"])
async def test_audio_text_formats_answer_text_plain(
    fake: FakeAzureOpenAI, session: aiohttp.ClientSession, operation: str
) -> None:
    answers = {}
    for fmt in ("text", "srt", "vtt"):
        status, content_type, text = await post(session, fake, operation, data=audio_form(response_format=fmt))
        assert (status, content_type) == (200, "text/plain"), fmt
        answers[fmt] = text
    what = "transcription" if operation.endswith("transcriptions") else "translation"
    line = f"fake {what} of 100 bytes"
    assert answers["text"] == line + "\n"
    assert answers["srt"] == f"1\n00:00:00,000 --> 00:00:01,500\n{line}\n\n"
    assert answers["vtt"] == f"WEBVTT\n\n00:00:00.000 --> 00:00:01.500\n{line}\n\n"


# --------------------------------------------------------------------------- through the official client


def test_the_official_client_sees_azures_errors_and_audio_formats() -> None:
    fake = FakeAzureOpenAI(name="weu")
    with fake.threaded():
        client = openai.AzureOpenAI(azure_endpoint=fake.url, api_key="fake-key", api_version=API_VERSION, max_retries=0)
        with client:
            with pytest.raises(openai.BadRequestError) as refused:
                client.chat.completions.create(model="gpt-4o-mini", messages=[], max_tokens=-1)
            srt = client.audio.transcriptions.create(
                model="whisper", file=("clip.wav", b"RIFF" + bytes(20)), response_format="srt"
            )
            text = client.audio.transcriptions.create(
                model="whisper", file=("clip.wav", b"RIFF" + bytes(20)), response_format="text"
            )
    assert refused.value.status_code == 400
    assert refused.value.code == "empty_array" and refused.value.param == "messages"
    assert srt.startswith("1\n00:00:00,000 --> ") and "fake transcription of 24 bytes" in srt
    assert text == "fake transcription of 24 bytes\n"
    assert [r.operation for r in fake.requests] == ["chat/completions", "audio/transcriptions", "audio/transcriptions"]
