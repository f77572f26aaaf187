"""A model of the gateway scaled out on Flex Consumption, up to 1,000 instances: storage load, propagation,
limit overshoot. It is a model, not a measurement; its single-instance part is calibrated on development hosts.

    python -m bench.scale_sim [--quick] [--instances 10,100,300,1000] [--calibrate [--hosts 3]] [--json FILE]
                              [--refresh-s 1] [--rps 5] [--rows breaker=18,health=6,callers=50] [--latency-ms 10]
                              [--lazy-refresh] [--callers 50]

It reports, for each instance count: Table operations per second on the busiest partition and on the account
for the six read-path designs of bench/sim_readpath.py (b+c as built: buckets of rows, a resync a minute;
steady traffic, and an incident where breakers move every half second), how long a change takes to reach the
instances, where each design stops scaling (the instance count at which it exceeds a published Table target),
and the recommended design; what Flex scaling out adds (new instances each reading everything); the writes of a
429 storm before issue 17 and as built, and of usage flushes (bench/sim_writes.py); and, from the gateway's own
limiter run in virtual time (bench/sim_leases.py), per-caller limits' overshoot, admitted share and storage
operations per row and partition for five callers. Targets and assumptions: bench/sim_targets.py. The method
and the latest figures: docs/capacity.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, replace
from typing import Any

from bench.sim_leases import LeaseConfig, LeaseResult, many_callers, simulate_leases
from bench.sim_readpath import DESIGNS, NAMES, simulate, stops_scaling
from bench.sim_targets import CALIBRATED, READ_ON, TARGETS, Scenario
from bench.sim_writes import breaker_storm, flush_rate

INSTANCES = (10, 100, 300, 1000)
MODES = ("steady", "incident")
# A design qualifies when every instance knows a change within this many refresh intervals, on average,
# at the largest instance count (ARCHITECTURE.md: operator changes reach every instance within one refresh).
PROPAGATION_BUDGET = 2.5
# Callers with RPM and TPM limits (ASSUMPTIONS). The first is the account's scenario: each of CALLERS callers sends
# an equal share of the busy instances' 5 requests/s and uses half its limits, so every instance sees every caller
# about every 10 s. The others put the limits to the test: near, at and past them.
ACCOUNT_PROFILE = "1 of 50 callers: 0.1 requests/s per instance, at half its limits"
LEASE_PROFILES = {
    ACCOUNT_PROFILE: LeaseConfig(per_instance_rps=0.1, use=0.5),
    "100 requests/s in all, at 95 % of its limits": LeaseConfig(total_rps=100, use=0.95),
    "1.5 x a 1M tokens/min limit": LeaseConfig(),
    "the same, answers use 90-100 % of the reservation and 1 in 5 up to 50 % more": LeaseConfig(
        used_share=(0.9, 1.0), under_p=0.2, under_max=0.5),
    "1.5 x 6,000 requests and 6M tokens/min (100 requests/s)": LeaseConfig(rpm=6000, tpm=6_000_000),
}
CALLERS = 50  # callers with limits, each seen by every instance (the state table's 50 caller rows)
# Flex scaling out (instances arriving per second). Microsoft documents no rate for Flex Consumption: its general
# page says HTTP-triggered apps get a new instance at most once per second (event-driven-scaling, "Understanding
# scaling behaviors"); its Flex announcement shows a Python app reaching 1,000 instances in under a minute.
RAMPS = {"1 new instance/s (documented, HTTP)": 1.0, "1,000 in a minute (Flex demo, Python)": 1000 / 60}


def run(sc: Scenario, instances: tuple[int, ...] = INSTANCES, quick: bool = False) -> dict[str, Any]:
    """Every part of the model, as plain data (the report and the test read this)."""
    readpath: dict[str, dict[str, list[dict]]] = {mode: {} for mode in MODES}
    stops: dict[str, dict[str, float]] = {mode: {} for mode in MODES}
    for mode in MODES:
        for design in DESIGNS:
            results = [simulate(design, n, sc, incident=mode == "incident") for n in instances]
            readpath[mode][design] = [asdict(r) | {"exceeds": r.exceeds()} for r in results]
            stops[mode][design] = stops_scaling(design, sc, incident=mode == "incident")
    profiles = {ACCOUNT_PROFILE: LEASE_PROFILES[ACCOUNT_PROFILE]} if quick else LEASE_PROFILES
    leases = {name: [asdict(simulate_leases(n, cfg)) for n in instances] for name, cfg in profiles.items()}
    ramps = {name: [ramp(n, sc, rate) for n in instances] for name, rate in RAMPS.items()
             if not quick or rate * 60 >= max(instances)}
    if not quick:  # the callers' limits while the fastest ramp brings the instances
        n, fastest = max(instances), max(RAMPS.values())
        cfg = replace(LEASE_PROFILES[ACCOUNT_PROFILE], ramp_per_s=fastest, warmup_s=0.0, measure_s=n / fastest + 60)
        ramps["leases"] = asdict(simulate_leases(n, cfg))
    out = {
        "scenario": asdict(sc), "instances": list(instances), "calibration": asdict(CALIBRATED),
        "readpath": readpath, "stops": stops,
        "storms": {label: [asdict(breaker_storm(n, sc, built)) for n in instances]
                   for label, built in (("before", False), ("built", True))},
        "flushes": [flush_rate(n) for n in instances],
        "leases": leases, "ramps": ramps,
    }
    out["callers"] = many_callers(LeaseResult(**leases[ACCOUNT_PROFILE][-1]), CALLERS)
    out["recommended"] = recommend(out, sc)
    out["account"] = account_total(out, sc)
    return out


def ramp(n: int, sc: Scenario, per_s: float) -> dict[str, Any]:
    """The built read path while Flex adds instances at `per_s` up to `n` (and 10 s more): its peak seconds, the
    peaks of `n` instances running steadily as long, and what the arrivals themselves read each second (a table
    check, the version entity and every row, each row in its own partition)."""
    during = simulate("b+c", n, sc, ramp_per_s=per_s)
    steady = simulate("b+c", n, replace(sc, simulate_s=n / per_s + 10))
    arrivals = min(per_s, n)
    return {"instances": n, "per_s": per_s, "seconds": n / per_s,
            "peak_partition": during.peak_partition, "peak_account": during.peak_account,
            "steady_partition": steady.peak_partition, "steady_account": steady.peak_account,
            "arrivals_account": arrivals * (sc.entities() + 2), "arrivals_row": arrivals, "exceeds": during.exceeds()}


def recommend(out: dict[str, Any], sc: Scenario) -> str | None:
    """The design that stays under every target at every simulated instance count, in both modes, with every
    instance knowing a change within PROPAGATION_BUDGET intervals; of those, the one that scales furthest up to
    Flex's maximum (room past 1,000 instances buys nothing), then the one every instance hears from soonest."""
    qualified = []
    for design in DESIGNS:
        rows = [r for mode in MODES for r in out["readpath"][mode][design]]
        slow = max(r["all_know_s"] or 0 for r in rows) > PROPAGATION_BUDGET * sc.refresh_s
        if not any(r["exceeds"] for r in rows) and not slow:
            qualified.append(design)
    if not qualified:
        return None
    flex = TARGETS["flex_instances"].limit
    headroom = {d: min(flex, *(out["stops"][m][d] for m in MODES)) for d in qualified}
    return max(qualified, key=lambda d: (headroom[d], -out["readpath"]["incident"][d][-1]["all_know_s"]))


