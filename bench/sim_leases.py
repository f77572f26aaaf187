"""Per-caller limits at up to 1,000 instances: the gateway's own limiter, run in virtual time against a model of Table.

Nothing of the lease design is re-implemented here. Each simulated instance is a real `gateway.limiter.Limiter`
(its slice rule `limit_terms.slice_size`, lifetimes, holders, buckets and row layout `gateway.leases`, retries and
fallbacks included), its clock the virtual loop's plus a skew, its Table client a `bench.sim_storage.SimStorage`
(a round trip of `latency_s`, ETag conditions, Azure's property size limit). What is modelled here is only the
traffic: one caller's requests arrive as a Poisson stream, each at a random instance, and are counted as
`gateway.quotas.Quotas` counts them (RPM, then TPM; a TPM refusal gives the request back); tokens are settled
when the answer ends, against a usage drawn from `used_share` (and, with probability `under_p`, more than
reserved). Rows of different callers never conflict, so one caller's run gives its rows' load exactly; the load
of many callers is added up by the partitions `gateway.leases` puts their rows in.

Measured, in true (virtual) time over the measured span after a warm-up: the worst and mean sliding 60 s window
admitted, as a share of each limit; requests refused; Table calls per second per row and per partition; lease
conflicts; requests decided on one instance alone (contention or storage errors); the largest entity written.
"""

from __future__ import annotations

import asyncio
import math
import random
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from bench.sim_storage import SimStorage, VirtualLoop
from gateway.leases import WINDOW_S, partition_of
from gateway.limit_terms import Grant
from gateway.limiter import Limiter

EPOCH = 1_800_000_000.0  # wall-clock seconds at virtual time 0 (buckets are absolute times)
BIN_S = 0.1  # admissions are binned this finely for the sliding windows


@dataclass(frozen=True)
class LeaseConfig:
    """One caller and its traffic. ASSUMPTIONS, all of them; the defaults describe a team key over its limit."""

    rpm: int | None = None  # its profile's limits (None: no such limit)
    tpm: int | None = 1_000_000
    demand: float = 1.5  # requests/s = demand x what the tighter limit allows (the case where overshoot matters)...
    per_instance_rps: float | None = None  # ...or this many requests/s per instance...
    total_rps: float | None = None  # ...or this many requests/s in all (with either, the limits follow `use`)
    use: float = 0.5  # with per_instance_rps or total_rps: the caller uses this share of its limits
    tokens_mean: float = 1500  # reserved per request (prompt estimate + max_tokens), uniform 0.5-1.5 x this
    used_share: tuple[float, float] = (0.3, 1.0)  # an answer uses this share of its reservation (uniform)
    under_p: float = 0.05  # share of answers that use more than reserved...
    under_max: float = 0.3  # ...by up to this much (uniform)
    duration_s: float = 2.0  # from admission to settlement
    latency_s: float = 0.010  # one Table round trip (jittered +-30 %)
    clock_sd_s: float = 0.1  # instance clocks: normal around true time
    ramp_per_s: float | None = None  # instances start one after another at this rate (Flex scaling out)
    warmup_s: float = 60.0
    measure_s: float = 60.0

    def rate(self, n: int) -> float:
        """Requests per second of this caller, all instances together."""
        if self.per_instance_rps is not None:
            return n * self.per_instance_rps
        if self.total_rps is not None:
            return self.total_rps
        allowed = [x / WINDOW_S for x in (self.rpm,) if x] + [x / WINDOW_S / self.tokens_mean for x in (self.tpm,) if x]
        return self.demand * min(allowed)

    def limits(self, n: int) -> dict[str, int]:
        if self.per_instance_rps is None and self.total_rps is None:
            return {k: v for k, v in (("rpm", self.rpm), ("tpm", self.tpm)) if v}
        per_minute = self.rate(n) * WINDOW_S / self.use
        return {"rpm": math.ceil(per_minute), "tpm": math.ceil(per_minute * self.tokens_mean)}


