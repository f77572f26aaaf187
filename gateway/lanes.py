"""A request's lane: the tiers it may use, its priority, and when it expires.

The caller's profile sets all three (`tiers=`, `priority=`, `ttl=`). A request may lower its own priority with
`x-gateway-priority: N` (background jobs do), never raise it, and may shorten its life with `x-gateway-ttl` (seconds,
or an RFC 3339 instant). The lane travels with the request into the async path, so a caller limited to PTU never
reaches a PayGo backend there either, and an expired request is never forwarded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from . import errors
from .profiles import Profile

__all__ = ["DEFAULT_LANE", "Lane", "lane_for", "request_expired"]

PRIORITY_HEADER = "x-gateway-priority"
TTL_HEADER = "x-gateway-ttl"


@dataclass(frozen=True, slots=True)
class Lane:
    tiers: frozenset[str] | None  # None: every tier
    priority: int  # 1 (highest) .. 9
    expires_at: float | None  # epoch seconds; None: no TTL

    def seconds_left(self, now: float) -> float:
        return math.inf if self.expires_at is None else self.expires_at - now

    def as_dict(self) -> dict[str, object]:
        """What the async path's input carries."""
        return {
            "tiers": sorted(self.tiers) if self.tiers is not None else None,
            "priority": self.priority,
            "expires_at": self.expires_at,
        }


DEFAULT_LANE = Lane(None, 5, None)


def lane_for(profile: Profile, headers: Mapping[str, str], now: float) -> Lane:
    """The lane of a request of `profile`'s caller; 400 naming the header for a malformed one."""
    priority = profile.priority
    if (text := headers.get(PRIORITY_HEADER, "").strip()) != "":
        if not (text.isdigit() and 1 <= int(text) <= 9):
            raise errors.bad_request(
                f"{PRIORITY_HEADER} must be 1 (highest) to 9.", code="invalid_header", param=PRIORITY_HEADER
            )
        priority = max(priority, int(text))  # lower only: a request never outranks its profile
    expires_at = now + profile.ttl_s if profile.ttl_s is not None else None
    if (text := headers.get(TTL_HEADER, "").strip()) != "":
        asked = _instant(text, now)
        expires_at = asked if expires_at is None else min(expires_at, asked)
    return Lane(profile.tiers, priority, expires_at)


def request_expired() -> errors.GatewayError:
    return errors.GatewayError(
        408, "The request's time to live passed before a backend could take it.", type="timeout",
        code="request_expired",
    )  # fmt: skip


def _instant(text: str, now: float) -> float:
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if seconds > 0 and math.isfinite(seconds):
            return now + seconds
        raise errors.bad_request(f"{TTL_HEADER} must be positive.", code="invalid_header", param=TTL_HEADER)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise errors.bad_request(
            f"{TTL_HEADER} must be seconds or an RFC 3339 instant with its offset.", code="invalid_header",
            param=TTL_HEADER,
        )  # fmt: skip
    return moment.timestamp()
