"""A clock the code under test reads and only the test moves: time passes without sleeping."""

from __future__ import annotations

import time


class Clock:
    """Seconds since the epoch, `now` at first (the wall clock if not given), until a test changes `now`."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now
