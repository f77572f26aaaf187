"""What a shared limit answers (a grant, a refusal, the window's use) and how big a slice an instance leases.

The pure part of `gateway.limiter`: no storage, no clock. Kept apart so the arithmetic of fair slices can be
read, and unit-tested, on its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["FAIR_SHARE", "HEADROOM", "Grant", "Refusal", "Window", "limit_key", "slice_size"]

HEADROOM = 1.25  # a slice covers a little more than the rate times the lifetime: one lease per lifetime
FAIR_SHARE = 1  # near the limit, each instance leases at most 1/(FAIR_SHARE * instances) of what is left


@dataclass(frozen=True, slots=True)
class Grant:
    """Admitted: `amount` is spent from this instance's slice (settle it once the real usage is known)."""

    key: str
    kind: str
    amount: int
    at: float
    lease: int  # which slice it came from (0: decided on this instance alone)
    shared: bool  # False: storage was unreachable and the limit was enforced on this instance alone


@dataclass(frozen=True, slots=True)
class Refusal:
    """Not admitted; enough budget frees in `retry_after_s` if nothing is given back sooner."""

    retry_after_s: float
    used: int
    limit: int
    shared: bool


@dataclass(frozen=True, slots=True)
class Window:
    """The last known use of a key's window, for `x-ratelimit-*` headers and the operator view."""

    used: int
    limit: int
    reset_s: float  # until the oldest counted amount leaves the window
    shared: bool

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)


def limit_key(caller: str, model: str | None = None) -> str:
    """The key of a caller's limit, or of a caller's limit on one model (unambiguous whatever the names)."""
    return caller if model is None else f"{len(caller)}:{caller}:{model}"


def slice_size(
    need: int, wanted: int, rate: float, lifetime_s: float, free: int, holders: int, over: bool = False
) -> int:
    """How much to lease: 0 if `need` does not fit in `free`, else at least `need`.

    Enough for the observed rate over a lifetime (or for `wanted`, the requests waiting), but no more than a
    fair share of what is left, so a caller near its limit gets small slices on every instance. A caller
    already `over` its limit (refused lately) is refused somewhere whatever the shares: no fair share, so the
    budget that frees is leased in one piece instead of many small ones.
    """
    if need > free:
        return 0
    desired = max(wanted, math.ceil(rate * lifetime_s * HEADROOM))
    fair = free if over else free // (FAIR_SHARE * max(1, holders))
    return max(need, min(desired, fair))
