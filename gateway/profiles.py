"""Profiles: what a caller may do (models, RPM/TPM, async, priority, tiers, concurrency, TTL, headers).

A profile is written like a backend, `GATEWAY_PROFILE_GOLD=rpm=600;tpm=200000;models=gpt-4o,gpt-4o-mini`, or as
an object under `profiles` in GATEWAY_CONFIG_FILE, or as a JSON override an operator PUTs at run time. Callers
are mapped to profiles by name, application, user, app role or group (`GATEWAY_CALLER_PROFILES`); unmapped
callers get `GATEWAY_DEFAULT_PROFILE`, and without one they have no limits. Pure: parsing and lookup only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import ConfigError

__all__ = [
    "ASYNC_MODES",
    "NO_LIMITS",
    "PROFILE_PREFIX",
    "TIERS",
    "CallerMap",
    "Profile",
    "parse_caller_map",
    "parse_profile",
    "profile_from_mapping",
]

PROFILE_PREFIX = "GATEWAY_PROFILE_"
ASYNC_MODES = frozenset({"allow", "deny", "always"})
TIERS = frozenset({"ptu", "paygo"})
_KEYS = frozenset(
    {"rpm", "tpm", "models", "async", "priority", "tiers", "concurrency", "ttl", "per", "reserve", "headers"}
)
_PROFILE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_HEADER = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]{1,64}$")
_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True, slots=True)
class Profile:
    """Limits and rights of the callers mapped to it. None means "no limit" / "everything"."""

    name: str
    rpm: int | None = None
    tpm: int | None = None
    models: frozenset[str] | None = None
    async_mode: str = "allow"  # allow | deny (never deferred) | always (every POST deferred)
    priority: int = 5  # 1 (highest) .. 9; enforced by the lanes
    tiers: frozenset[str] | None = None  # ptu, paygo; enforced by the lanes
    concurrency: int | None = None  # requests in flight at once (gateway.slots.CallerSlots)
    ttl_s: float | None = None  # enforced by the lanes
    per_model: bool = False  # limits counted per (caller, model) instead of per caller
    reserve: int | None = None  # tokens reserved when a request names no max_tokens
    headers: tuple[str, ...] = ()  # headers this profile's callers must send

    @property
    def limited(self) -> bool:
        return self.rpm is not None or self.tpm is not None

    def allows_model(self, model: str) -> bool:
        return self.models is None or model in self.models

    def as_dict(self) -> dict[str, Any]:
        """The operator's view, in the keys the profile is written with."""
        return {
            "rpm": self.rpm,
            "tpm": self.tpm,
            "models": sorted(self.models) if self.models is not None else None,
            "async": self.async_mode,
            "priority": self.priority,
            "tiers": sorted(self.tiers) if self.tiers is not None else None,
            "concurrency": self.concurrency,
            "ttl": self.ttl_s,
            "per": "caller,model" if self.per_model else "caller",
            "reserve": self.reserve,
            "headers": list(self.headers),
        }


NO_LIMITS = Profile("")  # callers without a profile: everything allowed, nothing counted


def parse_profile(name: str, text: str, *, setting: str) -> Profile:
    """`rpm=600;tpm=200000;models=a,b;async=deny;...`; unknown keys and bad values name the setting."""
    fields: dict[str, str] = {}
    for segment in filter(None, (s.strip() for s in text.split(";"))):
        key, sep, value = segment.partition("=")
        if not sep:
            raise ConfigError(setting, f"'{key.strip()[:32]}' is not key=value")
        fields[key.strip().lower()] = value.strip()
    return profile_from_mapping(name, fields, setting=setting)


