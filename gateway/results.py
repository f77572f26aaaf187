"""Blob Storage for the async path: request bodies, results, and the record of sent completion messages.

Orchestration inputs and outputs stay small (a reference, not the body): Durable history is replayed on
every step, and big payloads in it cost time and storage on each replay. Layout in one container:
`requests/{id}` the body the client sent, `results/{id}` the backend's answer (with its content type and
HTTP status in metadata), `completions/{id}.json` the completion message once it has been published; the
Batch API adds `files/{id}` (uploaded and produced files) and `batches/{id}/...` (each round's answers).
Files can be large, so they are written in blocks as they arrive (`BlockWriter`) and read as a stream.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

from .storage import StorageAccount

__all__ = ["BLOCK_BYTES", "BlobStream", "BlockWriter", "ResultStore", "StoredBlob"]

BLOCK_BYTES = 4 * 1024 * 1024  # one staged block; what a writer holds at most


@dataclass(frozen=True, slots=True)
class StoredBlob:
    body: bytes
    content_type: str
    metadata: dict[str, str]


@dataclass(frozen=True, slots=True)
class BlobStream:
    """A blob being downloaded: its properties now, its bytes chunk by chunk."""

    size: int
    content_type: str
    metadata: dict[str, str]
    chunks: AsyncIterator[bytes]


class BlockWriter:
    """Stages a blob's blocks as data arrives; nothing exists under the name until `commit`.

    Holds at most one block in memory. Staged blocks that are never committed (a refused upload) are
    discarded by the service.
    """

    def __init__(self, blob: Any, block_bytes: int = BLOCK_BYTES) -> None:
        self._blob = blob
        self._block_bytes = block_bytes
        self._buffer = bytearray()
        self._blocks: list[str] = []
        self.size = 0

    async def write(self, data: bytes) -> None:
        self._buffer += data
        self.size += len(data)
        while len(self._buffer) >= self._block_bytes:
            await self._stage(bytes(self._buffer[: self._block_bytes]))
            del self._buffer[: self._block_bytes]

    async def commit(self, content_type: str, metadata: dict[str, str]) -> int:
        """Stages what is left and makes the blob exist (replacing an older one); returns its size."""
        from azure.storage.blob import BlobBlock, ContentSettings

        if self._buffer:
            await self._stage(bytes(self._buffer))
            self._buffer.clear()
        await self._blob.commit_block_list(
            [BlobBlock(block_id) for block_id in self._blocks],
            content_settings=ContentSettings(content_type=content_type),
            metadata=metadata,
        )
        return self.size

    async def _stage(self, data: bytes) -> None:
        block_id = base64.b64encode(f"{len(self._blocks):010d}".encode()).decode()
        await self._blob.stage_block(block_id, data, length=len(data))
        self._blocks.append(block_id)


class ResultStore:
    def __init__(self, account: StorageAccount, container: str, credential_factory: Callable[[str | None], Any]):
        self._account = account
        self._container_name = container
        self._credential_factory = credential_factory
        self._service: Any = None
        self._container: Any = None
        self._ready = False

    async def put_request(self, request_id: str, body: bytes, content_type: str) -> None:
        await self.put_blob(f"requests/{request_id}", body, content_type, {})

    async def get_request(self, request_id: str) -> StoredBlob | None:
        return await self.get_blob(f"requests/{request_id}")

    async def put_result(self, request_id: str, body: bytes, content_type: str, http_status: int) -> None:
        await self.put_blob(f"results/{request_id}", body, content_type, {"http_status": str(http_status)})

    async def get_result(self, request_id: str) -> StoredBlob | None:
        return await self.get_blob(f"results/{request_id}")

    async def put_completion(self, request_id: str, message: bytes) -> None:
        """Records a published completion; the first record stays (a racing second publisher cannot replace it)."""
        container = await self._ready_container()
        try:
            await container.upload_blob(f"completions/{request_id}.json", message, overwrite=False)
        except ResourceExistsError:
            pass

    async def get_completion(self, request_id: str) -> dict[str, Any] | None:
        """The completion message recorded for this request, None if none was published yet."""
        blob = await self.get_blob(f"completions/{request_id}.json")
        return None if blob is None else json.loads(blob.body)

    async def delete_request(self, request_id: str) -> None:
        """The body is not needed once the request has ended."""
        await self.delete_blob(f"requests/{request_id}")

    async def delete(self, request_id: str) -> None:
        """Everything stored for a request (housekeeping, or a client deleting its finished result)."""
        for name in (f"requests/{request_id}", f"results/{request_id}", f"completions/{request_id}.json"):
            await self.delete_blob(name)

    async def delete_blob(self, name: str) -> None:
        container = await self._ready_container()
        try:
            await container.delete_blob(name)
        except ResourceNotFoundError:
            pass

    async def close(self) -> None:
        if self._service is not None:
            await self._service.close()
            self._service = self._container = None
            self._ready = False

    async def put_blob(self, name: str, body: bytes, content_type: str, metadata: dict[str, str]) -> None:
        from azure.storage.blob import ContentSettings

        container = await self._ready_container()
        await container.upload_blob(
            name, body, overwrite=True, metadata=metadata, content_settings=ContentSettings(content_type=content_type)
        )

    async def get_blob(self, name: str) -> StoredBlob | None:
        container = await self._ready_container()
        try:
            downloader = await container.download_blob(name)
            body = await downloader.readall()
        except ResourceNotFoundError:
            return None
        props = downloader.properties
        return StoredBlob(body, props.content_settings.content_type or "application/octet-stream", dict(props.metadata))

    async def writer(self, name: str) -> BlockWriter:
        """A block writer for a (large) blob, committed by the caller once every byte was accepted."""
        container = await self._ready_container()
        return BlockWriter(container.get_blob_client(name))

    async def open_blob(self, name: str) -> BlobStream | None:
        """A blob to read chunk by chunk (BLOCK_BYTES at most at a time); None when there is none."""
        container = await self._ready_container()
        try:
            downloader = await container.download_blob(name)
        except ResourceNotFoundError:
            return None
        props = downloader.properties
        return BlobStream(
            props.size,
            props.content_settings.content_type or "application/octet-stream",
            dict(props.metadata),
            downloader.chunks(),
        )

    async def blob_metadata(self, name: str) -> dict[str, str] | None:
        """A blob's metadata without its body; None when there is none."""
        container = await self._ready_container()
        try:
            props = await container.get_blob_client(name).get_blob_properties()
        except ResourceNotFoundError:
            return None
        return dict(props.metadata)

    async def names(self, prefix: str) -> list[str]:
        """The names of the blobs under a prefix, in name order."""
        container = await self._ready_container()
        return [name async for name in container.list_blob_names(name_starts_with=prefix)]

    async def _ready_container(self) -> Any:
        if self._container is None:
            self._service = self._account.blob_service(self._credential_factory)
            self._container = self._service.get_container_client(self._container_name)
        if not self._ready:
            try:
                await self._container.create_container()
            except ResourceExistsError:
                pass
            self._ready = True
        return self._container
