"""A backend's connection string (`GATEWAY_BACKEND_<n>` or an entry of GATEWAY_CONFIG_FILE): parsed and checked.

`host=https://weu.openai.azure.com;mode=direct;usemi=true;priority=1;tier=ptu;deployments=gpt-4o=gpt-4o-weu`:
unknown keys and bad values are start-up errors naming the setting; values are never echoed (keys are secrets).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError
from .settings_schema import NAME as _NAME
from .surface import BACKEND_APIS

__all__ = ["Backend", "backend_from_fields", "parse_backend"]

_BACKEND_KEYS = frozenset(
    {
        "host",
        "api",
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
        "timeout",
        "connect_timeout",
        "concurrency",
        "reserved",
    }
)
_MODES = frozenset({"direct", "apim"})
_PROCESSORS = frozenset({"openai", "none"})


@dataclass(frozen=True, slots=True)
class Backend:
    """One Azure OpenAI / AI Foundry endpoint (or an APIM in front of one)."""

    name: str
    host: str
    api: str = "deployments"  # or "v1": /openai/v1/{operation}, the deployment as the body's model
    mode: str = "apim"
    processor: str = "openai"
    use_mi: bool = False
    api_key: str | None = field(default=None, repr=False)
    probe: str | None = None
    priority: int = 1
    weight: int = 1
    tier: str = "paygo"  # ptu (dedicated capacity, used first) | paygo (spill, for profiles allowed on it)
    timeout_s: float | None = None  # read timeout for this backend; None: GATEWAY_READ_TIMEOUT_S
    connect_timeout_s: float | None = None  # None: GATEWAY_CONNECT_TIMEOUT_S
    concurrency: int | None = None  # in-flight requests across all instances; None: unlimited
    reserved: int = 0  # of those, slots only priority-1 requests may take
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
            "api": self.api,
            "mode": self.mode,
            "processor": self.processor,
            "usemi": self.use_mi,
            "api-key": "***" if self.api_key else None,
            "probe": self.probe,
            "priority": self.priority,
            "weight": self.weight,
            "tier": self.tier,
            "timeout": self.timeout_s,
            "connect_timeout": self.connect_timeout_s,
            "concurrency": self.concurrency,
            "reserved": self.reserved,
            "deployments": dict(self.deployments),
            "batch": dict(self.batch_deployments),
        }


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
    return backend_from_fields(fields, setting)


def backend_from_fields(fields: Mapping[str, Any], setting: str) -> Backend:
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
    api = str(fields.get("api") or "deployments").lower()
    if api not in BACKEND_APIS:
        raise ConfigError(setting, "api must be 'deployments' or 'v1'")
    mode = str(fields.get("mode", "apim")).lower()
    if mode not in _MODES:
        raise ConfigError(setting, "mode must be 'direct' or 'apim'")
    processor = str(fields.get("processor", "OpenAI")).lower()
    if processor not in _PROCESSORS:
        raise ConfigError(setting, "processor must be 'OpenAI' or 'none'")
    probe = fields.get("probe") or None
    if probe is not None and not str(probe).startswith("/"):
        raise ConfigError(setting, "probe must be a path starting with '/'")
    tier = str(fields.get("tier") or "paygo").lower()
    if tier not in ("ptu", "paygo"):
        raise ConfigError(setting, "tier must be 'ptu' or 'paygo'")
    concurrency = (
        _int_field(fields["concurrency"], setting, "concurrency", minimum=1) if "concurrency" in fields else None
    )
    reserved = _int_field(fields.get("reserved", 0), setting, "reserved", minimum=0)
    if reserved and (concurrency is None or reserved >= concurrency):
        raise ConfigError(setting, "reserved must be less than concurrency (it is a share of those slots)")
    return Backend(
        name=name,
        host=host,
        api=api,
        mode=mode,
        processor=processor,
        use_mi=_bool(fields.get("usemi", False), setting, "usemi"),
        api_key=str(fields["api-key"]) if fields.get("api-key") else None,
        probe=str(probe) if probe else None,
        priority=_int_field(fields.get("priority", 1), setting, "priority", minimum=1),
        weight=_int_field(fields.get("weight", 1), setting, "weight", minimum=0),
        tier=tier,
        timeout_s=_seconds_field(fields.get("timeout"), setting, "timeout"),
        connect_timeout_s=_seconds_field(fields.get("connect_timeout"), setting, "connect_timeout"),
        concurrency=concurrency,
        reserved=reserved,
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


def _int_field(value: Any, setting: str, key: str, *, minimum: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(setting, f"{key} must be a whole number") from None
    if number < minimum:
        raise ConfigError(setting, f"{key} must be at least {minimum}")
    return number


def _seconds_field(value: Any, setting: str, key: str) -> float | None:
    if value in (None, ""):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ConfigError(setting, f"{key} must be a number of seconds") from None
    if seconds < 0.1:
        raise ConfigError(setting, f"{key} must be at least 0.1")
    return seconds


def _bool(value: Any, setting: str, key: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no", ""):
        return False
    raise ConfigError(setting, f"{key} must be true or false")