def profile_from_mapping(name: str, fields: Mapping[str, Any], *, setting: str, base: Profile | None = None) -> Profile:
    """A profile from a mapping (config file, operator override). With `base`, only the given keys change."""
    if not _PROFILE_NAME.match(name):
        raise ConfigError(setting, "a profile name is 1-63 lower-case letters, digits, '_' or '-'")
    unknown = sorted(set(fields) - _KEYS)
    if unknown:
        raise ConfigError(setting, f"unknown key '{unknown[0][:32]}' (known: {', '.join(sorted(_KEYS))})")
    profile = base or Profile(name)
    changes: dict[str, Any] = {}
    for key, value in fields.items():
        if key in ("rpm", "tpm", "concurrency", "reserve"):
            changes[key] = _optional_int(value, setting, key)
        elif key == "models":
            changes["models"] = _names(value, setting, key, _MODEL)
        elif key == "async":
            mode = str(value).strip().lower()
            if mode not in ASYNC_MODES:
                raise ConfigError(setting, "async must be allow, deny or always")
            changes["async_mode"] = mode
        elif key == "priority":
            priority = _optional_int(value, setting, key)
            if priority is None or not 1 <= priority <= 9:
                raise ConfigError(setting, "priority must be 1 (highest) to 9")
            changes["priority"] = priority
        elif key == "tiers":
            tiers = _names(value, setting, key, re.compile("^(?:ptu|paygo)$"))
            if not tiers:
                raise ConfigError(setting, "tiers must list ptu and/or paygo")
            changes["tiers"] = tiers
        elif key == "ttl":
            changes["ttl_s"] = _optional_seconds(value, setting)
        elif key == "per":
            per = [p.strip().lower() for p in str(value).split(",") if p.strip()]
            if per not in (["caller"], ["caller", "model"]):
                raise ConfigError(setting, "per must be 'caller' or 'caller,model'")
            changes["per_model"] = per == ["caller", "model"]
        elif key == "headers":
            changes["headers"] = tuple(sorted(h.lower() for h in _names(value, setting, key, _HEADER, lower=True)))
    return replace(profile, name=name, **changes)


@dataclass(frozen=True, slots=True)
class CallerMap:
    """GATEWAY_CALLER_PROFILES: caller name (or app:/user: id) → profile, then app role, then group."""

    callers: Mapping[str, str] = field(default_factory=dict)
    roles: Mapping[str, str] = field(default_factory=dict)
    groups: Mapping[str, str] = field(default_factory=dict)

    def profile_name(self, caller: str, roles: Iterable[str] = (), groups: Iterable[str] = ()) -> str | None:
        """The mapped profile: an exact caller entry wins, then the first role, then the first group (sorted)."""
        if caller in self.callers:
            return self.callers[caller]
        for role in sorted(roles):
            if role in self.roles:
                return self.roles[role]
        for group in sorted(groups):
            if group in self.groups:
                return self.groups[group]
        return None

    def names(self) -> set[str]:
        return {*self.callers.values(), *self.roles.values(), *self.groups.values()}


def parse_caller_map(value: str, setting: str) -> CallerMap:
    """`team-a=gold,app:<client-id>=silver,role:Batch.Submit=batch,group:<object-id>=gold`."""
    callers: dict[str, str] = {}
    roles: dict[str, str] = {}
    groups: dict[str, str] = {}
    for entry in filter(None, (e.strip() for e in value.split(","))):
        who, sep, profile = entry.rpartition("=")
        who, profile = who.strip(), profile.strip().lower()
        if not sep or not who or not _PROFILE_NAME.match(profile):
            raise ConfigError(setting, "must be a comma list of caller=profile (role:NAME=, group:ID= allowed)")
        kind, _, rest = who.partition(":")
        if kind == "role" and rest:
            roles[rest] = profile
        elif kind == "group" and rest:
            groups[rest] = profile
        else:
            callers[who] = profile
    return CallerMap(callers, roles, groups)


def _optional_int(value: Any, setting: str, key: str) -> int | None:
    if value in (None, ""):
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(setting, f"{key} must be a whole number") from None
    if number < 1:
        raise ConfigError(setting, f"{key} must be at least 1")
    return number


def _optional_seconds(value: Any, setting: str) -> float | None:
    if value in (None, ""):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ConfigError(setting, "ttl must be a number of seconds") from None
    if seconds <= 0:
        raise ConfigError(setting, "ttl must be positive")
    return seconds


def _names(value: Any, setting: str, key: str, pattern: re.Pattern[str], *, lower: bool = False) -> frozenset[str]:
    items = value.split(",") if isinstance(value, str) else list(value or ())
    names = frozenset(str(v).strip().lower() if lower else str(v).strip() for v in items if str(v).strip())
    for name in names:
        if not pattern.match(name):
            raise ConfigError(setting, f"{key} holds an invalid name")
    return names
