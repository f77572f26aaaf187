"""Entra ID token validation against a local OpenID configuration and JWKS, through the real upstream session.

Keys are generated in the test, tokens signed with PyJWT; the validator fetches over loopback HTTP. The refetch
rule ("at most once a minute") and token expiry run on an injected clock, never on sleeps.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest

from gateway.config import load_settings
from gateway.entra import PUBLIC_CLOUD, EntraValidator, Identity
from gateway.errors import GatewayError
from gateway.upstream import Upstream
from tests.support.clock import Clock
from tests.support.fake_entra import AUDIENCE, CLIENT_ID, TENANT, FakeEntra, private_key, public_pem

OTHER_TENANT = "0b1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"


@pytest.fixture
async def entra() -> AsyncIterator[FakeEntra]:
    async with FakeEntra() as server:
        yield server


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    client = Upstream(connect_timeout_s=5, read_timeout_s=5)
    yield client
    await client.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_validator(upstream: Upstream, clock: Clock, get_json: Any = None, **env: str) -> EntraValidator:
    settings = load_settings(
        {
            "GATEWAY_BACKEND_1": "host=https://a.example",
            "GATEWAY_ENTRA_TENANT_ID": TENANT,
            "GATEWAY_ENTRA_AUDIENCE": f"{AUDIENCE}, {CLIENT_ID}",
            **env,
        }
    )
    return EntraValidator(settings, get_json or upstream.get_json, clock=clock)


@pytest.fixture
def validator(entra: FakeEntra, upstream: Upstream, clock: Clock) -> EntraValidator:
    """Issuer override on loopback: the keys' URL is discovered from that issuer's OpenID configuration."""
    return make_validator(upstream, clock, GATEWAY_ENTRA_ISSUER=entra.issuer)


async def refused(validator: EntraValidator, token: str) -> str:
    """The 401 invalid_token message for `token`, after checking it quotes no part of the token."""
    with pytest.raises(GatewayError) as info:
        await validator.identity(token)
    error = info.value
    assert (error.status, error.type, error.code) == (401, "authentication_error", "invalid_token")
    assert error.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    quoted = [part for part in [token, *token.split(".")] if len(part) >= 8 and part in error.message]
    assert not quoted and (not token or token not in error.message)
    return error.message


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hmac_token(header: dict[str, Any], payload: dict[str, Any], secret: bytes) -> str:
    """A token MACed with `secret` by hand: PyJWT itself refuses to use a PEM public key as an HMAC secret."""
    signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(payload).encode())
    return signing_input + "." + b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())


def claims_of(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


# Valid tokens


async def test_an_application_token_names_the_app_and_its_roles(entra, validator):
    token = entra.token({"roles": ["Gateway.Use", "Gateway.Batch"]})
    identity = await validator.identity(token)
    assert identity == Identity(
        caller=f"app:{CLIENT_ID}",
        kind="app",
        roles=frozenset({"Gateway.Use", "Gateway.Batch"}),
        groups=frozenset(),
        expires_at=claims_of(token)["exp"],
    )
    assert entra.requests == {"openid": 1, "jwks": 1}


async def test_a_v1_application_token_without_idtyp_is_named_by_appid(entra, validator):
    token = entra.token({"idtyp": None, "azp": None, "appid": "b0b0b0b0-app", "ver": "1.0", "aud": CLIENT_ID})
    identity = await validator.identity(token)
    assert (identity.caller, identity.kind) == ("app:b0b0b0b0-app", "app")


async def test_a_delegated_user_token_names_the_user_with_roles_and_groups(entra, validator):
    oid = str(uuid.uuid4())
    token = entra.token(
        {"idtyp": "user", "scp": "Gateway.Read", "oid": oid, "roles": ["Gateway.Admin"], "groups": ["g-1", "g-2"]}
    )
    identity = await validator.identity(token)
    assert (identity.caller, identity.kind) == (f"user:{oid}", "user")
    assert identity.roles == {"Gateway.Admin"} and identity.groups == {"g-1", "g-2"}


async def test_tokens_without_a_caller_id_are_refused(entra, validator):
    assert "azp or appid" in await refused(validator, entra.token({"azp": None}))
    assert "oid" in await refused(validator, entra.token({"idtyp": "user", "scp": "x", "oid": None}))


# Forged and wrong tokens


async def test_alg_none_is_refused(entra, validator):
    token = jwt.encode(claims_of(entra.token()), None, algorithm="none", headers={"kid": entra.kid})
    assert "algorithm" in await refused(validator, token)


async def test_hs256_signed_with_the_public_key_is_refused(entra, validator):
    """The classic key confusion: an HMAC keyed with the RSA public key everybody can download."""
    payload, pem = claims_of(entra.token()), public_pem(entra.keys[entra.kid])
    confused = hmac_token({"alg": "HS256", "typ": "JWT", "kid": entra.kid}, payload, pem)
    assert "algorithm" in await refused(validator, confused)
    # The same MAC under an RS256 header reaches the signature check, and fails it.
    relabelled = hmac_token({"alg": "RS256", "typ": "JWT", "kid": entra.kid}, payload, pem)
    assert "signature" in await refused(validator, relabelled)


async def test_a_token_signed_by_another_key_under_a_known_kid_is_refused(entra, validator):
    assert "signature" in await refused(validator, entra.token(key=private_key(99)))


async def test_another_audience_is_refused(entra, validator):
    assert "audience" in await refused(validator, entra.token({"aud": "api://someone-else"}))
    assert "audience" in await refused(validator, entra.token({"aud": ["api://a", "api://b"]}))
    assert (await validator.identity(entra.token({"aud": [CLIENT_ID, "api://b"]}))).kind == "app"


async def test_another_tenant_or_issuer_is_refused(entra, validator):
    other = entra.issuer.replace(TENANT, OTHER_TENANT)
    assert "issuer" in await refused(validator, entra.token({"iss": other, "tid": OTHER_TENANT}))
    assert "issuer" in await refused(validator, entra.token({"iss": f"https://sts.windows.net/{TENANT}/"}))


async def test_missing_or_malformed_time_claims_are_refused(entra, validator):
    assert "required claim 'exp'" in await refused(validator, entra.token({"exp": None}))
    assert "exp and nbf" in await refused(validator, entra.token({"nbf": "yesterday"}))


async def test_expiry_with_sixty_seconds_of_skew(entra, validator, clock):
    now = int(clock.now)
    assert "expired (exp)" in await refused(validator, entra.token({"exp": now - 61, "nbf": now - 3600}))
    assert (await validator.identity(entra.token({"exp": now - 50, "nbf": now - 3600}))).kind == "app"


async def test_not_before_with_sixty_seconds_of_skew(entra, validator, clock):
    now = int(clock.now)
    assert "not yet valid (nbf)" in await refused(validator, entra.token({"nbf": now + 120}))
    assert (await validator.identity(entra.token({"nbf": now + 50}))).kind == "app"


@pytest.mark.parametrize(
    ("garbage", "check"),
    [
        ("", "malformed"),
        ("garbage", "malformed"),
        ("a.b.c", "malformed"),
        ("...", "malformed"),
        ("x" * 5000, "malformed"),
        ("é.ü.€", "malformed"),
        ("eyJ\ud800.e30.c2ln", "malformed"),  # not even encodable as UTF-8
        ("eyJhbGciOiJSUzI1NiJ9", "malformed"),
        ("eyJhbGciOiJSUzI1NiJ9.e30.", "no signing key id (kid)"),  # a well-formed header without a kid
        ("eyJhbGciOiJSUzI1NiIsImtpZCI6MX0.e30.", "malformed"),  # a kid that is no string
    ],
)
async def test_garbage_is_refused_without_fetching_keys(entra, validator, garbage, check):
    assert check in await refused(validator, garbage)
    assert entra.requests == {"openid": 0, "jwks": 0}


# Keys: lazy fetch, one in flight, rotation, the once-a-minute rule, outages


async def test_concurrent_first_requests_fetch_the_configuration_and_keys_once(entra, validator):
    tokens = [entra.token() for _ in range(20)]
    identities = await asyncio.gather(*(validator.identity(t) for t in tokens))
    assert {i.caller for i in identities} == {f"app:{CLIENT_ID}"}
    assert entra.requests == {"openid": 1, "jwks": 1}


async def test_an_unknown_kid_refetches_at_most_once_a_minute(entra, validator, clock):
    forged = iter(entra.token(kid=f"forged-{n}", key=private_key(99)) for n in range(100))
    await validator.identity(entra.token())
    assert "unknown signing key (kid)" in await refused(validator, next(forged))
    assert entra.requests["jwks"] == 1  # the keys are a second old: no refetch yet
    clock.now += 60
    assert "unknown signing key (kid)" in await refused(validator, next(forged))
    assert entra.requests["jwks"] == 2  # refetched once...
    clock.now += 59
    for _ in range(5):
        await refused(validator, next(forged))
    assert entra.requests["jwks"] == 2  # ...then not again within the minute
    clock.now += 1
    await refused(validator, next(forged))
    assert entra.requests == {"openid": 1, "jwks": 3}


async def test_a_rotated_key_is_accepted_after_one_refetch(entra, validator, clock):
    old = entra.kid
    await validator.identity(entra.token(kid=old))
    new = entra.add_key()
    clock.now += 60
    assert (await validator.identity(entra.token(kid=new))).kind == "app"
    assert (await validator.identity(entra.token(kid=old))).kind == "app"  # both published: both valid
    assert entra.requests["jwks"] == 2


async def test_a_key_withdrawn_from_the_jwks_stops_vouching_for_its_cached_tokens(entra, validator, clock):
    old = entra.kid
    token = entra.token(kid=old)
    await validator.identity(token)
    new = entra.add_key()
    del entra.keys[old]
    clock.now += 60
    await validator.identity(entra.token(kid=new))  # the refetch that learns of the withdrawal
    assert "unknown signing key (kid)" in await refused(validator, token)


async def test_a_jwks_outage_refuses_only_tokens_no_cached_key_fits_and_is_logged_once(entra, validator, clock, caplog):
    entra.fail_jwks = True
    caplog.set_level(logging.INFO, logger="gateway.entra")
    for _ in range(3):
        assert "signing keys unavailable" in await refused(validator, entra.token())
        clock.now += 5  # a cold start retries sooner than once a minute while it has no key at all
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert entra.requests["jwks"] == 3 and len(warnings) == 1 and "unavailable" in warnings[0].getMessage()
    entra.fail_jwks = False
    clock.now += 5
    known = entra.token()
    assert (await validator.identity(known)).kind == "app"
    entra.fail_jwks = True
    clock.now += 60
    assert (await validator.identity(entra.token())).kind == "app"  # a cached key fits: no fetch needed
    assert "signing keys unavailable" in await refused(validator, entra.token(kid="new", key=private_key(99)))
    assert all(known not in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("body", [[1, 2], "keys", {"keys": 5}, {"keys": None}, {"keys": [{"kty": "RSA"}, 7]}, {}])
async def test_a_jwks_answer_that_is_json_but_not_a_key_set_means_no_keys_not_a_bug(
    entra, validator, caplog, body
):
    entra.jwks_body = body
    caplog.set_level(logging.INFO, logger="gateway.entra")
    assert "signing keys unavailable" in await refused(validator, entra.token())
    [warning] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert warning.levelno == logging.WARNING and "unavailable" in warning.getMessage() and warning.exc_info is None
    assert validator.unexpected_errors == 0 and entra.requests["jwks"] == 1


async def test_a_bug_while_fetching_keys_is_logged_with_its_traceback_and_counted(entra, upstream, clock, caplog):
    """A fetcher the test owns fails as a programming error would: not an outage, though the token is refused."""
    fetches = 0

    async def buggy(url: str, headers: dict[str, str]) -> Any:
        nonlocal fetches
        fetches += 1
        if fetches == 1:
            return await upstream.get_json(url, headers)  # the OpenID configuration
        raise TypeError("a programming error in the key fetch")

    validator = make_validator(upstream, clock, buggy, GATEWAY_ENTRA_ISSUER=entra.issuer)
    caplog.set_level(logging.INFO, logger="gateway.entra")
    assert "signing keys unavailable" in await refused(validator, entra.token())
    assert validator.unexpected_errors == 1 and fetches == 2
    [record] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert record.levelno == logging.ERROR and record.exc_info is not None and record.exc_info[0] is TypeError


async def test_a_domain_tenant_discovers_its_issuers_on_the_public_cloud(upstream, clock):
    """No issuer override: the public cloud's configuration (served locally, as if DNS pointed here)."""
    async with FakeEntra(issuer_base=PUBLIC_CLOUD) as entra:

        async def via_loopback(url: str, headers: dict[str, str]) -> Any:
            return await upstream.get_json(url.replace(PUBLIC_CLOUD, entra.url), headers)

        validator = make_validator(upstream, clock, via_loopback, GATEWAY_ENTRA_TENANT_ID="contoso.onmicrosoft.com")
        v2 = f"{PUBLIC_CLOUD}/{TENANT}/v2.0"
        v1 = f"https://sts.windows.net/{TENANT}/"
        assert (await validator.identity(entra.token({"iss": v2}))).kind == "app"
        assert (await validator.identity(entra.token({"iss": v1}))).kind == "app"
        foreign = f"{PUBLIC_CLOUD}/{OTHER_TENANT}/v2.0"
        assert "issuer" in await refused(validator, entra.token({"iss": foreign}))
        assert entra.requests == {"openid": 1, "jwks": 1}


