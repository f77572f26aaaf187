"""Backend choice: tiers by priority, strategies within a tier, and what answers teach the pool (no storage)."""

import random
from collections import Counter

import pytest

from gateway.config import load_settings
from gateway.pool import BackendPool
from tests.support.clock import Clock


def pool(*specs: str, strategy: str = "priority", seed: int = 7, **env: str) -> tuple[BackendPool, Clock]:
    values = {f"GATEWAY_BACKEND_{i}": spec for i, spec in enumerate(specs, start=1)}
    settings = load_settings({**values, "GATEWAY_STRATEGY": strategy, **env})
    clock = Clock(1_800_000_000.0)
    return BackendPool(settings, rng=random.Random(seed), clock=clock), clock


THREE = (
    "name=a;host=https://a.example;mode=direct;priority=1;weight=1;deployments=m",
    "name=b;host=https://b.example;mode=direct;priority=1;weight=3;deployments=m=m-b",
    "name=c;host=https://c.example;mode=direct;priority=2;weight=50;deployments=m",
)


def names(p: BackendPool, n: int, model: str = "m") -> list[str]:
    return [p.choose(model).backend.name for _ in range(n)]


def test_candidates_order_and_deployment_mapping():
    p, _ = pool(*THREE)
    assert [(t.backend.name, t.deployment) for t in p.candidates("m")] == [("b", "m-b"), ("a", "m"), ("c", "m")]
    assert p.candidates("other") == () and p.choose("other") is None


def test_priority_strategy_is_strict_failover():
    p, _ = pool(*THREE)
    assert names(p, 3) == ["b", "b", "b"]
    assert p.choose("m", exclude={"b"}).backend.name == "a"
    assert p.choose("m", exclude={"a", "b"}).backend.name == "c"  # lower tier only when the better is used up


def test_weighted_is_smooth_and_proportional_within_the_best_tier():
    p, _ = pool(*THREE, strategy="weighted")
    picks = names(p, 8)
    assert Counter(picks) == {"b": 6, "a": 2}  # 3:1, never the priority-2 backend
    assert "b,b,b,b" not in ",".join(picks)  # smooth: no long bursts to one backend


def test_round_robin_and_random_stay_in_the_tier():
    p, _ = pool(*THREE, strategy="round-robin")
    assert names(p, 4) == ["b", "a", "b", "a"]
    p, _ = pool(*THREE, strategy="random")
    assert set(names(p, 50)) == {"a", "b"}


def test_latency_prefers_the_fastest_and_still_explores():
    p, _ = pool(*THREE, strategy="latency", GATEWAY_LATENCY_EXPLORE="0.2")
    a, b = (next(t for t in p.candidates("m") if t.backend.name == n) for n in ("a", "b"))
    for _ in range(5):
        p.on_answer(a, 200, 20.0, {}, None)
        p.on_answer(b, 200, 90.0, {}, None)
    picks = Counter(names(p, 200))
    assert picks["a"] > 150 and picks["b"] > 5  # mostly the fast one, some exploration of the other


