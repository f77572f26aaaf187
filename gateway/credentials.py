"""Outbound credentials: Entra ID bearer tokens (managed identity first) or a backend's API key.

The only user of azure.identity. Tokens are cached per scope and refreshed shortly before they expire,
with one refresh in flight at a time, so a burst of requests costs one token request, not one each.
An `api-key=@Microsoft.KeyVault(SecretUri=...)` value is resolved once per process with the same identity.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from .config import Backend

__all__ = ["COGNITIVE_SCOPE", "BackendAuth", "storage_credential"]

COGNITIVE_SCOPE = "https://cognitiveservices.azure.com/.default"
VAULT_SCOPE = "https://vault.azure.net/.default"
# Refresh this long before expiry, so no request ever goes out with a token about to lapse.
REFRESH_MARGIN_S = 300
_KEY_VAULT_REF = re.compile(r"^@Microsoft\.KeyVault\(SecretUri=(https?://[^)]+)\)$", re.IGNORECASE)

log = logging.getLogger("gateway.credentials")


class AccessToken(Protocol):
    """What we use of azure.core's AccessToken."""

    @property
    def token(self) -> str: ...
    @property
    def expires_on(self) -> int: ...


class TokenCredential(Protocol):
    """What we use of azure.identity.aio credentials."""

    async def get_token(self, *scopes: str) -> AccessToken: ...


GetJson = Callable[[str, dict[str, str]], Awaitable[dict[str, Any]]]


class BackendAuth:
    """Builds the auth header for a backend; holds the process-wide token and secret caches."""

    def __init__(self, get_json: GetJson, credential: TokenCredential | None = None) -> None:
        self._get_json = get_json  # fetches Key Vault secrets through the shared upstream session
        self._credential = credential
        self._tokens: dict[str, tuple[str, float]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._secrets: dict[str, str] = {}

    async def headers(self, backend: Backend) -> dict[str, str]:
        """`Authorization: Bearer` with usemi=true, else `api-key`, else nothing (e.g. an open APIM)."""
        if backend.use_mi:
            return {"Authorization": "Bearer " + await self.token(COGNITIVE_SCOPE)}
        if backend.api_key:
            return {"api-key": await self._resolve_secret(backend.api_key)}
        return {}

    async def token(self, scope: str) -> str:
        cached = self._tokens.get(scope)
        if cached and cached[1] - REFRESH_MARGIN_S > time.time():
            return cached[0]
        lock = self._locks.setdefault(scope, asyncio.Lock())
        async with lock:
            cached = self._tokens.get(scope)  # another request may have refreshed it while we waited
            if cached and cached[1] - REFRESH_MARGIN_S > time.time():
                return cached[0]
            access = await self._get_credential().get_token(scope)
            self._tokens[scope] = (access.token, float(access.expires_on))
            log.info("Acquired a token for %s, valid for %d s", scope, int(access.expires_on - time.time()))
            return access.token

    async def close(self) -> None:
        if self._credential is not None and hasattr(self._credential, "close"):
            await self._credential.close()

    def _get_credential(self) -> TokenCredential:
        if self._credential is None:
            from azure.identity.aio import DefaultAzureCredential  # slow import: only when identity is used

            self._credential = DefaultAzureCredential()
        return self._credential

    async def _resolve_secret(self, value: str) -> str:
        match = _KEY_VAULT_REF.match(value)
        if match is None:
            return value
        secret = self._secrets.get(value)
        if secret is None:
            uri = match.group(1)
            token = await self.token(VAULT_SCOPE)
            body = await self._get_json(
                uri + ("&" if "?" in uri else "?") + "api-version=7.4", {"Authorization": "Bearer " + token}
            )
            secret = self._secrets[value] = str(body["value"])
        return secret


def storage_credential(client_id: str | None) -> TokenCredential:
    """The identity for identity-based storage: a user-assigned one by client id, else DefaultAzureCredential."""
    from azure.identity.aio import DefaultAzureCredential, ManagedIdentityCredential

    return ManagedIdentityCredential(client_id=client_id) if client_id else DefaultAzureCredential()
