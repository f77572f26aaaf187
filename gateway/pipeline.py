"""The synchronous request path: authenticate → resolve → defer? → attempts with failover → relay → record.

Independent of the hosting layer: it takes an `Inbound` and returns an `Outbound` whose body is either bytes
or an async iterator relayed chunk by chunk. Backend answers are passed through unchanged apart from the
headers the gateway owns; only the gateway's own errors use the OpenAI error shape. Every request routed to a
model leaves one usage record, whether or not an answer was relayed, and one server span (gateway.tracing).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from . import errors, guard, tracing, translate, validate
from .affinity import Affinity
from .attempt import Attempt, Attempts, usage_record
from .callers import Caller, Callers
from .config import Settings
from .deferral import Defer, Deferral, Deferred, Preference
from .governance import Governance
from .headers import client_request_id, forwarded_headers, missing_header
from .lanes import DEFAULT_LANE, Lane, lane_for, request_expired
from .messages import Inbound, Outbound, error_outbound
from .pool import Target
from .profiles import NO_LIMITS, Profile
from .quotas import Admission, Quotas
from .relay import Relay
from .slots import Slot
from .usage import UsageRecord, UsageRecorder

__all__ = ["Pipeline"]

log = logging.getLogger("gateway.pipeline")


@dataclass(slots=True)
class _Call:
    """Who is asking, under which profile and lane, since when: what every record of the request carries."""

    request_id: str
    caller: Caller
    profile: Profile
    started: float
    lane: Lane = DEFAULT_LANE
    admission: Admission = field(default_factory=Admission)
    pinned: str | None = None  # the backend keeping the response this request continues (affinity)
    avoid: frozenset[str] = frozenset()  # so every other backend is out of its reach


@dataclass(slots=True)
class _Tries:
    """What the failed attempts of one request taught us, to build the final error."""

    count: int = 0
    retry_after_s: list[float] = field(default_factory=list)
    all_throttled: bool = True
    last: Attempt | None = None


class Pipeline:
    """The request path only; the services it uses are built once per process by `gateway.bootstrap`."""

    def __init__(
        self,
        settings: Settings,
        attempts: Attempts,
        callers: Callers,
        governance: Governance,
        quotas: Quotas,
        usage: UsageRecorder,
        affinity: Affinity | None = None,
    ) -> None:
        self.settings = settings
        self.attempts = attempts
        self.pool = attempts.pool
        self.callers = callers
        self.governance = governance
        self.quotas = quotas
        self.usage = usage
        self.slots = attempts.slots
        self.affinity = affinity or Affinity(None)  # None: response ids known to this process only
        self.deferral = Deferral(settings, attempts.pool)
        self.relay = Relay(attempts, usage, quotas, self.affinity)
        self.requests = 0  # handled by this instance (the stats view divides storage operations by it)
        self._models_body = json.dumps(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": 0, "owned_by": "azure-ai-gateway"}
                    for m in settings.models()
                ],
            }
        ).encode()

    async def handle(self, inbound: Inbound, defer: Defer | None = None) -> Outbound:
        """Answers one request; every gateway-made failure becomes an OpenAI-style error body.

        `defer`, when the hosting layer can start orchestrations, takes over requests that should run
        asynchronously (see `deferral`) and answers them 202.
        """
        request_id = client_request_id(inbound.headers) or os.urandom(16).hex()
        self.requests += 1
        span = tracing.start_request(inbound.method, inbound.path, inbound.headers, request_id)
        try:
            out = await self._handle(inbound, request_id, defer)
        except errors.GatewayError as exc:
            out = error_outbound(exc, request_id)
        except Exception:
            log.exception("Unexpected failure (request %s)", request_id)  # the trace goes to logs, not the client
            out = error_outbound(errors.internal_error(), request_id)
        tracing.leave(span, out.status, streaming=out.stream is not None)
        return out

    async def _handle(self, inbound: Inbound, request_id: str, defer: Defer | None) -> Outbound:
        started = time.monotonic()
        guard.check_path(inbound.path, inbound.raw_path)
        caller = await self.callers.authenticate(inbound.headers)
        # Before admission: a refused caller's own requests must keep the shared state (its resumption) fresh.
        await self.pool.refresh_if_due()
        limit = self.settings.max_body_bytes
        if len(inbound.body) > limit:
            raise errors.too_large(limit)
        route = translate.resolve(
            inbound.method,
            inbound.path,
            inbound.query,
            inbound.headers.get("content-type", ""),
            inbound.body,
            self.settings.api_version,
            self.settings.responses_api_version,
        )
        if route.json is not None:
            validate.check_body(route.operation, route.json)
        if route.api_style == "models":
            profile = self.governance.admit(caller, route.model or None)
            return Outbound(
                200, {"content-type": "application/json", "x-request-id": request_id}, self._models(profile, route)
            )
        route, pinned = await self.affinity.bind(route, caller.name)
        if not route.deferrable:
            defer = None  # Responses keep their own async mode (background); a realtime secret expires in minutes
        call = _Call(request_id, caller, NO_LIMITS, started, pinned=pinned)
        if pinned is not None:
            call.avoid = frozenset(b.name for b in self.settings.backends if b.name != pinned)
        try:
            call.profile = self.governance.admit(caller, route.model)
            if missing := missing_header(inbound.headers, self.settings.required_headers | set(call.profile.headers)):
                raise errors.bad_request(
                    f"The header '{missing}' is required.", code="missing_required_header", param=missing
                )
            call.lane = lane = lane_for(call.profile, inbound.headers, time.time())
            wait_until = self._wait_until(lane, started + self.settings.sync_budget_s)
            try:
                call.admission = await self.quotas.admit(caller, call.profile, route, lane.priority, wait_until)
            except errors.GatewayError as refusal:
                if refusal.code == "concurrency_limit_exceeded" and lane.seconds_left(time.time()) <= 0:
                    raise request_expired() from None  # it waited for a slot of its caller until its TTL
                raise
        except errors.GatewayError as refusal:  # suspended, not allowed, over a limit: recorded with that limit
            record = self._record(route, None, call, refusal.status, 0, refusal.code)
            record.limit = refusal.limit
            self.relay.finish(record, started)
            raise
        try:
            return await self._admitted(inbound, route, call, defer)
        except BaseException:
            call.admission.release_slots()  # the relay frees them once an answer ends; nothing else will now
            raise

    async def _admitted(self, inbound: Inbound, route: translate.Route, call: _Call, defer: Defer | None) -> Outbound:
        targets = self.pool.candidates(route.model)
        if not targets:
            if route.api_style == "azure":
                raise errors.not_found(
                    f"The API deployment '{route.model}' is not served by this gateway.", code="DeploymentNotFound"
                )
            raise errors.not_found(
                f"The model '{route.model}' does not exist or is not served by this gateway.",
                code="model_not_found",
            )
        if defer is not None and (reason := self.deferral.reason(inbound, route, targets, call.profile)):
            return await self._defer(defer, inbound, route, call, reason)
        # Only a client that said it can take a 202 gets one when every backend cools down past what it may
        # wait; everyone else gets 429 with Retry-After.
        later = None
        if defer is not None and call.profile.async_mode != "deny" and Preference.of(inbound.headers).respond_async:
            reason = "every backend is cooling down past the client's wait"

            async def later() -> Outbound:
                return await self._defer(defer, inbound, route, call, reason)

        return await self._forward(inbound, route, targets, call, later)

    async def _defer(
        self, defer: Defer, inbound: Inbound, route: translate.Route, call: _Call, reason: str
    ) -> Outbound:
        """Hands the request to the async path with its lane; the caller's headers about its limits come along."""
        deferred = Deferred(inbound, route, call.request_id, call.caller.name, reason, call.profile.name, call.lane)
        call.admission.release_slots()  # in flight on the async path now, not here
        out = await defer(deferred)
        out.headers |= self.quotas.headers(call.admission)
        return out

    def _models(self, profile: Profile, route: translate.Route) -> bytes:
        """The models list, or the one model the route names, as this caller's profile allows."""
        if route.model:
            if route.model not in self.settings.models():
                raise errors.not_found(f"The model '{route.model}' does not exist.", code="model_not_found")
            return json.dumps(_model_object(route.model)).encode()
        if profile.models is None:
            return self._models_body
        allowed = [m for m in self.settings.models() if profile.allows_model(m)]
        return json.dumps({"object": "list", "data": [_model_object(m) for m in allowed]}).encode()

    async def _forward(
        self,
        inbound: Inbound,
        route: translate.Route,
        targets: tuple[Target, ...],
        call: _Call,
        later: Callable[[], Awaitable[Outbound]] | None = None,
    ) -> Outbound:
        """Tries targets as the pool chooses them, moving on after a retryable answer or a transport failure.

        A backend is not tried twice in one request, unless it is the only one and it frees up within the
        budget. When every backend is cooling down the request waits (jittered) for the first to free up, if
        that fits the sync budget and GATEWAY_MAX_WAIT_S; otherwise it is answered 429 with Retry-After.
        """
        lane = call.lane
        # Waiting ends at the sync budget or the request's TTL; an answer, once forwarded, has the whole budget
        # (cutting it at the TTL would waste what the backend already spent, and free its slot while it still runs).
        budget_end = call.started + self.settings.sync_budget_s
        deadline = min(budget_end, time.monotonic() + lane.seconds_left(time.time()))
        headers = forwarded_headers(inbound.headers, call.request_id, self.settings.forward_headers)
        tries = _Tries()
        tried: set[str] = set(call.avoid)  # a continued response can go to its own backend only
        answered: Attempt | None = None
        answered_slot: Slot | None = None
        slot: Slot | None = None
        full: set[str] = set()  # backends at their concurrency on this instance
        try:
            while tries.count < self.settings.max_attempts:
                target, slot = await self.attempts.choose(route.model, tried, full, lane)
                if target is None:
                    if full:  # what is left is at its concurrency: wait in priority order for a slot
                        wait_until = self._wait_until(lane, deadline)
                        target, slot = await self.attempts.queue(route.model, full, wait_until, lane)
                        if target is None:
                            if lane.seconds_left(time.time()) <= 0:
                                raise request_expired()
                            raise errors.cooling_down(1)
                    elif await self._wait_for_backend(route.model, targets, tried, deadline, lane, call.avoid):
                        continue
                    else:
                        break
                tried.add(target.backend.name)
                remaining = deadline - time.monotonic()
                if lane.seconds_left(time.time()) <= 0 or remaining <= 0:
                    if slot is not None:
                        slot.release()
                    if lane.seconds_left(time.time()) <= 0:
                        raise request_expired()  # never forwarded after its time to live
                    break
                tries.count += 1
                attempt = await self.attempts.forward(
                    target,
                    inbound.method,
                    route,
                    inbound.body,
                    headers,
                    total_s=None if route.streaming else budget_end - time.monotonic(),
                )
                if attempt.response is not None:
                    answered, answered_slot = attempt, slot
                    break
                if slot is not None:
                    slot.release()
                tries.last = attempt
                if attempt.failure in ("timeout", "connect"):
                    tries.all_throttled = False
                else:
                    wait = attempt.retry_after_s
                    tries.retry_after_s.append(wait if wait is not None else self.settings.default_retry_after_s)
                    tries.all_throttled &= attempt.failure == "throttled"
        except errors.CoolingDown as cooling:
            if later is not None:
                return await later()  # the async path records it when it ends
            error: errors.GatewayError = cooling
        except errors.GatewayError as expired:  # its time to live passed (408)
            error = expired
        except BaseException:  # the client went away mid-attempt (cancelled), or a bug: the slot must not leak
            if slot is not None:
                slot.release()
            raise
        else:
            if answered is not None:
                record = self._record(route, answered.target, call, answered.status or 0, tries.count)
                return await self.relay.relay(answered, route, record, call.started, call.admission, answered_slot)
            error = self._exhausted(tries)
        if call.pinned is not None and error.status != 408:
            retry_after = int(error.headers.get("Retry-After") or round(self.settings.default_retry_after_s))
            error = errors.conversation_unavailable(
                f"This conversation lives on backend '{call.pinned}', which cannot serve it now; it cannot continue "
                "elsewhere. Retry later.",
                retry_after,
            )
        last = tries.last  # throttled, failed and expired traffic is recorded too
        reason = last.failure if last is not None else error.code
        record = self._record(route, last.target if last else None, call, error.status, tries.count, reason)
        self.relay.finish(record, call.started, call.admission)
        raise error

    def _wait_until(self, lane: Lane, deadline: float) -> float:
        """How long a request may queue for a slot (its caller's or a backend's): GATEWAY_MAX_WAIT_S, its TTL and
        `deadline` (monotonic), whichever comes first."""
        return min(deadline, time.monotonic() + min(self.settings.max_wait_s, lane.seconds_left(time.time())))

    async def _wait_for_backend(
        self,
        model: str,
        targets: tuple[Target, ...],
        tried: set[str],
        deadline: float,
        lane: Lane,
        avoid: frozenset[str] = frozenset(),
    ) -> bool:
        """Nothing is available now: waits for the first cooling backend if that fits, else answers 429 (or 408
        when the request's time to live would pass first).

        Returns False when there is nothing worth waiting for (every backend tried, disabled or down).
        """
        allowed = [
            t for t in targets if (lane.tiers is None or t.backend.tier in lane.tiers) and t.backend.name not in avoid
        ]
        only_one = len(allowed) == 1  # the only backend this caller may use may be tried again once free
        free_at = self.pool.earliest_open_until(model, avoid if only_one else tried, lane.tiers)
        if free_at is None:
            return False
        now = self.pool.clock()
        delay = max(0.0, free_at - now) + random.uniform(0, 0.1)  # jitter: instances do not return in lockstep
        if delay > lane.seconds_left(time.time()):
            raise request_expired()
        if delay > min(deadline - time.monotonic(), self.settings.max_wait_s):
            raise errors.cooling_down(math.ceil(free_at - now))
        log.info("Every backend for %s is cooling down; waiting %.2f s", model, delay)
        await asyncio.sleep(delay)
        if only_one:
            tried.intersection_update(avoid)  # the only backend may be tried again once it has freed up
        return True

    @staticmethod
    def _record(
        route: translate.Route, target: Target | None, call: _Call, status: int, attempts: int, error: str | None = None
    ) -> UsageRecord:
        record = usage_record(route, target, call.request_id, status, attempts, call.caller.name, error)
        record.profile = call.profile.name or None
        record.priority = call.lane.priority
        return record

    def _exhausted(self, tries: _Tries) -> errors.GatewayError:
        """The error for a request no backend answered: 429/503 with Retry-After, or 502/504."""
        retry_after = round(min(tries.retry_after_s)) if tries.retry_after_s else None
        last_failure = tries.last.failure if tries.last else None
        if last_failure == "timeout":
            return errors.upstream_failure(504, "The backend did not answer in time.")
        if last_failure == "connect":
            return errors.upstream_failure(502, "The backend could not be reached.")
        if not tries.count:
            return errors.unavailable(
                503,
                "No backend for this model is available (disabled, down or busy); retry later.",
                round(self.settings.default_retry_after_s),
            )
        if tries.all_throttled:
            return errors.unavailable(429, "Every backend for this model is rate limited; retry later.", retry_after)
        return errors.unavailable(503, "No backend could serve the request; retry later.", retry_after)


def _model_object(model: str) -> dict[str, object]:
    return {"id": model, "object": "model", "created": 0, "owned_by": "azure-ai-gateway"}
