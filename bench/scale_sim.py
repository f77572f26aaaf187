"""A model of the gateway scaled out on Flex Consumption, up to 1,000 instances: storage load, propagation,
limit overshoot. It is a model, not a measurement; its single-instance part is calibrated on development hosts.

    python -m bench.scale_sim [--quick] [--instances 10,100,300,1000] [--calibrate [--hosts 3]] [--json FILE]
                              [--refresh-s 1] [--rps 5] [--rows breaker=18,health=6,callers=50] [--latency-ms 10]

It reports, for each instance count: Table operations per second on the busiest partition and on the account
for the six read-path designs of bench/sim_readpath.py (b+c as built: buckets of rows, a resync a minute;
steady traffic, and an incident where breakers move every half second), how long a change takes to reach the
instances, where each design stops scaling (the instance count at which it exceeds a published Table target),
and the recommended design; the writes of a 429 storm before issue 17 and as built, and of usage flushes
(bench/sim_writes.py); and the lease design's overshoot, admitted share and
storage operations for five caller profiles (bench/sim_leases.py). Targets and assumptions:
bench/sim_targets.py. The method and the latest figures: docs/capacity.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, replace
from typing import Any

from bench.sim_leases import LeaseConfig, simulate_leases
from bench.sim_readpath import DESIGNS, NAMES, simulate, stops_scaling
from bench.sim_targets import CALIBRATED, READ_ON, TARGETS, Scenario
from bench.sim_writes import breaker_storm, flush_rate

INSTANCES = (10, 100, 300, 1000)
MODES = ("steady", "incident")
# A design qualifies when every instance knows a change within this many refresh intervals, on average,
# at the largest instance count (ARCHITECTURE.md: operator changes reach every instance within one refresh).
PROPAGATION_BUDGET = 2.5
LEASE_PROFILES = {
    "requests: 600/min": LeaseConfig(limit=600, tokens_mean=1, used_share=(1.0, 1.0), under_p=0.0),
    "tokens: 1M/min": LeaseConfig(),
    "tokens: 1M/min, answers use 90-100 % of the reservation, 20 % more": LeaseConfig(
        used_share=(0.9, 1.0), under_p=0.2, under_max=0.5),
    "tokens: 30M/min (hot), 1 row": LeaseConfig(limit=30_000_000),
    "tokens: 30M/min (hot), 16 rows": LeaseConfig(limit=30_000_000, shards=16),
}
CALLERS_AT_LIMIT = 50  # callers leasing at once, for the account total (ASSUMPTION: one per caller row)


def run(sc: Scenario, instances: tuple[int, ...] = INSTANCES, quick: bool = False) -> dict[str, Any]:
    """Every part of the model, as plain data (the report and the test read this)."""
    readpath: dict[str, dict[str, list[dict]]] = {mode: {} for mode in MODES}
    stops: dict[str, dict[str, float]] = {mode: {} for mode in MODES}
    for mode in MODES:
        for design in DESIGNS:
            results = [simulate(design, n, sc, incident=mode == "incident") for n in instances]
            readpath[mode][design] = [asdict(r) | {"exceeds": r.exceeds()} for r in results]
            stops[mode][design] = stops_scaling(design, sc, incident=mode == "incident")
    profiles = dict(list(LEASE_PROFILES.items())[1:3]) if quick else LEASE_PROFILES
    leases = {name: [asdict(simulate_leases(n, replace(cfg, windows=1) if quick else cfg)) for n in instances]
              for name, cfg in profiles.items()}
    out = {
        "scenario": asdict(sc), "instances": list(instances), "calibration": asdict(CALIBRATED),
        "readpath": readpath, "stops": stops,
        "storms": {label: [asdict(breaker_storm(n, sc, built)) for n in instances]
                   for label, built in (("before", False), ("built", True))},
        "flushes": [flush_rate(n) for n in instances],
        "leases": leases,
    }
    out["recommended"] = recommend(out, sc)
    out["account"] = account_total(out, sc)
    return out


def recommend(out: dict[str, Any], sc: Scenario) -> str | None:
    """The design that stays under every target at every simulated instance count, in both modes, with every
    instance knowing a change within PROPAGATION_BUDGET intervals; of those, the one that scales furthest."""
    qualified = []
    for design in DESIGNS:
        rows = [r for mode in MODES for r in out["readpath"][mode][design]]
        slow = max(r["all_know_s"] or 0 for r in rows) > PROPAGATION_BUDGET * sc.refresh_s
        if not any(r["exceeds"] for r in rows) and not slow:
            qualified.append(design)
    if not qualified:
        return None
    headroom = {d: min(out["stops"][m][d] for m in MODES) for d in qualified}
    return max(qualified, key=lambda d: (headroom[d], -out["readpath"]["incident"][d][-1]["all_know_s"]))


def account_total(out: dict[str, Any], sc: Scenario) -> dict[str, float] | None:
    """Table transactions/s on the account at the largest instance count with the recommended design."""
    design = out["recommended"]
    if design is None:
        return None
    reads = out["readpath"]["incident"][design][-1]["peak_account"]
    typical = out["leases"].get("tokens: 1M/min")
    leases = CALLERS_AT_LIMIT * typical[-1]["ops_per_s"] if typical else 0.0
    flushes = out["flushes"][-1]["account"]
    built = out["storms"]["built"][-1]
    storm = built["operations"] + built["bump_operations"]  # within about a second
    total = reads + leases + flushes + storm
    return {"reads": reads, "leases": leases, "flushes": flushes, "storm": storm, "total": total,
            "target": TARGETS["table_account"].limit}


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
        f"{n}: {f['account']:,.0f}/s" for n, f in zip(ns, out["flushes"], strict=True)), "",
        "**Leases** (demand 1.5 x the limit): overshoot mean / max, share of the limit admitted, Table ops/s, "
        "conflicts per lease, p99 wait for a slice", "",
        "| caller | " + " | ".join(f"{n} instances" for n in ns) + " |", "|---|" + "--:|" * len(ns)]
    for name, rows in out["leases"].items():
        cells = [f"{r['overshoot_mean']:.1%} / {r['overshoot_max']:.1%}; {r['admitted']:.0%}; "
                 f"{r['ops_per_s']:,.0f} ops/s; {r['conflicts_per_lease']:.1f}; {r['wait_p99_ms']:.0f} ms"
                 for r in rows]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if out["account"]:
        a = out["account"]
        lines += ["", f"Account at {ns[-1]} instances with design {rec} in an incident: reads {a['reads']:,.0f} + "
                  f"leases of {CALLERS_AT_LIMIT} callers {a['leases']:,.0f} + flushes {a['flushes']:,.0f} + a storm "
                  f"second {a['storm']:,.0f} = {a['total']:,.0f} transactions/s (target {a['target']:,.0f})."]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer profiles, shorter runs (the test's form)")
    parser.add_argument("--instances", default=",".join(map(str, INSTANCES)))
    parser.add_argument("--refresh-s", type=float, default=Scenario.refresh_s)
    parser.add_argument("--rps", type=float, default=Scenario.per_instance_rps, help="requests/s per busy instance")
    parser.add_argument("--rows", help="state rows per partition, e.g. breaker=18,health=6,callers=50")
    parser.add_argument("--latency-ms", type=float, default=Scenario.table_latency_s * 1000)
    parser.add_argument("--changes", type=float, default=Scenario.changes_per_s, help="steady changes/s")
    parser.add_argument("--incident-changes", type=float, default=Scenario.incident_changes_per_s)
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
                  simulate_s=20.0 if args.quick else Scenario.simulate_s)
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
