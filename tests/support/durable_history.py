"""Replay histories for Durable Functions orchestrators, and a helper that runs one replay.

The Durable extension drives a Python orchestrator by *replay*: each time something the orchestrator waits
for happens, the host calls the orchestrator function again with the whole history so far, and the SDK
(azure-functions-durable) re-runs the generator against it and answers with the cumulative list of actions.
This module builds those histories and runs one replay, without a host::

    h = HistoryBuilder("hello_sequence", input=["Tokyo", "Seattle"])
    h.completed_activity(0, "say_hello", "Hello Tokyo!", input="Tokyo")
    state = run_orchestrator(durable_app.hello_sequence, h)
    assert state["actions"][1] == {"actionType": 0, "functionName": "say_hello", "input": '"Seattle"'}

Protocol facts encoded here (azure-functions-durable 1.7, see /work/shared/RUNTIME-NOTES.md):

* events carry ``EventType`` (numbers of :class:`EventType`), ``EventId``, ``IsPlayed`` and ``Timestamp``
  (``%Y-%m-%dT%H:%M:%S.%fZ``); ``OrchestratorStarted`` timestamps drive ``context.current_utc_datetime``;
* ``ExecutionStarted`` must carry ``Name``, ``Input`` and ``Version``;
* ``TaskScheduled`` and ``TimerCreated`` share one ``EventId`` sequence (0, 1, 2, ...); completions point
  back with ``TaskScheduledId`` (``TaskCompleted.Result`` is JSON text) or ``TimerId``;
* a retried activity (``call_activity_with_retry``) consumes: attempt n, retry timer n+1, attempt n+2, ...
  and waits for one more retry timer after its last failed attempt;
* the orchestrator input travels as JSON text (what the SDK client posts).

The engine of the development host's Durable stand-in (``tests.support.durable_standin``) uses this module
too, so a history built here is the same shape the stand-in feeds to orchestrators.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from typing import Any

from azure.functions._durable_functions import df_dumps

__all__ = [
    "DEFAULT_UPPER_SCHEMA_VERSION",
    "OUT_OF_PROC_LABEL",
    "TIMESTAMP_FORMAT",
    "EventType",
    "HistoryBuilder",
    "build_context",
    "flatten_actions",
    "format_timestamp",
    "orchestrator_callable",
    "parse_orchestrator_state",
    "parse_timestamp",
    "run_orchestrator",
]

TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
OUT_OF_PROC_LABEL = "$OutOfProcData$:"
DEFAULT_UPPER_SCHEMA_VERSION = 1  # compound actions (WhenAll/WhenAny wrappers), as RUNTIME-NOTES describe


class EventType(IntEnum):
    """History event types (the numbers DurableTask.Core uses on the wire)."""

    EXECUTION_STARTED = 0
    EXECUTION_COMPLETED = 1
    EXECUTION_FAILED = 2
    EXECUTION_TERMINATED = 3
    TASK_SCHEDULED = 4
    TASK_COMPLETED = 5
    TASK_FAILED = 6
    SUB_ORCHESTRATION_INSTANCE_CREATED = 7
    SUB_ORCHESTRATION_INSTANCE_COMPLETED = 8
    SUB_ORCHESTRATION_INSTANCE_FAILED = 9
    TIMER_CREATED = 10
    TIMER_FIRED = 11
    ORCHESTRATOR_STARTED = 12
    ORCHESTRATOR_COMPLETED = 13
    EVENT_SENT = 14
    EVENT_RAISED = 15
    CONTINUE_AS_NEW = 16
    GENERIC_EVENT = 17
    HISTORY_STATE = 18
    EXECUTION_SUSPENDED = 19
    EXECUTION_RESUMED = 20


def format_timestamp(moment: datetime) -> str:
    """A datetime as the history's ``Timestamp``/``FireAt`` text (UTC; naive values are taken as UTC)."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime(TIMESTAMP_FORMAT)


def parse_timestamp(text: str) -> datetime:
    """A history/action timestamp (``...Z``, with or without fractional seconds) as an aware UTC datetime."""
    text = text.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    moment = datetime.fromisoformat(text)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _encode(value: Any) -> str:
    return df_dumps(value)


