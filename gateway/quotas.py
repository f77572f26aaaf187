"""A caller's RPM and TPM on the request path: admit before forwarding, settle after, and the answer's headers.

The counting itself is `gateway.limiter` (slices of a shared budget leased from Table Storage, so the limits hold
across instances without a storage call per request). Here: the request costs 1 against `rpm`; against `tpm` it
reserves its prompt (estimated with the model's own tokenizer) plus `max_tokens` / `max_completion_tokens` /
`max_output_tokens` (Responses), or the profile's `reserve=`; after the answer the reservation is settled against
the reported usage (streams at their end). Callers with limits get OpenAI's `x-ratelimit-*` headers about their
own budget on every answer; a refusal is 429 `rate_limit_exceeded` naming the limit, with `Retry-After`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import errors, translate
from .callers import Caller
from .limit_terms import Grant, Refusal, Window, limit_key
from .limiter import Limiter
from .profiles import Profile
from .slots import CallerSlots, Slot
from .tokens import estimate_prompt_tokens
from .usage import Usage

__all__ = ["Admission", "Quotas"]


@dataclass(slots=True)
class Admission:
    """What a request holds against its caller's limits until it ends."""

    key: str = ""
    profile: Profile | None = None
    requests: Grant | None = None
    tokens: Grant | None = None
    settled: bool = field(default=False)
    slot: Slot | None = None  # the backend slot an answered request holds until its answer ends
    caller_slot: Slot | None = None  # one of the caller's `concurrency=` slots, held until the request ends

    def release_slots(self) -> None:
        for slot in (self.slot, self.caller_slot):
            if slot is not None:
                slot.release()

    @property
    def limited(self) -> bool:
        return self.profile is not None and self.profile.limited


NOT_LIMITED = Admission()


class Quotas:
    def __init__(self, limiter: Limiter | None, caller_slots: CallerSlots) -> None:
        self.limiter = limiter  # None: no shared storage (unit tests): RPM/TPM are not enforced
        self.caller_slots = caller_slots  # without shared storage: each instance holds the whole limit

    async def admit(
        self, caller: Caller, profile: Profile, route: translate.Route, priority: int = 5, wait_until: float = 0.0
    ) -> Admission:
        """Counts the request against its caller's limits; 429 naming the limit when one is reached.

        At its `concurrency=` the request waits for one of its caller's slots in priority order until `wait_until`
        (monotonic); the slot is the first thing taken, so a request refused later gives it back at once."""
        if profile.concurrency is None and (not profile.limited or self.limiter is None):
            return NOT_LIMITED
        key = limit_key(caller.name, route.model if profile.per_model else None)
        admission = Admission(key, profile)
        if profile.concurrency is not None:
            admission.caller_slot = await self.caller_slots.acquire(key, profile.concurrency, priority, wait_until)
            if admission.caller_slot is None:
                raise _busy(profile.concurrency)
        try:
            await self._count(admission, profile, route)
        except BaseException:  # refused (or the client went away): the slot goes back at once
            admission.release_slots()
            raise
        return admission

    async def _count(self, admission: Admission, profile: Profile, route: translate.Route) -> None:
        """RPM, then TPM: each refusal is 429 naming its limit, and gives back what was taken before it."""
        if self.limiter is None:
            return
        key = admission.key
        if profile.rpm is not None:
            answer = await self.limiter.acquire(key, "rpm", profile.rpm, 1)
            if isinstance(answer, Refusal):
                raise self._refused("requests", answer, admission)
            admission.requests = answer
        if profile.tpm is not None:
            answer = await self.limiter.acquire(key, "tpm", profile.tpm, reservation(route, profile))
            if isinstance(answer, Refusal):
                if admission.requests is not None:
                    self.limiter.settle(admission.requests, 0)  # not admitted after all: the request is given back
                raise self._refused("tokens", answer, admission)
            admission.tokens = answer

    def settle(self, admission: Admission, usage: Usage | None, *, answered: bool) -> None:
        """Once, when the request ends: tokens as reported; nothing when no answer (or an error) came back; the
        reservation stands when an answer came without usage."""
        if admission.settled or self.limiter is None or admission.tokens is None:
            return
        admission.settled = True
        if not answered:
            self.limiter.settle(admission.tokens, 0)
        elif usage is not None:
            self.limiter.settle(admission.tokens, usage.total_tokens or usage.prompt_tokens + usage.completion_tokens)

    def headers(self, admission: Admission) -> dict[str, str]:
        """OpenAI's `x-ratelimit-*` headers about the caller's own budget (empty for callers without limits)."""
        if not admission.limited or self.limiter is None:
            return {}
        headers: dict[str, str] = {}
        for kind, name in (("rpm", "requests"), ("tpm", "tokens")):
            window = self.limiter.window(admission.key, kind)
            if window is not None:
                headers |= _window_headers(name, window)
        return headers

    def strip_backend_limits(self, headers: dict[str, str], admission: Admission) -> None:
        """A caller with limits sees its own budget, not the backend's (which is the gateway's business)."""
        if admission.limited:
            for name in [h for h in headers if h.lower().startswith(("x-ratelimit-", "retry-after"))]:
                del headers[name]
            headers |= self.headers(admission)

    def _refused(self, name: str, refusal: Refusal, admission: Admission) -> errors.GatewayError:
        per = "requests per minute (RPM)" if name == "requests" else "tokens per minute (TPM)"
        retry = max(1, math.ceil(refusal.retry_after_s))
        headers = {"Retry-After": str(retry)} | self.headers(admission)
        headers |= _window_headers(name, Window(refusal.used, refusal.limit, refusal.retry_after_s, refusal.shared))
        return errors.GatewayError(
            429,
            f"Rate limit reached for {per}: limit {refusal.limit}, used {refusal.used}. Retry after {retry} s.",
            type="rate_limit_error",
            code="rate_limit_exceeded",
            headers=headers,
            limit="rpm" if name == "requests" else "tpm",
        )


def _busy(limit: int) -> errors.GatewayError:
    return errors.GatewayError(
        429,
        f"Too many requests in flight for this caller: limit {limit}. Retry after 1 s.",
        type="rate_limit_error",
        code="concurrency_limit_exceeded",
        headers={"Retry-After": "1"},
        limit="concurrency",
    )


def reservation(route: translate.Route, profile: Profile) -> int:
    """Tokens reserved before forwarding: the prompt (the model's own encoding) and the completion's cap."""
    body: Mapping[str, Any] = route.json or {}
    prompt = estimate_prompt_tokens(body, route.model)  # embeddings too: their `input` is counted
    cap = route.completion_cap
    completion = cap if cap is not None else profile.reserve or 0
    return max(1, prompt + completion)


def _window_headers(name: str, window: Window) -> dict[str, str]:
    return {
        f"x-ratelimit-limit-{name}": str(window.limit),
        f"x-ratelimit-remaining-{name}": str(window.remaining),
        f"x-ratelimit-reset-{name}": f"{max(0.0, window.reset_s):.0f}s",
    }
