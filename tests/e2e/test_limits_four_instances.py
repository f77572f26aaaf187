"""Per-caller limits across four instances: four devhosts on one Azurite, traffic spread over all of them.

For 66 s three callers send at once: `hot` at 160 % of its RPM limit, `steady` at 90 % of the same limit, and
`tok` over its TPM limit. Over every sliding 60 s window (1 s steps) the admitted requests (and tokens, as the
backend reported them) must stay within 5 % of the limit, and `steady` must never be refused. The figures are
printed. Traffic is paced by a schedule (a load generator), nothing sleeps to synchronise.
"""

from __future__ import annotations

import threading
import time
import uuid
from itertools import cycle

import httpx

from tests.support.devhost import DevHost
from tests.support.fake_openai import FakeAzureOpenAI

RUN_S = 66.0
RPM = 240  # 4 requests/s
TPM = 4800  # 80 tokens/s
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Tell me about limits"}], "max_tokens": 8}


def drive(hosts: list[str], key: str, rate: float, admitted: list[tuple[float, int]], refused: list[float]) -> None:
    """Sends at `rate` requests/s for RUN_S, round-robin over the hosts; records (time, tokens) of admissions."""
    start = time.monotonic()
    with httpx.Client(timeout=30, headers={"api-key": key}) as client:
        for n, host in zip(range(int(RUN_S * rate)), cycle(hosts), strict=False):
            due = start + n / rate
            if (wait := due - time.monotonic()) > 0:
                time.sleep(wait)  # pacing the load generator, not synchronisation
            answer = client.post(f"{host}/v1/chat/completions", json=CHAT)
            now = time.monotonic() - start
            if answer.status_code == 200:
                admitted.append((now, answer.json()["usage"]["total_tokens"]))
            else:
                assert answer.status_code == 429 and answer.json()["error"]["code"] == "rate_limit_exceeded"
                refused.append(now)


def worst_window(events: list[tuple[float, int]], *, tokens: bool) -> int:
    """The most admitted (requests, or tokens) in any 60 s window, stepping by 1 s."""
    worst = 0
    for start in range(int(RUN_S - 59)):
        inside = [t for at, t in events if start <= at < start + 60]
        worst = max(worst, sum(inside) if tokens else len(inside))
    return worst


def test_limits_hold_across_four_instances(azurite, capsys):
    backend = FakeAzureOpenAI(name="weu")
    with backend.threaded():
        env = {
            "AzureWebJobsStorage": azurite.connection_string,
            "GATEWAY_STATE_TABLE": "limits" + uuid.uuid4().hex[:8],
            "GATEWAY_API_KEYS": "hot:hot-key,steady:steady-key,tok:tok-key",
            "GATEWAY_BACKEND_1": f"name=weu;host={backend.url};mode=direct;api-key=fake-key;deployments=gpt-4o-mini",
            "GATEWAY_PROFILE_SHARED": f"rpm={RPM}",
            "GATEWAY_PROFILE_TOKENS": f"tpm={TPM}",
            "GATEWAY_CALLER_PROFILES": "hot=shared,steady=shared,tok=tokens",
        }
        with DevHost(env=env) as a, DevHost(env=env) as b, DevHost(env=env) as c, DevHost(env=env) as d:
            hosts = [h.url for h in (a, b, c, d)]
            runs = {
                "hot": ("hot-key", 1.6 * RPM / 60, [], []),
                "steady": ("steady-key", 0.9 * RPM / 60, [], []),
                "tok": ("tok-key", 8.0, [], []),
            }
            threads = [
                threading.Thread(target=drive, args=(hosts, key, rate, admitted, refused))
                for key, rate, admitted, refused in runs.values()
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=RUN_S + 60)
            hot, steady, tok = (runs[name] for name in ("hot", "steady", "tok"))
            rpm_ratio = worst_window(hot[2], tokens=False) / RPM
            tpm_ratio = worst_window(tok[2], tokens=True) / TPM
            with capsys.disabled():
                print(
                    f"\n[limits, 4 instances, {RUN_S:.0f} s] worst 60 s window: RPM admitted/limit {rpm_ratio:.3f} "
                    f"(hot sent at 160 %: {len(hot[2])} admitted, {len(hot[3])} refused); TPM admitted/limit "
                    f"{tpm_ratio:.3f} ({len(tok[2])} admitted, {len(tok[3])} refused); steady at 90 %: "
                    f"{len(steady[2])} admitted, {len(steady[3])} refused"
                )
            assert rpm_ratio <= 1.05 and tpm_ratio <= 1.05
            assert steady[3] == []  # a caller under 95 % of its limit is never refused
            assert hot[3] and tok[3]  # the limits did bite: the test can fail
