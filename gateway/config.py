"""Typed, frozen settings, parsed and validated once at start-up.

Backends come from `GATEWAY_BACKEND_<n>` connection strings, from the file named by `GATEWAY_CONFIG_FILE`
(JSON or YAML, same keys), or both. Every other setting the gateway reads is declared once in
`settings_schema.ENTRIES` (name, field, default, parser, doc); `SETTINGS` lists their defaults, so a typo in a
`GATEWAY_*` name fails at start-up instead of silently doing nothing, and the deployment templates can be checked
against one list.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .backend_config import Backend, backend_from_fields, parse_backend
from .errors import ConfigError
from .profiles import NO_LIMITS, PROFILE_PREFIX, CallerMap, Profile, parse_profile, profile_from_mapping
from .settings_schema import DEFAULTS, ENTRIES, HTTP_ANSWER_LIMIT_S, SETTING_DOCS, SETTINGS, STRATEGIES

__all__ = [
    "BACKEND_PREFIX",
    "HTTP_ANSWER_LIMIT_S",
    "SETTINGS",
    "SETTING_DOCS",
    "STRATEGIES",
    "Backend",
    "ConfigError",
    "Settings",
    "load_settings",
    "parse_backend",
]

BACKEND_PREFIX = "GATEWAY_BACKEND_"

_D = DEFAULTS  # each default is its SETTINGS text parsed; test_config checks every field is declared there


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting, typed. Names, defaults, parsers and docs are declared in `settings_schema.ENTRIES`."""

    backends: tuple[Backend, ...]
    # key -> caller name ("" for an unnamed key: its caller id is then a fingerprint of the key)
    api_keys: Mapping[str, str] = field(repr=False)
    auth_disabled: bool = _D["auth_disabled"]
    entra_tenant_id: str = _D["entra_tenant_id"]  # "" = Entra ID tokens are not accepted
    entra_audiences: frozenset[str] = _D["entra_audiences"]
    entra_issuer: str = _D["entra_issuer"]  # "" = the tenant's public-cloud v2 and v1 issuers
    entra_jwks_url: str = _D["entra_jwks_url"]  # "" = the jwks_uri of the OpenID configuration
    api_version: str = _D["api_version"]
    responses_api_version: str = _D["responses_api_version"]
    connect_timeout_s: float = _D["connect_timeout_s"]
    read_timeout_s: float = _D["read_timeout_s"]
    sync_budget_s: float = _D["sync_budget_s"]
    max_attempts: int = _D["max_attempts"]
    max_body_bytes: int = _D["max_body_bytes"]
    usage_file: str | None = _D["usage_file"]
    usage_table: str = _D["usage_table"]
    usage_flush_s: float = _D["usage_flush_s"]
    strategy: str = _D["strategy"]
    strategies: Mapping[str, str] = _D["strategies"]  # model -> strategy
    # connection string (may hold an account key); "" = the host's AzureWebJobsStorage
    state_storage: str = field(default=_D["state_storage"], repr=False)
    state_table: str = _D["state_table"]
    state_refresh_s: float = _D["state_refresh_s"]
    breaker_failures: int = _D["breaker_failures"]
    breaker_window_s: float = _D["breaker_window_s"]
    breaker_cooldown_s: float = _D["breaker_cooldown_s"]
    default_retry_after_s: float = _D["default_retry_after_s"]
    max_wait_s: float = _D["max_wait_s"]
    probe_schedule: str = _D["probe_schedule"]
    latency_explore: float = _D["latency_explore"]
    capacity_window_s: float = _D["capacity_window_s"]
    async_models: frozenset[str] = _D["async_models"]
    async_callers: frozenset[str] = _D["async_callers"]
    async_ttl_s: float = _D["async_ttl_s"]
    expose_durable_urls: bool = _D["expose_durable_urls"]
    required_headers: frozenset[str] = _D["required_headers"]
    forward_headers: frozenset[str] = _D["forward_headers"]
    aging_s: float = _D["aging_s"]
    # Profiles by name (GATEWAY_PROFILE_<NAME> and the config file's `profiles`), and who gets which.
    profiles: Mapping[str, Profile] = field(default_factory=lambda: MappingProxyType({}))
    caller_profiles: CallerMap = _D["caller_profiles"]
    default_profile: str = _D["default_profile"]
    async_max_attempts: int = _D["async_max_attempts"]
    tokens_per_second: float = _D["tokens_per_second"]
    results_container: str = _D["results_container"]
    result_inline_bytes: int = _D["result_inline_bytes"]
    completions_entity: str = _D["completions_entity"]
    completions_queue: str = _D["completions_queue"]
    purge_after_days: float = _D["purge_after_days"]
    housekeeping_schedule: str = _D["housekeeping_schedule"]
    batch_max_bytes: int = _D["batch_max_bytes"]
    batch_max_lines: int = _D["batch_max_lines"]
    batch_max_resubmits: int = _D["batch_max_resubmits"]
    batch_poll_min_s: float = _D["batch_poll_min_s"]
    batch_poll_max_s: float = _D["batch_poll_max_s"]
    servicebus_connection: str = field(default=_D["servicebus_connection"], repr=False)
    servicebus_namespace: str = _D["servicebus_namespace"]
    servicebus_client_id: str = _D["servicebus_client_id"]

    def profile_for(
        self,
        caller: str,
        roles: Iterable[str] = (),
        groups: Iterable[str] = (),
        profiles: Mapping[str, Profile] | None = None,
    ) -> Profile:
        """A caller's profile among `profiles` (the configured ones by default; governance passes them with the
        operators' overrides): mapped, else the default, else no limits."""
        name = self.caller_profiles.profile_name(caller, roles, groups) or self.default_profile
        profile = (self.profiles if profiles is None else profiles).get(name, NO_LIMITS) if name else NO_LIMITS
        if caller in self.async_callers and profile.async_mode != "always":  # the deprecated alias
            profile = replace(profile, async_mode="always")
        return profile

    def strategy_for(self, model: str) -> str:
        return self.strategies.get(model, self.strategy)

    def models(self) -> list[str]:
        """Model names clients can ask for (the aliases the backends declare), sorted."""
        return sorted({alias for b in self.backends for alias in b.deployments})


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Reads and validates every setting; raises ConfigError naming the first wrong one."""
    env = os.environ if env is None else env
    unknown = sorted(
        k
        for k in env
        if k.startswith("GATEWAY_") and k not in SETTINGS and not _is_backend_setting(k) and not _is_profile_setting(k)
    )
    if unknown:
        raise ConfigError(unknown[0], "unknown setting (check the spelling; see README 'Configuration')")
    file = _config_file(env)
    backends = _backends(env, file)
    profiles = _profiles(env, file)
    settings = Settings(
        backends=backends, profiles=MappingProxyType(profiles), **{e.field: e.value(env) for e in ENTRIES if e.field}
    )
    for name in sorted(settings.caller_profiles.names()):
        if name not in profiles:
            raise ConfigError("GATEWAY_CALLER_PROFILES", f"no profile named '{name}' (define GATEWAY_PROFILE_...)")
    if settings.default_profile and settings.default_profile not in profiles:
        raise ConfigError("GATEWAY_DEFAULT_PROFILE", "names a profile that is not defined")
    _check_entra(settings)
    return settings


def _check_entra(s: Settings) -> None:
    """Entra ID settings come together: a tenant without an audience (or the reverse) would accept nothing."""
    if s.entra_audiences and not s.entra_tenant_id:
        raise ConfigError("GATEWAY_ENTRA_TENANT_ID", "must be set when GATEWAY_ENTRA_AUDIENCE is")
    if s.entra_tenant_id and not s.entra_audiences:
        raise ConfigError("GATEWAY_ENTRA_AUDIENCE", "must be set when GATEWAY_ENTRA_TENANT_ID is")
    for name, value in (("GATEWAY_ENTRA_ISSUER", s.entra_issuer), ("GATEWAY_ENTRA_JWKS_URL", s.entra_jwks_url)):
        if value and not s.entra_tenant_id:
            raise ConfigError(name, "overrides a default of GATEWAY_ENTRA_TENANT_ID, which is not set")


def _profiles(env: Mapping[str, str], file: Mapping[str, Any]) -> dict[str, Profile]:
    """The profiles of GATEWAY_CONFIG_FILE, then those of GATEWAY_PROFILE_<NAME> (which win on a clash)."""
    profiles: dict[str, Profile] = {}
    entries = file.get("profiles", {})
    if not isinstance(entries, Mapping) or not all(isinstance(v, Mapping) for v in entries.values()):
        raise ConfigError("GATEWAY_CONFIG_FILE", "'profiles' must map names to objects")
    for name, fields in entries.items():
        setting = f"GATEWAY_CONFIG_FILE profiles.{str(name)[:32]}"
        profiles[str(name).lower()] = profile_from_mapping(
            str(name).lower(), {str(k).lower(): v for k, v in fields.items()}, setting=setting
        )
    for key in sorted(k for k in env if _is_profile_setting(k)):
        name = key[len(PROFILE_PREFIX) :].lower()
        profiles[name] = parse_profile(name, env[key], setting=key)
    return profiles


def _config_file(env: Mapping[str, str]) -> Mapping[str, Any]:
    """GATEWAY_CONFIG_FILE's content (JSON or YAML): `backends` and/or `profiles`; {} when unset."""
    path = env.get("GATEWAY_CONFIG_FILE", SETTINGS["GATEWAY_CONFIG_FILE"]).strip()
    return _read_config_file(path) if path else {}


