"""Governance at run time: the profile each caller gets now, operators' overrides, suspensions, the callers view.

Profiles come from configuration; an operator can override a profile's keys (`PUT /gateway/profiles/{name}`)
or suspend a caller (`POST /gateway/callers/{name}/suspend`) with no redeploy. Both are rows of the state table,
each bumping its bucket in the version entity that every instance reads each refresh interval, so every
instance applies them within one interval (plus a read); the instance that took the action applies it at once.
"""

from __future__ import annotations

import json
import logging
import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from . import errors
from .callers import Caller
from .config import Settings
from .errors import ConfigError
from .profiles import NO_LIMITS, Profile, profile_from_mapping
from .state_store import CALLER, PROFILE, Snapshot, StateStore

__all__ = ["CALLER_NAME", "Governance"]

log = logging.getLogger("gateway.governance")

# A caller as operators name it: a key's name, app:/user: ids, a key fingerprint.
CALLER_NAME = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9_.-]{0,62}|(?:app|user):[A-Za-z0-9._-]{1,128}|key:[0-9a-f]{12})$")
_SEEN_LIMIT = 1000  # callers this instance remembers for the operator view (names come from outside)


class Governance:
    def __init__(self, settings: Settings, store: StateStore | None) -> None:
        self._settings = settings
        self._store = store
        self._overrides: dict[str, dict[str, Any]] = {}
        self._effective: dict[str, Profile] = dict(settings.profiles)
        self._suspended: dict[str, str] = {}
        self._seen: OrderedDict[str, str] = OrderedDict()  # caller -> profile name, most recent last

    # ------------------------------------------------------------------ the request path

    def admit(self, caller: Caller, model: str | None) -> Profile:
        """The caller's profile now; 403 when the caller is suspended or the model is not in its allow-list."""
        profile = self.profile_for(caller)
        self._remember(caller.name, profile.name)
        if caller.name in self._suspended:
            raise errors.GatewayError(
                403, "This caller is suspended by the gateway's operators.", type="permission_error",
                code="caller_suspended", limit="suspended",
            )  # fmt: skip
        if model is not None and not profile.allows_model(model):
            raise errors.GatewayError(
                403, f"The model '{model}' is not allowed for this caller.", type="permission_error",
                code="model_not_allowed", param="model", limit="models",
            )  # fmt: skip
        return profile

    def profile_for(self, caller: Caller) -> Profile:
        return self._settings.profile_for(caller.name, caller.roles, caller.groups, self._effective)

    def profile_named(self, name: str | None) -> Profile | None:
        """A profile as it is now (operator overrides included), by the name a deferred request carries."""
        return self._effective.get(name) if name else None

    # ------------------------------------------------------------------ shared state

    def apply(self, snapshot: Snapshot) -> None:
        """What the state table says now (called by every refresh)."""
        self._suspended = dict(snapshot.suspended)
        if snapshot.profiles != self._overrides:
            self._overrides = dict(snapshot.profiles)
            self._rebuild()

    def _rebuild(self) -> None:
        effective = dict(self._settings.profiles)
        for name, override in self._overrides.items():
            base = self._settings.profiles.get(name)
            if base is None:
                continue  # an override of a profile this configuration no longer has
            try:
                effective[name] = profile_from_mapping(name, override, setting=f"profile override {name}", base=base)
            except ConfigError as exc:
                log.error("Ignoring the override of profile %s: %s", name, exc.problem)
        self._effective = effective

    # ------------------------------------------------------------------ operator actions

    async def set_suspended(self, name: str, suspended: bool, reason: str = "") -> dict[str, Any]:
        if not CALLER_NAME.match(name):
            raise errors.bad_request("Not a caller name.", code="invalid_caller", param="name")
        if suspended:
            self._suspended[name] = reason
            if self._store is not None:
                await self._store.put_row(CALLER, name, {"Suspended": True, "Reason": reason[:500]})
        else:
            self._suspended.pop(name, None)
            if self._store is not None:
                await self._store.delete_row(CALLER, name)
        return {"caller": name, "suspended": suspended}

    async def override_profile(self, name: str, fields: Any) -> dict[str, Any]:
        """Replaces the operator's override of a configured profile; validated like configuration."""
        base = self._settings.profiles.get(name)
        if base is None:
            raise errors.not_found(f"No profile named '{name[:64]}'.", code="profile_not_found")
        if not isinstance(fields, Mapping):
            raise errors.bad_request("The body must be a JSON object of profile keys.", code="invalid_json")
        override = {str(k).lower(): v for k, v in fields.items()}
        try:
            profile = profile_from_mapping(name, override, setting="body", base=base)
        except ConfigError as exc:
            raise errors.bad_request(f"Invalid profile: {exc.problem}.", code="invalid_profile") from None
        if self._store is not None:
            await self._store.put_row(PROFILE, name, {"Override": json.dumps(override)})
        self._overrides[name] = override
        self._rebuild()
        return {"profile": name, **profile.as_dict()}

    async def reset_profile(self, name: str) -> dict[str, Any]:
        if name not in self._settings.profiles:
            raise errors.not_found(f"No profile named '{name[:64]}'.", code="profile_not_found")
        if self._store is not None:
            await self._store.delete_row(PROFILE, name)
        self._overrides.pop(name, None)
        self._rebuild()
        return {"profile": name, **self._effective[name].as_dict()}

    # ------------------------------------------------------------------ the operator's view

    def callers(self) -> list[dict[str, Any]]:
        """Known callers: configured key names and mappings, suspended ones, and those this instance has seen.

        A caller seen here shows the profile it was last admitted with (its roles and groups may have mapped
        it), as that profile is now; any other, the profile its name alone maps to."""
        settings = self._settings
        names = {n for n in settings.api_keys.values() if n}
        names |= set(settings.caller_profiles.callers) | set(self._suspended) | set(self._seen)
        view = []
        for name in sorted(names):
            seen = self._seen.get(name)
            if seen is None:
                profile = self.profile_for(Caller(name, "key"))
            else:
                profile = self._effective.get(seen, NO_LIMITS) if seen else NO_LIMITS
            view.append(
                {
                    "caller": name,
                    "profile": profile.name or None,
                    "suspended": name in self._suspended,
                    "reason": self._suspended.get(name) or None,
                    "limits": _limits(profile),
                }
            )
        return view

    def profiles(self) -> dict[str, Any]:
        return {
            name: {**profile.as_dict(), "overridden": name in self._overrides}
            for name, profile in sorted(self._effective.items())
        }

    def _remember(self, caller: str, profile: str) -> None:
        self._seen[caller] = profile
        self._seen.move_to_end(caller)
        if len(self._seen) > _SEEN_LIMIT:
            self._seen.popitem(last=False)


def _limits(profile: Profile) -> dict[str, int | None] | None:
    """The profile's limits (None: it has none)."""
    if not profile.limited and profile.concurrency is None:
        return None
    return {"rpm": profile.rpm, "tpm": profile.tpm, "concurrency": profile.concurrency}
