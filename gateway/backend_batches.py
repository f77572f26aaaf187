"""Azure OpenAI Files and Batches on one backend, sent through the one attempt (credential, transport, learning).

Used only by the batch activities: upload the rewritten JSONL, create the batch, poll it, download its output
and error files, cancel it. Any transport failure or unexpected status is a `BackendBatchError`; the
orchestrator decides whether that means "poll again later" or "resubmit elsewhere".
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any
from urllib.parse import quote

from .attempt import Attempt, Attempts
from .pool import Target
from .upstream import TransportError

__all__ = ["BackendBatchError", "BackendBatches"]

TIMEOUT_S = 300.0


class BackendBatchError(Exception):
    def __init__(self, backend: str, what: str, status: int | None = None) -> None:
        super().__init__(f"{backend}: {what}" + (f" (HTTP {status})" if status else ""))
        self.status = status


class BackendBatches:
    def __init__(self, attempts: Attempts, api_version: str) -> None:
        self._attempts = attempts
        self._api_version = api_version

    async def upload_stream(self, target: Target, jsonl: AsyncIterable[bytes], size: int, filename: str) -> str:
        """Uploads JSONL of exactly `size` bytes as it is produced, with a Content-Length (never chunked)."""
        boundary = uuid.uuid4().hex
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: application/jsonl\r\n\r\n"
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()

        async def body() -> AsyncIterator[bytes]:
            yield head
            async for chunk in jsonl:
                yield chunk
            yield tail

        headers = {
            "content-type": f"multipart/form-data; boundary={boundary}",
            "content-length": str(len(head) + size + len(tail)),
        }
        data = await self._call(target, "POST", "/openai/files", body(), headers=headers, what="file upload")
        return str(json.loads(data)["id"])

    async def create(self, target: Target, file_id: str, endpoint: str, window: str) -> dict[str, Any]:
        payload = {"input_file_id": file_id, "endpoint": endpoint, "completion_window": window}
        body = json.dumps(payload).encode()
        data = await self._call(target, "POST", "/openai/batches", body, "application/json", what="batch creation")
        return _object(data)

    async def get(self, target: Target, batch_id: str) -> dict[str, Any]:
        return _object(await self._call(target, "GET", f"/openai/batches/{_segment(batch_id)}", what="batch status"))

    async def cancel(self, target: Target, batch_id: str) -> dict[str, Any]:
        path = f"/openai/batches/{_segment(batch_id)}/cancel"
        return _object(await self._call(target, "POST", path, what="batch cancel"))

    async def content(self, target: Target, file_id: str) -> AsyncIterator[bytes]:
        """A backend file's bytes as they arrive; BackendBatchError if the download fails or breaks off."""
        what = "file download"
        attempt = await self._send(target, "GET", f"/openai/files/{_segment(file_id)}/content", b"", {}, what)
        response = attempt.response
        assert response is not None
        if attempt.status is None or attempt.status >= 300:
            response.release()
            raise BackendBatchError(target.backend.name, f"{what} failed", attempt.status)
        complete = False
        try:
            async for chunk in response.chunks():
                yield chunk
            complete = True
        except TransportError as exc:
            self._attempts.broke(attempt, exc)
            raise BackendBatchError(target.backend.name, f"{what} failed: {exc.kind}") from None
        finally:
            if complete:
                response.release()
            else:
                response.close()

    async def _call(
        self,
        target: Target,
        method: str,
        path: str,
        body: bytes | AsyncIterable[bytes] = b"",
        content_type: str = "",
        *,
        headers: dict[str, str] | None = None,
        what: str,
    ) -> bytes:
        headers = headers or ({"content-type": content_type} if content_type else {})
        attempt = await self._send(target, method, path, body, headers, what)
        try:
            data = await self._attempts.read(attempt)
        except TransportError as exc:
            raise BackendBatchError(target.backend.name, f"{what} failed: {exc.kind}") from None
        if attempt.status is None or attempt.status >= 300:
            raise BackendBatchError(target.backend.name, f"{what} failed", attempt.status)
        return data

    async def _send(
        self,
        target: Target,
        method: str,
        path: str,
        body: bytes | AsyncIterable[bytes],
        headers: dict[str, str],
        what: str,
    ) -> Attempt:
        path = f"{path}?api-version={quote(self._api_version, safe='')}"
        attempt = await self._attempts.send(target, method, path, headers, body, total_s=TIMEOUT_S)
        if attempt.response is None:
            raise BackendBatchError(target.backend.name, f"{what} failed: {attempt.failure}", attempt.status)
        return attempt


def _segment(backend_id: str) -> str:
    """A backend's id as one path segment: it comes from the backend, so it is quoted, never trusted."""
    return quote(str(backend_id), safe="")


def _object(data: bytes) -> dict[str, Any]:
    value = json.loads(data)
    if not isinstance(value, dict):
        raise ValueError("a backend answered a batch call with JSON that is not an object")
    return value
