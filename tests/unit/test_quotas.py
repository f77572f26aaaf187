"""The TPM reservation: what a request is charged before it is forwarded."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.profiles import Profile
from gateway.quotas import reservation
from gateway.tokens import count_tokens
from gateway.translate import Route

MODEL = "text-embedding-3-small"


def route(body: dict[str, Any], operation: str = "embeddings") -> Route:
    return Route("v1", operation, MODEL, "", "", body)


@pytest.mark.parametrize("value", ["the quick brown fox", ["the quick brown fox", "jumps over", "the lazy dog"]])
def test_an_embedding_reserves_the_tokens_of_its_input(value):
    texts = value if isinstance(value, list) else [value]
    expected = sum(count_tokens(text, MODEL) for text in texts)
    assert expected > 3
    assert reservation(route({"model": MODEL, "input": value}), Profile("p")) == expected


def test_a_chat_reserves_its_prompt_and_its_completion_cap_or_the_profiles_reserve():
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello."}]}
    bare = reservation(route(body, "chat/completions"), Profile("p"))
    assert reservation(route({**body, "max_tokens": 500}, "chat/completions"), Profile("p")) == bare + 500
    assert reservation(route(body, "chat/completions"), Profile("p", reserve=200)) == bare + 200
