"""Inbound Microsoft Entra ID bearer tokens: which application or user is calling, proven by the tenant's keys.

Tokens are RS256 JWTs checked with PyJWT against the tenant's signing keys (JWKS). The OpenID configuration and
the JWKS are fetched lazily through the shared upstream session, one fetch in flight at a time. An unknown `kid`
(Entra rotates its keys) refetches the JWKS at most once a minute, so forged kids cannot turn the gateway into a
load generator against the identity platform. A validated token is remembered by its sha256 until its `exp`, so
a client reusing its token costs a dictionary lookup, not an RSA verification, per request. Every refusal is a
401 `invalid_token` naming the failed check; neither messages nor logs ever contain the token.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import jwt
from jwt.types import Options

from . import errors
from .config import Settings
from .upstream import NETWORK_ERRORS

__all__ = ["EntraValidator", "GetJson", "Identity"]

PUBLIC_CLOUD = "https://login.microsoftonline.com"
SKEW_S = 60  # clock skew tolerated on exp and nbf
REFETCH_INTERVAL_S = 60  # an unknown kid refetches the JWKS at most this often...
EMPTY_RETRY_S = 5  # ...or this often while no key was ever fetched (a cold start during an outage)
CACHE_SIZE = 4096  # validated tokens remembered
_GUID = re.compile(r"^[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}$")
# The v2 issuer names the tenant by id even when the configuration was asked for by domain.
_V2_ISSUER = re.compile(r"^https://[^/]+/([0-9a-fA-F-]{36})/v2\.0$")
_LOOPBACK = ("http://127.0.0.1:", "http://localhost:", "http://[::1]:")
# exp and nbf are checked here against the injectable clock, which the token cache also uses (PyJWT would read
# the system clock); `require` still makes PyJWT refuse a token that lacks them.
_OPTIONS: Options = {
    "require": ["exp", "iss", "aud"],
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "enforce_minimum_key_length": True,
}

log = logging.getLogger("gateway.entra")
# Why a key fetch can fail without a bug: the network, an HTTP error status, JSON or shape (ValueError).
_NO_KEYS: tuple[type[BaseException], ...] = (*NETWORK_ERRORS, ValueError)

GetJson = Callable[[str, dict[str, str]], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a valid token names, with its `roles` and `groups` claims for profile mapping."""

    caller: str  # app:<azp|appid> or user:<oid>
    kind: Literal["app", "user"]
    roles: frozenset[str]
    groups: frozenset[str]  # empty on group overage (Entra then sends a link to Graph instead; not followed)
    expires_at: float  # the token's exp, epoch seconds