class HistoryBuilder:
    """Builds the ``history`` array of one orchestration instance, event by event.

    Like the SDK's own test ``ContextBuilder``, but with an explicit clock: every event is stamped with
    :attr:`now`, which only moves when you call :meth:`advance` (or pass ``at=``), so tests control
    exactly what ``context.current_utc_datetime`` shows. Events are plain dicts in wire format
    (``EventType``, ``EventId``, ``IsPlayed``, ``Timestamp`` and the type's fields) in :attr:`events`.

    A new builder already holds the first episode's ``OrchestratorStarted`` and ``ExecutionStarted``.
    Later episodes start with :meth:`new_episode`, which marks everything before as played and closes the
    previous episode with ``OrchestratorCompleted``. The ``completed_activity`` / ``failed_activity`` /
    ``fired_timer`` shortcuts add a decision and its outcome in the next episode, the common case in tests.

    ``input`` is the orchestration input as a Python value (JSON-encoded the way the SDK client sends it);
    pass ``input_json`` instead to give the JSON text directly (what ``context.get_input()`` decodes).
    """

    def __init__(
        self,
        name: str,
        input: Any = None,
        *,
        input_json: str | None = None,
        instance_id: str | None = None,
        version: str = "",
        start: datetime | None = None,
    ) -> None:
        self.name = name
        self.input_json: str | None = (
            input_json if input_json is not None else (None if input is None else _encode(input))
        )
        self.instance_id = instance_id or uuid.uuid4().hex
        self.version = version
        self.now: datetime = (start or datetime.now(UTC)).astimezone(UTC)
        self.events: list[dict[str, Any]] = []
        self._episode_open = False
        self.orchestrator_started()
        self._append(EventType.EXECUTION_STARTED, Name=name, Input=self.input_json, Version=version)

    # ------------------------------------------------------------------------------------------ clock

    def advance(self, seconds: float = 0.0, *, to: datetime | None = None) -> datetime:
        """Move the clock forward by ``seconds`` or to ``to`` (never backwards). Returns the new time."""
        target = to.astimezone(UTC) if to is not None else self.now + timedelta(seconds=seconds)
        self.now = max(self.now, target)
        return self.now

    # ----------------------------------------------------------------------------------------- events

    def _append(self, event_type: EventType, event_id: int = -1, **fields: Any) -> dict[str, Any]:
        event = {
            "EventType": int(event_type),
            "EventId": event_id,
            "IsPlayed": False,
            "Timestamp": format_timestamp(self.now),
            **fields,
        }
        self.events.append(event)
        return event

    def orchestrator_started(self, at: datetime | None = None) -> dict[str, Any]:
        """``OrchestratorStarted`` (its timestamp becomes ``current_utc_datetime``); opens an episode."""
        if at is not None:
            self.advance(to=at)
        self._episode_open = True
        return self._append(EventType.ORCHESTRATOR_STARTED)

    def orchestrator_completed(self) -> dict[str, Any]:
        """``OrchestratorCompleted``: closes the current episode."""
        self._episode_open = False
        return self._append(EventType.ORCHESTRATOR_COMPLETED)

    def mark_played(self) -> None:
        """Mark every event so far as played (``IsPlayed``), as the host does for past episodes."""
        for event in self.events:
            event["IsPlayed"] = True

    def new_episode(self, at: datetime | None = None) -> dict[str, Any]:
        """Close the current episode (if open), mark the past as played, start the next episode."""
        if self._episode_open:
            self.orchestrator_completed()
        self.mark_played()
        return self.orchestrator_started(at)

    def task_scheduled(
        self, event_id: int, name: str, input: Any = None, *, input_json: str | None = None
    ) -> dict[str, Any]:
        """``TaskScheduled``: the decision to run activity ``name`` with sequence number ``event_id``."""
        text = input_json if input_json is not None else _encode(input)
        return self._append(EventType.TASK_SCHEDULED, event_id, Name=name, Version="", Input=text)

    def task_completed(
        self, scheduled_id: int, result: Any = None, *, result_json: str | None = None
    ) -> dict[str, Any]:
        """``TaskCompleted`` for the task scheduled as ``scheduled_id``; ``result`` is JSON-encoded."""
        text = result_json if result_json is not None else _encode(result)
        return self._append(EventType.TASK_COMPLETED, TaskScheduledId=scheduled_id, Result=text)

    def task_failed(self, scheduled_id: int, reason: str, details: str = "") -> dict[str, Any]:
        """``TaskFailed`` for ``scheduled_id``; the orchestrator sees ``Exception(f"{reason} \\n {details}")``."""
        return self._append(EventType.TASK_FAILED, TaskScheduledId=scheduled_id, Reason=reason, Details=details)

    def timer_created(self, event_id: int, fire_at: datetime) -> dict[str, Any]:
        """``TimerCreated``: the decision to start a durable timer with sequence number ``event_id``."""
        return self._append(EventType.TIMER_CREATED, event_id, FireAt=format_timestamp(fire_at))

    def timer_fired(self, timer_id: int, fire_at: datetime) -> dict[str, Any]:
        """``TimerFired`` for the timer created as ``timer_id``."""
        return self._append(EventType.TIMER_FIRED, TimerId=timer_id, FireAt=format_timestamp(fire_at))

    def event_raised(self, name: str, input: Any = None, *, input_json: str | None = None) -> dict[str, Any]:
        """``EventRaised``: an external event ``name`` (what ``wait_for_external_event(name)`` waits for)."""
        text = input_json if input_json is not None else _encode(input)
        return self._append(EventType.EVENT_RAISED, Name=name, Input=text)

    def execution_completed(self, status: str, result_json: str | None = None) -> dict[str, Any]:
        """``ExecutionCompleted`` (``status`` ``Completed``/``Failed``/``ContinuedAsNew``), for status history."""
        return self._append(EventType.EXECUTION_COMPLETED, OrchestrationStatus=status, Result=result_json)

    def execution_terminated(self, reason: str | None) -> dict[str, Any]:
        """``ExecutionTerminated`` with the termination reason, for status history."""
        return self._append(EventType.EXECUTION_TERMINATED, Input=reason)

    # -------------------------------------------------------------------------------------- shortcuts

    def completed_activity(
        self, event_id: int, name: str, result: Any = None, *, input: Any = None, seconds: float = 0.0
    ) -> None:
        """Schedule activity ``event_id`` in the current episode; it completes in the next one."""
        self.task_scheduled(event_id, name, input)
        self.new_episode(self.now + timedelta(seconds=seconds))
        self.task_completed(event_id, result)

    def failed_activity(
        self, event_id: int, name: str, reason: str, details: str = "", *, input: Any = None, seconds: float = 0.0
    ) -> None:
        """Schedule activity ``event_id`` in the current episode; it fails in the next one."""
        self.task_scheduled(event_id, name, input)
        self.new_episode(self.now + timedelta(seconds=seconds))
        self.task_failed(event_id, reason, details)

    def fired_timer(self, event_id: int, fire_at: datetime) -> None:
        """Create timer ``event_id`` in the current episode; it fires (clock at ``fire_at``) in the next one."""
        self.timer_created(event_id, fire_at)
        self.new_episode(max(self.now, fire_at.astimezone(UTC)))
        self.timer_fired(event_id, fire_at)

    # ---------------------------------------------------------------------------------------- context

    def to_context(self, *, upper_schema_version: int = DEFAULT_UPPER_SCHEMA_VERSION) -> dict[str, Any]:
        """The orchestration trigger's context (what the host sends to the worker) as a dict."""
        return build_context(
            self.events,
            input_json=self.input_json,
            instance_id=self.instance_id,
            upper_schema_version=upper_schema_version,
        )

    def to_json(self, *, upper_schema_version: int = DEFAULT_UPPER_SCHEMA_VERSION) -> str:
        """:meth:`to_context` as JSON text: the argument of the orchestrator's user function."""
        return json.dumps(self.to_context(upper_schema_version=upper_schema_version))