def account_total(out: dict[str, Any], sc: Scenario) -> dict[str, float] | None:
    """Table transactions/s on the account at the largest instance count with the recommended design, everything
    at once: the reads' busiest second in an incident, the callers' leases (their mean, and their busiest second),
    usage flushes and a 429 storm's second; and how many callers like the account profile's fit the target."""
    design = out["recommended"]
    if design is None:
        return None
    reads = out["readpath"]["incident"][design][-1]["peak_account"]
    callers = out["callers"]
    flushes = out["flushes"][-1]["account"]
    built = out["storms"]["built"][-1]
    storm = built["operations"] + built["bump_operations"]  # within about a second
    target = TARGETS["table_account"].limit
    rest = reads + flushes + storm
    per_caller = callers["account_mean"] / callers["callers"]
    return {"reads": reads, "leases": callers["account_mean"], "leases_peak": callers["account_peak"],
            "flushes": flushes, "storm": storm, "total": rest + callers["account_mean"],
            "total_peak": rest + callers["account_peak"], "target": target,
            "callers_that_fit": math.floor((target - rest) / per_caller) if per_caller else math.inf}


def _n(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "never"
    return f"{value:,.{digits}f}"


def markdown(out: dict[str, Any]) -> str:
    sc, ns = out["scenario"], out["instances"]
    lines = [f"Scale model: refresh {sc['refresh_s']:g} s, {sc['per_instance_rps']:g} requests/s per busy instance, "
             f"state rows {sc['rows']}, Table latency {sc['table_latency_s'] * 1000:g} ms, changes "
             f"{sc['changes_per_s']:g}/s steady and {sc['incident_changes_per_s']:g}/s in an incident; targets "
             f"read {READ_ON}. Figures: peak / mean entities per second on the busiest partition, peak Table "
             "transactions per second on the account, mean seconds until every instance knows a change.", ""]
    for mode in MODES:
        lines += [f"**Read path, {mode}**", "",
                  "| design | " + " | ".join(f"{n} instances" for n in ns) + " | stops scaling at |",
                  "|---|" + "--:|" * (len(ns) + 1)]
        for d in DESIGNS:
            cells = []
            for r in out["readpath"][mode][d]:
                flag = " **over**" if r["exceeds"] else ""
                cells.append(f"{_n(r['peak_partition'])} / {_n(r['mean_partition'])}; {_n(r['peak_account'])} tx; "
                             f"{_n(r['all_know_s'], 1)} s{flag}")
            lines.append(f"| {d}: {NAMES[d]} | " + " | ".join(cells) + f" | {_n(out['stops'][mode][d])} |")
        lines.append("")
    rec = out["recommended"]
    lines.append(f"Recommended read path: **{rec}** ({NAMES.get(rec, 'none qualifies')})." if rec else
                 "Recommended read path: none qualifies under these assumptions.")
    lines += ["", "**Breaker transition in a 429 storm** (one backend, every busy instance; writes to one row)", "",
              "| instances | before: writers | operations | failed after 10 tries | peak ops/s | as built: writers | "
              "row operations | rows written | version bump operations | failed | peak ops/s |",
              "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for old, new in zip(out["storms"]["before"], out["storms"]["built"], strict=True):
        lines.append(f"| {old['instances']} | {old['writers']} | {old['operations']:,} | {old['failed']} | "
                     f"{_n(old['peak_ops_per_s'])} | {new['writers']} | {new['operations']:,} | {new['writes']} | "
                     f"{new['bump_operations']} | {new['failed']} | {_n(new['peak_ops_per_s'])} |")
    lines += ["", "Usage flushes (3 counters per instance, every 10 s): " + ", ".join(
        f"{n}: {f['account']:,.0f}/s" for n, f in zip(ns, out["flushes"], strict=True))]
    lines += _ramp_lines(out) + _lease_lines(out)
    if out["account"]:
        a, c = out["account"], out["callers"]
        lines += ["", f"Account at {ns[-1]} instances with design {rec} in an incident: reads {a['reads']:,.0f} + "
                  f"leases of {c['callers']} callers {a['leases']:,.0f} (their busiest second {a['leases_peak']:,.0f})"
                  f" + flushes {a['flushes']:,.0f} + a storm second {a['storm']:,.0f} = {a['total']:,.0f} "
                  f"transactions/s ({a['total_peak']:,.0f}); target {a['target']:,.0f}: "
                  f"{a['callers_that_fit']:,} such callers fit."]
    return "\n".join(lines)


def _ramp_lines(out: dict[str, Any]) -> list[str]:
    ns = out["instances"]
    lines = ["", "**Flex scaling out** (built read path, steady traffic; a new instance checks its table, then reads "
             "the version entity and every row): peak entities/s on the busiest partition and peak transactions/s "
             "on the account, while scaling out and 10 s after; the same for the full count running as long; "
             "what the arrivals read per second", "",
             "| ramp | " + " | ".join(f"to {n}" for n in ns) + " |", "|---|" + "--:|" * len(ns)]
    for name, rows in out["ramps"].items():
        if name == "leases":
            continue
        cells = [f"{_n(r['peak_partition'])}; {_n(r['peak_account'])} tx (steady {_n(r['steady_partition'])}; "
                 f"{_n(r['steady_account'])} tx); arrivals {_n(r['arrivals_account'])} tx"
                 f"{' **over**' if r['exceeds'] else ''}" for r in rows]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if "leases" in out["ramps"]:
        r, steady = out["ramps"]["leases"], out["leases"][ACCOUNT_PROFILE][-1]
        lines += ["", f"Limits while the fastest ramp brings {r['instances']} instances: one caller like the first "
                  f"below costs {r['ops_peak_10s']:,.0f} calls/s over its busiest 10 s ({r['ops_per_s']:,.0f} on "
                  f"average from the start), against {steady['ops_per_s']:,.0f} running steadily: new instances "
                  f"lease a first slice of one request for each caller."]
    return lines


def _lease_lines(out: dict[str, Any]) -> list[str]:
    ns = out["instances"]
    head = ["| caller | " + " | ".join(f"{n} instances" for n in ns) + " |", "|---|" + "--:|" * len(ns)]
    accuracy = ["", "**Limits, accuracy** (the gateway's limiter in virtual time): worst sliding 60 s window "
                "admitted / limit (RPM, TPM); mean window admitted / limit; requests refused; requests decided on "
                "one instance alone (contention)", "", *head]
    cost = ["", "**Limits, cost**: Table calls/s of the caller's rows (per request); the busiest row's peak second; "
            "conflicts per lease; p99 wait for admission; largest entity", "", *head]
    for name, rows in out["leases"].items():
        cells_a, cells_c = [], []
        for r in rows:
            worst = " / ".join(f"{r['worst'][k]:.3f}" for k in r["worst"])
            admitted = " / ".join(f"{r['admitted'][k]:.2f}" for k in r["admitted"])
            cells_a.append(f"{worst}; {admitted}; {r['refused']:.1%}; {r['local']:.1%}")
            cells_c.append(f"{r['ops_per_s']:,.0f} ({r['ops_per_request']:.2f}); {r['row_peak']:,.0f}; "
                           f"{r['conflicts_per_lease']:.2f}; {r['wait_p99_ms']:,.0f} ms; "
                           f"{r['largest_entity_kib']:.1f} KiB")
        accuracy.append(f"| {name} | " + " | ".join(cells_a) + " |")
        cost.append(f"| {name} | " + " | ".join(cells_c) + " |")
    c = out["callers"]
    layout = ["", f"{c['callers']} callers like the first, placed by `gateway.leases.partition_of`: at most "
              f"{c['rows_per_partition']} row(s) per partition, so the busiest partition peaks at "
              f"{c['partition_peak']:,.0f} calls/s at {ns[-1]} instances (target "
              f"{TARGETS['table_partition'].limit:,.0f}); the account sees {c['account_mean']:,.0f}/s on average."]
    return accuracy + cost + layout


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one caller profile, one ramp (the test's form)")
    parser.add_argument("--instances", default=",".join(map(str, INSTANCES)))
    parser.add_argument("--refresh-s", type=float, default=Scenario.refresh_s)
    parser.add_argument("--rps", type=float, default=Scenario.per_instance_rps, help="requests/s per busy instance")
    parser.add_argument("--rows", help="state rows per partition, e.g. breaker=18,health=6,callers=50")
    parser.add_argument("--latency-ms", type=float, default=Scenario.table_latency_s * 1000)
    parser.add_argument("--changes", type=float, default=Scenario.changes_per_s, help="steady changes/s")
    parser.add_argument("--incident-changes", type=float, default=Scenario.incident_changes_per_s)
    parser.add_argument("--lazy-refresh", action="store_true",
                        help="refresh at the first request after an interval, as until issue 17 (not on a timer)")
    parser.add_argument("--calibrate", action="store_true",
                        help="first measure the single-instance figures on development hosts and print them (stderr) "
                        "beside the constants the model uses (bench/sim_targets.py CALIBRATED)")
    parser.add_argument("--hosts", type=int, default=3, help="development hosts for --calibrate")
    parser.add_argument("--json", help="write every figure to this file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sc = Scenario(refresh_s=args.refresh_s, per_instance_rps=args.rps, table_latency_s=args.latency_ms / 1000,
                  changes_per_s=args.changes, incident_changes_per_s=args.incident_changes,
                  refresh_on_timer=not args.lazy_refresh,
                  simulate_s=Scenario.simulate_s)
    if args.rows:
        sc = replace(sc, rows={k: int(v) for k, v in (p.split("=") for p in args.rows.split(","))})
    if args.calibrate:
        from bench.sim_calibrate import calibrate

        measured = {"measured": calibrate(args.hosts), "model_uses": asdict(CALIBRATED)}
        print(json.dumps(measured, indent=1), file=sys.stderr)
    out = run(sc, tuple(int(n) for n in args.instances.split(",")), quick=args.quick)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(out, handle, indent=1, default=str)
    print(markdown(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
