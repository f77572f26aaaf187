"""How each candidate read path of the shared state loads Azure Table storage as instances are added.

Designs (issue 17, item 2; the lead chooses, this module only measures them in a model):

  a    until issue 17: every instance queries the whole table at most once per refresh interval (traffic-triggered)
  b    one small version entity read per interval; the whole table only when the version changed
  c    the same full read as (a), but the rows spread over many partitions (one query per partition)
  d    (a) with an interval that grows with the instance count, so the reads stay within a budget
  e    changes pushed over a Service Bus topic (one subscription per instance), a slow full read to reconcile
  b+c  as built (gateway/state_versions.py): the version entity holds one counter per bucket of rows (64
       buckets), each row in its own partition; an instance re-reads a changed bucket with one range query
       (all its rows), and reads everything about once a minute (the resync)

As built (gateway/state_sync.py), a refresh that ends sets a timer one interval ahead, and the timer reads if a
request came meanwhile; with none, the next request reads (its state is then older than the interval). One
instance receiving `lambda` requests per second and taking `d` for a refresh therefore refreshes
`1 / (T + d + exp(-lambda (T + d)) / lambda)` times per second: about once per interval when busy, `lambda`
when traffic is sparse. Until issue 17 the timer did not exist and a refresh waited for the first request after
the state was T old: `lambda / (1 + lambda * T)` per second (`Scenario.refresh_on_timer=False`). Both are the
renewal processes simulated here, and the rate the calibration checks against a development host.

With `ramp_per_s`, instances do not all run from the start: the k-th arrives at k / ramp_per_s (Flex scaling
out) and starts with a full read, as a new gateway process does.
"""

from __future__ import annotations

import bisect
import math
import random
from collections import defaultdict
from dataclasses import dataclass, replace

from bench.sim_targets import CALIBRATED, TARGETS, Scenario
from gateway.state_rows import bucket_of
from gateway.state_sync import RESYNC_S

DESIGNS = ("a", "b", "c", "d", "e", "b+c")
NAMES = {
    "a": "until issue 17: full-table query per interval",
    "b": "version entity per interval, full read on change",
    "c": "full read spread over partitions",
    "d": "adaptive interval from the instance count",
    "e": "push over a Service Bus topic",
    "b+c": "version entity + one row per partition, changed buckets only (as built)",
}
SPREAD_PARTITIONS = 16  # (c): 6 backend partitions + 10 caller shards (ASSUMPTION)
# Which partition a change touches (ASSUMPTION): steady = mostly probe results; incident = breakers.
STEADY_MIX = {"health": 0.7, "breaker": 0.2, "callers": 0.1}
INCIDENT_MIX = {"breaker": 0.9, "health": 0.1}


def buckets(sc: Scenario) -> dict[int, list[tuple[str, int]]]:
    """The rows of each bucket, assigned as the gateway assigns them (crc32 of kind and key)."""
    out: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for part, rows in sc.rows.items():
        for row in range(rows):
            out[bucket_of(part, f"{part}-{row}")].append((part, row))
    return out


def refresh_rate(
    per_instance_rps: float, refresh_s: float, ratio: float | None = None, read_s: float = 0.0, timer: bool = True
) -> float:
    """Refreshes per second of one instance (see the module's docstring), times the calibrated ratio of measured
    to predicted (`ratio=1.0`: the model alone); `read_s` is a refresh's own duration."""
    ratio = CALIBRATED.refresh_ratio if ratio is None else ratio
    if not timer:
        return ratio * per_instance_rps / (1 + per_instance_rps * refresh_s)
    period = refresh_s + read_s
    return ratio / (period + math.exp(-per_instance_rps * period) / per_instance_rps)


@dataclass
class Result:
    design: str
    instances: int
    interval_s: float
    peak_partition: float  # highest entities/s on any one partition in any one simulated second
    mean_partition: float  # the same, averaged over the run (the busiest partition)
    peak_account: float  # table transactions/s in the busiest second
    mean_account: float
    propagation_mean_s: float | None
    propagation_p99_s: float | None
    all_know_s: float | None  # mean time until the last instance knows a change
    bus_subscriptions: int = 0
    bus_deliveries_per_s: float = 0.0

    def exceeds(self) -> list[str]:
        """The published targets the busiest second went over."""
        over = []
        if self.peak_partition > TARGETS["table_partition"].limit:
            over.append("table_partition")
        if self.peak_account > TARGETS["table_account"].limit:
            over.append("table_account")
        if self.bus_subscriptions > TARGETS["sb_subscriptions"].limit:
            over.append("sb_subscriptions")
        return over


def rate_of(sc: Scenario) -> float:
    """Refreshes per second of one busy instance in this scenario."""
    return refresh_rate(sc.per_instance_rps, sc.refresh_s, read_s=sc.table_latency_s, timer=sc.refresh_on_timer)


