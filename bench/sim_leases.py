"""The lease design for per-caller limits, simulated event by event: overshoot, storage operations, waits.

The design (ARCHITECTURE.md section 6; not built yet, the simulation is its specification in miniature):
one Table row per caller and minute holds what is left of the caller's budget. An instance leases a slice
with a read and an ETag-conditional write (a conflict reads again after a short jittered pause), spends it
locally, prefetches the next slice when a quarter of the last one is left, and gives back what it did not
use after a few idle seconds. Slices are sized from the rate the instance observes (`horizon_s` of it) and
shrink near the limit to what is left divided among the instances leasing in this minute. Tokens are
reserved before forwarding and settled when the answer's usage is known: a refund goes back to the local
slice, a shortfall becomes local debt.

Overshoot can only come from two places, both modelled: answers that use more tokens than were reserved
(a prompt estimate that was low, a request without `max_tokens`), and clocks: an instance whose clock runs
ahead leases from the next minute's row while it is still this minute for everyone else.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import defaultdict
from dataclasses import dataclass


@dataclass(frozen=True)
class LeaseConfig:
    """One caller and its traffic. ASSUMPTIONS, all of them; the defaults describe a typical team key."""

    limit: float = 1_000_000  # tokens per minute
    demand: float = 1.5  # the caller asks for 1.5 x its limit: the case where overshoot matters
    tokens_mean: float = 1500  # reserved per request (prompt estimate + max_tokens)
    used_share: tuple[float, float] = (0.3, 1.0)  # an answer uses this share of its reservation (uniform)
    under_p: float = 0.05  # share of answers that use more than reserved...
    under_max: float = 0.3  # ...by up to this much (uniform)
    duration_s: float = 2.0  # from admission to settlement
    horizon_s: float = 10.0  # a slice covers this many seconds of the instance's observed rate
    prefetch: float = 0.25  # lease the next slice when this share of the last one is left
    idle_return_s: float = 5.0  # give back what is left after this long without requests
    max_wait_s: float = 0.5  # a request waits this long for a slice, then gets 429
    latency_s: float = 0.010  # one Table round trip (read, or conditional write)
    retries: int = 10
    clock_sd_s: float = 0.1  # instance clocks: normal around true time (ASSUMPTION)
    shards: int = 1  # rows the minute's budget is split over (a hot caller needs several: one row takes
    # about 1 / (2 x latency) conditional updates per second)
    windows: int = 3  # minutes measured, after one of warm-up


@dataclass
class LeaseResult:
    instances: int
    overshoot_mean: float  # fraction of the limit, over measured minutes (true time)
    overshoot_max: float
    admitted: float  # what the caller got, as a fraction of its limit (demand is `demand` x limit)
    ops_per_s: float  # Table operations for leases and returns (reads + writes, retries included)
    leases_per_s: float
    conflicts_per_lease: float
    wait_p99_ms: float
    rejected: float  # share of requests answered 429


class _Instance:
    __slots__ = ("budget", "denied", "last_request", "last_slice", "pending", "rate", "skew", "waiters",
                 "window")

    def __init__(self, skew: float) -> None:
        self.skew = skew
        self.budget = 0.0
        self.window = -1
        self.pending = False
        self.waiters: list[tuple[float, float, float]] = []  # (arrival, reserve, actual)
        self.rate = 0.0  # tokens/s this instance observes (EWMA)
        self.last_request = -math.inf
        self.last_slice = 0.0
        self.denied = -1  # the minute in which a lease came back empty: nothing left anywhere


def simulate_leases(n: int, cfg: LeaseConfig, seed: int = 17) -> LeaseResult:
    rng = random.Random(f"lease-{seed}-{n}")
    inst = [_Instance(rng.gauss(0, cfg.clock_sd_s)) for _ in range(n)]
    # (window, shard) -> [remaining, version, holders]
    rows: dict[tuple[int, int], list] = defaultdict(lambda: [cfg.limit / cfg.shards, 0, set()])
    events: list[tuple[float, int, str, tuple]] = []
    seq = itertools.count()
    horizon = 60.0 * (cfg.windows + 1)
    spent: dict[int, float] = defaultdict(float)  # true minute -> tokens actually used by admitted requests
    stats = {"ops": 0, "leases": 0, "conflicts": 0, "requests": 0, "rejected": 0}
    waits: list[float] = []

    def push(t: float, kind: str, *data: object) -> None:
        heapq.heappush(events, (t, next(seq), kind, data))

    def window_of(i: int, t: float) -> int:
        return int((t + inst[i].skew) // 60)

    def roll(i: int, t: float) -> None:
        """A new minute on this instance's clock: last minute's slice is void (its row is closed)."""
        w = window_of(i, t)
        if w != inst[i].window:
            inst[i].window, inst[i].budget, inst[i].last_slice = w, 0.0, 0.0

    def slice_size(i: int, remaining: float, holders: int) -> float:
        """What the observed rate asks for (at least what waits), shrunk near the limit, never beyond it."""
        me = inst[i]
        needed = max(cfg.tokens_mean, sum(w[1] for w in me.waiters) - me.budget)
        wanted = max(needed, me.rate * cfg.horizon_s)
        near_limit = max(needed, remaining / (2 * max(1, holders)))
        return min(wanted, near_limit, remaining)

    def start_lease(i: int, t: float, shard: int | None = None, tried: int = 0) -> None:
        if not inst[i].pending:
            inst[i].pending = True
            shard = rng.randrange(cfg.shards) if shard is None else shard
            push(t + cfg.latency_s, "read", i, inst[i].window, shard, 0, tried)

    def admit(i: int, t: float, arrival: float, reserve: float, actual: float) -> None:
        inst[i].budget -= reserve
        spent[int(arrival // 60)] += actual
        waits.append(t - arrival)
        push(t + cfg.duration_s, "settle", i, inst[i].window, reserve - actual)

    def serve_waiters(i: int, t: float) -> None:
        ready = inst[i]
        while ready.waiters and ready.budget >= ready.waiters[0][1]:
            arrival, reserve, actual = ready.waiters.pop(0)
            admit(i, t, arrival, reserve, actual)

    rate = cfg.demand * cfg.limit / 60 / cfg.tokens_mean  # requests/s
    push(rng.expovariate(rate), "request")
    while events:
        t, _, kind, data = heapq.heappop(events)
        if t > horizon:
            break
        if kind == "request":
            push(t + rng.expovariate(rate), "request")
            i = rng.randrange(n)
            roll(i, t)
            me = inst[i]
            reserve = cfg.tokens_mean * rng.uniform(0.5, 1.5)
            actual = reserve * rng.uniform(*cfg.used_share)
            if rng.random() < cfg.under_p:
                actual = reserve * (1 + rng.uniform(0, cfg.under_max))
            gap = t - me.last_request
            me.rate = reserve / cfg.horizon_s if math.isinf(gap) else 0.8 * me.rate + 0.2 * reserve / max(gap, 1e-3)
            me.last_request = t
            push(t + cfg.idle_return_s, "idle", i, t)
            stats["requests"] += 1
            if me.denied == me.window and me.budget < reserve:
                stats["rejected"] += 1  # a lease already came back empty this minute: 429 at once
                continue
            if me.budget >= reserve and not me.waiters:
                admit(i, t, t, reserve, actual)
            else:
                me.waiters.append((t, reserve, actual))
                push(t + cfg.max_wait_s, "timeout", i, t)
            if me.budget < cfg.prefetch * max(me.last_slice, reserve):
                start_lease(i, t)
        elif kind == "read":  # the row is read; the conditional write goes out one round trip later
            i, w, shard, tries, tried = data
            stats["ops"] += 1
            remaining, version, holders = rows[w, shard]
            if remaining <= 0:  # this shard is empty: try the next one, or give up for the minute
                inst[i].pending = False
                if tried + 1 < cfg.shards:
                    start_lease(i, t, (shard + 1) % cfg.shards, tried + 1)
                else:
                    inst[i].denied = w
                continue
            size = slice_size(i, remaining, len(holders | {i}))
            push(t + cfg.latency_s, "write", i, w, shard, tries, tried, version, size)
        elif kind == "write":
            i, w, shard, tries, tried, version, size = data
            stats["ops"] += 1
            row = rows[w, shard]
            if row[1] != version:  # someone wrote in between: ETag mismatch (412)
                stats["conflicts"] += 1
                if tries + 1 < cfg.retries:
                    push(t + rng.uniform(0, 0.02) + cfg.latency_s, "read", i, w, shard, tries + 1, tried)
                else:
                    inst[i].pending = False
                continue
            inst[i].pending = False
            row[0] -= size
            row[1] += 1
            row[2].add(i)
            stats["leases"] += 1
            if inst[i].window == w:
                inst[i].budget += size
                inst[i].last_slice = size
                serve_waiters(i, t)
        elif kind == "timeout":
            i, arrival = data
            me = inst[i]
            for k, waiter in enumerate(me.waiters):
                if waiter[0] == arrival:
                    del me.waiters[k]
                    stats["rejected"] += 1
                    break
        elif kind == "settle":
            i, w, refund = data
            if inst[i].window == w:
                inst[i].budget += refund  # a refund is reusable; a shortfall (negative) is local debt
                serve_waiters(i, t)
        elif kind == "idle":
            i, seen = data
            me = inst[i]
            if me.last_request == seen and me.budget > 0 and not me.pending and me.window == window_of(i, t):
                row = rows[me.window, rng.randrange(cfg.shards)]
                row[0] += me.budget  # given back (read + write; conflicts not modelled here)
                row[1] += 1
                stats["ops"] += 2
                me.budget = 0.0
    measured = [spent[w] for w in range(1, cfg.windows + 1)]
    over = [max(0.0, s - cfg.limit) / cfg.limit for s in measured]
    waits.sort()
    return LeaseResult(
        instances=n,
        overshoot_mean=sum(over) / len(over),
        overshoot_max=max(over),
        admitted=sum(measured) / len(measured) / cfg.limit,
        ops_per_s=stats["ops"] / horizon,
        leases_per_s=stats["leases"] / horizon,
        conflicts_per_lease=stats["conflicts"] / max(1, stats["leases"]),
        wait_p99_ms=1000 * waits[int(0.99 * (len(waits) - 1))] if waits else 0.0,
        rejected=stats["rejected"] / max(1, stats["requests"]),
    )
