"""Fixtures for the integration tests: one fake on loopback, a client session to talk to it, and the Durable SDK's
shared session closed after a test that used the real client."""

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


@pytest.fixture
async def durable_sdk_session() -> AsyncIterator[None]:
    """The Durable SDK keeps one aiohttp session per process (`http_utils`), bound to the event loop that made it;
    each test here has its own loop, so a test that used the real client closes it for the next one."""
    yield
    from azure.durable_functions.models.utils import http_utils

    await http_utils._close_session()
