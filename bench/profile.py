"""Profiles a proxy's hot path with py-spy while the benchmark's load runs against it.

    python -m bench.profile [--target gateway] [--workload chat-c16] [--seconds 10] [--top 25]

Starts the fake, Azurite and the target (as bench/run.py does, proxy pinned to its own CPU), samples the
target process with `py-spy record --function --format raw` during a bounded load run, writes the collapsed
stacks to bench/results/profile-<target>-<workload>.txt and prints where the CPU went: by layer (gateway code,
aiohttp client, uvicorn/h11 server, starlette/devhost, asyncio, ...) and the top functions, inclusive and self,
as a percentage of the samples in which the process was on CPU. py-spy comes from bench/.venv-tools
(created on first use) or PATH.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import subprocess
import sys
import threading

from bench import loadgen
from bench.run import ALL_WORKLOADS, BENCH_DIR, RESULTS_DIR, Bench, parse_args, request_body

TOOLS_VENV = BENCH_DIR / ".venv-tools"

# Layer of a frame, by the first matching fragment of its file path (order matters).
LAYERS = (
    ("gateway/", "gateway"),
    ("bench/floor_proxy", "floor proxy"),
    ("tests/support/devhost", "devhost"),
    ("aiohttp/client", "aiohttp client"),
    ("aiohttp/connector", "aiohttp client"),
    ("aiohttp/", "aiohttp (other)"),
    ("uvicorn/", "uvicorn"),
    ("h11/", "h11"),
    ("starlette/", "starlette"),
    ("fastapi/", "fastapi"),
    ("azurefunctions/", "functions extension"),
    ("multidict/", "multidict/yarl"),
    ("yarl/", "multidict/yarl"),
    ("asyncio/", "asyncio"),
    ("logging/", "logging"),
    ("json/", "json"),
)


def py_spy() -> str:
    found = shutil.which("py-spy") or (str(TOOLS_VENV / "bin" / "py-spy") if (TOOLS_VENV / "bin" / "py-spy").exists()
                                       else None)
    if found:
        return found
    print("profile: installing py-spy into bench/.venv-tools ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(TOOLS_VENV)], check=True, timeout=120)
    subprocess.run([str(TOOLS_VENV / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    "py-spy"], check=True, timeout=300)
    return str(TOOLS_VENV / "bin" / "py-spy")


def layer_of(frame: str) -> str:
    for fragment, layer in LAYERS:
        if fragment in frame:
            return layer
    return "other"


def summarize(stacks: dict[str, int], top: int) -> str:
    """Layer totals (self time) and the top functions (inclusive and self) of collapsed stacks."""
    total = sum(stacks.values()) or 1
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    layers: collections.Counter[str] = collections.Counter()
    for stack, count in stacks.items():
        frames = stack.split(";")
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
        layers[layer_of(frames[-1])] += count
    lines = [f"{total} samples on CPU", "", "self time by layer:"]
    lines += [f"  {100 * n / total:5.1f} %  {name}" for name, n in layers.most_common()]
    lines += ["", "gateway functions, inclusive (self):"]
    for frame, n in inclusive.most_common():
        if "gateway/" in frame:
            lines.append(f"  {100 * n / total:5.1f} % ({100 * own[frame] / total:4.1f} %)  {frame}")
    lines += ["", f"top {top} functions by self time:"]
    lines += [f"  {100 * n / total:5.1f} %  {frame}" for frame, n in own.most_common(top)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="gateway", choices=["gateway", "floor-asgi", "floor-aiohttp"])
    parser.add_argument("--workload", default="chat-c16", choices=[w.name for w in ALL_WORKLOADS])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--lines", action="store_true", help="attribute samples to lines, not functions")
    parser.add_argument("--gateway-root", default=None, help="checkout to run the gateway from (see bench.run)")
    args = parser.parse_args(argv)
    workload = next(w for w in ALL_WORKLOADS if w.name == args.workload)
    spy = py_spy()
    bench = Bench(parse_args(["--targets", args.target]
                             + (["--gateway-root", args.gateway_root] if args.gateway_root else [])))
    bench.proxy_cpus = {1} if (len(os.sched_getaffinity(0)) >= 2) else None
    if bench.proxy_cpus:
        os.sched_setaffinity(0, {0})
    out = RESULTS_DIR / f"profile-{args.target}-{args.workload}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    with bench.stack:
        bench.start_fake()
        {"gateway": bench.start_gateway, "floor-asgi": bench.start_floor_asgi,
         "floor-aiohttp": bench.start_floor_aiohttp}[args.target]()
        bench.set_fake_latency(workload.latency_ms)
        target = bench.targets[args.target]
        url = target.base_url + target.path
        headers = {"content-type": "application/json", **target.headers}
        body = request_body(workload.stream)
        asyncio.run(loadgen.run_asyncio(url, body, headers, concurrency=workload.concurrency, duration_s=0.5,
                                        max_requests=10_000, stream=workload.stream))
        raw = out.with_suffix(".raw")
        spy_proc = subprocess.Popen([spy, "record", "--pid", str(target.pgid), "--duration", str(args.seconds),
                                     "--rate", str(args.rate), *([] if args.lines else ["--function"]),
                                     "--format", "raw", "--output", str(raw), "--nonblocking"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        result: list[loadgen.Result] = []

        def load() -> None:
            common = {"concurrency": workload.concurrency, "duration_s": args.seconds, "max_requests": 10_000_000}
            if not workload.stream and loadgen.wrk_path():
                result.append(loadgen.run_wrk(url, body, headers, **common))
            else:
                result.append(asyncio.run(loadgen.run_asyncio(url, body, headers, stream=workload.stream, **common)))

        thread = threading.Thread(target=load)
        thread.start()
        thread.join()
        try:
            _, err = spy_proc.communicate(timeout=args.seconds + 30)
        finally:
            if spy_proc.poll() is None:
                spy_proc.kill()
                spy_proc.wait()
        if spy_proc.returncode != 0 or not raw.exists():
            print(f"profile: py-spy failed: {err.decode(errors='replace').strip()}", file=sys.stderr)
            return 1
    stacks: dict[str, int] = {}
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack:
            stacks[stack] = stacks.get(stack, 0) + int(count)
    raw.replace(out)
    r = result[0]
    print(f"{args.target} {args.workload}: {r.rps:.0f} rps, p50 {r.p50_ms} ms under py-spy ({args.rate} Hz); "
          f"stacks in {out}")
    print(summarize(stacks, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
