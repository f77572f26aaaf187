"""The stack the security tests attack: the devhost (real app, Durable stand-in) on Azurite, two fake backends.

Every secret in it is a distinctive canary, so a leak is a substring search: the backends' keys, the gateway
key, Azurite's account key and the connection-string markers.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.security.corpus import GATEWAY_KEY
from tests.support.devhost import DevHost
from tests.support.fake_openai import FakeAzureOpenAI

WEU_KEY = "weu-backend-CANARY-1b2c3d4e5f"
NEU_KEY = "neu-backend-CANARY-6a7b8c9d0e"


@dataclass
class Stack:
    weu: FakeAzureOpenAI
    neu: FakeAzureOpenAI
    host: DevHost
    secrets: tuple[str, ...]


def secrets_of(azurite) -> tuple[str, ...]:
    account_key = azurite.connection_string.split("AccountKey=", 1)[1].split(";", 1)[0]
    return (WEU_KEY, NEU_KEY, GATEWAY_KEY, account_key, "AccountKey=", "SharedAccessKey=")


def devhost_env(azurite, weu: FakeAzureOpenAI, neu: FakeAzureOpenAI, **extra: str) -> dict[str, str]:
    suffix = uuid.uuid4().hex[:8]
    common = "mode=direct;deployments=gpt-4o-mini,text-embedding-3-small,whisper,tts,dall-e-3"
    return {
        "AzureWebJobsStorage": azurite.connection_string,
        "GATEWAY_STATE_TABLE": "sec" + suffix,
        "GATEWAY_RESULTS_CONTAINER": "sec-" + suffix,
        "GATEWAY_COMPLETIONS_QUEUE": "sec-" + suffix,
        "GATEWAY_API_KEYS": f"corpus:{GATEWAY_KEY}",
        "GATEWAY_MAX_WAIT_S": "1",
        # No backend takes batches: no legitimate request may reach /openai/files or /openai/batches.
        # One backend of each api= style, taking turns, so the corpus goes through both translations.
        "GATEWAY_BACKEND_1": f"name=weu;host={weu.url};api-key={WEU_KEY};priority=1;{common}",
        "GATEWAY_BACKEND_2": f"name=neu;host={neu.url};api=v1;api-key={NEU_KEY};priority=1;{common}",
        "GATEWAY_STRATEGY": "round-robin",
        **extra,
    }


@pytest.fixture(scope="module")
def stack(azurite) -> Iterator[Stack]:
    weu, neu = FakeAzureOpenAI(name="weu", api_key=WEU_KEY), FakeAzureOpenAI(name="neu", api_key=NEU_KEY)
    with weu.threaded(), neu.threaded(), DevHost(env=devhost_env(azurite, weu, neu)) as host:
        yield Stack(weu, neu, host, secrets_of(azurite))
