"""Which Azure Storage account the gateway uses for its own state, and how it authenticates to it.

The same conventions as the Functions host: a connection string (`GATEWAY_STATE_STORAGE`, else
`AzureWebJobsStorage`), or identity-based `AzureWebJobsStorage__accountName` / `__tableServiceUri` /
`__blobServiceUri` / `__queueServiceUri` with `__clientId` for a user-assigned identity. Clients are built
lazily and retry little: a storage outage must degrade to local state quickly, not hold requests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from .errors import ConfigError

__all__ = ["StorageAccount", "storage_account"]

# Azurite's well-known development account (public, documented by Microsoft; not a secret).
_DEV_ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
_DEV_STORAGE = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=" + _DEV_ACCOUNT_KEY + ";"
    "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;"
    "TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;"
)
# Fail fast: a few seconds of storage trouble must not become minutes of held requests.
CLIENT_OPTIONS: dict[str, Any] = {
    "retry_total": 1,
    "retry_backoff_factor": 0.2,
    "retry_backoff_max": 1,
    "connection_timeout": 2,
    "read_timeout": 5,
}

# Blob and queue clients build the storage SDK's own ExponentialRetry from these (its default first backoff is
# 15 s, and it ignores retry_backoff_factor): without them a storage outage held an async submission ~20 s.
STORAGE_RETRY: dict[str, Any] = {"initial_backoff": 0.2, "increment_base": 1, "random_jitter_range": 0.2}
# Downloads in 4 MiB ranges: the SDK's default first range (32 MiB) would be held in memory whole.
BLOB_OPTIONS: dict[str, Any] = {"max_single_get_size": 4 * 1024 * 1024, "max_chunk_get_size": 4 * 1024 * 1024}


@dataclass(frozen=True, slots=True)
class StorageAccount:
    """A connection string, or service endpoints reached with an Entra ID identity."""

    connection_string: str | None = None
    table_uri: str | None = None
    blob_uri: str | None = None
    queue_uri: str | None = None
    client_id: str | None = None  # user-assigned managed identity; None = DefaultAzureCredential's choice

    def table_client(self, table: str, credential_factory: Any) -> Any:
        from azure.data.tables.aio import TableClient

        if self.connection_string:
            return TableClient.from_connection_string(self.connection_string, table, **CLIENT_OPTIONS)
        # Without a connection string, storage_account() set the URIs; a missing one fails in the SDK, as before.
        return TableClient(
            cast("str", self.table_uri), table, credential=credential_factory(self.client_id), **CLIENT_OPTIONS
        )

    def blob_service(self, credential_factory: Any) -> Any:
        from azure.storage.blob.aio import BlobServiceClient

        options = {**CLIENT_OPTIONS, **STORAGE_RETRY, **BLOB_OPTIONS}
        if self.connection_string:
            return BlobServiceClient.from_connection_string(self.connection_string, **options)
        return BlobServiceClient(cast("str", self.blob_uri), credential=credential_factory(self.client_id), **options)

    def queue_client(self, queue: str, credential_factory: Any, **options: Any) -> Any:
        from azure.storage.queue.aio import QueueClient

        options = {**CLIENT_OPTIONS, **STORAGE_RETRY, **options}
        if self.connection_string:
            return QueueClient.from_connection_string(self.connection_string, queue, **options)
        return QueueClient(cast("str", self.queue_uri), queue, credential=credential_factory(self.client_id), **options)

    def describe(self) -> str:
        """Where the state lives, safe to show (no keys)."""
        if self.connection_string:
            for part in self.connection_string.split(";"):
                if part.startswith("TableEndpoint=") or part.startswith("AccountName="):
                    return part.split("=", 1)[1]
            return "connection string"
        return self.table_uri or "unknown"


def storage_account(
    env: Mapping[str, str], explicit: str = "", setting: str = "GATEWAY_STATE_STORAGE"
) -> StorageAccount:
    """The account from `explicit` (a connection string setting) or the host's AzureWebJobsStorage settings."""
    value = explicit or env.get("AzureWebJobsStorage", "")
    if value:
        if value.replace(" ", "").lower().startswith("usedevelopmentstorage=true"):
            return StorageAccount(connection_string=_DEV_STORAGE)
        if "AccountName=" not in value and "TableEndpoint=" not in value:
            raise ConfigError(setting if explicit else "AzureWebJobsStorage", "is not a storage connection string")
        return StorageAccount(connection_string=value)
    prefix = "AzureWebJobsStorage__"
    account = env.get(prefix + "accountName", "")
    services = {s: env.get(f"{prefix}{s}ServiceUri", "") for s in ("table", "blob", "queue")}
    if not account and not any(services.values()):
        raise ConfigError(
            "AzureWebJobsStorage", "not set (nor AzureWebJobsStorage__accountName); the state needs storage"
        )
    for service, uri in services.items():
        if not uri and account:
            services[service] = f"https://{account}.{service}.core.windows.net"
    return StorageAccount(
        table_uri=services["table"] or None,
        blob_uri=services["blob"] or None,
        queue_uri=services["queue"] or None,
        client_id=env.get(prefix + "clientId") or None,
    )