class EntraValidator:
    """Validates Entra ID access tokens for the configured tenant and audiences; one per process."""

    def __init__(
        self,
        settings: Settings,
        get_json: GetJson,
        *,
        clock: Callable[[], float] = time.time,
        cache_size: int = CACHE_SIZE,
    ) -> None:
        tenant = settings.entra_tenant_id
        self._get_json = get_json  # Upstream.get_json: the shared aiohttp session
        self._clock = clock
        self._cache_size = cache_size
        self._audiences = sorted(settings.entra_audiences)
        # Accepted issuers; None until discovery names the tenant id (a tenant given by domain).
        self._issuers: frozenset[str] | None
        if settings.entra_issuer:
            self._issuers = frozenset({settings.entra_issuer})
            base = settings.entra_issuer.rstrip("/")
        else:
            self._issuers = _tenant_issuers(tenant) if _GUID.match(tenant) else None
            base = f"{PUBLIC_CLOUD}/{tenant}/v2.0"
        self._discovery_url = base + "/.well-known/openid-configuration"
        self._jwks_url: str | None = settings.entra_jwks_url or None
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None  # last fetch attempt, successful or not
        self._failing = False  # the last fetch failed (logged once per outage)
        self._lock = asyncio.Lock()
        self._validated: dict[bytes, tuple[Identity, str]] = {}  # sha256(token) -> (identity, kid)
        self.unexpected_errors = 0  # bugs met while fetching keys (logged with their traceback)

    async def identity(self, token: str) -> Identity:
        """The caller a bearer token proves; otherwise 401 invalid_token naming the check that failed."""
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        cached = self._validated.get(digest)
        if cached is not None:
            if self._clock() < cached[0].expires_at:
                return cached[0]
            del self._validated[digest]
        identity, kid = await self._validate(token)
        if len(self._validated) >= self._cache_size:
            self._evict()
        self._validated[digest] = (identity, kid)
        return identity

    async def _validate(self, token: str) -> tuple[Identity, str]:
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.InvalidTokenError, ValueError):  # ValueError: text that is not even UTF-8 (lone surrogates)
            raise errors.invalid_token("malformed (not a signed JWT)") from None
        if header.get("alg") != "RS256":
            raise errors.invalid_token("algorithm check failed (only RS256 is accepted)")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise errors.invalid_token("no signing key id (kid) in the header")
        key, issuers = await self._key(kid)
        try:
            claims = jwt.decode(
                token, key, algorithms=["RS256"], audience=self._audiences, issuer=issuers, options=_OPTIONS
            )
        except jwt.InvalidSignatureError:
            raise errors.invalid_token("signature check failed") from None
        except jwt.InvalidAudienceError:
            raise errors.invalid_token("audience check failed (aud is not this gateway)") from None
        except jwt.InvalidIssuerError:
            raise errors.invalid_token("issuer check failed (iss is not the configured tenant)") from None
        except jwt.MissingRequiredClaimError as exc:
            raise errors.invalid_token(f"required claim '{exc.claim}' is missing") from None
        except jwt.PyJWTError:
            raise errors.invalid_token("malformed (not a signed JWT)") from None
        exp, nbf, now = claims["exp"], claims.get("nbf", 0), self._clock()
        if not _is_number(exp) or not _is_number(nbf):
            raise errors.invalid_token("malformed (exp and nbf must be numbers)")
        if now > exp + SKEW_S:
            raise errors.invalid_token("expired (exp)")
        if nbf > now + SKEW_S:
            raise errors.invalid_token("not yet valid (nbf)")
        return _identity(claims), kid

    async def _key(self, kid: str) -> tuple[jwt.PyJWK, frozenset[str]]:
        """The signing key for `kid`: cached, else from a JWKS fetch if the once-a-minute rule allows one."""
        if kid not in self._keys:
            async with self._lock:
                # Requests that waited here find the keys the fetch in flight brought, and fetch nothing more.
                if kid not in self._keys and self._may_fetch():
                    await self._refresh()
        key = self._keys.get(kid)
        if key is None:
            raise errors.invalid_token("signing keys unavailable" if self._failing else "unknown signing key (kid)")
        assert self._issuers is not None  # keys are only ever stored once the issuers are known
        return key, self._issuers

    def _may_fetch(self) -> bool:
        if self._fetched_at is None:
            return True
        return self._clock() - self._fetched_at >= (REFETCH_INTERVAL_S if self._keys else EMPTY_RETRY_S)

    async def _refresh(self) -> None:
        """Fetches the OpenID configuration (once, when still needed), then the JWKS; on failure keeps the cache."""
        self._fetched_at = self._clock()
        try:
            if self._jwks_url is None or self._issuers is None:
                await self._discover()
            assert self._jwks_url is not None
            keys = _signing_keys(await self._get_json(self._jwks_url, {"Accept": "application/json"}))
        except _NO_KEYS as exc:  # transport, HTTP status, JSON or shape: all mean "no new keys"
            if not self._failing:
                log.warning("Entra ID signing keys unavailable (%s: %s)", type(exc).__name__, exc)
            self._failing = True
            return
        except Exception:  # a bug: no new keys either, but logged with its traceback and counted, every time
            self.unexpected_errors += 1
            log.error("Unexpected error fetching the Entra ID signing keys", exc_info=True)
            self._failing = True
            return
        if self._failing:
            log.info("Entra ID signing keys available again")
        self._failing = False
        self._keys = keys
        # A key withdrawn from the JWKS no longer vouches for the tokens it signed.
        self._validated = {d: entry for d, entry in self._validated.items() if entry[1] in keys}
        log.info("Fetched %d Entra ID signing keys", len(keys))

    async def _discover(self) -> None:
        doc = await self._get_json(self._discovery_url, {"Accept": "application/json"})
        if not isinstance(doc, dict) or not isinstance(doc.get("jwks_uri"), str):
            raise ValueError("the OpenID configuration names no jwks_uri")
        if self._jwks_url is None:
            if not doc["jwks_uri"].startswith(("https://", *_LOOPBACK)):
                raise ValueError("the OpenID configuration's jwks_uri is not https")
            self._jwks_url = doc["jwks_uri"]
        if self._issuers is None:
            match = _V2_ISSUER.match(str(doc.get("issuer", "")))
            if match is None:
                raise ValueError("the OpenID configuration's issuer names no tenant id")
            self._issuers = _tenant_issuers(match.group(1))

    def _evict(self) -> None:
        """Drops expired tokens, then the oldest, so the cache stays within its bound."""
        now = self._clock()
        self._validated = {d: entry for d, entry in self._validated.items() if entry[0].expires_at > now}
        while len(self._validated) >= self._cache_size:
            del self._validated[next(iter(self._validated))]


def _tenant_issuers(tenant_id: str) -> frozenset[str]:
    """The public cloud's v2 and v1 issuers of a tenant (which one a token carries depends on the API's manifest)."""
    return frozenset({f"{PUBLIC_CLOUD}/{tenant_id}/v2.0", f"https://sts.windows.net/{tenant_id}/"})


def _signing_keys(doc: Any) -> dict[str, jwt.PyJWK]:
    """The RS256 signing keys of a JWKS by kid; other kinds of keys are skipped."""
    found = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(found, list):
        raise ValueError("the JWKS has no 'keys' array")
    keys: dict[str, jwt.PyJWK] = {}
    for jwk in found:
        if not isinstance(jwk, dict) or jwk.get("kty") != "RSA" or jwk.get("use", "sig") != "sig":
            continue
        if not isinstance(jwk.get("kid"), str) or jwk.get("alg", "RS256") != "RS256":
            continue
        try:
            key = jwt.PyJWK(jwk, algorithm="RS256")
        except jwt.PyJWTError:
            continue
        if getattr(key.key, "key_size", 0) >= 2048:  # shorter RSA keys are forgeable
            keys[jwk["kid"]] = key
    if not keys:
        raise ValueError("the JWKS holds no RS256 signing key")
    return keys


def _identity(claims: dict[str, Any]) -> Identity:
    """Applications (`idtyp` app, or no delegated `scp`) by their client id; users by their object id."""
    roles, groups, expires_at = _strings(claims.get("roles")), _strings(claims.get("groups")), float(claims["exp"])
    if claims.get("idtyp") == "app" or "scp" not in claims:
        app = claims.get("azp") or claims.get("appid")
        if not isinstance(app, str) or not app:
            raise errors.invalid_token("no application id (azp or appid)")
        return Identity("app:" + app, "app", roles, groups, expires_at)
    oid = claims.get("oid")
    if not isinstance(oid, str) or not oid:
        raise errors.invalid_token("no user object id (oid)")
    return Identity("user:" + oid, "user", roles, groups, expires_at)


def _strings(value: Any) -> frozenset[str]:
    return frozenset(v for v in value if isinstance(v, str)) if isinstance(value, list) else frozenset()


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
