"""Typed, frozen settings, parsed and validated once at start-up.

Backends come from `GATEWAY_BACKEND_<n>` connection strings, from the file named by `GATEWAY_CONFIG_FILE`
(JSON or YAML, same keys), or both. Every other setting the gateway reads is listed in `SETTINGS` with its
default, so a typo in a `GATEWAY_*` name fails at start-up instead of silently doing nothing, and the
deployment templates can be checked against one list.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError

__all__ = ["SETTINGS", "Backend", "ConfigError", "Settings", "load_settings", "parse_backend"]

# Every GATEWAY_* setting besides the backends, with its default ("" = unset). One place, one default.
SETTINGS: Mapping[str, str] = MappingProxyType(
    {
        "GATEWAY_CONFIG_FILE": "",
        "GATEWAY_API_KEYS": "",
        "GATEWAY_AUTH": "keys",
        "GATEWAY_API_VERSION": "2024-10-21",
        "GATEWAY_CONNECT_TIMEOUT_S": "5",
        "GATEWAY_READ_TIMEOUT_S": "120",
        "GATEWAY_SYNC_BUDGET_S": "200",
        "GATEWAY_MAX_ATTEMPTS": "3",
        "GATEWAY_MAX_BODY_BYTES": str(25 * 1024 * 1024),
        "GATEWAY_USAGE_FILE": "",
        # Backend pool: strategies, shared breaker state, probes.
        "GATEWAY_STRATEGY": "priority",
        "GATEWAY_STRATEGIES": "",
        "GATEWAY_STATE_STORAGE": "",
        "GATEWAY_STATE_TABLE": "gatewaystate",
        "GATEWAY_STATE_REFRESH_MS": "1000",
        "GATEWAY_BREAKER_FAILURES": "5",
        "GATEWAY_BREAKER_WINDOW_S": "10",
        "GATEWAY_BREAKER_COOLDOWN_S": "10",
        "GATEWAY_DEFAULT_RETRY_AFTER_S": "10",
        "GATEWAY_MAX_WAIT_S": "30",
        "GATEWAY_PROBE_SCHEDULE": "*/30 * * * * *",
        "GATEWAY_LATENCY_EXPLORE": "0.05",
        "GATEWAY_CAPACITY_WINDOW_S": "60",
        # Async path: Durable orchestrations, results in Blob Storage, completion messages.
        "GATEWAY_ASYNC_MODELS": "",
        "GATEWAY_ASYNC_CALLERS": "",
        "GATEWAY_ASYNC_TTL_S": "86400",
        "GATEWAY_ASYNC_MAX_ATTEMPTS": "20",
        "GATEWAY_TOKENS_PER_SECOND": "40",
        "GATEWAY_RESULTS_CONTAINER": "gateway-results",
        "GATEWAY_RESULT_INLINE_BYTES": "32768",
        "GATEWAY_COMPLETIONS_ENTITY": "completions",
        "GATEWAY_COMPLETIONS_QUEUE": "gateway-completions",
        "GATEWAY_PURGE_AFTER_DAYS": "7",
        "GATEWAY_HOUSEKEEPING_SCHEDULE": "0 */15 * * * *",
        # Batch API: files and batches managed across backends.
        "GATEWAY_BATCH_MAX_BYTES": str(100 * 1024 * 1024),
        "GATEWAY_BATCH_MAX_LINES": "100000",
        "GATEWAY_BATCH_MAX_RESUBMITS": "2",
        "GATEWAY_BATCH_POLL_MIN_S": "10",
        "GATEWAY_BATCH_POLL_MAX_S": "300",
        # Service Bus for completion messages (the Functions identity-based connection convention).
        "COMPLETIONS_SERVICEBUS": "",
        "COMPLETIONS_SERVICEBUS__fullyQualifiedNamespace": "",
        "COMPLETIONS_SERVICEBUS__clientId": "",
    }
)
STRATEGIES = frozenset({"priority", "weighted", "round-robin", "random", "latency", "capacity"})

BACKEND_PREFIX = "GATEWAY_BACKEND_"
# The limit Azure puts on an HTTP-triggered function's answer, whatever functionTimeout says.
HTTP_ANSWER_LIMIT_S = 230

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
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


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


@dataclass(frozen=True, slots=True)
class Settings:
    backends: tuple[Backend, ...]
    # key -> caller name ("" for an unnamed key: its caller id is then a fingerprint of the key)
    api_keys: Mapping[str, str] = field(repr=False)
    auth_disabled: bool = False
    api_version: str = "2024-10-21"
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 120.0
    sync_budget_s: float = 200.0
    max_attempts: int = 3
    max_body_bytes: int = 25 * 1024 * 1024
    usage_file: str | None = None
    strategy: str = "priority"
    strategies: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))  # model -> strategy
    state_storage: str = ""  # connection string; "" = the host's AzureWebJobsStorage
    state_table: str = "gatewaystate"
    state_refresh_s: float = 1.0
    breaker_failures: int = 5
    breaker_window_s: float = 10.0
    breaker_cooldown_s: float = 10.0
    default_retry_after_s: float = 10.0
    max_wait_s: float = 30.0
    probe_schedule: str = "*/30 * * * * *"
    latency_explore: float = 0.05
    capacity_window_s: float = 60.0
    async_models: frozenset[str] = frozenset()
    async_callers: frozenset[str] = frozenset()
    async_ttl_s: float = 86400.0
    async_max_attempts: int = 20
    tokens_per_second: float = 40.0
    results_container: str = "gateway-results"
    result_inline_bytes: int = 32768
    completions_entity: str = "completions"
    completions_queue: str = "gateway-completions"
    purge_after_days: float = 7.0
    housekeeping_schedule: str = "0 */15 * * * *"
    batch_max_bytes: int = 100 * 1024 * 1024
    batch_max_lines: int = 100000
    batch_max_resubmits: int = 2
    batch_poll_min_s: float = 10.0
    batch_poll_max_s: float = 300.0
    servicebus_connection: str = field(default="", repr=False)
    servicebus_namespace: str = ""
    servicebus_client_id: str = ""

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

    def get(name: str) -> str:
        return env.get(name, SETTINGS[name]).strip()

    backends: list[Backend] = []
    if path := get("GATEWAY_CONFIG_FILE"):
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

    auth = get("GATEWAY_AUTH").lower()
    if auth not in ("keys", "none"):
        raise ConfigError("GATEWAY_AUTH", "must be 'keys' (default) or 'none'")
    api_keys = MappingProxyType(_api_keys(get("GATEWAY_API_KEYS")))

    sync_budget = _number(get, "GATEWAY_SYNC_BUDGET_S", float, minimum=1)
    if sync_budget >= HTTP_ANSWER_LIMIT_S:
        raise ConfigError(
            "GATEWAY_SYNC_BUDGET_S", f"must stay under {HTTP_ANSWER_LIMIT_S} s, the limit Azure puts on HTTP answers"
        )
    api_version = get("GATEWAY_API_VERSION")
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}(-preview)?", api_version):
        raise ConfigError("GATEWAY_API_VERSION", "must look like 2024-10-21 or 2025-04-01-preview")
    return Settings(
        backends=tuple(backends),
        api_keys=api_keys,
        auth_disabled=auth == "none",
        api_version=api_version,
        connect_timeout_s=_number(get, "GATEWAY_CONNECT_TIMEOUT_S", float, minimum=0.1),
        read_timeout_s=_number(get, "GATEWAY_READ_TIMEOUT_S", float, minimum=0.1),
        sync_budget_s=sync_budget,
        max_attempts=_number(get, "GATEWAY_MAX_ATTEMPTS", int, minimum=1),
        max_body_bytes=_number(get, "GATEWAY_MAX_BODY_BYTES", int, minimum=1024),
        usage_file=get("GATEWAY_USAGE_FILE") or None,
        strategy=_strategy(get("GATEWAY_STRATEGY"), "GATEWAY_STRATEGY"),
        strategies=MappingProxyType(_strategies(get("GATEWAY_STRATEGIES"))),
        state_storage=get("GATEWAY_STATE_STORAGE"),
        state_table=_table_name(get("GATEWAY_STATE_TABLE")),
        state_refresh_s=_number(get, "GATEWAY_STATE_REFRESH_MS", int, minimum=50) / 1000,
        breaker_failures=_number(get, "GATEWAY_BREAKER_FAILURES", int, minimum=1),
        breaker_window_s=_number(get, "GATEWAY_BREAKER_WINDOW_S", float, minimum=0.1),
        breaker_cooldown_s=_number(get, "GATEWAY_BREAKER_COOLDOWN_S", float, minimum=0.1),
        default_retry_after_s=_number(get, "GATEWAY_DEFAULT_RETRY_AFTER_S", float, minimum=0),
        max_wait_s=_number(get, "GATEWAY_MAX_WAIT_S", float, minimum=0),
        probe_schedule=_schedule(get("GATEWAY_PROBE_SCHEDULE")),
        latency_explore=_fraction(get("GATEWAY_LATENCY_EXPLORE"), "GATEWAY_LATENCY_EXPLORE"),
        capacity_window_s=_number(get, "GATEWAY_CAPACITY_WINDOW_S", float, minimum=1),
        async_models=frozenset(m.strip() for m in get("GATEWAY_ASYNC_MODELS").split(",") if m.strip()),
        async_callers=frozenset(c.strip() for c in get("GATEWAY_ASYNC_CALLERS").split(",") if c.strip()),
        async_ttl_s=_number(get, "GATEWAY_ASYNC_TTL_S", float, minimum=1),
        async_max_attempts=_number(get, "GATEWAY_ASYNC_MAX_ATTEMPTS", int, minimum=1),
        tokens_per_second=_number(get, "GATEWAY_TOKENS_PER_SECOND", float, minimum=0.1),
        results_container=_container(get("GATEWAY_RESULTS_CONTAINER")),
        result_inline_bytes=_number(get, "GATEWAY_RESULT_INLINE_BYTES", int, minimum=0),
        completions_entity=get("GATEWAY_COMPLETIONS_ENTITY") or "completions",
        completions_queue=_container(get("GATEWAY_COMPLETIONS_QUEUE"), "GATEWAY_COMPLETIONS_QUEUE"),
        purge_after_days=_number(get, "GATEWAY_PURGE_AFTER_DAYS", float, minimum=0),
        housekeeping_schedule=_schedule(get("GATEWAY_HOUSEKEEPING_SCHEDULE"), "GATEWAY_HOUSEKEEPING_SCHEDULE"),
        batch_max_bytes=_number(get, "GATEWAY_BATCH_MAX_BYTES", int, minimum=1024),
        batch_max_lines=_number(get, "GATEWAY_BATCH_MAX_LINES", int, minimum=1),
        batch_max_resubmits=_number(get, "GATEWAY_BATCH_MAX_RESUBMITS", int, minimum=0),
        batch_poll_min_s=_number(get, "GATEWAY_BATCH_POLL_MIN_S", float, minimum=0.05),
        batch_poll_max_s=_number(get, "GATEWAY_BATCH_POLL_MAX_S", float, minimum=0.05),
        servicebus_connection=get("COMPLETIONS_SERVICEBUS"),
        servicebus_namespace=get("COMPLETIONS_SERVICEBUS__fullyQualifiedNamespace"),
        servicebus_client_id=get("COMPLETIONS_SERVICEBUS__clientId"),
    )


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


def _api_keys(value: str) -> dict[str, str]:
    """`team-a:KEY1,team-b:KEY2,KEY3`: a key, optionally named after its caller (shown in usage and messages)."""
    keys: dict[str, str] = {}
    for entry in filter(None, (e.strip() for e in value.split(","))):
        name, sep, key = entry.partition(":")
        if not sep or not _NAME.match(name):
            name, key = "", entry  # an unnamed key (keys themselves never contain ':')
        if not key:
            raise ConfigError("GATEWAY_API_KEYS", "an entry has a caller name but no key")
        if name in keys.values() and name:
            raise ConfigError("GATEWAY_API_KEYS", f"the caller name '{name}' is used twice")
        keys[key] = name
    return keys


def _strategy(value: str, setting: str) -> str:
    value = value.lower()
    if value not in STRATEGIES:
        raise ConfigError(setting, f"must be one of {', '.join(sorted(STRATEGIES))}")
    return value


def _strategies(value: str) -> dict[str, str]:
    """`gpt-4o=latency,text-embedding-3-small=weighted`: a strategy per model alias."""
    result: dict[str, str] = {}
    for entry in filter(None, (e.strip() for e in value.split(","))):
        model, sep, strategy = entry.partition("=")
        if not sep or not model.strip():
            raise ConfigError("GATEWAY_STRATEGIES", "must be a comma list of model=strategy")
        result[model.strip()] = _strategy(strategy.strip(), "GATEWAY_STRATEGIES")
    return result


def _table_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]{2,62}", value):
        raise ConfigError("GATEWAY_STATE_TABLE", "must be 3-63 letters and digits, starting with a letter")
    return value


def _schedule(value: str, setting: str = "GATEWAY_PROBE_SCHEDULE") -> str:
    if len(value.split()) != 6:
        raise ConfigError(setting, "must be a six-field NCRONTAB expression, e.g. */30 * * * * *")
    return value


def _container(value: str, setting: str = "GATEWAY_RESULTS_CONTAINER") -> str:
    if not re.fullmatch(r"[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]", value):
        raise ConfigError(setting, "must be 3-63 lower-case letters, digits and single hyphens")
    return value


def _fraction(value: str, setting: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(setting, f"must be a number between 0 and 1, got '{value}'") from None
    if not 0 <= number <= 1:
        raise ConfigError(setting, "must be between 0 and 1")
    return number


def _is_backend_setting(key: str) -> bool:
    return key.startswith(BACKEND_PREFIX) and key[len(BACKEND_PREFIX) :].isdigit()


def _number[T: (int, float)](get: Any, name: str, kind: type[T], *, minimum: float) -> T:
    raw = get(name)
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(name, f"must be a {'whole ' if kind is int else ''}number, got '{raw}'") from None
    if value < minimum:
        raise ConfigError(name, f"must be at least {minimum}")
    return value


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
