"""Load generators: `wrk` for throughput, a small asyncio client for per-request percentiles and TTFB.

Every run is bounded twice: by a duration and by a request cap (whichever comes first).

    python -m bench.loadgen URL --concurrency 16 --duration 5 --max-requests 100000 [--stream] [--wrk]

prints one JSON object (see `Result`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp

DONE_MARK = b"data: [DONE]"


@dataclass
class Result:
    tool: str
    requests: int  # completed with the expected answer
    errors: int  # wrong status, transport failure, timeout, stream without [DONE]
    elapsed_s: float
    rps: float
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    ttfb_p50_ms: float | None = None
    ttfb_p90_ms: float | None = None
    ttfb_p99_ms: float | None = None
    capped: bool = False  # the request cap, not the duration, ended the run
    error_kinds: dict[str, int] = field(default_factory=dict)


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending list (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 3)


# ------------------------------------------------------------------------------------ asyncio client


async def run_asyncio(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    concurrency: int,
    duration_s: float,
    max_requests: int,
    stream: bool,
    timeout_s: float = 30.0,
) -> Result:
    """`concurrency` closed-loop workers on one keep-alive pool until the duration or the cap is reached.

    Latency is request start → last body byte; TTFB is request start → first body byte.
    """
    latencies: list[float] = []
    ttfbs: list[float] = []
    error_kinds: dict[str, int] = {}
    issued = 0
    deadline = time.perf_counter() + duration_s
    last_done = 0.0

    def failed(kind: str) -> None:
        error_kinds[kind] = error_kinds.get(kind, 0) + 1

    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False, skip_auto_headers=("User-Agent",)
    ) as session:

        async def worker() -> None:
            nonlocal issued, last_done
            while issued < max_requests and time.perf_counter() < deadline:
                issued += 1
                started = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as resp:
                        first = await resp.content.readany()
                        ttfb = time.perf_counter() - started
                        tail = first
                        while chunk := await resp.content.readany():
                            tail = (tail[-64:] + chunk) if len(chunk) < 64 else chunk
                        status = resp.status
                except TimeoutError:
                    failed("timeout")
                    continue
                except aiohttp.ClientError as exc:
                    failed(type(exc).__name__)
                    continue
                finished = time.perf_counter()
                if status != 200:
                    failed(f"status {status}")
                elif stream and DONE_MARK not in tail:
                    failed("stream without [DONE]")
                else:
                    latencies.append(finished - started)
                    ttfbs.append(ttfb)
                    last_done = finished

        begin = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        end = time.perf_counter()
    elapsed = max(1e-9, (last_done or end) - begin)
    latencies.sort()
    ttfbs.sort()
    return Result(
        tool="asyncio",
        requests=len(latencies),
        errors=sum(error_kinds.values()),
        elapsed_s=round(elapsed, 3),
        rps=round(len(latencies) / elapsed, 1),
        p50_ms=_ms(percentile(latencies, 50)),
        p90_ms=_ms(percentile(latencies, 90)),
        p99_ms=_ms(percentile(latencies, 99)),
        ttfb_p50_ms=_ms(percentile(ttfbs, 50)) if stream else None,
        ttfb_p90_ms=_ms(percentile(ttfbs, 90)) if stream else None,
        ttfb_p99_ms=_ms(percentile(ttfbs, 99)) if stream else None,
        capped=issued >= max_requests,
        error_kinds=error_kinds,
    )


# ---------------------------------------------------------------------------------------------- wrk

_WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = {body}
{headers}
local cap = {cap_per_thread}
local seen = 0
response = function(status, headers, body)
  seen = seen + 1
  if seen >= cap then wrk.thread:stop() end
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCHJSON {{\\"requests\\":%d,\\"duration_us\\":%d,\\"connect\\":%d,\\"read\\":%d,\\"write\\":%d," ..
    "\\"status\\":%d,\\"timeout\\":%d,\\"p50_us\\":%d,\\"p90_us\\":%d,\\"p99_us\\":%d}}\\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
"""


def wrk_path() -> str | None:
    return shutil.which("wrk")


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def run_wrk(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    concurrency: int,
    duration_s: float,
    max_requests: int,
    timeout_s: float = 30.0,
) -> Result:
    """One `wrk` run (one thread: the load generator should stay small next to the proxy)."""
    exe = wrk_path()
    if exe is None:
        raise RuntimeError("wrk is not installed")
    threads = 1
    script = _WRK_SCRIPT.format(
        body=_lua_string(body.decode()),
        headers="\n".join(f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in headers.items()),
        cap_per_thread=max(1, max_requests // threads),
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", prefix="bench-wrk-", delete=False) as handle:
        handle.write(script)
        script_path = Path(handle.name)
    seconds = max(1, math.ceil(duration_s))
    try:
        proc = subprocess.run(
            [exe, "-t", str(threads), "-c", str(concurrency), "-d", f"{seconds}s", "--timeout", f"{timeout_s:g}s",
             "-s", str(script_path), url],
            capture_output=True, text=True, timeout=seconds + timeout_s + 10,
        )
    finally:
        script_path.unlink(missing_ok=True)
    match = re.search(r"^BENCHJSON (\{.*\})$", proc.stdout, re.MULTILINE)
    if proc.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    data = json.loads(match.group(1))
    kinds = {k: data[k] for k in ("connect", "read", "write", "status", "timeout") if data[k]}
    # wrk counts a non-2xx/3xx answer both as a request and as a status error.
    good = max(0, data["requests"] - data["status"])
    elapsed = data["duration_us"] / 1e6
    return Result(
        tool="wrk",
        requests=good,
        errors=sum(kinds.values()),
        elapsed_s=round(elapsed, 3),
        rps=round(good / elapsed, 1) if elapsed else 0.0,
        p50_ms=round(data["p50_us"] / 1000, 3) if good else None,
        p90_ms=round(data["p90_us"] / 1000, 3) if good else None,
        p99_ms=round(data["p99_us"] / 1000, 3) if good else None,
        capped=data["requests"] >= max_requests,
        error_kinds=kinds,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="One bounded load run; prints a JSON result.")
    parser.add_argument("url")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--max-requests", type=int, default=100_000)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--wrk", action="store_true", help="use wrk (no TTFB)")
    parser.add_argument("--header", action="append", default=[], help="name: value")
    args = parser.parse_args(argv)
    headers = {"content-type": "application/json"}
    headers.update(dict(h.split(": ", 1) for h in args.header))
    payload = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello."}]}
    if args.stream:
        payload["stream"] = True
    body = json.dumps(payload).encode()
    common = {"concurrency": args.concurrency, "duration_s": args.duration, "max_requests": args.max_requests}
    if args.wrk:
        result = run_wrk(args.url, body, headers, **common)
    else:
        result = asyncio.run(run_asyncio(args.url, body, headers, stream=args.stream, **common))
    print(json.dumps(asdict(result)))


if __name__ == "__main__":
    main()