def build_context(
    history: Iterable[Mapping[str, Any]],
    *,
    input_json: str | None,
    instance_id: str,
    upper_schema_version: int = DEFAULT_UPPER_SCHEMA_VERSION,
) -> dict[str, Any]:
    """The orchestration trigger context for a history (list of event dicts)."""
    return {
        "history": [dict(event) for event in history],
        "input": input_json,
        "instanceId": instance_id,
        "isReplaying": False,
        "parentInstanceId": None,
        "upperSchemaVersion": upper_schema_version,
    }


# ---------------------------------------------------------------------------------------- replay


def orchestrator_callable(orchestrator: Any) -> Callable[[Any], str]:
    """What the worker calls for an orchestrator, from any of the forms tests hold:

    * a ``FunctionBuilder`` (the module attribute ``@app.orchestration_trigger`` leaves behind) or a
      ``Function`` from ``app.get_functions()``;
    * the wrapped handle itself (``builder.get_user_function()``, has ``orchestrator_function``);
    * a plain generator function ``def orch(context): ...`` (wrapped with ``df.Orchestrator.create``).
    """
    from azure.functions.decorators.function_app import FunctionBuilder

    if isinstance(orchestrator, FunctionBuilder):
        return orchestrator  # calling a builder calls its user function
    if hasattr(orchestrator, "get_user_function"):  # a Function from app.get_functions()
        return orchestrator.get_user_function()
    if hasattr(orchestrator, "orchestrator_function"):
        return orchestrator
    if callable(orchestrator):
        from azure.durable_functions import Orchestrator

        return Orchestrator.create(orchestrator)
    raise TypeError(f"not an orchestrator: {orchestrator!r}")


