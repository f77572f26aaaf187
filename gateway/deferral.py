"""Which requests run asynchronously: only those of clients that can take a 202.

`Prefer: respond-async` (RFC 7240), with `wait=N` only when the answer is expected to take longer than N
seconds; a model configured async (`GATEWAY_ASYNC_MODELS`); a profile with `async=always`. Never a plain request,
whatever its `max_tokens`: that is a cap, not an expectation. The expected duration is the deployment's observed
completion length (p95), capped by `max_tokens`, at the observed generation speed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from . import translate
from .config import Settings
from .lanes import DEFAULT_LANE, Lane
from .messages import Inbound, Outbound
from .pool import BackendPool, Target
from .profiles import NO_LIMITS, Profile

__all__ = ["Defer", "Deferral", "Deferred", "Preference", "prefers_async"]


@dataclass(slots=True)
class Deferred:
    """A request handed to the async path, with everything needed to run it later."""

    inbound: Inbound
    route: translate.Route
    request_id: str
    caller: str
    reason: str
    profile: str = ""
    lane: Lane = DEFAULT_LANE


Defer = Callable[[Deferred], Awaitable[Outbound]]


@dataclass(frozen=True, slots=True)
class Preference:
    """What a client's `Prefer` header (RFC 7240) says about answering asynchronously."""

    respond_async: bool = False
    wait_s: float | None = None  # `wait=N`: how long the client is willing to wait for a synchronous answer

    @classmethod
    def of(cls, headers: Mapping[str, str]) -> Preference:
        respond_async, wait = False, None
        for preference in headers.get("prefer", "").split(","):
            token, _, value = preference.split(";", 1)[0].strip().partition("=")
            token = token.strip().lower()
            if token == "respond-async":
                respond_async = True
            elif token == "wait":
                try:
                    wait = max(0.0, float(value.strip().strip('"')))
                except ValueError:
                    pass  # a malformed preference is ignored, as RFC 7240 asks
        return cls(respond_async, wait)


def prefers_async(prefer: str) -> bool:
    """RFC 7240: `Prefer: respond-async` among possibly several comma-separated preferences."""
    return Preference.of({"prefer": prefer}).respond_async


class Deferral:
    def __init__(self, settings: Settings, pool: BackendPool) -> None:
        self.settings = settings
        self.pool = pool

    def reason(
        self, inbound: Inbound, route: translate.Route, targets: tuple[Target, ...], profile: Profile = NO_LIMITS
    ) -> str:
        """Why this request should run asynchronously ("" = it should not).

        Only clients that can take a 202 are deferred: those that sent `Prefer: respond-async` (with `wait=N`,
        only when the request is not expected to finish within N seconds), and those an operator configured
        as async by model or by profile (`async=always`). A plain request is never answered 202, however long it
        may take; a profile with `async=deny` is never deferred (its Prefer is ignored, as RFC 7240 allows).
        """
        if inbound.method != "POST" or profile.async_mode == "deny":
            return ""
        preference = Preference.of(inbound.headers)
        if preference.respond_async and preference.wait_s is None:
            return "the client sent Prefer: respond-async"
        if route.model in self.settings.async_models:
            return "the model is configured to run asynchronously (GATEWAY_ASYNC_MODELS)"
        if profile.async_mode == "always":
            return f"the caller's profile '{profile.name}' runs asynchronously (async=always)"
        if preference.respond_async and preference.wait_s is not None:
            expected = self.expected_seconds(route, targets)
            if expected > preference.wait_s:
                return f"expected to take ~{expected:.0f} s, more than the client's wait={preference.wait_s:g}"
        return ""

    def expected_seconds(self, route: translate.Route, targets: tuple[Target, ...]) -> float:
        """How long the answer is expected to take: the model's observed completion length (p95), capped by
        `max_tokens`, at the observed generation speed. Without observations, `max_tokens` is the estimate."""
        cap = route.completion_cap
        observed = self.pool.completion_tokens_p95(targets)
        tokens = min(observed, cap) if observed is not None and cap is not None else observed or cap or 0
        rate = self.pool.tokens_per_second(targets) or self.settings.tokens_per_second
        return tokens / rate
