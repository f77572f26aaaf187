"""What a `stream-concurrency` sweep means for Flex Consumption: a per-instance concurrency per instance size,
and the sweep's Markdown table (printed by `make bench`, copied into docs/performance.md and docs/capacity.md).
"""

from __future__ import annotations

from typing import Any

from bench.concurrency import SweepConfig

# Flex Consumption cores per instance size (learn.microsoft.com/azure/azure-functions/flex-consumption-plan,
# "Instance sizes", read 2026-11-30).
FLEX_CORES = {512: 0.25, 2048: 1.0, 4096: 2.0}
# ASSUMPTION (not measured here): on Azure the Functions host relays each HTTP request and its stream to the
# Python worker and costs about as much CPU per event as the worker. On a 1-core instance the two share it;
# the worker, one Python process, never uses more than one core.
HOST_CPU_FACTOR = 2.0


def worker_core_share(instance_mb: int) -> float:
    """The share of one core the worker can count on (1.0 = the whole pinned core measured here)."""
    return min(1.0, FLEX_CORES[instance_mb] / HOST_CPU_FACTOR)


def recommend(rows: list[dict[str, Any]], instance_mb: int, ttfb_budget_ms: float = 10.0,
              memory_share: float = 0.5) -> dict[str, Any]:
    """A per-instance concurrency for an instance size, from the measured sweep.

    TTFB: the largest level (all streams in flight, no errors) up to which every level's probe TTFB stayed
    within `ttfb_budget_ms` of idle on the one pinned core, scaled by `worker_core_share`. Memory: idle RSS
    plus the steepest measured cost per held stream must stay under `memory_share` of the instance.
    """
    idle = next(r for r in rows if r["concurrency"] == 0)
    levels = sorted((r for r in rows if r["concurrency"] > 0), key=lambda r: r["concurrency"])
    per_stream_kb = max((r["rss_per_stream_kb"] or 0 for r in levels), default=0.0)
    budget_mb = instance_mb * memory_share - idle["rss_mb"]
    by_memory = int(budget_mb * 1024 / per_stream_kb) if per_stream_kb > 0 else None
    measured = 0
    for r in levels:
        if not r["all_in_flight"] or r["errors"] or (r["ttfb_added_ms"] or 0) > ttfb_budget_ms:
            break
        measured = r["concurrency"]
    by_ttfb = int(measured * worker_core_share(instance_mb))
    value = min(v for v in (by_ttfb, by_memory) if v is not None)
    return {"instance_mb": instance_mb, "measured_one_core": measured, "core_share": worker_core_share(instance_mb),
            "by_ttfb": by_ttfb, "by_memory": by_memory, "per_stream_kb": per_stream_kb,
            "idle_rss_mb": idle["rss_mb"], "value": value}


def _fmt(value: object, digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown(rows: list[dict[str, Any]], cfg: SweepConfig) -> str:
    lines = [
        f"stream-concurrency: held streams of {cfg.stream_s:g} s, one event every {cfg.chunk_ms} ms "
        f"({cfg.chunks} events), opened over {cfg.ramp_s:g} s; {cfg.probes} probe streams per level.",
        "",
        "| held streams | all in flight | probe TTFB p50 ms | p90 ms | +p50 vs idle | held TTFB p99 ms | RSS MB "
        "| KB/stream | CPU cores | µs CPU/event | events/s | errors | storage ops/s | other load |",
        "|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['concurrency']} | {'yes' if r['all_in_flight'] else '**no**'} | {_fmt(r['ttfb_p50_ms'])} "
            f"| {_fmt(r['ttfb_p90_ms'])} | {_fmt(r['ttfb_added_ms'])} | {_fmt(r['held_ttfb_p99_ms'])} "
            f"| {_fmt(r['rss_mb'], 1)} | {_fmt(r['rss_per_stream_kb'], 1)} | {_fmt(r['cpu_cores'])} "
            f"| {_fmt(r['cpu_us_per_chunk'], 1)} | {r['chunks_per_s']} | {r['errors']} "
            f"| {_fmt(r['storage_ops_per_s'])} | {_fmt(r['foreign_cpu_util'])} |")
    lines += ["", "| instance | TTFB within 10 ms (one core) | worker's core share | memory allows | "
              "per-instance concurrency |", "|---|--:|--:|--:|--:|"]
    for mb in (512, 2048, 4096):
        rec = recommend(rows, mb)
        lines.append(f"| {mb} MB | {rec['measured_one_core']} | {rec['core_share']:g} | {rec['by_memory']} "
                     f"| **{rec['value']}** |")
    return "\n".join(lines)
