"""A local Microsoft Entra ID: OpenID configuration and JWKS on loopback, and tokens signed with its keys.

Keys are generated with `cryptography`, tokens signed with PyJWT, so the gateway's validator checks real RS256
signatures. Every request is counted per document, so tests can assert how often the keys were fetched.
"""

from __future__ import annotations

import functools
import time
import uuid
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from tests.support.local_server import serve_app

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
AUDIENCE = "api://ai-gateway"
CLIENT_ID = "3f2c6a51-9d1e-4e7a-8c55-0b6f1d2e9a10"


@functools.cache
def private_key(index: int) -> rsa.RSAPrivateKey:
    """The index-th test key (2048-bit RSA), generated once per process: generation costs ~50 ms."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


class FakeEntra:
    """Serves `/{tenant}/v2.0/.well-known/openid-configuration` and `/{tenant}/discovery/v2.0/keys`."""

    def __init__(self, tenant: str = TENANT, issuer_base: str | None = None) -> None:
        self.tenant = tenant
        self._issuer_base = issuer_base  # None: this server's own URL (as with GATEWAY_ENTRA_ISSUER)
        self.keys: dict[str, rsa.RSAPrivateKey] = {}  # kid -> key, the ones the JWKS serves
        self.add_key()
        self.requests = {"openid": 0, "jwks": 0}
        self.fail_jwks = False  # answer the JWKS with a 503
        self.jwks_body: Any = None  # when set, the JWKS answers this JSON (200) instead of the key set
        self.port: int | None = None
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the fake Entra ID is not running")
        return f"http://127.0.0.1:{self.port}"

    @property
    def issuer(self) -> str:
        return f"{self._issuer_base or self.url}/{self.tenant}/v2.0"

    @property
    def jwks_url(self) -> str:
        return f"{self.url}/{self.tenant}/discovery/v2.0/keys"

    @property
    def kid(self) -> str:
        """The newest key's id."""
        return list(self.keys)[-1]

    def add_key(self) -> str:
        """Publishes one more key (a rotation) and returns its kid."""
        kid = f"kid-{len(self.keys) + 1}-{uuid.uuid4().hex[:6]}"
        self.keys[kid] = private_key(len(self.keys))
        return kid

    def token(
        self, claims: dict[str, Any] | None = None, *, kid: str | None = None, key: Any = None, alg: str = "RS256"
    ) -> str:
        """A token with Entra-like defaults (an app token for AUDIENCE, valid for an hour), overridden by `claims`."""
        now = int(time.time())
        payload = {
            "aud": AUDIENCE,
            "iss": self.issuer,
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "tid": self.tenant,
            "azp": CLIENT_ID,
            "idtyp": "app",
            "oid": str(uuid.uuid4()),
            "roles": ["Gateway.Use"],
        }
        payload.update(claims or {})
        payload = {k: v for k, v in payload.items() if v is not None}  # None removes a default claim
        kid = kid or self.kid
        return jwt.encode(
            payload, key or self.keys.get(kid) or self.keys[self.kid], algorithm=alg, headers={"kid": kid}
        )

    async def _openid(self, request: web.Request) -> web.Response:
        self.requests["openid"] += 1
        return web.json_response(
            {"issuer": self.issuer, "jwks_uri": self.jwks_url, "id_token_signing_alg_values_supported": ["RS256"]}
        )

    async def _jwks(self, request: web.Request) -> web.Response:
        self.requests["jwks"] += 1
        if self.fail_jwks:
            return web.json_response({"error": "unavailable"}, status=503)
        if self.jwks_body is not None:
            return web.json_response(self.jwks_body)
        keys = []
        for kid, key in self.keys.items():
            jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
            keys.append({**jwk, "kid": kid, "use": "sig", "x5t": kid})
        return web.json_response({"keys": keys})

    async def __aenter__(self) -> FakeEntra:
        app = web.Application()
        app.router.add_get("/{tenant}/v2.0/.well-known/openid-configuration", self._openid)
        app.router.add_get("/{tenant}/discovery/v2.0/keys", self._jwks)
        self._runner, self.port = await serve_app(app)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