async def test_a_tenant_id_with_a_jwks_override_needs_no_discovery(entra, upstream, clock):
    validator = make_validator(upstream, clock, GATEWAY_ENTRA_JWKS_URL=entra.jwks_url)
    assert (await validator.identity(entra.token({"iss": f"{PUBLIC_CLOUD}/{TENANT}/v2.0"}))).kind == "app"
    assert (await validator.identity(entra.token({"iss": f"https://sts.windows.net/{TENANT}/"}))).kind == "app"
    assert "issuer" in await refused(validator, entra.token({"iss": f"https://sts.windows.net/{OTHER_TENANT}/"}))
    assert "issuer" in await refused(validator, entra.token({"iss": entra.issuer}))  # a lookalike on loopback
    assert entra.requests == {"openid": 0, "jwks": 1}


# The cache of validated tokens


async def test_a_reused_token_is_served_from_the_cache_until_it_expires(entra, validator, clock):
    token = entra.token({"exp": int(clock.now) + 600})
    first = await validator.identity(token)
    assert await validator.identity(token) is first  # no second validation built a second Identity
    clock.now = first.expires_at + 30  # past exp, within the skew: validated again, and still accepted
    again = await validator.identity(token)
    assert again == first and again is not first
    clock.now = first.expires_at + 61
    assert "expired (exp)" in await refused(validator, token)


async def test_the_cache_is_bounded(entra, upstream, clock):
    settings = load_settings(
        {
            "GATEWAY_BACKEND_1": "host=https://a.example",
            "GATEWAY_ENTRA_TENANT_ID": TENANT,
            "GATEWAY_ENTRA_AUDIENCE": AUDIENCE,
            "GATEWAY_ENTRA_ISSUER": entra.issuer,
        }
    )
    validator = EntraValidator(settings, upstream.get_json, clock=clock, cache_size=2)
    tokens = [entra.token({"jti": str(n)}) for n in range(3)]
    first = [await validator.identity(t) for t in tokens]
    assert await validator.identity(tokens[2]) is first[2]
    assert await validator.identity(tokens[0]) is not first[0]  # the oldest made room
