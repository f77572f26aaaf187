"""Fixtures for the fake server's own tests: one fake on loopback and a client session to talk to it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.support.fake_openai import FakeAzureOpenAI


@pytest.fixture
async def fake() -> AsyncIterator[FakeAzureOpenAI]:
    async with FakeAzureOpenAI(name="weu") as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client
