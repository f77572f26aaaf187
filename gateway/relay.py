"""Relaying a backend's answer to the client, and what it leaves behind: the usage record, the response's affinity.

JSON answers are read whole (usage parsed from the tail); streams and binary answers are relayed chunk by chunk
as they arrive, with the SSE usage tap watching a stream's bytes. The record is written once, however the answer
ends; a read that breaks off counts against the backend through the one attempt. A created response's backend is
recorded (`gateway.affinity`) before the client can have its id; a minted Realtime secret gets its endpoint.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace

from . import errors, ids, realtime, translate
from .affinity import Affinity, is_background, keeps_response
from .attempt import Attempt, Attempts
from .headers import relayed_headers
from .messages import Outbound
from .quotas import NOT_LIMITED, Admission, Quotas
from .slots import Slot
from .streaming import SseUsageTap
from .tokens import count_tokens, estimate_prompt_tokens
from .upstream import TransportError
from .usage import Usage, UsageRecord, UsageRecorder, response_model, usage_from_json_body

__all__ = ["BrokenAnswer", "Relay"]


class Relay:
    def __init__(self, attempts: Attempts, usage: UsageRecorder, quotas: Quotas, affinity: Affinity) -> None:
        self.attempts = attempts
        self.usage = usage
        self.quotas = quotas
        self.affinity = affinity

    async def relay(
        self,
        attempt: Attempt,
        route: translate.Route,
        record: UsageRecord,
        started: float,
        admission: Admission = NOT_LIMITED,
        slot: Slot | None = None,
    ) -> Outbound:
        """The answer for the client. `slot`, the backend slot the request holds, is released when the answer ends
        (a stream's end, not its first byte)."""
        if slot is not None:
            admission = replace(admission, slot=slot) if admission is not NOT_LIMITED else Admission(slot=slot)
        response = attempt.response
        assert response is not None
        target = attempt.target
        headers = relayed_headers(response.headers)
        headers["x-request-id"] = record.request_id
        headers["x-gateway-backend"] = target.backend.name
        headers["x-gateway-attempts"] = str(record.attempts)
        self.quotas.strip_backend_limits(headers, admission)
        content_type = response.headers.get("content-type", "")
        if content_type.startswith("text/event-stream"):
            record.streaming = True
            responses = route.operation.startswith("responses")
            watch = target.backend.parses_usage or keeps_response(route)  # a created id is read whatever `processor`
            tap = SseUsageTap(strip_injected_usage=attempt.injected, responses=responses) if watch else None
            stream = self._relay_stream(attempt, tap, route, record, started, admission)
            return Outbound(response.status, headers, stream=stream)
        if not content_type.startswith("application/json"):
            # Audio, images as bytes, anything large: relay as it comes, nothing to count.
            stream = self._relay_stream(attempt, None, route, record, started, admission)
            return Outbound(response.status, headers, stream=stream)
        try:
            body = await self.attempts.read(attempt)
        except TransportError as exc:
            status = 504 if exc.kind == "timeout" else 502
            record.status, record.error = status, exc.kind
            self.finish(record, started, admission)
            raise errors.upstream_failure(status, f"Backend {target.backend.name} failed while answering.") from None
        created = None
        if response.status < 300 and keeps_response(route):
            created = await self._remember(_response_id(body), record, route)
        if target.backend.parses_usage:
            record.usage = await self._counted(route, usage_from_json_body(body), created)
            record.response_model = response_model(body)
            if response.status == 400 and body.find(b'"content_filter"') >= 0:
                record.outcome = "content_filtered"
            self.attempts.finished(attempt, record.usage)
        if response.status == 200 and route.operation == "realtime/client_secrets":
            body = realtime.announce(body, headers, target.backend)
        self.finish(record, started, admission)
        return Outbound(response.status, headers, body)

    async def _relay_stream(
        self,
        attempt: Attempt,
        tap: SseUsageTap | None,
        route: translate.Route,
        record: UsageRecord,
        started: float,
        admission: Admission,
    ) -> AsyncIterator[bytes]:
        """Yields each upstream read as it arrives; records usage once, when the stream ends, however it ends.

        The record is written as soon as `[DONE]` is seen, before that last chunk goes out, so whoever reads
        usage after the client has its whole answer finds it there.
        """
        response = attempt.response
        assert response is not None
        complete = recorded = False
        counts = attempt.target.backend.parses_usage  # processor=OpenAI: usage is read; none: only the response id
        remember = response.status < 300 and keeps_response(route)
        created: str | None = None  # the id of the response this stream created, once recorded
        try:
            async for data in response.chunks():
                if record.first_chunk_ms is None:  # time to first chunk, from the start of the request
                    record.first_chunk_ms = round((time.monotonic() - started) * 1000, 3)
                if tap is not None:
                    data = tap.feed(data)
                    if remember and tap.response_id is not None:
                        remember = False  # before the event with the id goes out
                        created = await self._remember(tap.response_id, record, route)
                    if tap.done and not recorded:
                        recorded = await self._finish_stream(
                            attempt, record, tap, route, started, admission, counts, created
                        )
                if data:
                    yield data
            if tap is not None and (rest := tap.flush()):
                yield rest
            complete = True
        except TransportError as exc:
            record.error = exc.kind
            self.attempts.broke(attempt, exc)
            if tap is None:
                # Bytes (audio, images) have no error event: the answer is cut off as the backend cut it, so the
                # client sees a broken transfer (no last chunk) instead of a short body it would take for whole.
                raise BrokenAnswer(attempt.target.backend.name) from exc
            message = f"Backend {attempt.target.backend.name} broke off its answer; it is incomplete."
            yield errors.stream_error_event(message, responses=route.operation.startswith("responses"))
        finally:
            if complete:
                response.release()
            else:
                response.close()  # cut by the backend or the client went away: do not reuse this connection
            if not recorded:
                await self._finish_stream(attempt, record, tap, route, started, admission, counts, created)

    async def _finish_stream(
        self,
        attempt: Attempt,
        record: UsageRecord,
        tap: SseUsageTap | None,
        route: translate.Route,
        started: float,
        admission: Admission,
        counts: bool,
        created: str | None,
    ) -> bool:
        """Writes the stream's record. `created`: the id of the response it created, if it recorded one."""
        if tap is not None and tap.error is not None and record.error is None:
            record.error = "stream_error"  # relayed as it came (the 200 is sent), recorded as the failure it is
        if tap is not None and record.status < 400 and counts:
            if route.resource_id or (created and is_background(route)):  # a response counted once, whoever sees it
                # A background one cut short runs on, so it is not estimated: a retrieval reports its tokens.
                record.usage = await self._counted(route, tap.usage, created)
            else:  # counting loads the tokenizer on first use (~0.2 s): keep it off the event loop
                record.usage = tap.usage or await asyncio.to_thread(_estimate, route, record.deployment, tap)
                if tap.done and tap.error is None:  # a whole answer with reported usage: the generation speed
                    self.attempts.finished(attempt, tap.usage)
            record.response_model = tap.response_model()
        self.finish(record, started, admission)
        return True

    async def _counted(self, route: translate.Route, usage: Usage | None, created: str | None) -> Usage | None:
        """The tokens a call is charged with: each response's once. Retrieving a response costs none, and a
        background response's tokens (made after the call that created it answered, or outliving its cut stream)
        go to the one call that first reports them: its create stream, read to its end, or a retrieval."""
        if usage is None:
            return None
        if route.resource_id:
            return usage if await self.affinity.count_once(route.resource_id) else None
        if created and is_background(route):
            return usage if await self.affinity.count_once(created) else None
        return usage

    async def _remember(self, response_id: str | None, record: UsageRecord, route: translate.Route) -> str | None:
        """Records where a created response lives; its id, when it was recorded."""
        if ids.is_response_id(response_id) and record.backend is not None and record.caller is not None:
            await self.affinity.remember(response_id, record.backend, route, record.caller)
            return response_id
        return None

    def finish(self, record: UsageRecord, started: float, admission: Admission = NOT_LIMITED) -> None:
        """Stamps the duration, settles the caller's token reservation, frees its slots (backend, caller), hands
        the record to the recorder's sinks."""
        record.duration_ms = round((time.monotonic() - started) * 1000, 3)
        admission.release_slots()
        self.quotas.settle(admission, record.usage, answered=record.status < 400)
        self.usage.record(record)


class BrokenAnswer(Exception):
    """Raised into the server while relaying bytes the backend broke off: the server then ends the response
    without its last chunk, which every HTTP client reports as an incomplete body."""

    def __init__(self, backend: str) -> None:
        super().__init__(f"Backend {backend} broke off its answer; the relayed body is cut off too.")


def _response_id(body: bytes) -> str | None:
    try:
        answer = json.loads(body)
    except ValueError:
        return None
    value = answer.get("id") if isinstance(answer, dict) else None
    return value if isinstance(value, str) else None


def _estimate(route: translate.Route, deployment: str | None, tap: SseUsageTap) -> Usage | None:
    """Counts tokens ourselves when a stream ended without usage, with the deployment's model's encoding (an
    Azure-style body names no model); the record says it is an estimate."""
    prompt = estimate_prompt_tokens(route.json, deployment)
    completion = count_tokens(tap.completion_text(), deployment)
    if not prompt and not completion:
        return None
    return Usage(prompt, completion, prompt + completion, estimated=True)
