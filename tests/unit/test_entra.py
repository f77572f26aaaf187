"""Entra ID: its settings, the invalid_token error, and the refusals decided before any key is fetched."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jwt
import pytest

from gateway import errors
from gateway.config import ConfigError, load_settings
from gateway.entra import EntraValidator, Identity

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
BASE = {"GATEWAY_BACKEND_1": "host=https://a.example"}
ENTRA = {**BASE, "GATEWAY_ENTRA_TENANT_ID": TENANT, "GATEWAY_ENTRA_AUDIENCE": "api://gw, 3f2c6a51-client"}


def test_entra_settings_parse_and_default_to_off():
    off = load_settings(BASE)
    assert (off.entra_tenant_id, off.entra_audiences, off.entra_issuer, off.entra_jwks_url) == ("", set(), "", "")
    s = load_settings(
        {
            **ENTRA,
            "GATEWAY_ENTRA_ISSUER": "https://login.microsoftonline.us/" + TENANT + "/v2.0",
            "GATEWAY_ENTRA_JWKS_URL": "http://127.0.0.1:8123/keys",  # plain http on loopback: tests
        }
    )
    assert s.entra_tenant_id == TENANT and s.entra_audiences == {"api://gw", "3f2c6a51-client"}
    assert s.entra_issuer.endswith("/v2.0") and s.entra_jwks_url == "http://127.0.0.1:8123/keys"
    assert load_settings({**ENTRA, "GATEWAY_ENTRA_TENANT_ID": "contoso.onmicrosoft.com"}).entra_tenant_id


@pytest.mark.parametrize(
    ("env", "setting", "fragment"),
    [
        ({"GATEWAY_ENTRA_AUDIENCE": "api://gw"}, "GATEWAY_ENTRA_TENANT_ID", "must be set"),
        ({"GATEWAY_ENTRA_TENANT_ID": TENANT}, "GATEWAY_ENTRA_AUDIENCE", "must be set"),
        ({"GATEWAY_ENTRA_TENANT_ID": TENANT, "GATEWAY_ENTRA_AUDIENCE": " , "}, "GATEWAY_ENTRA_AUDIENCE", "must be set"),
        ({"GATEWAY_ENTRA_JWKS_URL": "https://k.example/keys"}, "GATEWAY_ENTRA_JWKS_URL", "not set"),
        ({**ENTRA, "GATEWAY_ENTRA_TENANT_ID": "common"}, "GATEWAY_ENTRA_TENANT_ID", "not common"),
        ({**ENTRA, "GATEWAY_ENTRA_TENANT_ID": "Organizations"}, "GATEWAY_ENTRA_TENANT_ID", "not common"),
        ({**ENTRA, "GATEWAY_ENTRA_TENANT_ID": "a/b"}, "GATEWAY_ENTRA_TENANT_ID", "tenant id"),
        ({**ENTRA, "GATEWAY_ENTRA_ISSUER": "http://login.example/t/v2.0"}, "GATEWAY_ENTRA_ISSUER", "https"),
        ({**ENTRA, "GATEWAY_ENTRA_JWKS_URL": "ftp://127.0.0.1/keys"}, "GATEWAY_ENTRA_JWKS_URL", "https"),
        ({**ENTRA, "GATEWAY_ENTRA_JWKS_URL": "keys.example/keys"}, "GATEWAY_ENTRA_JWKS_URL", "https"),
        ({**ENTRA, "GATEWAY_ENTRA_JWKS_URL": "https://k.example/keys?x=1"}, "GATEWAY_ENTRA_JWKS_URL", "query"),
        ({**ENTRA, "GATEWAY_ENTRA_ISSUER": "https://[bad"}, "GATEWAY_ENTRA_ISSUER", "https"),
    ],
)
def test_wrong_entra_settings_name_the_setting(env, setting, fragment):
    with pytest.raises(ConfigError) as info:
        load_settings({**BASE, **env})
    assert info.value.setting == setting and fragment in info.value.problem


def test_invalid_token_is_an_openai_shaped_401_with_a_bearer_challenge():
    error = errors.invalid_token("expired (exp)")
    assert (error.status, error.type, error.code) == (401, "authentication_error", "invalid_token")
    assert error.headers == {"WWW-Authenticate": 'Bearer error="invalid_token"'}
    body = json.loads(error.body())["error"]
    assert body["message"] == "Invalid bearer token: expired (exp)." and body["code"] == "invalid_token"


def test_identity_is_frozen():
    identity = Identity("app:x", "app", frozenset({"r"}), frozenset(), 1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        identity.caller = "app:y"  # type: ignore[misc]


class NoNetwork:
    """The fetcher for tokens refused on their header alone: any fetch is a failure of the test."""

    def __init__(self) -> None:
        self.urls: list[str] = []

    async def __call__(self, url: str, headers: dict[str, str]) -> Any:
        self.urls.append(url)
        raise AssertionError("no key should be fetched for this token")


@pytest.mark.parametrize(
    ("token", "check"),
    [
        ("not-a-jwt", "malformed"),
        (jwt.encode({"aud": "api://gw"}, None, algorithm="none", headers={"kid": "k1"}), "algorithm"),
        (jwt.encode({"aud": "api://gw"}, "a-shared-secret-of-32-bytes-long!", algorithm="HS256"), "algorithm"),
        (jwt.encode({"aud": "api://gw"}, "s" * 64, algorithm="HS512"), "algorithm"),
        ("eyJhbGciOiJSUzI1NiJ9.e30.c2ln", "no signing key id (kid)"),
    ],
)
async def test_header_checks_refuse_before_any_key_is_fetched(token, check):
    fetcher = NoNetwork()
    validator = EntraValidator(load_settings(ENTRA), fetcher)
    with pytest.raises(errors.GatewayError) as info:
        await validator.identity(token)
    assert info.value.code == "invalid_token" and check in info.value.message
    assert token not in info.value.message and fetcher.urls == []
