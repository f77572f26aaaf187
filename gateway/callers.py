"""Who is calling: the credential a client presented, as a caller identity (never the credential itself).

Gateway keys come as `api-key` or `Authorization: Bearer`. Every configured key is compared in constant time, so
timing reveals neither a key nor its position; the caller is the key's name from `GATEWAY_API_KEYS`, or a
fingerprint of an unnamed key. With Entra ID configured, a bearer token that is no gateway key is validated as an
Entra token: the caller is then `app:<client id>` or `user:<object id>`, with its roles and groups. The caller
names the owner of async results, files and batches, and usage records, and picks the caller's profile.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from . import errors
from .config import Settings
from .entra import EntraValidator

__all__ = ["ANONYMOUS", "Caller", "Callers"]


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated caller: `name` is what records, ownership and profile mapping use."""

    name: str
    kind: str  # "key" | "app" | "user" | "anonymous"
    roles: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()


ANONYMOUS = Caller("anonymous", "anonymous")


class Callers:
    def __init__(self, settings: Settings, entra: EntraValidator | None = None) -> None:
        self._disabled = settings.auth_disabled
        self._entra = entra
        self._keys = [k.encode() for k in settings.api_keys]
        # Computed once: a sha256 per request cost ~1.5 % of the CPU.
        self._callers = {
            k.encode(): Caller(name or "key:" + hashlib.sha256(k.encode()).hexdigest()[:12], "key")
            for k, name in settings.api_keys.items()
        }

    @property
    def unexpected_errors(self) -> int:
        """Bugs the Entra key fetches met (0 without Entra)."""
        return self._entra.unexpected_errors if self._entra is not None else 0

    async def authenticate(self, headers: Mapping[str, str]) -> Caller:
        """The caller behind the request's credential; 401 when there is none or it is wrong."""
        if self._disabled:
            return ANONYMOUS
        presented, bearer = headers.get("api-key") or "", False
        if not presented:
            scheme, _, token = headers.get("authorization", "").partition(" ")
            presented, bearer = (token.strip(), True) if scheme.lower() == "bearer" else ("", False)
        candidate = presented.encode()
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(candidate, key)
        if matched and candidate:
            return self._callers[candidate]
        if bearer and self._entra is not None and presented.count(".") == 2:
            identity = await self._entra.identity(presented)
            return Caller(identity.caller, identity.kind, identity.roles, identity.groups)
        raise errors.unauthorized()