def interval_for(design: str, n: int, sc: Scenario) -> float:
    """(d) grows the interval until the busiest partition and the account stay within `budget` of their target."""
    if design != "d":
        return sc.refresh_s
    r = rate_of(sc) * sc.refresh_s  # share of intervals that refresh
    need_partition = n * r * max(sc.rows.values()) / (sc.budget * TARGETS["table_partition"].limit)
    need_account = n * r * len(sc.rows) / (sc.budget * TARGETS["table_account"].limit)
    return max(sc.refresh_s, need_partition, need_account)


def _schedule(
    rng: random.Random, rate: float, interval: float, horizon: float, timer: bool = True, read_s: float = 0.0,
    start: float | None = None,
) -> list[float]:
    """Refresh start times of one instance (from `start`, or a random phase of steady running): with the timer,
    one interval after the last refresh ended if a request came meanwhile, else at the next request; without
    it, at the first request after one interval."""
    times: list[float] = []
    t = rng.uniform(0, interval + 1 / rate) if start is None else start
    while t < horizon:
        times.append(t)
        if not timer:
            t += interval + rng.expovariate(rate)
        elif rng.random() < math.exp(-rate * (interval + read_s)):
            t += interval + read_s + rng.expovariate(rate)  # no request meanwhile: the next one reads
        else:
            t += interval + read_s
    return times


def _mix(sc: Scenario, incident: bool) -> dict[str, float]:
    """Which partitions changes touch, restricted to the partitions this scenario's table has."""
    mix = {p: w for p, w in (INCIDENT_MIX if incident else STEADY_MIX).items() if sc.rows.get(p)}
    return mix or dict.fromkeys(sc.rows, 1.0)


def _horizon(sc: Scenario) -> float:
    """Long enough for every instance to refresh about ten times, even when traffic is sparse."""
    return max(sc.simulate_s, 10 * (sc.refresh_s + 1 / sc.per_instance_rps))


def _changes(rng: random.Random, sc: Scenario, mix: dict[str, float]) -> list[tuple[float, str, int]]:
    """(time, partition, row) of every change within the simulated time; at least one, half-way through."""
    out, t = [], rng.expovariate(sc.changes_per_s)
    parts, weights = list(mix), list(mix.values())
    while t < sc.simulate_s - 2 * sc.refresh_s:  # late changes would be counted before anyone could read them
        part = rng.choices(parts, weights)[0]
        out.append((t, part, rng.randrange(sc.rows[part])))
        t += rng.expovariate(sc.changes_per_s)
    return out or [(sc.simulate_s / 2, parts[0], 0)]


