"""Calibrates the scale simulation's single-instance model on real development hosts sharing one Azurite.

    python -m bench.sim_calibrate [--hosts 3] [--trials 3]

What it measures, and what the model predicts for it:

- storage operations per second of one instance at a steady request rate `lambda` (closed loop, then paced
  at 2 requests/s): the model says `lambda / (1 + lambda * T)`, one refresh per interval once traffic
  arrives; the ratio measured / predicted is `Calibration.refresh_ratio`;
- breaker propagation: host A's backend `weu` answers 429 (A's `weu` is its own fake, so only A sees it);
  the other hosts keep sending and the delay until each stops using `weu` is taken; an operator reset on A
  then gives the delay back the other way. The model says: uniform over one interval plus a read;
- storage calls of each host (reads and writes, from /gateway/stats) while idle, busy and during a 429
  storm (every observer's backend answers 429 at once, so each sees its own before it learns from the others);
- one whole-table query, one point read and one conditional update against Azurite, timed directly.

The hosts are real processes (tests.support.devhost) and the fakes are the test fakes; nothing is mocked.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import threading
import time
import uuid
from contextlib import ExitStack
from typing import Any

import httpx

from bench.sim_readpath import refresh_rate
from tests.support.azurite import Azurite
from tests.support.devhost import DevHost
from tests.support.fake_openai import FakeAzureOpenAI, Fault

KEY = "calibration-key"
OPERATOR = {"x-functions-key": "devhost-function-key"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


class Driver(threading.Thread):
    """Keeps one host busy (closed loop, or paced) and notices when its answers change backend."""

    def __init__(self, url: str, paced_rps: float | None = None) -> None:
        super().__init__(daemon=True)
        self.url, self.paced_rps = url, paced_rps
        self.stop = threading.Event()
        self.requests = 0
        self._lock = threading.Lock()
        self._watch: tuple[str, float, threading.Event] | None = None
        self.seen_at: float | None = None

    def watch(self, backend: str, since: float) -> threading.Event:
        """An event set at the first answer from `backend` to a request sent after `since`."""
        with self._lock:
            self.seen_at = None
            self._watch = (backend, since, threading.Event())
            return self._watch[2]

    def run(self) -> None:
        with httpx.Client(headers={"api-key": KEY}, timeout=30) as client:
            while not self.stop.is_set():
                sent = time.monotonic()
                answer = client.post(f"{self.url}/v1/chat/completions", json=CHAT)
                self.requests += 1
                backend = answer.headers.get("x-gateway-backend")
                with self._lock:
                    if self._watch and backend == self._watch[0] and sent >= self._watch[1]:
                        self.seen_at = time.monotonic()
                        self._watch[2].set()
                        self._watch = None
                if self.paced_rps:
                    self.stop.wait(max(0.0, 1 / self.paced_rps - (time.monotonic() - sent)))  # pacing


def _ops(client: httpx.Client, host: DevHost) -> int:
    return int(_stats(client, host)["storage_operations"])


def _stats(client: httpx.Client, host: DevHost) -> dict[str, Any]:
    return dict(client.get(f"{host.url}/gateway/stats", headers=OPERATOR).json())


def _calls(client: httpx.Client, hosts: list[DevHost], window_s: float, wait: threading.Event) -> dict[str, Any]:
    """Reads and writes per second of each host over a window (whatever the hosts are doing meanwhile)."""
    before, t0 = [_stats(client, h) for h in hosts], time.monotonic()
    wait.wait(window_s)  # the measurement window (a fixed duration), not a synchronisation
    after, elapsed = [_stats(client, h) for h in hosts], time.monotonic() - t0
    return {kind: [round((a[f"storage_{kind}"] - b[f"storage_{kind}"]) / elapsed, 2) for b, a in zip(
        before, after, strict=True)] for kind in ("reads", "writes")} | {"window_s": round(elapsed, 1)}  # fmt: skip


def _ops_rate(client: httpx.Client, host: DevHost, driver: Driver, window_s: float) -> dict[str, float]:
    """Storage operations and requests per second over a window of steady traffic."""
    ops0, req0, t0 = _ops(client, host), driver.requests, time.monotonic()
    driver.stop.wait(window_s)  # the measurement window (a fixed duration), not a synchronisation
    ops1, req1, t1 = _ops(client, host), driver.requests, time.monotonic()
    rps = (req1 - req0) / (t1 - t0)
    measured = (ops1 - ops0) / (t1 - t0)
    return {"rps": round(rps, 2), "ops_per_s": round(measured, 3),
            "model_ops_per_s": round(refresh_rate(rps, 1.0, ratio=1.0, read_s=0.003), 3)}


def table_latency(connection_string: str, rows: int = 74, repeats: int = 30) -> dict[str, float]:
    """Median ms of one whole-table query (`rows` entities), one point read and one ETag-conditional update
    on Azurite."""
    from azure.core import MatchConditions
    from azure.data.tables import TableClient, UpdateMode

    name = "cal" + uuid.uuid4().hex[:10]
    with TableClient.from_connection_string(connection_string, name) as table:
        table.create_table()
        for i in range(rows):
            table.create_entity({"PartitionKey": "p" + str(i % 3), "RowKey": str(i), "Value": i})
        reads, points, writes = [], [], []
        for _ in range(repeats):
            t = time.perf_counter()
            list(table.list_entities())
            reads.append(time.perf_counter() - t)
            t = time.perf_counter()
            entity = table.get_entity("p0", "0")
            points.append(time.perf_counter() - t)
            t = time.perf_counter()
            table.update_entity(entity, mode=UpdateMode.REPLACE, etag=entity.metadata["etag"],
                                match_condition=MatchConditions.IfNotModified)
            writes.append(time.perf_counter() - t)
        table.delete_table()
    return {"query_ms": round(statistics.median(reads) * 1000, 2),
            "point_read_ms": round(statistics.median(points) * 1000, 2),
            "update_ms": round(statistics.median(writes) * 1000, 2)}


def calibrate(hosts: int = 3, trials: int = 3, window_s: float = 10.0) -> dict[str, Any]:
    """Runs every measurement above; returns the figures, the model's predictions beside them."""
    if hosts < 2:
        raise ValueError("propagation needs at least two hosts")
    table = "cal" + uuid.uuid4().hex[:10]
    with ExitStack() as stack:
        azurite = stack.enter_context(Azurite())
        fakes = [stack.enter_context(FakeAzureOpenAI(name=n).threaded()) for n in ("weu-a", "weu", "neu")]
        victim, shared, neu = fakes

        def env(weu_url: str) -> dict[str, str]:
            backend = "mode=direct;api-key=fake-key;deployments=gpt-4o-mini"
            return {"AzureWebJobsStorage": azurite.connection_string, "GATEWAY_STATE_TABLE": table,
                    "GATEWAY_STATE_REFRESH_MS": "1000", "GATEWAY_API_KEYS": KEY,
                    "GATEWAY_BACKEND_1": f"name=weu;host={weu_url};priority=1;{backend}",
                    "GATEWAY_BACKEND_2": f"name=neu;host={neu.url};priority=2;{backend}"}

        devhosts = [stack.enter_context(DevHost(env=env(victim.url if i == 0 else shared.url))) for i in range(hosts)]
        a, observers = devhosts[0], devhosts[1:]
        client = stack.enter_context(httpx.Client(headers={"api-key": KEY}, timeout=30))
        for h in devhosts:  # each has loaded the shared state once
            client.post(f"{h.url}/v1/chat/completions", json=CHAT).raise_for_status()
        drivers = [Driver(h.url) for h in observers]
        idle = _calls(client, devhosts, window_s / 2, drivers[0].stop)  # started, not yet sending
        for d in drivers:
            d.start()
            stack.callback(d.join, 10)
            stack.callback(d.stop.set)
        busy = _ops_rate(client, observers[0], drivers[0], window_s)
        busy_calls = _calls(client, observers, window_s / 2, drivers[0].stop)
        delays: list[float] = []
        phase = threading.Event()
        rng = random.Random(17)
        for _ in range(trials):
            # Each trigger comes right after every observer refreshed (that is how the previous step ended);
            # a random pause puts it at a random point of their refresh cycle, as a real change would be.
            phase.wait(rng.uniform(0, 1.0))
            victim.enqueue(Fault.status(429, retry_after=60))
            answer = client.post(f"{a.url}/v1/chat/completions", json=CHAT)
            assert answer.headers["x-gateway-backend"] == "neu", "host A did not fail over after its 429"
            tripped = time.monotonic()
            events = [d.watch("neu", tripped) for d in drivers]
            if not all(e.wait(30) for e in events):
                raise RuntimeError("an observer never stopped using the throttled backend")
            delays += [d.seen_at - tripped for d in drivers]
            phase.wait(rng.uniform(0, 1.0))  # a random point of the refresh cycle, as above
            client.post(f"{a.url}/gateway/backends/weu/reset", headers=OPERATOR).raise_for_status()
            reset = time.monotonic()
            events = [d.watch("weu", reset) for d in drivers]
            if not all(e.wait(30) for e in events):
                raise RuntimeError("an observer never came back to the reset backend")
            delays += [d.seen_at - reset for d in drivers]
        # A storm: every observer's backend answers 429 at once; each may see its own before it learns.
        shared.always(Fault.status(429, retry_after=30))
        storm = _calls(client, observers, 3.0, phase)
        shared.always(None)
        for d in drivers:
            d.stop.set()
        paced = Driver(observers[0].url, paced_rps=2.0)
        paced.start()
        stack.callback(paced.join, 10)
        stack.callback(paced.stop.set)
        slow = _ops_rate(client, observers[0], paced, window_s * 1.5)
        latency = table_latency(azurite.connection_string)
    ratios = [m["ops_per_s"] / m["model_ops_per_s"] for m in (busy, slow) if m["model_ops_per_s"]]
    # The model: the next refresh starts uniformly within one interval (busy observers), plus one query.
    query_s = latency["query_ms"] / 1000
    return {
        "hosts": hosts, "refresh_s": 1.0, "busy": busy, "paced": slow,
        "calls_per_s": {"idle": idle, "busy": busy_calls, "storm": storm},
        "refresh_ratio": round(statistics.fmean(ratios), 3),
        "propagation_s": {"samples": len(delays), "mean": round(statistics.fmean(delays), 3),
                          "max": round(max(delays), 3), "min": round(min(delays), 3),
                          "model_mean": round(0.5 + query_s, 3), "model_max": round(1.0 + query_s, 3)},
        "azurite": latency,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=3, help="development hosts sharing one Azurite (2-4)")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--window-s", type=float, default=10.0)
    args = parser.parse_args(argv)
    print(json.dumps(calibrate(args.hosts, args.trials, args.window_s), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
