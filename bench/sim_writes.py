"""Writes to the shared state as instances are added: breaker transitions in a 429 storm, and usage flushes.

Breaker storm: one backend starts answering 429. Every busy instance sends to it until it learns the breaker
is open (its next refresh after the first write and its bump), so most instances see their own 429 first and
each writes the transition: a read and an ETag-conditional update of the same row, a conflict reading again
after a jittered pause of up to 20 ms, at most 10 tries (gateway/state_store.py). Before issue 17 every
writer wrote, because its own open-until (its clock + Retry-After) is always a little later than the stored
one. As built (`built=True`) a writer skips the write when the stored open-until is within SAME_UNTIL_S of
its own, and every write that lands bumps the version entity: a read and an ETag-conditional merge, retried
the same way.

Usage flushes: each instance writes its per-minute counters at most once per 10 s, one row per instance and
counter (no conditional write, no conflict); readers add the rows up.
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass

from bench.sim_targets import Scenario
from gateway.breakers import SAME_UNTIL_S

RETRIES = 10  # gateway/state_store.py _CONFLICT_RETRIES
RETRY_AFTER_S = 60.0


@dataclass
class StormResult:
    instances: int
    writers: int  # instances that saw a 429 before they learned the breaker was open
    operations: int  # reads + writes on the breaker row, retries included
    conflicts: int
    failed: int  # writers that ran out of tries: each then treats storage as unreachable for a while
    peak_ops_per_s: float  # on the busiest partition (the breaker row's, or the version entity's), busiest second
    bump_operations: int = 0  # reads + merges of the version entity, retries included (as built)
    writes: int = 0  # row writes that landed


def breaker_storm(n: int, sc: Scenario, built: bool = False, seed: int = 17) -> StormResult:
    rng = random.Random(f"storm-{seed}-{n}-{built}")
    lat = sc.table_latency_s
    first_429 = sorted(rng.expovariate(sc.per_instance_rps) for _ in range(n))
    events: list[tuple[float, int, str, int, int, float]] = []  # (time, seq, kind, writer, tries, seen)
    seq = itertools.count()
    for w, t in enumerate(first_429):
        heapq.heappush(events, (t + lat, next(seq), "read", w, 0, 0.0))
    row = {"version": 0, "until": 0.0}
    entity = {"version": 0}  # the version entity's ETag, as a number
    known_at: float | None = None  # when the transition became visible to readers (row, and bump as built)
    # After it is visible, each instance learns it at its next refresh: the version entity, then the bucket.
    learn = [rng.uniform(0, sc.refresh_s) + (2 if built else 1) * lat for _ in range(n)]
    writers = ops = bumps = conflicts = failed = writes = 0
    per_second: dict[tuple[str, int], int] = {}
    started: set[int] = set()

    def count(partition: str, t: float) -> None:
        per_second[(partition, int(t))] = per_second.get((partition, int(t)), 0) + 1

    while events:
        t, _, kind, w, tries, seen = heapq.heappop(events)
        if kind == "read" and w not in started:
            if known_at is not None and t - lat >= known_at + learn[w]:
                continue  # it refreshed before its own 429: it knows, no write
            started.add(w)
            writers += 1
        if kind in ("vread", "vwrite"):
            bumps += 1
            count("version", t)
            if kind == "vread":
                heapq.heappush(events, (t + lat, next(seq), "vwrite", w, tries, entity["version"]))
            elif seen != entity["version"]:
                if tries + 1 < RETRIES:
                    heapq.heappush(events, (t + rng.uniform(0, 0.02) + lat, next(seq), "vread", w, tries + 1, 0.0))
            else:
                entity["version"] += 1
                known_at = t if known_at is None else known_at
            continue
        ops += 1
        count("row", t)
        mine = t + RETRY_AFTER_S  # its open-until: its own clock + Retry-After
        if kind == "read":
            if built and row["until"] >= mine - SAME_UNTIL_S:
                continue  # stored is as good as mine: nothing to write
            heapq.heappush(events, (t + lat, next(seq), "write", w, tries, row["version"]))
        elif seen != row["version"]:  # ETag mismatch: someone wrote in between
            conflicts += 1
            if tries + 1 < RETRIES:
                heapq.heappush(events, (t + rng.uniform(0, 0.02) + lat, next(seq), "read", w, tries + 1, 0.0))
            else:
                failed += 1
        else:
            writes += 1
            row["version"] += 1
            row["until"] = max(row["until"], mine)
            if built:
                heapq.heappush(events, (t + lat, next(seq), "vread", w, 0, 0.0))
            elif known_at is None:
                known_at = t
    return StormResult(n, writers, ops, conflicts, failed, float(max(per_second.values(), default=0)), bumps, writes)


def flush_rate(n: int, counters_per_instance: float = 3.0, flush_s: float = 10.0) -> dict[str, float]:
    """Usage-counter writes per second: for the account, and for one caller's partition (a caller seen by
    every instance); `counters_per_instance` (caller x model pairs active on one instance) is an ASSUMPTION."""
    return {"account": n * counters_per_instance / flush_s, "partition": n / flush_s}