def simulate(
    design: str, n: int, sc: Scenario, seed: int = 17, incident: bool = False, ramp_per_s: float | None = None
) -> Result:
    """Simulates `n` busy instances for `sc.simulate_s` seconds (or until the ramp is over and 10 s more);
    counts reads per partition and per second."""
    rng = random.Random(f"{seed}-{design}-{n}-{incident}-{ramp_per_s}")
    if incident:
        sc = sc.incident()
    ramp_s = 0.0 if ramp_per_s is None else n / ramp_per_s
    sc = replace(sc, simulate_s=max(_horizon(sc), ramp_s + 10))
    # The same changes for every design and instance count, so their delays compare.
    changes = _changes(random.Random(f"{seed}-{incident}"), sc, _mix(sc, incident))
    change_times = [c[0] for c in changes]
    lat = sc.table_latency_s
    interval = interval_for(design, n, sc)
    rate = sc.per_instance_rps
    entities: dict[str, list[float]] = defaultdict(lambda: [0.0] * (int(sc.simulate_s) + 2))
    tx = [0.0] * (int(sc.simulate_s) + 2)
    delays: list[float] = []
    last_know: dict[int, float] = defaultdict(float)
    spread = {p: max(1, math.ceil(rows / sum(sc.rows.values()) * SPREAD_PARTITIONS)) for p, rows in sc.rows.items()}

    def full_read(t: float) -> None:
        second = int(t)
        for part, rows in sc.rows.items():
            if design == "c":
                for shard in range(spread[part]):
                    entities[f"{part}/{shard}"][second] += rows / spread[part]
                    tx[second] += 1
            else:
                entities[part][second] += rows
                tx[second] += 1  # a cross-partition query returns a page (a transaction) per partition

    members = buckets(sc)
    bucket_of_row = {row: b for b, rows in members.items() for row in rows}

    def bucket_read(t: float, bucket: int) -> None:
        """b+c: one range query over a bucket, every row in its own partition (a page per partition, pessimistic)."""
        for part, row in members.get(bucket, []):
            entities[f"{part}#{row}"][int(t)] += 1
        tx[int(t)] += max(1, len(members.get(bucket, [])))

    def resync(t: float) -> None:
        """b+c: the periodic full read, one entity from every row's partition."""
        for part, rows in sc.rows.items():
            for row in range(rows):
                entities[f"{part}#{row}"][int(t)] += 1
        tx[int(t)] += sc.entities()

    if design in ("b", "b+c"):  # every change bumps the version entity: a read and a conditional merge
        for t in change_times:
            entities["version"][int(t)] += 2
            tx[int(t)] += 2

    def learned(k: int, t_known: float) -> None:
        delay = t_known - change_times[k]
        delays.append(delay)
        last_know[k] = max(last_know[k], delay)

    for k in range(n):
        start = None if ramp_per_s is None else k / ramp_per_s  # a new instance reads everything first
        if start is not None:
            tx[int(start)] += 1  # and checks that its table exists
        times = _schedule(rng, rate, interval, sc.simulate_s, sc.refresh_on_timer, lat, start)
        if design == "e":  # pushed changes; a slow reconciling full read
            for j, t in enumerate(change_times):
                if start is None or t >= start:
                    learned(j, t + rng.expovariate(1 / sc.bus_latency_s))
            t = rng.uniform(0, sc.reconcile_s) if start is None else start
            while t < sc.simulate_s:
                full_read(t)
                t += sc.reconcile_s
            continue
        seen = 0 if start is None else bisect.bisect_left(change_times, start)  # changes this instance has read
        next_full = rng.uniform(0, RESYNC_S) if start is None else start  # instances started at random, or now
        if design != "b+c":
            next_full = math.inf
        for t in times:
            if design == "b" and start is not None and t == start:
                full_read(t)
                entities["version"][int(t)] += 1
                tx[int(t)] += 1
                known_at = t + 2 * lat
            elif design in ("a", "c", "d"):
                full_read(t)
                known_at = t + lat
            else:
                entities["version"][int(t)] += 1
                tx[int(t)] += 1
                known_at = t + 2 * lat
                new = bisect.bisect_left(change_times, t) - seen
                if new and design == "b":
                    full_read(t + lat)
                elif design == "b+c" and t >= next_full:
                    resync(t + lat)
                    next_full = t + RESYNC_S * rng.uniform(0.9, 1.1)
                elif new:  # b+c: one range query per changed bucket
                    for bucket in {bucket_of_row[(part, row)] for _t, part, row in changes[seen : seen + new]}:
                        bucket_read(t + lat, bucket)
            while seen < len(changes) and change_times[seen] <= t:
                learned(seen, known_at)
                seen += 1
    horizon = int(sc.simulate_s)
    busiest = max(entities.values(), key=lambda series: sum(series[:horizon]), default=[0.0] * (horizon + 1))
    delays.sort()
    subs = n if design == "e" else 0
    return Result(
        design=design, instances=n, interval_s=round(interval, 2),
        peak_partition=max((max(series[:horizon]) for series in entities.values()), default=0.0),
        mean_partition=sum(busiest[:horizon]) / horizon,
        peak_account=max(tx[:horizon]), mean_account=sum(tx[:horizon]) / horizon,
        propagation_mean_s=sum(delays) / len(delays) if delays else None,
        propagation_p99_s=delays[min(len(delays) - 1, int(0.99 * len(delays)))] if delays else None,
        all_know_s=sum(last_know.values()) / len(last_know) if last_know else None,
        bus_subscriptions=subs, bus_deliveries_per_s=subs * sc.changes_per_s,
    )


def stops_scaling(design: str, sc: Scenario, incident: bool = False) -> float:
    """The instance count at which the mean rate first exceeds a Table target (math.inf: never), from the
    closed forms of the rates the simulation counts. Service Bus's subscription limit counts for (e)."""
    if incident:
        sc = sc.incident()
    r = rate_of(sc)
    part, account = TARGETS["table_partition"].limit, TARGETS["table_account"].limit
    hottest, pages = max(sc.rows.values()), len(sc.rows)
    if design == "a":
        return min(part / (r * hottest), account / (r * pages))
    if design == "c":
        shards = {p: max(1, math.ceil(rows / sum(sc.rows.values()) * SPREAD_PARTITIONS)) for p, rows in sc.rows.items()}
        per_partition = max(rows / shards[p] for p, rows in sc.rows.items())
        return min(part / (r * per_partition), account / (r * sum(shards.values())))
    if design == "d":
        return math.inf  # by construction; its propagation delay grows instead
    if design == "e":
        return min(part * sc.reconcile_s / hottest, TARGETS["sb_subscriptions"].limit)
    changed = 1 - math.exp(-sc.changes_per_s / r)  # share of version reads that find a change
    if design == "b":
        return min(part / r, part / (r * changed * hottest), account / (r * (1 + changed * pages)))
    # b+c as built: a bucket is re-read when any of its rows changed in the interval; a row's partition is read
    # with its bucket, and by the resync; the version entity takes a read per refresh and two calls per change.
    mix = _mix(sc, incident)
    rate = {(p, row): sc.changes_per_s * w / sc.rows[p] for p, w in mix.items() for row in range(sc.rows[p])}
    per_bucket = {b: r * (1 - math.exp(-sum(rate.get(m, 0.0) for m in rows) / r)) for b, rows in buckets(sc).items()}
    hottest_row = max(per_bucket.values()) + 1 / RESYNC_S
    queries = sum(reads * max(1, len(buckets(sc)[b])) for b, reads in per_bucket.items())
    version = (part - 2 * sc.changes_per_s) / r
    return min(version, part / hottest_row, (account - 2 * sc.changes_per_s) / (r + queries + sc.entities() / RESYNC_S))
