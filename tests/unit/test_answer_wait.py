"""How long an attempt waits for a backend's answer: a non-streamed answer's headers come after the whole generation.

The rule: the backend's read timeout, stretched for a non-streamed request with a completion cap to what that cap
may take at the slowest credible speed, within the request's own total. Streams and uncapped requests keep the read
timeout, so a stalled backend still fails over. The same Attempts serve the sync and async paths.
"""

from __future__ import annotations

import json

import pytest

from gateway import translate
from gateway.attempt import Attempts, answer_wait_s
from gateway.config import load_settings
from gateway.credentials import BackendAuth
from gateway.pool import BackendPool, Target
from gateway.slots import Slots
from gateway.upstream import Upstream

V = "2024-10-21"


@pytest.mark.parametrize(
    ("read_s", "cap", "speed", "total_s", "expected"),
    [
        (120, None, 40, 200, 120),  # no cap: the read timeout, as before
        (120, 16384, 40, 200, 200),  # 410 s at 40 tok/s: up to the request's own total
        (1, 4000, 40, 200, 100),  # the cap's time at that speed
        (120, 100, 40, 200, 120),  # a cap that fits the read timeout changes nothing
        (1, 4000, 40, None, 100),  # no total given: the cap's time
        (120, 16384, 40, 30, 120),  # never less than the read timeout (the total then ends the attempt itself)
    ],
)
def test_answer_wait(read_s, cap, speed, total_s, expected):
    assert answer_wait_s(read_s, cap, speed, total_s) == pytest.approx(expected)


def attempts(**env: str) -> tuple[Attempts, Target]:
    settings = load_settings(
        {"GATEWAY_BACKEND_1": "name=a;host=https://a.example;mode=direct;deployments=m", "GATEWAY_AUTH": "none", **env}
    )
    pool = BackendPool(settings)
    upstream = Upstream(settings.connect_timeout_s, settings.read_timeout_s)  # never used: no request is sent
    slots = Slots(settings.backends, None, "local", settings.aging_s)
    made = Attempts(pool, upstream, BackendAuth(upstream.get_json, None), settings, slots)
    target = pool.candidates("m")[0]
    return made, target


def chat(**body: object) -> translate.Route:
    raw = json.dumps({"model": "m", "messages": [], **body}).encode()
    return translate.resolve("POST", "/v1/chat/completions", "", "application/json", raw, V)


def test_a_capped_plain_request_waits_for_its_cap_at_the_assumed_speed():
    made, target = attempts(GATEWAY_READ_TIMEOUT_S="1", GATEWAY_TOKENS_PER_SECOND="40")
    assert made.read_timeout_s(target, chat(max_tokens=4000), 200) == pytest.approx(100)
    assert made.read_timeout_s(target, chat(max_completion_tokens=400), 200) == pytest.approx(10)
    assert made.read_timeout_s(target, chat(max_tokens=4000), 30) == pytest.approx(30)  # within its own total


def test_streams_uncapped_requests_and_probes_keep_the_read_timeout():
    made, target = attempts(GATEWAY_READ_TIMEOUT_S="1")
    assert made.read_timeout_s(target, chat(max_tokens=4000, stream=True), None) == 1
    assert made.read_timeout_s(target, chat(), 200) == 1
    assert made.read_timeout_s(target, None, 200) == 1  # probes and batch calls name no route


def test_a_backends_own_timeout_is_the_floor():
    made, target = attempts(
        GATEWAY_BACKEND_1="name=a;host=https://a.example;mode=direct;timeout=7;deployments=m",
        GATEWAY_READ_TIMEOUT_S="1",
    )
    assert made.read_timeout_s(target, chat(), 200) == 7
    assert made.read_timeout_s(target, chat(max_tokens=40), 200) == 7  # 1 s of generation fits in 7


def test_the_slower_of_the_observed_and_the_assumed_speed_counts():
    made, target = attempts(GATEWAY_READ_TIMEOUT_S="1", GATEWAY_TOKENS_PER_SECOND="40")
    made.pool.observe_generation(target, 100, 10.0)  # this deployment generates 10 tokens/s
    assert made.read_timeout_s(target, chat(max_tokens=400), 200) == pytest.approx(40)
    fast, target = attempts(GATEWAY_READ_TIMEOUT_S="1", GATEWAY_TOKENS_PER_SECOND="40")
    fast.pool.observe_generation(target, 1000, 5.0)  # 200 tokens/s observed: the assumed 40 stays the floor
    assert fast.read_timeout_s(target, chat(max_tokens=400), 200) == pytest.approx(10)
