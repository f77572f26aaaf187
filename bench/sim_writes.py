"""Writes to the shared state as instances are added: breaker transitions in a 429 storm, and usage flushes.

Breaker storm: one backend starts answering 429. Every busy instance sends to it until it learns the breaker
is open (its next refresh after the first write), so most instances see their own 429 first and each writes
the transition: a read and an ETag-conditional update of the same row, a conflict reading again after a
jittered pause of up to 20 ms, at most 10 tries (gateway/state_store.py). Today every writer writes, because
its own open-until (its clock + Retry-After) is a little later than the stored one. `tolerant=True` models a
change the lead may want: skip the write when the stored open-until is within a second of one's own.

Usage flushes: each instance writes its per-minute counters at most once per 10 s, one row per instance and
counter (no conditional write, no conflict); readers add the rows up.
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass

from bench.sim_targets import Scenario

RETRIES = 10  # gateway/state_store.py _CONFLICT_RETRIES


@dataclass
class StormResult:
    instances: int
    writers: int  # instances that saw a 429 before they learned the breaker was open
    operations: int  # reads + writes on the breaker row, retries included
    conflicts: int
    failed: int  # writers that ran out of tries: today each then treats storage as unreachable for a while
    peak_ops_per_s: float  # on the breaker partition, in the busiest second


def breaker_storm(n: int, sc: Scenario, tolerant: bool = False, seed: int = 17) -> StormResult:
    rng = random.Random(f"storm-{seed}-{n}-{tolerant}")
    lat = sc.table_latency_s
    first_429 = sorted(rng.expovariate(sc.per_instance_rps) for _ in range(n))
    events: list[tuple[float, int, str, int, int, float]] = []  # (time, seq, kind, writer, tries, stored)
    seq = itertools.count()
    for w, t in enumerate(first_429):
        heapq.heappush(events, (t + lat, next(seq), "read", w, 0, 0.0))
    row = {"version": 0, "until": 0.0}
    committed_at: float | None = None
    learn = [rng.uniform(0, sc.refresh_s) + lat for _ in range(n)]  # after the first commit
    writers = ops = conflicts = failed = 0
    buckets: dict[int, int] = {}
    started: set[int] = set()
    while events:
        t, _, kind, w, tries, seen = heapq.heappop(events)
        if kind == "read" and w not in started:
            if committed_at is not None and t - lat >= committed_at + learn[w]:
                continue  # it refreshed before its own 429: it knows, no write
            started.add(w)
            writers += 1
        ops += 1
        buckets[int(t)] = buckets.get(int(t), 0) + 1
        mine = t + 60.0  # its open-until: its own clock + Retry-After
        if kind == "read":
            if tolerant and row["until"] >= mine - 1.0:
                continue  # stored is as good as mine: nothing to write
            heapq.heappush(events, (t + lat, next(seq), "write", w, tries, row["version"]))
        elif seen != row["version"]:  # ETag mismatch: someone wrote in between
            conflicts += 1
            if tries + 1 < RETRIES:
                heapq.heappush(events, (t + rng.uniform(0, 0.02) + lat, next(seq), "read", w, tries + 1, 0.0))
            else:
                failed += 1
        else:
            row["version"] += 1
            row["until"] = max(row["until"], mine)
            committed_at = t if committed_at is None else committed_at
    return StormResult(n, writers, ops, conflicts, failed, float(max(buckets.values(), default=0)))


def flush_rate(n: int, counters_per_instance: float = 3.0, flush_s: float = 10.0) -> dict[str, float]:
    """Usage-counter writes per second: for the account, and for one caller's partition (a caller seen by
    every instance); `counters_per_instance` (caller x model pairs active on one instance) is an ASSUMPTION."""
    return {"account": n * counters_per_instance / flush_s, "partition": n / flush_s}
