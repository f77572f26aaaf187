"""Completion messages: one per async request, when its orchestration ends, whatever the end.

Published to Service Bus (a topic or queue named by `GATEWAY_COMPLETIONS_ENTITY`) with `message_id` = the
orchestration instance id, so Service Bus duplicate detection turns a retried publish into one delivery;
`correlation_id` = the client's request id; `subject` = the status. Without Service Bus settings the same
JSON body goes to the Storage queue `GATEWAY_COMPLETIONS_QUEUE` (base64, as Functions queue triggers expect).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from .config import Settings
from .results import ResultStore
from .storage import StorageAccount

__all__ = [
    "CompletionMessage",
    "CompletionPublisher",
    "QueuePublisher",
    "ServiceBusPublisher",
    "build_publisher",
    "publish_once",
]

log = logging.getLogger("gateway.completions")
STATUSES = ("succeeded", "failed", "expired", "cancelled")


@dataclass(slots=True)
class CompletionMessage:
    """The body is documented in the README ("Completion messages"); keep both in step."""

    id: str  # orchestration instance id = result id
    request_id: str
    status: str  # succeeded | failed | expired | cancelled
    model: str | None = None
    deployment: str | None = None
    backend: str | None = None
    caller: str | None = None
    profile: str | None = None
    attempts: int = 0
    http_status: int | None = None
    usage: dict[str, Any] | None = None
    result_url: str | None = None
    error: dict[str, Any] | None = None
    submitted_at: str | None = None
    completed_at: str | None = None
    kind: str = "response"  # "response" (async request) or "batch"
    extra: dict[str, Any] = field(default_factory=dict)

    def body(self) -> bytes:
        data = {k: getattr(self, k) for k in self.__slots__ if k != "extra"}
        data.update(self.extra)
        return json.dumps(data, separators=(",", ":")).encode()

    def properties(self) -> dict[str, str | int]:
        """Application properties: what subscribers filter on without parsing the body."""
        usage = self.usage or {}
        props: dict[str, str | int] = {"status": self.status, "kind": self.kind}
        for key in ("model", "deployment", "backend", "caller", "profile"):
            if value := getattr(self, key):
                props[key] = value
        for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
            if isinstance(usage.get(key), int):
                props[key] = usage[key]
        return props


class CompletionPublisher(Protocol):
    async def publish(self, message: CompletionMessage) -> None: ...

    async def close(self) -> None: ...


# The SDK's own retry (3 more tries, backing off) is short here: sends take turns on the one sender, so a message
# the broker keeps refusing held every other completion of the process for ~15 s. One quick retry covers a blip;
# the publish activity's Durable retry and the orchestration's backing-off timer (never given up) do the rest.
SEND_RETRY: dict[str, Any] = {"retry_total": 1, "retry_backoff_factor": 0.2, "retry_backoff_max": 1}


class ServiceBusPublisher:
    """One ServiceBusClient and sender per process, created lazily and rebuilt after a failure.

    Sends take turns: the SDK's async sender is not safe for concurrent use (two activities opening its link at
    once fail with `'NoneType' object has no attribute 'create_sender_link'`, azure-sdk-for-python#36334), and
    closing it after one failure would break every send still in flight on it.
    """

    def __init__(self, client_factory: Callable[[], Any], entity: str) -> None:
        self._client_factory = client_factory
        self._entity = entity
        self._client: Any = None
        self._sender: Any = None
        self._turn = asyncio.Lock()

    async def publish(self, message: CompletionMessage) -> None:
        from azure.servicebus import ServiceBusMessage

        sb_message = ServiceBusMessage(
            message.body(),
            message_id=message.id,
            correlation_id=message.request_id,
            subject=message.status,
            content_type="application/json",
            application_properties=cast("dict[str | bytes, Any]", message.properties()),  # the SDK's dict is invariant
        )
        async with self._turn:
            if self._sender is None:
                self._client = self._client_factory()
                self._sender = self._client.get_queue_sender(self._entity)  # a topic name works the same way
            try:
                await self._sender.send_messages(sb_message)
            except Exception:
                await self._drop()  # a broken link is rebuilt on the next publish
                raise

    async def close(self) -> None:
        async with self._turn:
            await self._drop()

    async def _drop(self) -> None:
        sender, client, self._sender, self._client = self._sender, self._client, None, None
        for item in (sender, client):
            if item is not None:
                try:
                    await item.close()
                except Exception as exc:  # closing a broken link must not hide the original error
                    log.debug("closing Service Bus %s: %s", type(item).__name__, exc)


class QueuePublisher:
    """The local default: the same JSON body on a Storage queue."""

    def __init__(self, account: StorageAccount, queue: str, credential_factory: Callable[[str | None], Any]):
        self._account = account
        self._queue = queue
        self._credential_factory = credential_factory
        self._client: Any = None

    async def publish(self, message: CompletionMessage) -> None:
        client = await self._ready()
        await client.send_message(message.body().decode())

    async def _ready(self) -> Any:
        if self._client is None:
            from azure.core.exceptions import ResourceExistsError
            from azure.storage.queue import TextBase64DecodePolicy, TextBase64EncodePolicy

            client = self._account.queue_client(
                self._queue,
                self._credential_factory,
                message_encode_policy=TextBase64EncodePolicy(),
                message_decode_policy=TextBase64DecodePolicy(),
            )
            try:
                await client.create_queue()
            except ResourceExistsError:
                pass
            self._client = client
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


def build_publisher(
    settings: Settings, account: StorageAccount, credential_factory: Callable[[str | None], Any]
) -> CompletionPublisher:
    """Service Bus when configured (identity-based namespace or connection string), else the Storage queue."""
    if settings.servicebus_namespace or settings.servicebus_connection:

        def client() -> Any:
            from azure.servicebus.aio import ServiceBusClient

            if settings.servicebus_connection:
                return ServiceBusClient.from_connection_string(settings.servicebus_connection, **SEND_RETRY)
            return ServiceBusClient(
                settings.servicebus_namespace, credential_factory(settings.servicebus_client_id or None), **SEND_RETRY
            )

        return ServiceBusPublisher(client, settings.completions_entity)
    return QueuePublisher(account, settings.completions_queue, credential_factory)


async def publish_once(publisher: CompletionPublisher, results: ResultStore, message: CompletionMessage) -> bool:
    """Publishes `message` unless a completion for its id was already recorded, then records it.

    Every way an async request or a batch ends goes through here, so a retried activity (or a cancel racing the
    housekeeping sweep) never sends a second message. False when it had been published before.
    """
    if await results.get_completion(message.id) is not None:
        return False
    await publisher.publish(message)
    await results.put_completion(message.id, message.body())
    return True
