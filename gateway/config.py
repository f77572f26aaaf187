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
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError
from .settings_schema import DEFAULTS, ENTRIES, HTTP_ANSWER_LIMIT_S, SETTING_DOCS, SETTINGS, STRATEGIES
from .settings_schema import NAME as _NAME

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

_BACKEND_KEYS = frozenset(
    {
        "host",
        "mode",
        "processor",
        "usemi",
        "api-key",
        "probe",
        "priority",
        "weight",
        "tier",
        "deployments",
        "batch",
        "name",
    }
)
_MODES = frozenset({"direct", "apim"})
_PROCESSORS = frozenset({"openai", "none"})


@dataclass(frozen=True, slots=True)
class Backend:
    """One Azure OpenAI / AI Foundry endpoint (or an APIM in front of one)."""

    name: str
    host: str
    mode: str = "apim"
    processor: str = "openai"
    use_mi: bool = False
    api_key: str | None = field(default=None, repr=False)
    probe: str | None = None
    priority: int = 1
    weight: int = 1
    tier: str | None = None
    # model alias -> deployment name on this backend; empty means "any deployment, name unchanged".
    deployments: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    # model alias -> Global Batch deployment on this backend; a backend without one takes no batches.
    batch_deployments: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def parses_usage(self) -> bool:
        return self.processor == "openai"

    def deployment_for(self, name: str) -> str | None:
        """The deployment this backend uses for a client-facing model/deployment name, or None."""
        if not self.deployments:
            return name
        if name in self.deployments:
            return self.deployments[name]
        return name if name in self.deployments.values() else None

    def batch_deployment_for(self, model: str) -> str | None:
        """The Global Batch deployment this backend runs `model`'s batches on, or None."""
        if model in self.batch_deployments:
            return self.batch_deployments[model]
        return model if model in self.batch_deployments.values() else None

    def masked(self) -> dict[str, Any]:
        """A view safe to show operators: the key is reduced to whether one is set."""
        return {
            "name": self.name,
            "host": self.host,
            "mode": self.mode,
            "processor": self.processor,
            "usemi": self.use_mi,
            "api-key": "***" if self.api_key else None,
            "probe": self.probe,
            "priority": self.priority,
            "weight": self.weight,
            "tier": self.tier,
            "deployments": dict(self.deployments),
            "batch": dict(self.batch_deployments),
        }


_D = DEFAULTS  # each default is its SETTINGS text parsed; test_config checks every field is declared there


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting, typed. Names, defaults, parsers and docs are declared in `settings_schema.ENTRIES`."""

    backends: tuple[Backend, ...]
    # key -> caller name ("" for an unnamed key: its caller id is then a fingerprint of the key)
    api_keys: Mapping[str, str] = field(repr=False)
    auth_disabled: bool = _D["auth_disabled"]
    api_version: str = _D["api_version"]
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

    def strategy_for(self, model: str) -> str:
        return self.strategies.get(model, self.strategy)

    def models(self) -> list[str]:
        """Model names clients can ask for (the aliases the backends declare), sorted."""
        return sorted({alias for b in self.backends for alias in b.deployments})


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Reads and validates every setting; raises ConfigError naming the first wrong one."""
    env = os.environ if env is None else env
    unknown = sorted(k for k in env if k.startswith("GATEWAY_") and k not in SETTINGS and not _is_backend_setting(k))
    if unknown:
        raise ConfigError(unknown[0], "unknown setting (check the spelling; see README 'Configuration')")
    backends = _backends(env)
    return Settings(backends=backends, **{e.field: e.value(env) for e in ENTRIES if e.field})


def _backends(env: Mapping[str, str]) -> tuple[Backend, ...]:
    """The backends of GATEWAY_CONFIG_FILE, then those of GATEWAY_BACKEND_<n> in numeric order; names unique."""
    backends: list[Backend] = []
    if path := env.get("GATEWAY_CONFIG_FILE", SETTINGS["GATEWAY_CONFIG_FILE"]).strip():
        backends.extend(_backends_from_file(path))
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


def parse_backend(connection_string: str, *, setting: str) -> Backend:
    """Parses `host=...;mode=...;...` (keys as in ARCHITECTURE §3). Values are never echoed in errors."""
    fields: dict[str, str] = {}
    for position, segment in enumerate(connection_string.split(";"), start=1):
        if not segment.strip():
            continue
        key, sep, value = segment.partition("=")
        if not sep:
            raise ConfigError(setting, f"segment {position} is not key=value")
        fields[key.strip().lower()] = value.strip()
    return _backend_from_fields(fields, setting)


