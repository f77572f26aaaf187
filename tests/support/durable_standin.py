"""Durable Functions stand-in for the development host (tests/support/devhost.py).

The Durable Functions *extension* is a .NET component of the Functions host; it cannot run here. This module
replaces only that component, at its protocol boundary, so the real Python SDK (azure-functions-durable) does
its own work:

* **client binding** - HTTP functions with ``@app.durable_client_input`` get the binding JSON the extension
  injects (``taskHubName``, ``creationUrls``, ``managementUrls``, ``rpcBaseUrl``, ...); the SDK's
  ``DurableOrchestrationClient`` then makes its ordinary HTTP calls to ``rpcBaseUrl``;
* **HTTP API** - on the development host's own port, both the RPC endpoints the SDK client calls
  (``/durabletask/...``, no key, as the extension's local RPC listener) and the public webhooks of the
  management payload (``/runtime/webhooks/durabletask/...``, key in ``?code=`` or ``x-functions-key``),
  answering as the extension's ``HttpApiHandler`` does (status codes, ``Location``/``Retry-After`` headers,
  status body ``name``, ``instanceId``, ``runtimeStatus``, ``input``, ``customStatus``, ``output``,
  ``createdTime``, ``lastUpdatedTime`` and ``historyEvents`` with ``showHistory=true``);
* **engine** - orchestrators run by replay: the real orchestrator function is called with the context JSON
  (history with ``OrchestratorStarted``/``ExecutionStarted``/... events, see ``tests.support.durable_history``)
  and its cumulative actions are executed: activities (plain and with retry, the retry timers scheduled as
  DurableTask does), durable timers, fan-out/fan-in (``task_all``/``task_any``), external events and
  ``continue_as_new``. Activities are called the way the Python worker calls an ``activityTrigger`` (input
  decoded by ``azure.functions``' ``ActivityTriggerConverter``, result encoded by it), async ones on the
  event loop, sync ones in a thread. Sub-orchestrations, entities and durable HTTP calls are not supported
  (the instance fails saying so).

Everything is in memory in the host process: instances are lost when the host stops. Status timestamps
(``createdTime``, ``lastUpdatedTime``) are wall-clock; history timestamps are each instance's *logical*
clock (see ``DURABLE_STANDIN_TIME_SCALE``).

Settings (read from the environment when the host starts):

``DURABLE_STANDIN_TIME_SCALE`` (float > 0, default 1.0)
    Multiplies the real wait of every durable timer (including activity retry intervals): with 0.001 a 30 s
    timer fires after 30 ms. The history still carries the logical ``FireAt``, and when a timer fires the
    instance's logical clock jumps to ``FireAt``, so ``context.current_utc_datetime`` advances by the logical
    amount (the orchestrator sees the time it expects).

``DURABLE_STANDIN_CRASH_ACTIVITY`` (``"<activityName>:<n>"``, comma-separated for several)
    Fault injection: the first ``n`` executions of that activity run fully, then their result is lost and
    the orchestrator gets ``TaskFailed`` with reason ``"worker crashed (injected)"`` - as when a worker dies
    after the activity did its side effects. Orchestrators that retry see the activity run again.

``DURABLE_STANDIN_CRASH_RATE`` (a fraction from 0 to 1, default 0) and ``DURABLE_STANDIN_CRASH_SEED`` (int)
    Random fault injection: that share of all activity executions crash, each at random either *before* the
    activity runs (it never runs: the worker died as it took the work) or *after* it (it ran fully, its
    result is lost), with the same ``TaskFailed`` as above. The draws come from a generator seeded with
    ``DURABLE_STANDIN_CRASH_SEED`` (default 0), so a run gets the same sequence of decisions (which
    execution draws which one follows the order executions start). Every injected crash is logged as
    ``durable-standin: injected crash before|after activity ...``; ``DurableEngine.crashes`` counts them.

``DURABLE_STANDIN_PAGE_SIZE`` (int > 0, default 100)
    The instance query (``GET instances/?...``) pages as the extension's does: sorted by instance id (the Azure
    Storage provider's Instances table is keyed by it), at most ``top`` per answer (this many when ``top`` is not
    given: the extension's default page is 100), an ``x-ms-continuation-token`` response header when more match,
    and that header honoured on the request. A page is also never longer than this, whatever ``top`` says: a
    storage provider may answer fewer than ``top`` with a token (an Azure Table query response holds at most
    1,000 entities), so with a small value tests see paging with a handful of instances. The Python SDK's
    ``get_status_by`` sends neither ``top`` nor the token and reads no header (azure-functions-durable-python
    #580), so code using it sees only the first page, as on Azure.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import inspect
import json
import os
import random
import sys
import traceback
import uuid
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import quote

from azure.functions import meta
from azure.functions.durable_functions import ActivityTriggerConverter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from tests.support.durable_history import (
    EventType,
    HistoryBuilder,
    parse_timestamp,
    run_orchestrator,
)

__all__ = [
    "CRASH_ACTIVITY_SETTING",
    "CRASH_RATE_SETTING",
    "CRASH_REASON",
    "CRASH_SEED_SETTING",
    "DURABLE_CLIENT",
    "PAGE_SIZE_SETTING",
    "RPC_PREFIX",
    "TIME_SCALE_SETTING",
    "WEBHOOK_PREFIX",
    "ActivityFunction",
    "DurableEngine",
    "DurableFunctions",
    "DurableStandIn",
    "InstanceExistsError",
    "OrchestrationInstance",
    "RuntimeStatus",
    "UnknownOrchestratorError",
    "discover_durable_functions",
    "history_events",
    "parse_crash_rate",
    "parse_crash_setting",
    "parse_page_size",
    "parse_time_scale",
    "read_task_hub",
    "status_payload",
]

TIME_SCALE_SETTING = "DURABLE_STANDIN_TIME_SCALE"
CRASH_ACTIVITY_SETTING = "DURABLE_STANDIN_CRASH_ACTIVITY"
CRASH_RATE_SETTING = "DURABLE_STANDIN_CRASH_RATE"
CRASH_SEED_SETTING = "DURABLE_STANDIN_CRASH_SEED"
PAGE_SIZE_SETTING = "DURABLE_STANDIN_PAGE_SIZE"
DEFAULT_PAGE_SIZE = 100  # OrchestrationStatusQueryCondition.PageSize's default in the extension
CONTINUATION_HEADER = "x-ms-continuation-token"
CRASH_REASON = "worker crashed (injected)"

ORCHESTRATION_TRIGGER = "orchestrationTrigger"
ACTIVITY_TRIGGER = "activityTrigger"
DURABLE_CLIENT = "durableClient"

RPC_PREFIX = "/durabletask"  # the extension's local RPC listener (rpcBaseUrl), here on the host's port
WEBHOOK_PREFIX = "/runtime/webhooks/durabletask"  # the public management webhooks
DEFAULT_TASK_HUB = "TestHubName"  # the extension's default hub name when running locally
DEFAULT_CONNECTION = "Storage"
GRPC_HTTP_CLIENT_TIMEOUT = "00:01:40"  # the extension's default (100 s), as .NET serializes a TimeSpan

# DurableTask action types (azure.durable_functions.models.actions.ActionType)
_CALL_ACTIVITY, _CALL_ACTIVITY_WITH_RETRY, _CONTINUE_AS_NEW, _CREATE_TIMER, _WAIT_FOR_EVENT = 0, 1, 4, 5, 6
_UNSUPPORTED_ACTIONS = {
    2: "CallSubOrchestrator",
    3: "CallSubOrchestratorWithRetry",
    7: "CallEntity",
    8: "CallHttp",
    9: "SignalEntity",
}


def _log(message: str) -> None:
    print(f"durable-standin: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------- settings


def parse_time_scale(text: str | None) -> float:
    """``DURABLE_STANDIN_TIME_SCALE``: a float > 0 (1.0 when unset or empty)."""
    if text is None or not text.strip():
        return 1.0
    try:
        scale = float(text)
    except ValueError:
        raise ValueError(f"{TIME_SCALE_SETTING}={text!r}: expected a number such as 0.001") from None
    if not scale > 0:
        raise ValueError(f"{TIME_SCALE_SETTING}={text!r}: must be greater than 0")
    return scale


def parse_crash_setting(text: str | None) -> dict[str, int]:
    """``DURABLE_STANDIN_CRASH_ACTIVITY``: ``"name:n[,name:n...]"`` -> {activity name: executions to lose}."""
    crashes: dict[str, int] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name, sep, count = item.strip().rpartition(":")
        if not sep or not name or not count.strip().isdigit():
            raise ValueError(f"{CRASH_ACTIVITY_SETTING}={text!r}: expected '<activityName>:<n>'")
        crashes[name.strip()] = int(count)
    return crashes


def parse_crash_rate(rate: str | None, seed: str | None = None) -> tuple[float, int]:
    """``DURABLE_STANDIN_CRASH_RATE`` (0 to 1, 0 when unset) and ``DURABLE_STANDIN_CRASH_SEED`` (int, 0 when unset)."""
    try:
        value = float(rate) if rate and rate.strip() else 0.0
    except ValueError:
        raise ValueError(f"{CRASH_RATE_SETTING}={rate!r}: expected a fraction such as 0.1") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{CRASH_RATE_SETTING}={rate!r}: must be from 0 to 1")
    try:
        number = int(seed) if seed and seed.strip() else 0
    except ValueError:
        raise ValueError(f"{CRASH_SEED_SETTING}={seed!r}: expected an integer") from None
    return value, number


def parse_page_size(text: str | None) -> int:
    """``DURABLE_STANDIN_PAGE_SIZE``: a positive integer (default 100, the extension's page)."""
    if text is None or not text.strip():
        return DEFAULT_PAGE_SIZE
    value = int(text)
    if value <= 0:
        raise ValueError(f"{PAGE_SIZE_SETTING} must be a positive integer, not {text!r}")
    return value


def read_task_hub(app_dir: Path | None, environ: Mapping[str, str] = os.environ) -> str:
    """host.json ``extensions.durableTask.hubName`` (``%SETTING%`` resolved), else ``TestHubName``."""
    host_json = app_dir / "host.json" if app_dir else None
    if host_json is None or not host_json.is_file():
        return DEFAULT_TASK_HUB
    data = json.loads(host_json.read_text(encoding="utf-8"))
    hub = str(data.get("extensions", {}).get("durableTask", {}).get("hubName") or DEFAULT_TASK_HUB)
    if hub.startswith("%") and hub.endswith("%") and len(hub) > 2:
        hub = environ.get(hub[1:-1]) or DEFAULT_TASK_HUB
    return hub


# --------------------------------------------------------------------------------------- discovery


@dataclass(frozen=True)
class ActivityFunction:
    name: str
    parameter: str  # the activityTrigger binding's name: the keyword argument that receives the input
    user_function: Callable[..., Any]


@dataclass(frozen=True)
class DurableFunctions:
    orchestrators: dict[str, Callable[[Any], str]] = field(default_factory=dict)  # name -> user function
    activities: dict[str, ActivityFunction] = field(default_factory=dict)
    clients: list[str] = field(default_factory=list)  # functions with a durableClient binding


def discover_durable_functions(app: Any) -> DurableFunctions:
    """Orchestrators, activities and durable-client functions of a FunctionApp/DFApp.

    Calls ``app.get_functions()`` with ``app.functions_bindings`` reset before and after (azure-functions
    refuses a second call otherwise), so the development host can still list the app's HTTP functions."""
    app.functions_bindings = None
    try:
        functions = app.get_functions()
    finally:
        app.functions_bindings = None
    found = DurableFunctions()
    for fn in functions:
        name = fn.get_function_name()
        bindings = json.loads(fn.get_function_json())["bindings"]
        types = {b.get("type") for b in bindings}
        trigger = next((b for b in bindings if b.get("type") in (ORCHESTRATION_TRIGGER, ACTIVITY_TRIGGER)), None)
        if trigger is not None and trigger["type"] == ORCHESTRATION_TRIGGER:
            found.orchestrators[name] = fn.get_user_function()
        elif trigger is not None:
            found.activities[name] = ActivityFunction(name, trigger["name"], fn.get_user_function())
        if DURABLE_CLIENT in types:
            found.clients.append(name)
    return found


# ------------------------------------------------------------------------------------------ engine


class RuntimeStatus(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    COMPLETED = "Completed"
    CONTINUED_AS_NEW = "ContinuedAsNew"
    FAILED = "Failed"
    CANCELED = "Canceled"
    TERMINATED = "Terminated"
    SUSPENDED = "Suspended"


TERMINAL_STATUSES = frozenset(
    {RuntimeStatus.COMPLETED, RuntimeStatus.FAILED, RuntimeStatus.TERMINATED, RuntimeStatus.CANCELED}
)


class UnknownOrchestratorError(ValueError):
    """Start request for a function that is not an orchestrator of the app."""


class InstanceExistsError(ValueError):
    """Start request with the id of an instance that is still Pending or Running."""


@dataclass
class _Retry:
    """One ``call_activity_with_retry`` in flight (DurableTask's RetryInterceptor, backoff coefficient 1)."""

    name: str
    input_json: str
    interval: timedelta
    max_attempts: int
    attempts: int = 1


@dataclass
class _Message:
    """Something an orchestration instance waits for, delivered to its runner (one per episode)."""

    kind: str  # completed | failed | timer | event | terminate
    execution: str
    event_id: int = -1
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class OrchestrationInstance:
    """One orchestration instance: what the status API shows, plus the engine's bookkeeping."""

    instance_id: str
    name: str
    input: Any  # as the status API shows it (for SDK clients: the JSON text of the input)
    input_json: str | None  # what the orchestrator's context carries (context.get_input() decodes it)
    created_time: datetime
    last_updated_time: datetime
    history: HistoryBuilder
    runtime_status: RuntimeStatus = RuntimeStatus.PENDING
    output: Any = None
    custom_status: Any = None
    # engine bookkeeping
    execution: str = field(default_factory=lambda: uuid.uuid4().hex)
    inbox: asyncio.Queue[_Message] = field(default_factory=asyncio.Queue)
    runner: asyncio.Task[None] | None = None
    work: dict[int, asyncio.Task[None]] = field(default_factory=dict)  # event id -> activity/timer task
    timers: set[int] = field(default_factory=set)
    timer_actions: dict[int, int] = field(default_factory=dict)  # action index -> timer event id
    retry_attempts: dict[int, _Retry] = field(default_factory=dict)  # attempt's event id -> retry
    retry_timers: dict[int, _Retry] = field(default_factory=dict)  # retry timer's event id -> retry
    next_event_id: int = 0
    actions_seen: int = 0
    clock_offset: timedelta = timedelta(0)
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def is_terminal(self) -> bool:
        return self.runtime_status in TERMINAL_STATUSES

    def allocate_event_id(self) -> int:
        event_id = self.next_event_id
        self.next_event_id += 1
        return event_id


class DurableEngine:
    """Runs orchestration instances by replay on the running event loop (see the module docstring)."""

    def __init__(
        self,
        orchestrators: Mapping[str, Callable[[Any], str]],
        activities: Mapping[str, ActivityFunction],
        *,
        time_scale: float = 1.0,
        crash_activity: Mapping[str, int] | None = None,
        crash_rate: float = 0.0,
        crash_seed: int = 0,
    ) -> None:
        self.orchestrators = dict(orchestrators)
        self.activities = dict(activities)
        self.time_scale = time_scale
        self.crash_activity = dict(crash_activity or {})
        self._crashes_left = dict(self.crash_activity)
        self.crash_rate = crash_rate
        self.crash_seed = crash_seed
        self._crash_draws = random.Random(crash_seed)
        self.crashes = {"before": 0, "after": 0}  # injected so far
        self.instances: dict[str, OrchestrationInstance] = {}

    # ------------------------------------------------------------------------------------ client API

    def start_new(
        self, name: str, input_text: str | None = None, instance_id: str | None = None
    ) -> OrchestrationInstance:
        """Create and start an instance. ``input_text`` is the start request's body (JSON text or None)."""
        if name not in self.orchestrators:
            raise UnknownOrchestratorError(
                f"The function '{name}' doesn't exist, is disabled, or is not an orchestrator function. "
                f"Known orchestrators: {', '.join(sorted(self.orchestrators)) or 'none'}."
            )
        instance_id = instance_id or uuid.uuid4().hex
        existing = self.instances.get(instance_id)
        if existing is not None and not existing.is_terminal:
            raise InstanceExistsError(
                f"An Orchestration instance with the status {existing.runtime_status} already exists."
            )
        if existing is not None:
            self._cancel_work(existing, everything=True)
        value = json.loads(input_text) if input_text is not None and input_text.strip() else None
        input_json = value if isinstance(value, str) or value is None else json.dumps(value)
        now = datetime.now(UTC)
        instance = OrchestrationInstance(
            instance_id=instance_id,
            name=name,
            input=value,
            input_json=input_json,
            created_time=now,
            last_updated_time=now,
            history=HistoryBuilder(name, input_json=input_json, instance_id=instance_id, start=now),
        )
        self.instances[instance_id] = instance
        instance.runner = asyncio.get_running_loop().create_task(
            self._run(instance), name=f"durable-standin:{instance_id}"
        )
        return instance

    def get(self, instance_id: str) -> OrchestrationInstance | None:
        return self.instances.get(instance_id)

    def terminate(self, instance_id: str, reason: str | None) -> None:
        """Ask a running instance to stop (it becomes Terminated, output = reason, when its runner sees it)."""
        instance = self.instances[instance_id]
        instance.inbox.put_nowait(_Message("terminate", instance.execution, fields={"reason": reason}))

    def raise_event(self, instance_id: str, event_name: str, data_json: str | None) -> None:
        instance = self.instances[instance_id]
        instance.inbox.put_nowait(
            _Message("event", instance.execution, fields={"name": event_name, "input_json": data_json})
        )

    def purge(self, instance_id: str) -> bool:
        instance = self.instances.pop(instance_id, None)
        if instance is not None:
            self._cancel_work(instance, everything=True)
        return instance is not None

    async def wait(self, instance_id: str) -> OrchestrationInstance:
        """Wait until an instance reaches a terminal status (in-process callers; bound it with asyncio.timeout)."""
        instance = self.instances[instance_id]
        await instance.finished.wait()
        return instance

    async def stop(self) -> None:
        """Cancel every runner, timer and activity task (instances stay readable)."""
        tasks = []
        for instance in self.instances.values():
            tasks += self._cancel_work(instance, everything=True)
            if instance.runner is not None and not instance.runner.done():
                instance.runner.cancel()
                tasks.append(instance.runner)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # ---------------------------------------------------------------------------------------- runner

    def logical_now(self, instance: OrchestrationInstance) -> datetime:
        """The instance's clock: wall clock plus what scaled timers skipped, never going backwards."""
        return max(datetime.now(UTC) + instance.clock_offset, instance.history.now)

    async def _run(self, instance: OrchestrationInstance) -> None:
        try:
            await self._drive(instance)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here or an answer the SDK should never give
            _log(f"instance {instance.instance_id} ({instance.name}) failed in the stand-in:")
            traceback.print_exc(file=sys.stderr)
            self._finish(
                instance,
                RuntimeStatus.FAILED,
                f"Orchestrator function '{instance.name}' failed: {type(exc).__name__}: {exc}",
            )

    async def _drive(self, instance: OrchestrationInstance) -> None:
        orchestrator = self.orchestrators[instance.name]
        message: _Message | None = None
        while True:
            decisions = self._begin_episode(instance, message) if message is not None else []
            try:
                state = run_orchestrator(orchestrator, instance.history)
            except Exception as exc:  # not the $OutOfProcData$ protocol: e.g. a non-deterministic replay
                _log(f"orchestrator {instance.name!r} ({instance.instance_id}) raised outside the protocol:")
                traceback.print_exc(file=sys.stderr)
                self._finish(instance, RuntimeStatus.FAILED, f"Orchestrator function '{instance.name}' failed: {exc}")
                return
            instance.custom_status = state["customStatus"]
            instance.last_updated_time = datetime.now(UTC)
            actions = state["actions"]
            if state["error"]:
                self._finish(
                    instance, RuntimeStatus.FAILED, f"Orchestrator function '{instance.name}' failed: {state['error']}"
                )
                return
            new_actions = actions[instance.actions_seen :]
            if state["isDone"]:
                restart = next((a for a in new_actions if a.get("actionType") == _CONTINUE_AS_NEW), None)
                if restart is None:
                    self._finish(instance, RuntimeStatus.COMPLETED, state["output"])
                    return
                self._continue_as_new(instance, restart.get("input"))
                message = None
                continue
            try:
                decisions += self._decide(instance, actions, new_actions)
            except _UnsupportedAction as exc:
                self._finish(instance, RuntimeStatus.FAILED, f"Orchestrator function '{instance.name}' failed: {exc}")
                return
            instance.actions_seen = len(actions)
            now = instance.history.now
            for decision in decisions:
                self._execute(instance, decision, now)
            instance.history.orchestrator_completed()
            instance.runtime_status = RuntimeStatus.RUNNING
            message = await self._next_message(instance)
            if message.kind == "terminate":
                self._finish(instance, RuntimeStatus.TERMINATED, message.fields["reason"])
                return

    async def _next_message(self, instance: OrchestrationInstance) -> _Message:
        while True:
            message = await instance.inbox.get()
            if message.execution != instance.execution:
                continue  # from an execution that ended with continue_as_new
            if message.kind in ("completed", "failed", "timer") and message.event_id not in instance.work:
                continue  # a cancelled timer or a task the instance no longer tracks
            return message

    def _begin_episode(self, instance: OrchestrationInstance, message: _Message) -> list[tuple[Any, ...]]:
        """Open an episode with ``message``'s event; returns the retry decisions it triggers.

        Retry bookkeeping happens here, before the replay, because the SDK hands out the retry timer's and
        the next attempt's sequence numbers while it processes this event, before user code yields more."""
        history = instance.history
        if message.kind == "timer":
            fire_at = message.fields["fire_at"]
            lag = fire_at - self.logical_now(instance)
            if lag > timedelta(0):  # a scaled timer fired early in real time: jump the logical clock
                instance.clock_offset += lag
        now = self.logical_now(instance)
        history.new_episode(now)
        decisions: list[tuple[Any, ...]] = []
        event_id = message.event_id
        instance.work.pop(event_id, None)
        instance.timers.discard(event_id)
        if message.kind == "completed":
            history.task_completed(event_id, result_json=message.fields["result_json"])
        elif message.kind == "failed":
            history.task_failed(event_id, message.fields["reason"], message.fields["details"])
            retry = instance.retry_attempts.pop(event_id, None)
            if retry is not None:  # DurableTask waits one retry interval, even after the last attempt
                timer_id = instance.allocate_event_id()
                instance.retry_timers[timer_id] = retry
                decisions.append(("timer", timer_id, now + retry.interval))
        elif message.kind == "timer":
            history.timer_fired(event_id, message.fields["fire_at"])
            retry = instance.retry_timers.pop(event_id, None)
            if retry is not None and retry.attempts < retry.max_attempts:
                retry.attempts += 1
                attempt_id = instance.allocate_event_id()
                instance.retry_attempts[attempt_id] = retry
                decisions.append(("activity", attempt_id, retry.name, retry.input_json))
        elif message.kind == "event":
            history.event_raised(message.fields["name"], input_json=message.fields["input_json"])
        return decisions

    def _decide(
        self, instance: OrchestrationInstance, actions: list[dict[str, Any]], new_actions: list[dict[str, Any]]
    ) -> list[tuple[Any, ...]]:
        """Decisions for the actions the orchestrator added in this episode (sequence numbers in order)."""
        decisions: list[tuple[Any, ...]] = []
        for index, action in enumerate(new_actions, start=instance.actions_seen):
            kind = action.get("actionType")
            if kind == _CALL_ACTIVITY:
                decisions.append(
                    ("activity", instance.allocate_event_id(), action["functionName"], action.get("input") or "null")
                )
            elif kind == _CALL_ACTIVITY_WITH_RETRY:
                options = action.get("retryOptions") or {}
                attempt_id = instance.allocate_event_id()
                instance.retry_attempts[attempt_id] = _Retry(
                    action["functionName"],
                    action.get("input") or "null",
                    timedelta(milliseconds=int(options.get("firstRetryIntervalInMilliseconds", 1000))),
                    int(options.get("maxNumberOfAttempts", 1)),
                )
                decisions.append(("activity", attempt_id, action["functionName"], action.get("input") or "null"))
            elif kind == _CREATE_TIMER:
                timer_id = instance.allocate_event_id()
                instance.timer_actions[index] = timer_id
                decisions.append(("timer", timer_id, parse_timestamp(action["fireAt"]), bool(action.get("isCanceled"))))
            elif kind == _WAIT_FOR_EVENT:
                pass  # no sequence number: the SDK keys the task by event name
            elif kind in _UNSUPPORTED_ACTIONS:
                raise _UnsupportedAction(
                    f"{_UNSUPPORTED_ACTIONS[kind]} is not supported by the development host's Durable stand-in"
                )
            else:
                raise _UnsupportedAction(f"unknown action {action!r}")
        # Timers the orchestrator cancelled since (timer.cancel() flags the action): stop waiting for them.
        for index, timer_id in instance.timer_actions.items():
            if index < len(actions) and actions[index].get("isCanceled") and timer_id in instance.work:
                instance.work.pop(timer_id).cancel()
                instance.timers.discard(timer_id)
        return decisions

    def _execute(self, instance: OrchestrationInstance, decision: tuple[Any, ...], now: datetime) -> None:
        loop = asyncio.get_running_loop()
        if decision[0] == "activity":
            _, event_id, name, input_json = decision
            instance.history.task_scheduled(event_id, name, input_json=input_json)
            instance.work[event_id] = loop.create_task(
                self._run_activity(instance, instance.execution, event_id, name, input_json),
                name=f"durable-standin:{instance.instance_id}:{event_id}:{name}",
            )
        else:
            _, event_id, fire_at, *cancelled = decision
            instance.history.timer_created(event_id, fire_at)
            if cancelled and cancelled[0]:
                return
            delay = max(0.0, (fire_at - now).total_seconds()) * self.time_scale
            instance.timers.add(event_id)
            instance.work[event_id] = loop.create_task(
                self._run_timer(instance, instance.execution, event_id, fire_at, delay),
                name=f"durable-standin:{instance.instance_id}:{event_id}:timer",
            )

    async def _run_timer(
        self, instance: OrchestrationInstance, execution: str, event_id: int, fire_at: datetime, delay: float
    ) -> None:
        await asyncio.sleep(delay)
        instance.inbox.put_nowait(_Message("timer", execution, event_id, {"fire_at": fire_at}))

    async def _run_activity(
        self, instance: OrchestrationInstance, execution: str, event_id: int, name: str, input_json: str
    ) -> None:
        activity = self.activities.get(name)
        if activity is None:
            reason = f"The function '{name}' doesn't exist, is disabled, or is not an activity function."
            message = _Message("failed", execution, event_id, {"reason": reason, "details": ""})
        else:
            crash = self._take_crash(name)
            if crash != "before":
                message = await self._call_activity(activity, execution, event_id, input_json)
            if crash is not None:
                self.crashes[crash] += 1
                what = "it never ran" if crash == "before" else "it ran; its result is discarded"
                _log(f"injected crash {crash} activity {name!r} of instance {instance.instance_id}: {what}")
                message = _Message(
                    "failed",
                    execution,
                    event_id,
                    {
                        "reason": CRASH_REASON,
                        "details": f"injected crash: the worker died {crash} running this execution of '{name}'",
                    },
                )
        instance.inbox.put_nowait(message)

    async def _call_activity(
        self, activity: ActivityFunction, execution: str, event_id: int, input_json: str
    ) -> _Message:
        """Call an activity as the Python worker does for an activityTrigger (input/result via its converter)."""
        try:
            value = ActivityTriggerConverter.decode(meta.Datum(input_json, "json"), trigger_metadata=None)
            kwargs = {activity.parameter: value}
            if inspect.iscoroutinefunction(activity.user_function):
                result = await activity.user_function(**kwargs)
            else:
                result = await asyncio.to_thread(activity.user_function, **kwargs)
                if inspect.isawaitable(result):
                    result = await result
            result_json = ActivityTriggerConverter.encode(result, expected_type=None).value
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            details = "".join(traceback.format_exception(exc)).strip()
            _log(f"activity {activity.name!r} failed:\n{details}")
            return _Message(
                "failed",
                execution,
                event_id,
                {
                    "reason": f"Activity function '{activity.name}' failed: {type(exc).__name__}: {exc}",
                    "details": details,
                },
            )
        return _Message("completed", execution, event_id, {"result_json": result_json})

    def _take_crash(self, name: str) -> str | None:
        """None, or when this execution crashes: "before" it runs or "after" (its result lost)."""
        left = self._crashes_left.get(name, 0)
        if left > 0:
            self._crashes_left[name] = left - 1
            return "after"
        if self.crash_rate and self._crash_draws.random() < self.crash_rate:
            return "before" if self._crash_draws.random() < 0.5 else "after"
        return None

    def _continue_as_new(self, instance: OrchestrationInstance, input_json: str | None) -> None:
        self._cancel_work(instance, everything=True)
        instance.history.execution_completed(RuntimeStatus.CONTINUED_AS_NEW, input_json)
        now = self.logical_now(instance)
        instance.execution = uuid.uuid4().hex
        instance.input = input_json
        instance.input_json = input_json
        instance.history = HistoryBuilder(
            instance.name, input_json=input_json, instance_id=instance.instance_id, start=now
        )
        instance.next_event_id = instance.actions_seen = 0
        instance.timer_actions.clear()
        instance.retry_attempts.clear()
        instance.retry_timers.clear()
        instance.runtime_status = RuntimeStatus.RUNNING

    def _finish(self, instance: OrchestrationInstance, status: RuntimeStatus, output: Any) -> None:
        instance.runtime_status = status
        instance.output = output
        instance.last_updated_time = datetime.now(UTC)
        if status == RuntimeStatus.TERMINATED:
            instance.history.execution_terminated(output)
        else:
            instance.history.execution_completed(status, json.dumps(output))
        self._cancel_work(instance, everything=False)
        instance.finished.set()

    @staticmethod
    def _cancel_work(instance: OrchestrationInstance, *, everything: bool) -> list[asyncio.Task[None]]:
        """Cancel the instance's timers (and, with ``everything``, its running activities too).

        A finished instance leaves running activities alone, as DurableTask does: they complete and their
        results are dropped."""
        cancelled = []
        for event_id, task in list(instance.work.items()):
            if everything or event_id in instance.timers:
                task.cancel()
                cancelled.append(task)
                del instance.work[event_id]
        instance.timers.clear()
        return cancelled


class _UnsupportedAction(Exception):
    pass


# ------------------------------------------------------------------------------------------ HTTP API


def _query_bool(request: Request, name: str, default: bool) -> bool:
    """.NET ``bool.TryParse`` semantics: "true"/"false" in any case, otherwise the default."""
    value = request.query_params.get(name, "").strip().lower()
    return {"true": True, "false": False}.get(value, default)


def _status_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")  # .NET ToString("s") + "Z"


def _parse_query_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return parse_timestamp(text)
    except ValueError:
        return None


_EVENT_NAMES = {int(t): "".join(part.capitalize() for part in t.name.split("_")) for t in EventType}
_EVENT_NAMES[EventType.SUB_ORCHESTRATION_INSTANCE_CREATED] = "SubOrchestrationInstanceCreated"


def history_events(instance: OrchestrationInstance, *, show_output: bool) -> list[dict[str, Any]]:
    """The instance's history as the status API's ``historyEvents``: DurableClient drops the episode
    markers and the ``TaskScheduled`` events, and puts their name and time on the completion events."""
    scheduled: dict[int, dict[str, Any]] = {}
    result: list[dict[str, Any]] = []

    def decoded(text: Any) -> Any:
        try:
            return json.loads(text) if isinstance(text, str) else text
        except ValueError:
            return text

    for event in instance.history.events:
        kind = event["EventType"]
        if kind == EventType.TASK_SCHEDULED:
            scheduled[event["EventId"]] = event
            continue
        if kind in (EventType.ORCHESTRATOR_STARTED, EventType.ORCHESTRATOR_COMPLETED):
            continue
        item: dict[str, Any] = {"EventType": _EVENT_NAMES.get(kind, str(kind))}
        if kind == EventType.EXECUTION_STARTED:
            item["FunctionName"] = event["Name"]
            if show_output:
                item["Input"] = decoded(event.get("Input"))
        elif kind in (EventType.TASK_COMPLETED, EventType.TASK_FAILED):
            origin = scheduled.get(event["TaskScheduledId"], {})
            item["FunctionName"] = origin.get("Name")
            item["ScheduledTime"] = origin.get("Timestamp")
            if kind == EventType.TASK_FAILED:
                item["Reason"] = event["Reason"]
                item["Details"] = event["Details"]
            elif show_output:
                item["Result"] = decoded(event["Result"])
        elif kind in (EventType.TIMER_CREATED, EventType.TIMER_FIRED):
            item["FireAt"] = event["FireAt"]
        elif kind == EventType.EVENT_RAISED:
            item["Name"] = event["Name"]
            if show_output:
                item["Input"] = decoded(event.get("Input"))
        elif kind == EventType.EXECUTION_COMPLETED:
            item["OrchestrationStatus"] = event["OrchestrationStatus"]
            if show_output:
                item["Result"] = decoded(event.get("Result"))
        elif kind == EventType.EXECUTION_TERMINATED:
            item["Input"] = event.get("Input")
        item["Timestamp"] = event["Timestamp"]
        result.append(item)
    return result


def status_payload(
    instance: OrchestrationInstance,
    *,
    show_input: bool = True,
    show_history: bool = False,
    show_history_output: bool = False,
) -> dict[str, Any]:
    """The status API's body for one instance (HttpApiHandler's StatusResponsePayload)."""
    payload: dict[str, Any] = {
        "name": instance.name,
        "instanceId": instance.instance_id,
        "runtimeStatus": str(instance.runtime_status),
        "input": instance.input if show_input else None,
        "customStatus": instance.custom_status,
        "output": instance.output,
        "createdTime": _status_time(instance.created_time),
        "lastUpdatedTime": _status_time(instance.last_updated_time),
    }
    if show_history:
        payload["historyEvents"] = history_events(instance, show_output=show_history_output)
    return payload


def _error(status_code: int, message: str, exception_message: str | None = None) -> JSONResponse:
    body = {"Message": message}
    if exception_message is not None:
        body["ExceptionMessage"] = exception_message
    return JSONResponse(body, status_code=status_code)


class _StandInRoute(Route):
    """Method mismatch is a 404, as HttpApiHandler answers."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.methods and scope["method"] not in self.methods:
            await Response(status_code=404)(scope, receive, send)
        else:
            await self.app(scope, receive, send)


class DurableStandIn:
    """The Durable extension's replacement: client binding provider, HTTP API and :class:`DurableEngine`.

    Hook it into the development host with :meth:`from_app`, :meth:`register` (binding provider) and
    :meth:`wrap` (routes + engine lifetime)."""

    def __init__(
        self,
        engine: DurableEngine,
        *,
        system_key: str,
        task_hub: str = DEFAULT_TASK_HUB,
        connection: str = DEFAULT_CONNECTION,
        functions: DurableFunctions | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> None:
        self.engine = engine
        self.page_size = page_size
        self.system_key = system_key
        self.task_hub = task_hub
        self.connection = connection
        self._bindings: dict[tuple[str, str, str, str], str] = {}  # the same for every call from one address
        self.functions = functions or DurableFunctions(dict(engine.orchestrators), dict(engine.activities))
        self.router = Router(
            self._routes(RPC_PREFIX, public=False) + self._routes(WEBHOOK_PREFIX, public=True),
            redirect_slashes=False,
            default=self._not_found,
        )

    @classmethod
    def from_app(
        cls, app: Any, *, system_key: str, app_dir: Path | None = None, environ: Mapping[str, str] = os.environ
    ) -> DurableStandIn:
        """Discover the app's durable functions and read the stand-in's settings from ``environ``."""
        functions = discover_durable_functions(app)
        crash_rate, crash_seed = parse_crash_rate(environ.get(CRASH_RATE_SETTING), environ.get(CRASH_SEED_SETTING))
        engine = DurableEngine(
            functions.orchestrators,
            functions.activities,
            time_scale=parse_time_scale(environ.get(TIME_SCALE_SETTING)),
            crash_activity=parse_crash_setting(environ.get(CRASH_ACTIVITY_SETTING)),
            crash_rate=crash_rate,
            crash_seed=crash_seed,
        )
        return cls(
            engine,
            system_key=system_key,
            task_hub=read_task_hub(app_dir, environ),
            functions=functions,
            page_size=parse_page_size(environ.get(PAGE_SIZE_SETTING)),
        )

    # ------------------------------------------------------------------------------ devhost hooks

    def register(self, providers: MutableMapping[str, Any]) -> None:
        """Provide the ``durableClient`` binding in the development host's ``BINDING_PROVIDERS``."""
        providers[DURABLE_CLIENT] = self.client_binding

    def wrap(self, app: ASGIApp) -> ASGIApp:
        """An ASGI app serving the stand-in's routes and passing everything else to ``app``; it also
        answers ASGI lifespan events (the engine stops with the server)."""
        return _StandInASGI(self, app)

    def banner(self) -> str:
        f = self.functions
        lines = [
            " Durable Functions run on the development host's Durable stand-in, NOT the real Durable",
            " extension: in memory (instances are lost on restart), replaying the real orchestrators.",
            f" Orchestrators: {len(f.orchestrators)}, activities: {len(f.activities)}, client functions: "
            f"{len(f.clients)}; task hub {self.task_hub}.",
        ]
        if self.engine.time_scale != 1.0:
            lines.append(
                f" {TIME_SCALE_SETTING}={self.engine.time_scale:g}: durable timers wait that fraction of their time."
            )
        if self.page_size != DEFAULT_PAGE_SIZE:
            lines.append(f" {PAGE_SIZE_SETTING}={self.page_size}: instance queries answer that many at most.")
        if self.engine.crash_activity:
            crashes = ", ".join(f"{k}:{v}" for k, v in self.engine.crash_activity.items())
            lines.append(f" {CRASH_ACTIVITY_SETTING}={crashes}: those executions lose their result (fault injection).")
        if self.engine.crash_rate:
            lines.append(
                f" {CRASH_RATE_SETTING}={self.engine.crash_rate:g} (seed {self.engine.crash_seed}): that "
                "share of activity executions crash, before or after running (fault injection)."
            )
        return "\n".join(lines)

    # ----------------------------------------------------------------------------- client binding

    async def client_binding(self, binding: Mapping[str, Any], request: Request) -> str:
        """The ``durableClient`` binding value (JSON text), with URLs on the base URL of ``request``."""
        base = str(request.base_url).rstrip("/")
        task_hub = binding.get("taskHub") or self.task_hub
        connection = binding.get("connectionName") or self.connection
        key = (base, task_hub, connection, _local_base(request))
        if (text := self._bindings.get(key)) is None:
            if len(self._bindings) >= 64:  # the base URL follows the client's Host header: keep the cache bounded
                self._bindings.clear()
            text = self._bindings[key] = self._binding_text(*key)
        return text

    def _binding_text(self, base: str, task_hub: str, connection: str, local_base: str) -> str:
        """Built once per address: the host builds it outside the worker, so the benchmark should not charge it."""
        webhooks = base + WEBHOOK_PREFIX
        code = f"code={quote(self.system_key, safe='')}"
        return json.dumps(
            {
                "taskHubName": task_hub,
                "connectionName": None,
                "creationUrls": {
                    "createNewInstancePostUri": f"{webhooks}/orchestrators/{{functionName}}[/{{instanceId}}]?{code}",
                    "createAndWaitOnNewInstancePostUri": f"{webhooks}/orchestrators/{{functionName}}[/{{instanceId}}]"
                    f"?timeout={{timeoutInSeconds}}&pollingInterval="
                    f"{{intervalInSeconds}}&{code}",
                },
                "managementUrls": self.management_urls(base, "INSTANCEID", task_hub, connection, rewind=True),
                "baseUrl": webhooks,
                "requiredQueryStringParameters": code,
                "rpcBaseUrl": local_base + RPC_PREFIX + "/",
                "httpBaseUrl": None,
                "maxGrpcMessageSizeInBytes": 0,
                "grpcHttpClientTimeout": GRPC_HTTP_CLIENT_TIMEOUT,
            }
        )

    def _query_suffix(self, task_hub: str, connection: str) -> str:
        return (
            f"taskHub={quote(task_hub, safe='')}&connection={quote(connection, safe='')}"
            f"&code={quote(self.system_key, safe='')}"
        )

    def management_urls(
        self,
        base_url: str,
        instance_id: str,
        task_hub: str | None = None,
        connection: str | None = None,
        *,
        rewind: bool = False,
    ) -> dict[str, str]:
        """The management payload of an instance (HttpApiHandler.GetClientResponseLinks)."""
        query = self._query_suffix(task_hub or self.task_hub, connection or self.connection)
        prefix = f"{base_url.rstrip('/')}{WEBHOOK_PREFIX}/instances/{quote(instance_id, safe='')}"
        urls = {
            "id": instance_id,
            "statusQueryGetUri": f"{prefix}?{query}",
            "sendEventPostUri": f"{prefix}/raiseEvent/{{eventName}}?{query}",
            "terminatePostUri": f"{prefix}/terminate?reason={{text}}&{query}",
            "rewindPostUri": f"{prefix}/rewind?reason={{text}}&{query}",
            "purgeHistoryDeleteUri": f"{prefix}?{query}",
            "restartPostUri": f"{prefix}/restart?{query}",
            "suspendPostUri": f"{prefix}/suspend?reason={{text}}&{query}",
            "resumePostUri": f"{prefix}/resume?reason={{text}}&{query}",
        }
        if not rewind:  # the check-status response leaves the rewind URL out
            del urls["rewindPostUri"]
        return urls

    # ------------------------------------------------------------------------------------- routes

    def _routes(self, prefix: str, *, public: bool) -> list[Route]:
        def endpoint(handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
            async def guarded(request: Request) -> Response:
                if public and not self._authorized(request):
                    return Response(status_code=401)
                return await handler(request)

            return guarded

        return [
            _StandInRoute(f"{prefix}/orchestrators/{{functionName}}", endpoint(self._start), methods=["POST"]),
            _StandInRoute(
                f"{prefix}/orchestrators/{{functionName}}/{{instanceId}}", endpoint(self._start), methods=["POST"]
            ),
            _StandInRoute(f"{prefix}/instances", endpoint(self._instances), methods=["GET", "DELETE"]),
            _StandInRoute(f"{prefix}/instances/", endpoint(self._instances), methods=["GET", "DELETE"]),
            _StandInRoute(f"{prefix}/instances/{{instanceId}}", endpoint(self._instance), methods=["GET", "DELETE"]),
            _StandInRoute(
                f"{prefix}/instances/{{instanceId}}/raiseEvent/{{eventName}}",
                endpoint(self._raise_event),
                methods=["POST"],
            ),
            _StandInRoute(
                f"{prefix}/instances/{{instanceId}}/{{operation}}", endpoint(self._operation), methods=["POST"]
            ),
        ]

    @staticmethod
    async def _not_found(scope: Scope, receive: Receive, send: Send) -> None:
        await Response(status_code=404)(scope, receive, send)

    def _authorized(self, request: Request) -> bool:
        supplied = request.query_params.get("code") or request.headers.get("x-functions-key") or ""
        return hmac.compare_digest(supplied.encode(), self.system_key.encode())

    async def _start(self, request: Request) -> Response:
        name = request.path_params["functionName"]
        body = (await request.body()).decode("utf-8")
        if body.strip():
            try:
                json.loads(body)
            except ValueError as exc:
                return _error(400, "Invalid JSON content", str(exc))
        try:
            instance = self.engine.start_new(name, body or None, request.path_params.get("instanceId") or None)
        except UnknownOrchestratorError as exc:
            return _error(400, "One or more of the arguments submitted is incorrect", str(exc))
        except InstanceExistsError as exc:
            return _error(409, str(exc))
        timeout = _float_query(request, "timeout")
        interval = _float_query(request, "pollingInterval")
        if timeout is not None and interval is not None:
            try:
                await asyncio.wait_for(instance.finished.wait(), timeout)
            except TimeoutError:
                pass
            if instance.runtime_status == RuntimeStatus.COMPLETED:
                return JSONResponse(instance.output)
            if instance.is_terminal:
                return self._status_response(request, instance)
        urls = self.management_urls(
            str(request.base_url),
            instance.instance_id,
            request.query_params.get("taskHub"),
            request.query_params.get("connection"),
        )
        return JSONResponse(urls, status_code=202, headers={"Location": urls["statusQueryGetUri"], "Retry-After": "10"})

    async def _instances(self, request: Request) -> Response:
        if request.method == "DELETE":
            return self._purge_matching(request)
        selected = sorted(self._matching(request), key=lambda i: i.instance_id)
        show_input = _query_bool(request, "showInput", True)  # OrchestrationStatusQueryCondition's default
        token = request.headers.get(CONTINUATION_HEADER)
        if token:
            start = _token_id(token)
            selected = [i for i in selected if i.instance_id > start]
        top = _int_query(request, "top")
        page = selected[: min(top, self.page_size) if top is not None and top > 0 else self.page_size]
        headers = {}
        if len(page) < len(selected):
            headers[CONTINUATION_HEADER] = _continuation(page[-1].instance_id)
        return JSONResponse([status_payload(i, show_input=show_input) for i in page], headers=headers)

    def _matching(self, request: Request) -> list[OrchestrationInstance]:
        created_from = _parse_query_time(request.query_params.get("createdTimeFrom"))
        created_to = _parse_query_time(request.query_params.get("createdTimeTo"))
        prefix = request.query_params.get("instanceIdPrefix") or ""
        wanted = {
            s.strip().lower() for v in request.query_params.getlist("runtimeStatus") for s in v.split(",") if s.strip()
        }
        selected = []
        for instance in self.engine.instances.values():
            if created_from and instance.created_time < created_from:
                continue
            if created_to and instance.created_time > created_to:
                continue
            if not instance.instance_id.startswith(prefix):
                continue
            if wanted and str(instance.runtime_status).lower() not in wanted:
                continue
            selected.append(instance)
        return selected

    def _purge_matching(self, request: Request) -> Response:
        if _parse_query_time(request.query_params.get("createdTimeFrom")) is None:
            return JSONResponse("Please provide value for 'createdTimeFrom' parameter.", status_code=400)
        deleted = [i.instance_id for i in self._matching(request) if i.is_terminal]
        for instance_id in deleted:
            self.engine.purge(instance_id)
        if not deleted:
            return Response(status_code=404)
        return JSONResponse({"instancesDeleted": len(deleted)})

    async def _instance(self, request: Request) -> Response:
        instance = self.engine.get(request.path_params["instanceId"])
        if instance is None:
            return Response(status_code=404)
        if request.method == "DELETE":
            if not instance.is_terminal:
                return JSONResponse(
                    f"Only orchestrations in a terminal state can be purged, but the orchestration with instance "
                    f"ID {instance.instance_id} has status {instance.runtime_status}",
                    status_code=412,
                )
            self.engine.purge(instance.instance_id)
            return JSONResponse({"instancesDeleted": 1})
        return self._status_response(request, instance)

    def _status_response(self, request: Request, instance: OrchestrationInstance) -> Response:
        body = status_payload(
            instance,
            show_input=_query_bool(request, "showInput", True),
            show_history=_query_bool(request, "showHistory", False),
            show_history_output=_query_bool(request, "showHistoryOutput", False),
        )
        status = instance.runtime_status
        if status == RuntimeStatus.FAILED:
            code = 500 if _query_bool(request, "returnInternalServerErrorOnFailure", False) else 200
            return JSONResponse(body, status_code=code)
        if status in TERMINAL_STATUSES:
            return JSONResponse(body)
        return JSONResponse(body, status_code=202, headers={"Location": str(request.url), "Retry-After": "5"})

    async def _operation(self, request: Request) -> Response:
        operation = request.path_params["operation"].lower()
        instance = self.engine.get(request.path_params["instanceId"])
        if operation == "terminate":
            if instance is None:
                return Response(status_code=404)
            if instance.is_terminal:
                return Response(status_code=410)
            self.engine.terminate(instance.instance_id, request.query_params.get("reason"))
            return Response(status_code=202)
        if operation in ("rewind", "restart", "suspend", "resume"):
            return _error(501, f"'{operation}' is not supported by the development host's Durable stand-in")
        return Response(status_code=404)

    async def _raise_event(self, request: Request) -> Response:
        instance = self.engine.get(request.path_params["instanceId"])
        if instance is None:
            return Response(status_code=404)
        if instance.is_terminal:
            return Response(status_code=410)
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "application/json":
            return _error(400, "Only application/json request content is supported")
        body = (await request.body()).decode("utf-8")
        try:
            data = json.loads(body) if body.strip() else None
        except ValueError as exc:
            return _error(400, "Invalid JSON content", str(exc))
        self.engine.raise_event(instance.instance_id, request.path_params["eventName"], json.dumps(data))
        return Response(status_code=202)


def _local_base(request: Request) -> str:
    """The host's own address, as the real extension's RPC endpoint is: never taken from the client's Host header."""
    server = request.scope.get("server")
    if not server:
        return str(request.base_url).rstrip("/")
    host, port = server
    return f"http://{host}:{port}"


def _int_query(request: Request, name: str) -> int | None:
    try:
        return int(request.query_params[name])
    except (KeyError, ValueError):
        return None


def _continuation(last_id: str) -> str:
    """An opaque token (as the extension's are): the last instance id of the page, base64."""
    return base64.b64encode(json.dumps({"after": last_id}).encode()).decode()


def _token_id(token: str) -> str:
    try:
        return str(json.loads(base64.b64decode(token))["after"])
    except (ValueError, KeyError, TypeError):
        return ""


def _float_query(request: Request, name: str) -> float | None:
    try:
        return float(request.query_params[name])
    except (KeyError, ValueError):
        return None


def _is_standin_path(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in (RPC_PREFIX, WEBHOOK_PREFIX))


class _StandInASGI:
    """The development host's ASGI app with the stand-in's routes in front; stops the engine on shutdown."""

    def __init__(self, standin: DurableStandIn, app: ASGIApp) -> None:
        self.standin = standin
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http" and _is_standin_path(scope["path"]):
            await self.standin.router(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.standin.engine.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return
