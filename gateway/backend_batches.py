"""Azure OpenAI Files and Batches on one backend, sent through the one attempt (credential, transport, learning).

Used only by the batch activities: upload the rewritten JSONL, create the batch, poll it, download its output
and error files, cancel it. Any transport failure or unexpected status is a `BackendBatchError`; the
orchestrator decides whether that means "poll again later" or "resubmit elsewhere".
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from .attempt import Attempts
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

    async def upload(self, target: Target, jsonl: bytes, filename: str) -> str:
        body, content_type = _multipart({"purpose": b"batch"}, ("file", filename, "application/jsonl", jsonl))
        data = await self._call(target, "POST", "/openai/files", body, content_type, what="file upload")
        return str(json.loads(data)["id"])

    async def create(self, target: Target, file_id: str, endpoint: str, window: str) -> dict[str, Any]:
        payload = {"input_file_id": file_id, "endpoint": endpoint, "completion_window": window}
        body = json.dumps(payload).encode()
        data = await self._call(target, "POST", "/openai/batches", body, "application/json", what="batch creation")
        return _object(data)

    async def get(self, target: Target, batch_id: str) -> dict[str, Any]:
        return _object(await self._call(target, "GET", f"/openai/batches/{batch_id}", what="batch status"))

    async def cancel(self, target: Target, batch_id: str) -> dict[str, Any]:
        return _object(await self._call(target, "POST", f"/openai/batches/{batch_id}/cancel", what="batch cancel"))

    async def content(self, target: Target, file_id: str) -> bytes:
        return await self._call(target, "GET", f"/openai/files/{file_id}/content", what="file download")

    async def _call(
        self, target: Target, method: str, path: str, body: bytes = b"", content_type: str = "", *, what: str
    ) -> bytes:
        headers = {"content-type": content_type} if content_type else {}
        name = target.backend.name
        path = f"{path}?api-version={self._api_version}"
        attempt = await self._attempts.send(target, method, path, headers, body, total_s=TIMEOUT_S)
        if attempt.response is None:
            raise BackendBatchError(name, f"{what} failed: {attempt.failure}", attempt.status)
        try:
            data = await self._attempts.read(attempt)
        except TransportError as exc:
            raise BackendBatchError(name, f"{what} failed: {exc.kind}") from None
        if attempt.status is None or attempt.status >= 300:
            raise BackendBatchError(name, f"{what} failed", attempt.status)
        return data


def _object(data: bytes) -> dict[str, Any]:
    value = json.loads(data)
    if not isinstance(value, dict):
        raise ValueError("a backend answered a batch call with JSON that is not an object")
    return value


def _multipart(fields: dict[str, bytes], file: tuple[str, str, str, bytes]) -> tuple[bytes, str]:
    """A multipart/form-data body of simple fields and one file, with a boundary that cannot occur in it."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value + b"\r\n"
        for name, value in fields.items()
    ]
    name, filename, file_type, data = file
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
        f"Content-Type: {file_type}\r\n\r\n".encode()
        + data
        + b"\r\n"
    )
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"
