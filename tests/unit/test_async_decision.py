"""Which requests become async: only those of clients that can take a 202 (RFC 7240), never a plain one."""

from __future__ import annotations

import json

import pytest

from gateway import translate
from gateway.bootstrap import build_services
from gateway.config import load_settings
from gateway.deferral import Preference
from gateway.messages import Inbound

SETTINGS = {
    "GATEWAY_BACKEND_1": "name=a;host=https://a.example;mode=direct;deployments=gpt-4o",
    "GATEWAY_AUTH": "none",
    "GATEWAY_TOKENS_PER_SECOND": "50",
}


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("", Preference(False, None)),
        ("respond-async", Preference(True, None)),
        ("Respond-Async ; foo=bar", Preference(True, None)),
        ("respond-async, wait=10", Preference(True, 10.0)),
        ('wait="2.5", respond-async', Preference(True, 2.5)),
        ("wait=abc, respond-async", Preference(True, None)),  # malformed preferences are ignored
        ("return=minimal", Preference(False, None)),
    ],
)
def test_prefer_header(header: str, expected: Preference):
    assert Preference.of({"prefer": header}) == expected


def decide(body: dict, prefer: str = "", **extra: str) -> tuple[str, float]:
    services = build_services(load_settings({**SETTINGS, **extra}))
    raw = json.dumps(body).encode()
    inbound = Inbound("POST", "/v1/chat/completions", "", {"prefer": prefer} if prefer else {}, raw)
    route = translate.resolve("POST", inbound.path, "", "application/json", raw, "2024-10-21")
    targets = services.pool.candidates("gpt-4o")
    for tokens in (100, 200, 300):  # observed answers: a p95 of 300 tokens
        services.pool.observe_generation(targets[0], tokens, tokens / 50)
    pipeline = services.pipeline
    profile = services.settings.profile_for("team")
    return pipeline.deferral.reason(inbound, route, targets, profile), pipeline.deferral.expected_seconds(
        route, targets
    )


CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def test_a_plain_request_is_never_deferred_however_large_its_max_tokens():
    reason, expected = decide({**CHAT, "max_tokens": 16384})
    assert reason == "" and expected == pytest.approx(300 / 50)  # the cap is not the expectation


def test_wait_defers_only_what_is_expected_to_take_longer():
    assert decide({**CHAT, "max_tokens": 16384}, "respond-async, wait=10")[0] == ""  # ~6 s expected
    reason, _ = decide({**CHAT, "max_tokens": 16384}, "respond-async, wait=5")
    assert "wait=5" in reason
    # max_tokens caps the observed p95: 100 tokens at 50 tokens/s is 2 s.
    assert decide({**CHAT, "max_tokens": 100}, "respond-async, wait=3")[0] == ""
    assert decide({**CHAT, "max_tokens": 100}, "respond-async, wait=1")[0] != ""


def test_respond_async_without_wait_and_operator_choices_always_defer():
    assert "Prefer" in decide(CHAT, "respond-async")[0]
    assert "GATEWAY_ASYNC_MODELS" in decide(CHAT, GATEWAY_ASYNC_MODELS="gpt-4o")[0]
    assert "async=always" in decide(CHAT, GATEWAY_ASYNC_CALLERS="team")[0]  # the deprecated alias
    always = {"GATEWAY_PROFILE_BG": "async=always", "GATEWAY_CALLER_PROFILES": "team=bg"}
    assert "'bg'" in decide(CHAT, **always)[0]
    deny = {"GATEWAY_PROFILE_FG": "async=deny", "GATEWAY_CALLER_PROFILES": "team=fg"}
    assert decide(CHAT, "respond-async", **deny)[0] == ""  # the preference is ignored for this profile
