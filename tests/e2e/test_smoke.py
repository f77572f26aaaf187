"""scripts/smoke.py (what `make smoke` and the azd postdeploy hook run) against the devhost, as a user runs it.

The devhost serves the app with Azurite and a fake backend, the async path included; the script runs in its own
process with the official `openai` client, exactly as after `azd up`. A wrong key must fail it, and nothing it
prints may carry a key. Embeddings are checked by default, with the embeddings model the gateway lists; a key
whose profile lists none gets a visible SKIP line saying so.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.support.devhost import DevHost
from tests.support.fake_openai import FakeAzureOpenAI

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "smoke.py"
KEY = "smoke-key-0123456789"
CHAT_ONLY_KEY = "chat-only-key-0123456789"  # its profile allows gpt-4o-mini only: no embeddings model listed
CHECKS = ["models", "chat v1", "chat azure", "stream", "embeddings", "async"]


@dataclass
class Stack:
    fake: FakeAzureOpenAI
    host: DevHost


@pytest.fixture(scope="module")
def stack(azurite) -> Iterator[Stack]:
    suffix = uuid.uuid4().hex[:8]
    fake = FakeAzureOpenAI(name="weu")
    with fake.threaded():
        env = {
            "AzureWebJobsStorage": azurite.connection_string,
            "GATEWAY_STATE_TABLE": "smoke" + suffix,
            "GATEWAY_RESULTS_CONTAINER": "smoke-" + suffix,
            "GATEWAY_COMPLETIONS_QUEUE": "smoke-" + suffix,
            "GATEWAY_API_KEYS": f"{KEY},chatonly:{CHAT_ONLY_KEY}",
            "GATEWAY_PROFILE_CHAT": "models=gpt-4o-mini",
            "GATEWAY_CALLER_PROFILES": "chatonly=chat",
            "GATEWAY_BACKEND_1": f"name=weu;host={fake.url};mode=direct;api-key=fake-key;"
            "deployments=gpt-4o-mini,text-embedding-3-small",
        }
        with DevHost(env=env) as host:
            yield Stack(fake, host)


def smoke(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=180,
    )


def check_line(stdout: str, name: str) -> str:
    """The script's line for one check: its word (PASS/FAIL/SKIP), two spaces, the check's name."""
    return next(line for line in stdout.splitlines() if line[6:].startswith(f"{name} "))


def check_lines(stdout: str) -> dict[str, str]:
    """Check name -> its PASS/FAIL/SKIP word, from the script's one line per check; fails on a repeated check."""
    lines = [line.split(None, 1) for line in stdout.splitlines() if line.startswith(("PASS ", "FAIL ", "SKIP "))]
    names = [rest.split("  ")[0].strip() for _, rest in lines]
    assert len(names) == len(set(names)), stdout
    return {name: word for name, (word, _) in zip(names, lines, strict=True)}


def test_the_smoke_test_passes_against_a_healthy_gateway(stack: Stack) -> None:
    stack.fake.clear()
    done = smoke("--url", stack.host.url, "--key", KEY)  # no --embedding-model: found in the models list
    assert done.returncode == 0, done.stdout + done.stderr
    assert check_lines(done.stdout) == dict.fromkeys(CHECKS, "PASS")
    assert all(" ms  " in line for line in done.stdout.splitlines() if line.startswith("PASS"))
    assert "smoke: 6 of 6 checks passed" in done.stdout
    # It really drove the backend: three chats (v1, Azure, async), one stream, one embedding.
    operations = [(r.operation, bool(r.json and r.json.get("stream"))) for r in stack.fake.requests]
    assert operations.count(("chat/completions", False)) == 3
    assert operations.count(("chat/completions", True)) == 1
    assert operations.count(("embeddings", False)) == 1
    assert [r.deployment for r in stack.fake.requests if r.operation == "embeddings"] == ["text-embedding-3-small"]
    assert "text-embedding-3-small: " in check_line(done.stdout, "embeddings")
    assert KEY not in done.stdout + done.stderr and "code=" not in done.stdout


def test_a_wrong_key_fails_the_smoke_test(stack: Stack) -> None:
    stack.fake.clear()
    done = smoke("--url", stack.host.url, env={"GATEWAY_SMOKE_KEY": "not-the-right-key"})
    assert done.returncode == 1, done.stdout + done.stderr
    results = check_lines(done.stdout)
    assert results == {**dict.fromkeys(CHECKS, "FAIL"), "embeddings": "SKIP"}
    assert "skipped: no embeddings model (the models list could not be read" in check_line(done.stdout, "embeddings")
    assert "AuthenticationError" in done.stdout and "not-the-right-key" not in done.stdout
    assert stack.fake.requests == []  # refused at the gateway


def test_without_an_embeddings_model_the_check_says_it_was_skipped(stack: Stack) -> None:
    stack.fake.clear()
    done = smoke("--url", stack.host.url, env={"GATEWAY_SMOKE_KEY": CHAT_ONLY_KEY})
    assert done.returncode == 0, done.stdout + done.stderr
    assert check_lines(done.stdout) == {**dict.fromkeys(CHECKS, "PASS"), "embeddings": "SKIP"}
    assert "skipped: no embeddings model (none in the models list" in check_line(done.stdout, "embeddings")
    assert "smoke: 5 of 5 checks passed" in done.stdout
    assert not any(r.operation == "embeddings" for r in stack.fake.requests)


def postdeploy_hook() -> str:
    manifest = yaml.safe_load((ROOT / "azure.yaml").read_text(encoding="utf-8"))
    return manifest["hooks"]["postdeploy"]["posix"]["run"]


def test_the_postdeploy_hook_runs_the_smoke_test_when_a_key_is_set(stack: Stack) -> None:
    stack.fake.clear()
    env = {
        "GATEWAY_URL": stack.host.url,
        "GATEWAY_SMOKE_KEY": KEY,
        "GATEWAY_SMOKE_EMBEDDING_MODEL": "text-embedding-3-small",  # named explicitly here
    }
    done = subprocess.run(
        ["sh", "-c", postdeploy_hook()],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert check_lines(done.stdout) == dict.fromkeys(CHECKS, "PASS")
    assert [r.deployment for r in stack.fake.requests if r.operation == "embeddings"] == ["text-embedding-3-small"]


def test_the_postdeploy_hook_does_nothing_without_a_key() -> None:
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_SMOKE_KEY"} | {"GATEWAY_URL": "http://127.0.0.1:9"}
    done = subprocess.run(
        ["sh", "-c", postdeploy_hook()], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert check_lines(done.stdout) == {} and "skipping the smoke test" in done.stdout