@dataclass
class LeaseResult:
    instances: int
    requests_per_s: float
    worst: dict[str, float]  # kind -> the worst sliding 60 s window admitted, as a share of the limit
    admitted: dict[str, float]  # kind -> the mean sliding 60 s window admitted, as a share of the limit
    offered: dict[str, float]  # kind -> the mean sliding 60 s window asked for, as a share of the limit
    refused: float  # share of requests refused
    ops_per_s: float  # Table calls of this caller's rows, per second (mean over the measured span)
    ops_sd: float  # their standard deviation from second to second
    ops_peak: float  # their busiest second
    ops_peak_10s: float  # their busiest 10 s, on average
    ops_per_request: float
    row_peak: float  # calls on the busiest row in its busiest second
    row_mean: float  # mean calls per second on the busiest row
    conflicts_per_lease: float  # failed conditional writes per lease granted
    local: float  # share of requests decided on one instance alone (contention, storage errors)
    wait_p99_ms: float  # a request's wait for its admission (both limits), 99th percentile
    largest_entity_kib: float
    partitions: dict[str, str] = field(default_factory=dict)  # kind -> this caller's partition key

    @property
    def overshoot(self) -> float:
        return max([0.0, *(w - 1 for w in self.worst.values())])


def many_callers(result: LeaseResult, callers: int) -> dict[str, float]:
    """The load of `callers` callers like this one, each on rows of its own, placed in partitions as
    `gateway.leases.partition_of` places them: the busiest partition's peak second (its rows' peaks added up),
    and the account's calls per second (their mean, and mean + 3 standard deviations of the sum of independent
    callers: a peak second)."""
    kinds = list(result.partitions)
    per_partition = Counter(partition_of(kind, f"caller-{i}") for i in range(callers) for kind in kinds)
    rows = max(per_partition.values())
    return {
        "callers": callers,
        "rows_per_partition": rows,
        "partition_peak": rows * result.row_peak,
        "account_mean": callers * result.ops_per_s,
        "account_peak": callers * result.ops_per_s + 3 * result.ops_sd * math.sqrt(callers),
    }


def _windows(series: list[float], first_bin: int) -> list[float]:
    """The sum over every 60 s sliding window that ends in the measured span (one per bin)."""
    width = round(WINDOW_S / BIN_S)
    out, total = [], 0.0
    for i, value in enumerate(series):
        total += value - (series[i - width] if i >= width else 0.0)
        if i >= first_bin:
            out.append(total)
    return out


def simulate_leases(n: int, cfg: LeaseConfig, seed: int = 17, caller: str = "team-a") -> LeaseResult:
    """Runs one caller over `n` instances for warm-up + measured span, in virtual time (seconds of real time)."""
    saved = random.getstate()
    random.seed(f"lease-jitter-{seed}-{n}")  # the store's retry jitter uses the module's generator
    loop = VirtualLoop()
    try:
        return loop.run_until_complete(_run(n, cfg, seed, caller))
    finally:
        loop.close()
        random.setstate(saved)


