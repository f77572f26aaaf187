"""The circuit-breaker state machine of one backend: pure, with time passed in.

Closed → open (until T) on a 429 (for its Retry-After) or on N failures in a sliding window (for the
cooldown). When T passes the breaker is half-open: exactly one trial request may go, claimed across all
instances through the state store; its success closes the breaker, its failure opens it again. The part that
is shared between instances (`SharedBreaker`) is what the state store persists; the failure window is local
to each instance on purpose: counting it globally would cost a storage write per failure.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace

__all__ = ["CLOSED", "DISABLED", "HALF_OPEN", "OPEN", "SAME_UNTIL_S", "FailureWindow", "SharedBreaker"]

CLOSED, OPEN, HALF_OPEN, DISABLED = "closed", "open", "half-open", "disabled"
# Open-untils this close are one transition. In a 429 storm every instance computes its own (its clock plus
# Retry-After), always a little later than the stored one; rewriting it for a few milliseconds would cost
# about 16,000 conflicting operations on one row at 1,000 instances instead of about 900 (docs/capacity.md).
SAME_UNTIL_S = 1.0


@dataclass(frozen=True, slots=True)
class SharedBreaker:
    """What every instance agrees on about a backend (times are epoch seconds, shared across machines)."""

    open_until: float = 0.0
    tripped: bool = False  # opened and not yet closed by a successful trial
    disabled: bool = False  # taken out of rotation by an operator
    trial_owner: str = ""  # the instance holding the half-open trial
    trial_until: float = 0.0  # the claim lapses then, so a crashed instance cannot hold it forever
    reason: str = ""

    def status(self, now: float) -> str:
        if self.disabled:
            return DISABLED
        if self.open_until > now:
            return OPEN
        return HALF_OPEN if self.tripped else CLOSED

    def trial_free(self, now: float, owner: str) -> bool:
        """In half-open, may `owner` send the trial request (no one else holds a live claim)?"""
        return not self.trial_owner or self.trial_owner == owner or self.trial_until <= now

    def tripped_until(self, until: float, reason: str) -> SharedBreaker:
        """Opens (or extends): an open-until is only ever moved later, so concurrent writers merge."""
        return replace(
            self, open_until=max(self.open_until, until), tripped=True, trial_owner="", trial_until=0.0, reason=reason
        )

    def extended_to(self, until: float, reason: str) -> SharedBreaker | None:
        """`tripped_until`, or None when the breaker is already tripped until `until` or at most SAME_UNTIL_S
        before it (nothing worth writing)."""
        if self.tripped and self.open_until >= until - SAME_UNTIL_S:
            return None
        return self.tripped_until(until, reason)

    def claimed(self, owner: str, until: float) -> SharedBreaker:
        return replace(self, trial_owner=owner, trial_until=until)

    def closed(self) -> SharedBreaker:
        return replace(self, open_until=0.0, tripped=False, trial_owner="", trial_until=0.0, reason="")

    def merged(self, newer: SharedBreaker) -> SharedBreaker:
        """`newer` (usually what storage holds), keeping this state's open-until if it is later."""
        if newer.open_until >= self.open_until or not self.tripped:
            return newer
        return replace(newer, open_until=self.open_until, tripped=True, reason=self.reason)


class FailureWindow:
    """Counts failures in a sliding time window; says when the threshold is reached."""

    __slots__ = ("_times", "threshold", "window_s")

    def __init__(self, threshold: int, window_s: float) -> None:
        self.threshold = threshold
        self.window_s = window_s
        self._times: deque[float] = deque()

    def add(self, now: float) -> bool:
        """Records one failure; True when the window now holds `threshold` of them (and starts afresh)."""
        self._times.append(now)
        while self._times and self._times[0] <= now - self.window_s:
            self._times.popleft()
        if len(self._times) >= self.threshold:
            self._times.clear()
            return True
        return False

    def __len__(self) -> int:
        return len(self._times)
