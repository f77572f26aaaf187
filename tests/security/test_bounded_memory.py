"""Bounded memory, measured on the devhost process: bodies over the limit are refused without being read, and a
100 MB batch upload (and its download) moves through the gateway without being held.

Peak memory is the devhost's VmHWM from /proc; the increase is taken against its VmRSS just before, which
can only overstate it (the process's earlier peak counts against the upload when the upload stays below it).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.security.conftest import devhost_env
from tests.security.corpus import GATEWAY_KEY
from tests.support.devhost import DevHost
from tests.support.fake_openai import FakeAzureOpenAI
from tests.support.raw_http import build_request, send_raw

MAX_BODY = 1024 * 1024  # GATEWAY_MAX_BODY_BYTES for this devhost
UPLOAD_LINES, LINE_BYTES = 100_000, 1_000  # 100 MB
BOUNDARY = b"memtest"
MB = 1024 * 1024


@pytest.fixture(scope="module")
def host(azurite) -> Iterator[DevHost]:
    weu, neu = FakeAzureOpenAI(name="weu"), FakeAzureOpenAI(name="neu")
    with weu.threaded(), neu.threaded():
        env = devhost_env(azurite, weu, neu, GATEWAY_MAX_BODY_BYTES=str(MAX_BODY))
        with DevHost(env=env) as devhost:
            yield devhost


def memory_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for process {pid}")


def jsonl_line(number: int) -> bytes:
    line = {
        "custom_id": f"req-{number:06d}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": ""}]},
    }
    raw = json.dumps(line, separators=(",", ":")).encode()
    padding = LINE_BYTES - len(raw) - 1
    line["body"]["messages"][0]["content"] = "x" * padding
    return json.dumps(line, separators=(",", ":")).encode() + b"\n"


def upload_parts(lines: int) -> tuple[bytes, bytes, int]:
    head = (
        b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n'
        b"Content-Type: application/jsonl\r\n\r\n"
    )
    tail = b"\r\n--" + BOUNDARY + b"--\r\n"
    return head, tail, len(head) + lines * LINE_BYTES + len(tail)


async def upload_body(lines: int) -> AsyncIterator[bytes]:
    head, tail, _ = upload_parts(lines)
    yield head
    batch = []
    for number in range(lines):
        batch.append(jsonl_line(number))
        if len(batch) == 1000:
            yield b"".join(batch)
            batch = []
    if batch:
        yield b"".join(batch)
    yield tail


async def upload(host: DevHost, lines: int) -> dict:
    _, _, size = upload_parts(lines)
    headers = [
        (b"api-key", GATEWAY_KEY.encode()),
        (b"Content-Type", b"multipart/form-data; boundary=" + BOUNDARY),
        (b"Content-Length", str(size).encode()),
    ]
    request = build_request(b"POST", b"/v1/files", headers)
    answer = await send_raw(host.host, host.port, request, body_chunks=upload_body(lines), timeout_s=240)
    assert answer.status == 200, answer.body[:300]
    return json.loads(answer.body)


async def test_a_declared_length_over_the_limit_gets_413_before_any_body_is_sent(host: DevHost):
    for target in (b"/v1/chat/completions", b"/openai/deployments/gpt-4o-mini/chat/completions", b"/v1/batches"):
        headers = [(b"api-key", GATEWAY_KEY.encode()), (b"Content-Type", b"application/json"),
                   (b"Content-Length", str(200 * MB).encode())]  # fmt: skip
        # No body follows: an answer can only come from a server that did not wait for it.
        answer = await send_raw(host.host, host.port, build_request(b"POST", target, headers), timeout_s=10)
        assert answer.status == 413, (target, answer.raw[:200])
        assert json.loads(answer.body)["error"]["code"] == "request_too_large"


async def test_a_chunked_body_is_cut_at_the_cap(host: DevHost):
    async def just_over_the_cap() -> AsyncIterator[bytes]:
        chunk = b"x" * 65536
        for _ in range(MAX_BODY // len(chunk) + 1):
            yield f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
        # The body is never ended (no last chunk): an answer can only come from a server that stopped at the cap.
        # Nothing more is sent, so the server reads all there is and the 413 is not lost to a TCP reset.

    headers = [(b"api-key", GATEWAY_KEY.encode()), (b"Content-Type", b"application/json"),
               (b"Transfer-Encoding", b"chunked")]  # fmt: skip
    request = build_request(b"POST", b"/v1/chat/completions", headers)
    answer = await send_raw(host.host, host.port, request, body_chunks=just_over_the_cap(), timeout_s=30)
    assert answer.status == 413 and json.loads(answer.body)["error"]["code"] == "request_too_large"


async def test_a_100_mb_upload_and_its_download_stay_under_50_mb_of_peak_memory(host: DevHost, capsys):
    pid = host.pid
    assert pid is not None
    await upload(host, 10)  # warm up: storage clients and lazy imports are not what is measured
    before = memory_kb(pid, "VmRSS")
    meta = await upload(host, UPLOAD_LINES)
    assert meta["bytes"] == UPLOAD_LINES * LINE_BYTES and meta["id"].startswith("file-")
    after_upload = memory_kb(pid, "VmHWM")
    received = 0
    async with httpx.AsyncClient(base_url=host.url, headers={"api-key": GATEWAY_KEY}, timeout=120) as client:
        async with client.stream("GET", f"/v1/files/{meta['id']}/content") as response:
            assert response.status_code == 200
            async for chunk in response.aiter_bytes():
                received += len(chunk)
    after_download = memory_kb(pid, "VmHWM")
    assert received == UPLOAD_LINES * LINE_BYTES
    with capsys.disabled():
        print(f"\npeak RSS increase of the devhost: upload {(after_upload - before) / 1024:.1f} MiB, "
              f"download {(after_download - before) / 1024:.1f} MiB (100 MB file)")  # fmt: skip
    assert after_upload - before < 50 * 1024, f"upload raised peak RSS by {(after_upload - before) // 1024} MiB"
    assert after_download - before < 50 * 1024, f"download raised peak RSS by {(after_download - before) // 1024} MiB"
