"""Storage calls of one instance: totals, and reads and writes per second over the last minute.

Operators compare the per-second figures with Azure's targets (2,000 entities/s per partition, 20,000
transactions/s per account) times the instance count; totals serve the benchmark's storage operations per
request. Counted per whole second in a ring of 60, so counting costs no allocation on any path.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["WINDOW_S", "OpsMeter"]

WINDOW_S = 60


class OpsMeter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._started = clock()
        self._seconds = [-1] * WINDOW_S  # which whole second each slot counts
        self._reads = [0] * WINDOW_S
        self._writes = [0] * WINDOW_S
        self.reads = 0
        self.writes = 0

    @property
    def total(self) -> int:
        return self.reads + self.writes

    def read(self, n: int = 1) -> None:
        self.reads += n
        self._reads[self._slot()] += n

    def write(self, n: int = 1) -> None:
        self.writes += n
        self._writes[self._slot()] += n

    def per_second(self) -> dict[str, float]:
        """Reads and writes per second over the last minute (over the time since start, if shorter)."""
        now = int(self._clock())
        window = max(1.0, min(float(WINDOW_S), self._clock() - self._started))
        recent = [i for i, second in enumerate(self._seconds) if now - WINDOW_S < second <= now]
        return {
            "reads": round(sum(self._reads[i] for i in recent) / window, 3),
            "writes": round(sum(self._writes[i] for i in recent) / window, 3),
            "window_s": round(window, 1),
        }

    def _slot(self) -> int:
        second = int(self._clock())
        slot = second % WINDOW_S
        if self._seconds[slot] != second:
            self._seconds[slot], self._reads[slot], self._writes[slot] = second, 0, 0
        return slot