def _backends(env: Mapping[str, str], file: Mapping[str, Any]) -> tuple[Backend, ...]:
    """The backends of GATEWAY_CONFIG_FILE, then those of GATEWAY_BACKEND_<n> in numeric order; names unique."""
    backends: list[Backend] = []
    entries = file.get("backends", [])
    if not isinstance(entries, list) or not all(isinstance(e, Mapping) for e in entries):
        raise ConfigError("GATEWAY_CONFIG_FILE", "'backends' must be a list of objects")
    backends.extend(
        backend_from_fields(
            {str(k).lower().replace("_", "-"): v for k, v in e.items()}, f"GATEWAY_CONFIG_FILE backends[{i}]"
        )
        for i, e in enumerate(entries)
    )
    for key in sorted((k for k in env if _is_backend_setting(k)), key=lambda k: int(k[len(BACKEND_PREFIX) :])):
        backends.append(parse_backend(env[key], setting=key))
    if not backends:
        raise ConfigError("GATEWAY_BACKEND_1", "no backend configured (set GATEWAY_BACKEND_1 or GATEWAY_CONFIG_FILE)")
    seen: set[str] = set()
    for b in backends:
        if b.name in seen:
            raise ConfigError(b.name, "two backends have this name; names must be unique")
        seen.add(b.name)
    return tuple(backends)


def _read_config_file(path: str) -> Mapping[str, Any]:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("GATEWAY_CONFIG_FILE", f"cannot read the file ({exc.strerror})") from None
    try:
        if file.suffix.lower() in (".yaml", ".yml"):
            import yaml  # only needed for YAML files; kept off the import path of everyone else

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:
        raise ConfigError("GATEWAY_CONFIG_FILE", f"not valid JSON/YAML ({type(exc).__name__})") from None
    if not isinstance(data, Mapping) or not ("backends" in data or "profiles" in data):
        raise ConfigError("GATEWAY_CONFIG_FILE", "must hold a 'backends' list of objects and/or 'profiles'")
    extra = set(data) - {"backends", "profiles"}
    if extra:
        raise ConfigError("GATEWAY_CONFIG_FILE", f"unknown top-level key '{sorted(extra)[0]}'")
    return data


def _is_profile_setting(key: str) -> bool:
    return key.startswith(PROFILE_PREFIX) and len(key) > len(PROFILE_PREFIX)


def _is_backend_setting(key: str) -> bool:
    return key.startswith(BACKEND_PREFIX) and key[len(BACKEND_PREFIX) :].isdigit()
