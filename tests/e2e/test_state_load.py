"""Shared state across three development hosts on one Azurite: what each costs in storage, and how fast a
change reaches the others.

Idle hosts make no storage call. Busy hosts read the version entity about once per refresh interval
(GATEWAY_STATE_REFRESH_MS, 1 s) and write nothing, and /gateway/stats reports it as reads per second. A 429 on
host A and a suspension made on host A reach hosts B and C within 1.5 s. Host A's backend `weu` is a fake of
its own, so only A sees the 429. Load comes from closed-loop client threads; propagation is taken from the
answers they get, and nothing sleeps to synchronise (the idle and busy windows are measurement windows).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import httpx

from tests.support.devhost import DevHost
from tests.support.fake_openai import FakeAzureOpenAI, Fault

KEY = "state-load-key"
OPERATOR = {"x-functions-key": "devhost-function-key"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
REFRESH_MS = 1000
PROPAGATION_LIMIT_S = 1.5
WINDOW_S = 4.0


class Driver(threading.Thread):
    """Keeps one host busy and records (time, status, backend) of every answer."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stop = threading.Event()
        self.answers: list[tuple[float, int, str]] = []

    def run(self) -> None:
        with httpx.Client(headers={"api-key": KEY}, timeout=30) as client:
            while not self.stop.is_set():
                answer = client.post(f"{self.url}/v1/chat/completions", json=CHAT)
                self.answers.append((time.monotonic(), answer.status_code, answer.headers.get("x-gateway-backend", "")))

    def first(self, since: float, check, timeout_s: float) -> float:
        """Seconds from `since` until an answer sent after it satisfies `check` (polling, with a deadline)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for at, status, backend in list(self.answers):
                if at > since and check(status, backend):
                    return at - since
        raise AssertionError(f"{self.url}: not seen within {timeout_s} s")


@contextmanager
def driving(hosts: list[DevHost]) -> Iterator[list[Driver]]:
    drivers = [Driver(h.url) for h in hosts]
    for d in drivers:
        d.start()
    try:
        yield drivers
    finally:
        for d in drivers:
            d.stop.set()
        for d in drivers:
            d.join(30)


def stats(client: httpx.Client, host: DevHost) -> dict:
    return client.get(f"{host.url}/gateway/stats", headers=OPERATOR).json()


def test_three_instances_read_one_entity_per_interval_and_see_changes_within_the_bound(azurite, capsys):
    with ExitStack() as stack:
        victim, shared, neu = (stack.enter_context(FakeAzureOpenAI(name=n).threaded()) for n in ("weu-a", "weu", "neu"))
        table = "load" + uuid.uuid4().hex[:8]

        def env(weu_url: str) -> dict[str, str]:
            backend = "mode=direct;api-key=fake-key;deployments=gpt-4o-mini"
            return {
                "AzureWebJobsStorage": azurite.connection_string,
                "GATEWAY_STATE_TABLE": table,
                "GATEWAY_STATE_REFRESH_MS": str(REFRESH_MS),
                "GATEWAY_API_KEYS": f"team:{KEY}",
                "GATEWAY_BACKEND_1": f"name=weu;host={weu_url};priority=1;{backend}",
                "GATEWAY_BACKEND_2": f"name=neu;host={neu.url};priority=2;{backend}",
            }

        a = stack.enter_context(DevHost(env=env(victim.url)))
        b, c = (stack.enter_context(DevHost(env=env(shared.url))) for _ in range(2))
        client = stack.enter_context(httpx.Client(timeout=30))
        for host in (a, b, c):  # warm: each has loaded the shared state once
            answer = client.post(f"{host.url}/v1/chat/completions", json=CHAT, headers={"api-key": KEY})
            assert answer.headers["x-gateway-backend"] == "weu"

        # Idle: no traffic, no storage call.
        before = [stats(client, h)["storage_operations"] for h in (a, b, c)]
        threading.Event().wait(WINDOW_S / 2)  # the idle measurement window
        assert [stats(client, h)["storage_operations"] for h in (a, b, c)] == before
        idle = stats(client, b)["storage_ops_per_s"]

        with driving([b, c]) as drivers:
            # Busy: about one version read per interval, no write.
            start = [stats(client, h) for h in (b, c)]
            t0 = time.monotonic()
            drivers[0].stop.wait(WINDOW_S)  # the busy measurement window
            elapsed = time.monotonic() - t0
            end = [stats(client, h) for h in (b, c)]
            busy = []
            for s0, s1 in zip(start, end, strict=True):
                per_s = (s1["storage_operations"] - s0["storage_operations"]) / elapsed
                assert 0.5 <= per_s <= 2.0, per_s  # ~1 refresh per interval: 1 call, nothing changed
                assert s1["state_reads"]["full"] == s0["state_reads"]["full"] == 1  # no full read under load
                assert s1["storage_ops_per_s"]["writes"] * s1["storage_ops_per_s"]["window_s"] < 1.5  # its table check
                reported = s1["storage_ops_per_s"]  # averaged since start while the host is younger than a minute
                in_window = (reported["reads"] + reported["writes"]) * reported["window_s"]
                assert abs(in_window - s1["storage_operations"]) < 2
                busy.append(round(per_s, 2))

            # A breaker: host A alone sees a 429; B and C stop sending to weu.
            victim.enqueue(Fault.status(429, retry_after=30))
            answer = client.post(f"{a.url}/v1/chat/completions", json=CHAT, headers={"api-key": KEY})
            assert answer.headers["x-gateway-backend"] == "neu"
            tripped = time.monotonic()
            breaker = [d.first(tripped, lambda s, be: be == "neu", 5.0) for d in drivers]
            for d in drivers:  # and never back to weu once switched
                switched = tripped + breaker[drivers.index(d)]
                assert all(be == "neu" for at, _, be in list(d.answers) if at > switched)
            reads = stats(client, b)["state_reads"]
            assert reads["buckets"] >= 1 and reads["full"] == 1  # the changed bucket only

            # A suspension made on host A: B and C refuse the caller.
            assert client.post(f"{a.url}/gateway/callers/team/suspend", headers=OPERATOR).status_code == 200
            suspended = time.monotonic()
            suspension = [d.first(suspended, lambda s, be: s == 403, 5.0) for d in drivers]
        assert max(breaker) < PROPAGATION_LIMIT_S, breaker
        assert max(suspension) < PROPAGATION_LIMIT_S, suspension
        with capsys.disabled():
            print(
                f"\n[state load] idle: 0 calls in {WINDOW_S / 2:g} s (reported {idle}); busy: {busy} calls/s per "
                f"host; B and C knew of A's 429 after {[round(x * 1000) for x in breaker]} ms and of its suspension "
                f"after {[round(x * 1000) for x in suspension]} ms (refresh {REFRESH_MS} ms)"
            )