def _backend_from_fields(fields: Mapping[str, Any], setting: str) -> Backend:
    for key in fields:
        if key not in _BACKEND_KEYS:
            raise ConfigError(setting, f"unknown key '{key}' (known: {', '.join(sorted(_BACKEND_KEYS))})")
    host = str(fields.get("host") or "").rstrip("/")
    parts = urlsplit(host)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(setting, "host must be an http(s) URL such as https://myres.openai.azure.com")
    if parts.query or parts.fragment:
        raise ConfigError(setting, "host must not carry a query or fragment")
    name = str(fields.get("name") or parts.hostname.split(".")[0])
    if not _NAME.match(name):
        raise ConfigError(setting, "name must be 1-63 letters, digits, '.', '_' or '-'")
    mode = str(fields.get("mode", "apim")).lower()
    if mode not in _MODES:
        raise ConfigError(setting, "mode must be 'direct' or 'apim'")
    processor = str(fields.get("processor", "OpenAI")).lower()
    if processor not in _PROCESSORS:
        raise ConfigError(setting, "processor must be 'OpenAI' or 'none'")
    probe = fields.get("probe") or None
    if probe is not None and not str(probe).startswith("/"):
        raise ConfigError(setting, "probe must be a path starting with '/'")
    return Backend(
        name=name,
        host=host,
        mode=mode,
        processor=processor,
        use_mi=_bool(fields.get("usemi", False), setting, "usemi"),
        api_key=str(fields["api-key"]) if fields.get("api-key") else None,
        probe=str(probe) if probe else None,
        priority=_int_field(fields.get("priority", 1), setting, "priority", minimum=1),
        weight=_int_field(fields.get("weight", 1), setting, "weight", minimum=0),
        tier=str(fields["tier"]) if fields.get("tier") else None,
        deployments=MappingProxyType(_deployments(fields.get("deployments"), setting)),
        batch_deployments=MappingProxyType(_deployments(fields.get("batch"), setting, key="batch")),
    )


def _deployments(value: Any, setting: str, key: str = "deployments") -> dict[str, str]:
    """`gpt-4o=gpt-4o-weu,gpt-4o-mini` (alias=deployment, or a name that is both), a list, or a mapping."""
    if value in (None, ""):
        return {}
    if isinstance(value, Mapping):
        items: Iterable[tuple[str, str]] = ((str(k), str(v)) for k, v in value.items())
    else:
        entries = value.split(",") if isinstance(value, str) else [str(v) for v in value]
        items = []
        for entry in entries:
            alias, _, deployment = entry.strip().partition("=")
            items.append((alias.strip(), (deployment or alias).strip()))
    result: dict[str, str] = {}
    for alias, deployment in items:
        if not alias or not deployment or "/" in alias + deployment:
            raise ConfigError(setting, f"{key} must be a comma list of model or model=deployment names")
        result[alias] = deployment
    return result


def _backends_from_file(path: str) -> list[Backend]:
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
    entries = data.get("backends") if isinstance(data, Mapping) else None
    if not isinstance(entries, list) or not all(isinstance(e, Mapping) for e in entries):
        raise ConfigError("GATEWAY_CONFIG_FILE", "must hold a 'backends' list of objects")
    extra = set(data) - {"backends"}
    if extra:
        raise ConfigError("GATEWAY_CONFIG_FILE", f"unknown top-level key '{sorted(extra)[0]}'")
    return [
        _backend_from_fields(
            {str(k).lower().replace("_", "-"): v for k, v in e.items()}, f"GATEWAY_CONFIG_FILE backends[{i}]"
        )
        for i, e in enumerate(entries)
    ]


def _is_backend_setting(key: str) -> bool:
    return key.startswith(BACKEND_PREFIX) and key[len(BACKEND_PREFIX) :].isdigit()


def _int_field(value: Any, setting: str, key: str, *, minimum: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(setting, f"{key} must be a whole number") from None
    if number < minimum:
        raise ConfigError(setting, f"{key} must be at least {minimum}")
    return number


def _bool(value: Any, setting: str, key: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no", ""):
        return False
    raise ConfigError(setting, f"{key} must be true or false")