async def _run(n: int, cfg: LeaseConfig, seed: int, caller: str) -> LeaseResult:
    rng = random.Random(f"lease-{seed}-{n}")
    storage = SimStorage(cfg.latency_s, random.Random(f"table-{seed}-{n}"))
    loop = asyncio.get_running_loop()
    skews = [rng.gauss(0, cfg.clock_sd_s) for _ in range(n)]
    # Instance ids as long as Azure's (WEBSITE_INSTANCE_ID, cut to 16 characters by gateway.bootstrap).
    ids = [f"{rng.getrandbits(64):016x}" for _ in range(n)]
    group = [Limiter(storage.client, ids[k], lambda k=k: EPOCH + loop.time() + skews[k]) for k in range(n)]
    limits = cfg.limits(n)
    end = cfg.warmup_s + cfg.measure_s
    bins = int(end / BIN_S) + 1
    admitted = {kind: [0.0] * bins for kind in limits}
    offered = {kind: [0.0] * bins for kind in limits}
    counts = {"requests": 0, "refused": 0, "local": 0}
    waits: list[float] = []
    tasks: set[asyncio.Task[None]] = set()

    async def request(limiter: Limiter, reserve: int, used: int) -> None:
        start = loop.time()
        measured = start >= cfg.warmup_s
        slot = int(start / BIN_S)
        grants: list[Grant] = []
        for kind, amount in (("rpm", 1), ("tpm", reserve)):
            if kind not in limits:
                continue
            offered[kind][slot] += amount
            answer = await limiter.acquire(caller, kind, limits[kind], amount)
            if not isinstance(answer, Grant):
                for grant in grants:  # as Quotas does: the request is given back
                    limiter.settle(grant, 0)
                    admitted[grant.kind][slot] -= grant.amount
                counts["refused"] += measured
                return
            grants.append(answer)
            admitted[kind][slot] += amount
        counts["local"] += measured and not all(g.shared for g in grants)
        if measured:
            waits.append(loop.time() - start)
        tokens = next((g for g in grants if g.kind == "tpm"), None)
        if tokens is not None:
            await asyncio.sleep(cfg.duration_s)
            limiter.settle(tokens, used)
            admitted["tpm"][slot] += used - reserve

    rate = cfg.rate(n)
    t = rng.expovariate(rate)
    while t < end:
        await asyncio.sleep(t - loop.time())
        running = n if cfg.ramp_per_s is None else min(n, int(t * cfg.ramp_per_s) + 1)
        if running < n and rng.random() >= running / n:  # traffic grows with the instances that serve it
            t += rng.expovariate(rate)
            continue
        reserve = max(1, round(cfg.tokens_mean * rng.uniform(0.5, 1.5)))
        share = rng.uniform(*cfg.used_share)
        if rng.random() < cfg.under_p:
            share = 1 + rng.uniform(0, cfg.under_max)
        counts["requests"] += t >= cfg.warmup_s
        task = asyncio.ensure_future(request(group[rng.randrange(running)], reserve, round(reserve * share)))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        t += rng.expovariate(rate)
    await asyncio.gather(*tasks)

    first = int(cfg.warmup_s / BIN_S)
    worst, mean_admitted, mean_offered = {}, {}, {}
    for kind, limit in limits.items():
        windows = _windows(admitted[kind], first)
        worst[kind] = max(windows) / limit
        mean_admitted[kind] = sum(windows) / len(windows) / limit
        mean_offered[kind] = sum(_windows(offered[kind], first)) / len(windows) / limit
    seconds = range(int(cfg.warmup_s), int(end))
    partitions = {kind: partition_of(kind, caller) for kind in limits}
    per_partition = defaultdict(list)
    for (partition, second), calls in storage.calls.items():
        if second in seconds:
            per_partition[partition].append(calls)
    ops = sum(sum(v) for p, v in per_partition.items() if p != "(tables)")
    each_second = [
        sum(c for (p, second), c in storage.calls.items() if second == s and p != "(tables)") for s in seconds
    ]
    busiest = max((v for p, v in per_partition.items() if p != "(tables)"), key=sum, default=[0])
    leases = storage.count("create", seconds) + storage.count("update", seconds)
    waits.sort()
    measured_requests = max(1, counts["requests"])
    return LeaseResult(
        instances=n,
        requests_per_s=rate,
        worst=worst,
        admitted=mean_admitted,
        offered=mean_offered,
        refused=counts["refused"] / measured_requests,
        ops_per_s=ops / cfg.measure_s,
        ops_sd=statistics.pstdev(each_second),
        ops_peak=float(max(each_second, default=0)),
        ops_peak_10s=max((sum(each_second[i : i + 10]) / 10 for i in range(max(1, len(each_second) - 9))), default=0.0),
        ops_per_request=ops / measured_requests,
        row_peak=float(max(busiest)),
        row_mean=sum(busiest) / cfg.measure_s,
        conflicts_per_lease=storage.count("failed", seconds) / max(1, leases),
        local=counts["local"] / measured_requests,
        wait_p99_ms=1000 * waits[int(0.99 * (len(waits) - 1))] if waits else 0.0,
        largest_entity_kib=storage.largest_entity / 1024,
        partitions={kind: p for kind, p in partitions.items()},
    )
