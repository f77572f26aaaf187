"""The `chat-c64-mixed` workload: priority admission at a backend's concurrency (the lanes), measured.

    python -m bench.mixed [--duration 5] [--out FILE]      (or: python -m bench.run --workloads chat-c64-mixed)

One gateway (development host, Azurite) in front of a fake that answers in 100 ms, through a backend that allows
`concurrency=16;reserved=8`: it takes 160 requests/s. Phase `alone`: 8 priority-1 clients (closed loop, half the
backend). Phase `mixed`: the same 8 with 56 priority-9 clients beside them, 64 in all, four times what the backend
takes at once. A row per phase and priority: requests/s, latency percentiles, errors; and per phase the gateway's
CPU and storage operations per request. The lanes' goal: priority-1 p50 mixed within 1.3x of alone, while
priority 9 absorbs the wait. Several instances are the business of tests/e2e/test_concurrency_four_instances.py;
this row watches what one instance's admission costs and keeps.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from bench import loadgen, procstat

WORKLOAD = "chat-c64-mixed"
CONCURRENCY, RESERVED, LATENCY_MS = 16, 8, 100
P1_CLIENTS, P9_CLIENTS = 8, 56
PROFILE = {"GATEWAY_PROFILE_LANES": "priority=1", "GATEWAY_DEFAULT_PROFILE": "lanes"}  # priority 9 by header


def start_servers(bench: Any) -> Any:
    """A fake with a fixed latency and a gateway whose only backend has the concurrency; on `bench`'s stack."""
    from bench import run  # run imports this module; by now it is loaded

    _, fake_url, _ = bench.spawn_fake("ptu", "--latency-ms", str(LATENCY_MS))
    if bench.storage is None:
        bench.start_storage()
    env = run.gateway_env(fake_url, bench.storage) | PROFILE
    env.pop("GATEWAY_BACKEND_2")
    env["GATEWAY_BACKEND_1"] += f";tier=ptu;concurrency={CONCURRENCY};reserved={RESERVED}"
    proc, gw_port = bench.spawn_devhost("gateway-mixed", "function_app", env, bench.args.gateway_root)
    target = bench._add_proxy("gateway-mixed", gw_port, proc, run.AZURE_PATH, {"api-key": run.GATEWAY_KEY})
    target.stats_url = f"{target.base_url}/gateway/stats"
    return target


async def _phase(url: str, headers: dict[str, str], body: bytes, duration_s: float,
                 p9: bool) -> list[loadgen.Result]:  # fmt: skip
    def clients(n: int, priority: int) -> Any:
        return loadgen.run_asyncio(url, body, headers | {"x-gateway-priority": str(priority)}, concurrency=n,
                                   duration_s=duration_s, max_requests=1_000_000, stream=False)  # fmt: skip

    return list(await asyncio.gather(clients(P1_CLIENTS, 1), *([clients(P9_CLIENTS, 9)] if p9 else [])))


def measure(bench: Any, duration_s: float) -> list[dict[str, Any]]:
    """Warm-up, then `alone` and `mixed`, each `duration_s` long; one row per phase and priority."""
    from bench import run

    target = start_servers(bench)
    url = target.base_url + target.path
    headers = {"content-type": "application/json", **target.headers}
    body = run.request_body(False)
    if target.pgid and bench.proxy_cpus:
        procstat.pin_group(target.pgid, bench.proxy_cpus)
    asyncio.run(_phase(url, headers, body, 1.0, p9=True))  # slots leased, connections open: not measured
    rows: list[dict[str, Any]] = []
    for phase in ("alone", "mixed"):
        ops0, cpu0 = bench.storage_ops(target), procstat.cpu_ms(target.pgid)
        results = asyncio.run(_phase(url, headers, body, duration_s, p9=phase == "mixed"))
        cpu, ops1 = procstat.cpu_ms(target.pgid) - cpu0, bench.storage_ops(target)
        answered = sum(r.requests for r in results) or 1
        for priority, r in zip((1, 9), results, strict=False):
            rows.append({
                "workload": WORKLOAD, "phase": phase, "priority": priority,
                "clients": P1_CLIENTS if priority == 1 else P9_CLIENTS, "rps": r.rps, "p50_ms": r.p50_ms,
                "p90_ms": r.p90_ms, "p99_ms": r.p99_ms, "errors": r.errors, "error_kinds": r.error_kinds,
                "cpu_ms_per_req": round(cpu / answered, 3),
                "storage_ops_per_req": None if ops0 is None or ops1 is None else round((ops1 - ops0) / answered, 4),
            })  # fmt: skip
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{WORKLOAD}: backend concurrency={CONCURRENCY};reserved={RESERVED}, {LATENCY_MS} ms answers",
        "",
        "| phase | priority | clients | rps | p50 ms | p90 ms | p99 ms | errors | gateway CPU ms/req | storage ops/req"
        " |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = ("phase", "priority", "clients", "rps", "p50_ms", "p90_ms", "p99_ms", "errors", "cpu_ms_per_req",
                 "storage_ops_per_req")  # fmt: skip
        lines.append("| " + " | ".join(str(r[c]) for c in cells) + " |")
    p1 = {r["phase"]: r["p50_ms"] for r in rows if r["priority"] == 1}
    if p1.get("alone") and p1.get("mixed"):
        lines += ["", f"priority-1 p50 mixed / alone: {p1['mixed'] / p1['alone']:.2f}x (goal: at most 1.3x)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--out", help="JSON file for the rows")
    args = parser.parse_args(argv)
    from bench import run

    return run.main(["--workloads", WORKLOAD, "--mixed-duration", str(args.duration)]
                    + (["--out", args.out] if args.out else []))  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
