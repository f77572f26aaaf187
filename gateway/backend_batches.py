"""Azure OpenAI Files and Batches on one backend, through the shared upstream session and credentials.

Used only by the batch activities: upload the rewritten JSONL, create the batch, poll it, download its output
and error files, cancel it. Any transport failure or unexpected status is a `BackendBatchError`; the
orchestrator decides whether that means "poll again later" or "resubmit elsewhere".
"""

from __future__ import annotations

import aiohttp

from .config import Backend
from .credentials import BackendAuth
from .upstream import Upstream

__all__ = ["BackendBatchError", "BackendBatches"]

TIMEOUT = aiohttp.ClientTimeout(total=300, sock_connect=10)


class BackendBatchError(Exception):
    def __init__(self, backend: str, what: str, status: int | None = None) -> None:
        super().__init__(f"{backend}: {what}" + (f" (HTTP {status})" if status else ""))
        self.status = status


class BackendBatches:
    def __init__(self, upstream: Upstream, auth: BackendAuth, api_version: str) -> None:
        self._upstream = upstream
        self._auth = auth
        self._api_version = api_version

    async def upload(self, backend: Backend, jsonl: bytes, filename: str) -> str:
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", jsonl, filename=filename, content_type="application/jsonl")
        body = await self._call(backend, "POST", "/openai/files", data=form, what="file upload")
        return body["id"]

    async def create(self, backend: Backend, file_id: str, endpoint: str, window: str) -> dict:
        payload = {"input_file_id": file_id, "endpoint": endpoint, "completion_window": window}
        return await self._call(backend, "POST", "/openai/batches", json=payload, what="batch creation")

    async def get(self, backend: Backend, batch_id: str) -> dict:
        return await self._call(backend, "GET", f"/openai/batches/{batch_id}", what="batch status")

    async def cancel(self, backend: Backend, batch_id: str) -> dict:
        return await self._call(backend, "POST", f"/openai/batches/{batch_id}/cancel", what="batch cancel")

    async def content(self, backend: Backend, file_id: str) -> bytes:
        return await self._call(backend, "GET", f"/openai/files/{file_id}/content", raw=True, what="file download")

    async def _call(self, backend: Backend, method: str, path: str, *, what: str, raw: bool = False, **kwargs):
        headers = await self._auth.headers(backend)
        url = f"{backend.host}{path}?api-version={self._api_version}"
        try:
            async with self._upstream.session().request(
                method, url, headers=headers, timeout=TIMEOUT, **kwargs
            ) as resp:
                data = await resp.read()
                if resp.status >= 300:
                    raise BackendBatchError(backend.name, f"{what} failed", resp.status)
                return data if raw else await resp.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise BackendBatchError(backend.name, f"{what} failed: {type(exc).__name__}") from None