def test_capacity_prefers_the_most_remaining_and_forgets_after_the_window():
    p, clock = pool(*THREE, strategy="capacity", GATEWAY_CAPACITY_WINDOW_S="60")
    a, b = (next(t for t in p.candidates("m") if t.backend.name == n) for n in ("a", "b"))
    p.on_answer(a, 200, 10, {"x-ratelimit-remaining-tokens": "9000", "x-ratelimit-remaining-requests": "50"}, None)
    p.on_answer(b, 200, 10, {"x-ratelimit-remaining-tokens": "100", "x-ratelimit-remaining-requests": "50"}, None)
    assert names(p, 3) == ["a", "a", "a"]
    p.on_answer(a, 200, 10, {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-remaining-requests": "9"}, None)
    assert p.choose("m").backend.name == "b"  # out of capacity: not eligible
    p.on_answer(b, 200, 10, {"x-ratelimit-remaining-requests": "0"}, None)
    assert p.choose("m").backend.name == "c"  # the whole tier is out of capacity: next tier
    clock.now += 61
    assert p.choose("m").backend.name in {"a", "b"}  # decayed to unknown


def test_a_429_opens_the_breaker_for_its_retry_after_then_half_open_then_closed():
    p, clock = pool(*THREE)
    b = p.candidates("m")[0]
    p.on_answer(b, 429, 5, {}, 30.0)
    assert p.status("b", "m-b") == "open" and p.choose("m").backend.name == "a"
    assert p.status("b") == "closed"  # a 429 is the deployment's quota, not the host failing
    assert p.earliest_open_until("m") == clock.now + 30
    clock.now += 30
    assert p.status("b", "m-b") == "half-open" and p.choose("m").backend.name == "b"
    p.on_answer(b, 200, 5, {}, None)
    assert p.status("b", "m-b") == "closed"


TWO_MODELS = (
    "name=a;host=https://a.example;mode=direct;priority=1;deployments=gpt-4o,emb",
    "name=b;host=https://b.example;mode=direct;priority=2;deployments=gpt-4o,emb",
)


def test_a_429_for_one_deployment_leaves_the_other_models_on_that_backend():
    p, _ = pool(*TWO_MODELS)
    p.on_answer(p.candidates("gpt-4o")[0], 429, 5, {}, 30.0)
    assert p.choose("gpt-4o").backend.name == "b"
    assert p.choose("emb").backend.name == "a"


def test_capacity_headers_gate_only_their_deployment():
    p, _ = pool(*TWO_MODELS)
    p.on_answer(p.candidates("gpt-4o")[0], 200, 5, {"x-ratelimit-remaining-tokens": "0"}, None)
    assert p.choose("gpt-4o").backend.name == "b"
    assert p.choose("emb").backend.name == "a"


def test_host_failures_open_the_backend_for_every_model():
    p, _ = pool(*TWO_MODELS, GATEWAY_BREAKER_FAILURES="2")
    target = p.candidates("gpt-4o")[0]
    p.on_answer(target, 503, 5, {}, None)
    p.on_transport_error(target, "connect")
    assert p.status("a") == "open"
    assert p.choose("gpt-4o").backend.name == "b" and p.choose("emb").backend.name == "b"


def test_any_answer_closes_a_half_open_backend_and_a_429_then_opens_the_deployment():
    p, clock = pool(*TWO_MODELS, GATEWAY_BREAKER_FAILURES="1", GATEWAY_BREAKER_COOLDOWN_S="5")
    target = p.candidates("gpt-4o")[0]
    p.on_answer(target, 500, 5, {}, None)
    clock.now += 5
    assert p.status("a") == "half-open"
    p.on_answer(target, 429, 5, {}, 20.0)  # the host is alive; the deployment is throttled
    assert p.status("a") == "closed" and p.status("a", "gpt-4o") == "open"


def test_default_open_time_without_retry_after():
    p, clock = pool(*THREE, GATEWAY_DEFAULT_RETRY_AFTER_S="10")
    p.on_answer(p.candidates("m")[0], 429, 5, {}, None)
    assert p.state.deployment(p.candidates("m")[0]).breaker.open_until == clock.now + 10


def test_failures_in_the_window_open_the_breaker_for_the_cooldown():
    p, clock = pool(*THREE, GATEWAY_BREAKER_FAILURES="3", GATEWAY_BREAKER_WINDOW_S="10", GATEWAY_BREAKER_COOLDOWN_S="7")
    b = p.candidates("m")[0]
    p.on_answer(b, 500, 5, {}, None)
    clock.now += 11  # the first failure leaves the window
    p.on_answer(b, 503, 5, {}, None)
    p.on_transport_error(b, "timeout")
    assert p.status("b") == "closed"
    p.on_answer(b, 502, 5, {}, None)
    assert p.status("b") == "open" and p.state.backends["b"].breaker.open_until == clock.now + 7
    clock.now += 7
    p.on_answer(b, 500, 5, {}, None)  # the half-open trial fails: open again
    assert p.status("b") == "open"


@pytest.mark.parametrize("status", [400, 401, 404, 413, 422])
def test_client_errors_never_count_against_a_backend(status):
    p, _ = pool(*THREE, GATEWAY_BREAKER_FAILURES="1")
    b = p.candidates("m")[0]
    for _ in range(5):
        p.on_answer(b, status, 5, {}, None)
    assert p.status("b") == "closed" and len(p.state.backends["b"].failures) == 0


def test_disabled_and_probed_down_backends_are_skipped():
    from dataclasses import replace

    from gateway.state_store import Health

    p, clock = pool(
        *THREE[:2], "name=d;host=https://d.example;mode=apim;probe=/status;priority=1;weight=9;deployments=m"
    )
    assert p.choose("m").backend.name == "d"
    p.state.backends["d"].health = Health(False, None, clock.now, "HTTP 503")
    assert p.choose("m").backend.name == "b"
    p.state.backends["b"].breaker = replace(p.state.backends["b"].breaker, disabled=True)
    assert p.choose("m").backend.name == "a"
    assert p.describe()[1]["breaker"] == "disabled"


def test_a_strategy_per_model():
    p, _ = pool(*THREE, GATEWAY_STRATEGIES="m=round-robin")
    assert names(p, 2) == ["b", "a"]
