"""What a shared limit answers (a grant, a refusal, the window's use) and how big a slice an instance leases.

The pure part of `gateway.limiter`: no storage, no clock. Kept apart so the arithmetic of fair slices can be
read, and unit-tested, on its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "FAIR_SHARE", "HEADROOM", "ROOM", "SLICE_REQUESTS", "Grant", "Pace", "Refusal", "Window", "lease_terms",
    "limit_key", "slice_size", "split_limit_key",
]  # fmt: skip

HEADROOM = 1.25  # a slice covers a little more than the rate times the lifetime: one lease per lifetime
FAIR_SHARE = 1  # near the limit, each instance leases at most 1/(FAIR_SHARE * instances) of what is left
SLICE_REQUESTS = 8  # a slice is meant to serve about this many of this instance's requests...
ROOM = 0.25  # ...but one that needs a long lifetime for it only while this share of the limit stays free besides


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


def split_limit_key(key: str) -> tuple[str, str | None]:
    """(caller, model) back from `limit_key` (model None for a per-caller key). Caller names never start with
    digits and a colon (key names hold no colon; Entra ones start with app: or user:), so a per-caller key is
    never mistaken for a per-model one."""
    length, colon, rest = key.partition(":")
    if colon and length.isdigit():
        caller, model = rest[: int(length)], rest[int(length) + 1 :]
        if limit_key(caller, model) == key:
            return caller, model
    return key, None


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


@dataclass(frozen=True, slots=True)
class Pace:
    """This instance's use of a key when it asks for a slice: its recent rate, its rate over the last minute
    (a key it sees only now and then), and the shortest and longest lifetimes a slice may have."""

    rate: float
    minute_rate: float
    shortest_s: float
    longest_s: float


def lease_terms(
    need: int, wanted: int, pace: Pace, free: int, holders: int, limit: int, over: bool = False
) -> tuple[int, float]:
    """The slice to lease (0: `need` does not fit) and its lifetime.

    The shortest lifetime if at the recent rate it serves `SLICE_REQUESTS` requests like this one. Else, for a key
    this instance sees now and then, one long enough for that at the last minute's rate (up to `longest_s`), with
    a slice sized for it, but only while `ROOM` of the limit stays free besides the slice, and only for as long as
    the slice's rest needs: a slice counts what it admitted at its expiry until the next lease, so near the limit
    a long one would hold budget the other instances could use.
    """
    size = slice_size(need, wanted, pace.rate, pace.shortest_s, free, holders, over)
    sparse = max(pace.rate, pace.minute_rate)
    if not size or sparse <= 0 or pace.rate * pace.shortest_s >= SLICE_REQUESTS * need:
        return size, pace.shortest_s
    longest = min(pace.longest_s, max(pace.shortest_s, SLICE_REQUESTS * need / sparse))
    roomy = slice_size(need, wanted, sparse, longest, free, holders, over)
    if free - roomy < ROOM * limit:
        return size, pace.shortest_s
    return roomy, min(longest, max(pace.shortest_s, (roomy - need) / sparse))