def flatten_actions(actions: Sequence[Any]) -> list[dict[str, Any]]:
    """The orchestrator's ``actions`` as one flat list, in scheduling order.

    Schema 0 sends a list of lists; schema >= 1 wraps fan-out (``task_all``/``task_any``) and retried calls in
    compound actions (``compoundActions``). Flattening both gives one entry per scheduled action, which is
    the order the SDK hands out ``EventId`` sequence numbers."""
    flat: list[dict[str, Any]] = []

    def visit(item: Any) -> None:
        if isinstance(item, list):
            for child in item:
                visit(child)
        elif isinstance(item, Mapping) and "compoundActions" in item:
            for child in item["compoundActions"]:
                visit(child)
        elif isinstance(item, Mapping):
            flat.append(dict(item))

    visit(list(actions))
    return flat


def parse_orchestrator_state(text: str) -> dict[str, Any]:
    """The orchestrator's JSON answer as a dict with every key present and ``actions`` flattened.

    Keys: ``isDone``, ``output``, ``error``, ``customStatus``, ``schemaVersion``, ``actions`` (flat list, see
    :func:`flatten_actions`) and ``rawActions`` (as sent)."""
    data = json.loads(text)
    raw = data.get("actions") or []
    return {
        "isDone": bool(data.get("isDone")),
        "output": data.get("output"),
        "error": data.get("error"),
        "customStatus": data.get("customStatus"),
        "schemaVersion": data.get("schemaVersion", 0),
        "actions": flatten_actions(raw),
        "rawActions": raw,
    }


def run_orchestrator(
    orchestrator: Any,
    history: HistoryBuilder | Sequence[Mapping[str, Any]],
    input: Any = None,
    instance_id: str | None = None,
    *,
    input_json: str | None = None,
    upper_schema_version: int = DEFAULT_UPPER_SCHEMA_VERSION,
) -> dict[str, Any]:
    """Run one replay of ``orchestrator`` over ``history`` and return its state (see
    :func:`parse_orchestrator_state`).

    ``orchestrator`` is anything :func:`orchestrator_callable` accepts; it is called the way the worker
    calls it, with the context as JSON text. ``history`` is a :class:`HistoryBuilder` (its input and
    instance id are used unless given here) or a list of event dicts. ``input`` is a Python value,
    JSON-encoded like the SDK client does; ``input_json`` passes the JSON text as is.

    An orchestrator that raises (its own exception, or an activity failure it does not catch) makes the SDK
    raise an exception carrying the state after ``$OutOfProcData$:``; that state is returned with ``error``
    set (and ``isDone`` false), as the host reads it. Any other exception (for example a malformed history)
    propagates.
    """
    handle = orchestrator_callable(orchestrator)
    if isinstance(history, HistoryBuilder):
        events: Sequence[Mapping[str, Any]] = history.events
        if input_json is None and input is None:
            input_json = history.input_json
        instance_id = instance_id or history.instance_id
    else:
        events = history
    if input_json is None and input is not None:
        input_json = _encode(input)
    context = build_context(
        events,
        input_json=input_json,
        instance_id=instance_id or uuid.uuid4().hex,
        upper_schema_version=upper_schema_version,
    )
    try:
        answer = handle(json.dumps(context))
    except Exception as exc:
        message = str(exc)
        if OUT_OF_PROC_LABEL not in message:
            raise
        state = parse_orchestrator_state(message.split(OUT_OF_PROC_LABEL, 1)[1])
        if not state["error"]:
            state["error"] = message.split(OUT_OF_PROC_LABEL, 1)[0].strip() or type(exc).__name__
        state["isDone"] = False
        return state
    return parse_orchestrator_state(answer)
