"""Replay-level tests of the relay orchestrator: histories in, actions and output out, no host.

Each test plays the Durable runtime: it appends what happened (activity results, timers fired) and replays
the real orchestrator function registered in the blueprint, as the extension does.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from orchestrations import workflows
from tests.support.durable_history import HistoryBuilder, run_orchestrator

T0 = datetime(2026, 11, 25, 8, 0, 0, tzinfo=UTC)
CALL_WITH_RETRY, CREATE_TIMER = 1, 5  # azure.durable_functions.models.actions.ActionType


def request(deadline_s: float = 3600, max_attempts: int = 5) -> dict:
    return {
        "id": "inst-1",
        "request_id": "req-1",
        "caller": "key:abc",
        "model": "gpt-4o-mini",
        "path": "/v1/chat/completions",
        "query": "",
        "headers": {},
        "deadline": T0.timestamp() + deadline_s,
        "max_attempts": max_attempts,
    }


def succeeded(backend: str) -> dict:
    return {
        "status": "succeeded",
        "http_status": 200,
        "backend": backend,
        "deployment": "gpt-4o-mini",
        "usage": {"total_tokens": 9},
        "result": {"object": "chat.completion"},
    }


def retry(backend: str, retry_at: datetime, status: int = 429) -> dict:
    return {
        "status": "retry",
        "retry_at": retry_at.timestamp(),
        "backend": backend,
        "deployment": f"gpt-4o-mini-{backend}",
        "http_status": status,
        "reason": "throttled",
    }


def replay(history: HistoryBuilder) -> dict:
    return run_orchestrator(workflows.relay_request, history)


def new_actions(state: dict, seen: int) -> list[dict]:
    return state["actions"][seen:]


def activity_input(action: dict) -> dict:
    assert action["actionType"] == CALL_WITH_RETRY
    return json.loads(action["input"])


def published(state: dict) -> dict:
    """The outcome handed to the publish activity (the last action)."""
    action = state["actions"][-1]
    assert action["functionName"] == workflows.PUBLISH_ACTIVITY
    return activity_input(action)["outcome"]


def test_success_on_the_first_try():
    h = HistoryBuilder(workflows.RELAY_ORCHESTRATOR, input=request(), start=T0)
    state = replay(h)
    [attempt] = state["actions"]
    assert attempt["functionName"] == workflows.ATTEMPT_ACTIVITY
    assert activity_input(attempt) == {"request": request(), "attempt": 1, "avoid": []}
    assert state["customStatus"] == {"state": "calling", "attempt": 1}

    h.completed_activity(0, workflows.ATTEMPT_ACTIVITY, succeeded("weu"))
    state = replay(h)
    assert published(state) == {**succeeded("weu"), "attempts": 1}

    message = {"id": "inst-1", "status": "succeeded", "result": {"object": "chat.completion"}}
    h.completed_activity(1, workflows.PUBLISH_ACTIVITY, message)
    state = replay(h)
    assert state["isDone"] and state["output"] == message
    assert state["customStatus"] == {"state": "done", "status": "succeeded"}


def test_429_on_one_backend_then_success_on_the_other_without_waiting():
    h = HistoryBuilder(workflows.RELAY_ORCHESTRATOR, input=request(), start=T0)
    replay(h)
    # Backend 1 answered 429 Retry-After 20; backend 2 is free, so the next try may start now.
    h.completed_activity(0, workflows.ATTEMPT_ACTIVITY, retry("weu", T0))
    state = replay(h)
    [second] = new_actions(state, 1)
    assert second["actionType"] == CALL_WITH_RETRY  # no timer in between
    assert activity_input(second)["attempt"] == 2 and activity_input(second)["avoid"] == ["weu"]

    h.completed_activity(1, workflows.ATTEMPT_ACTIVITY, succeeded("neu"))
    state = replay(h)
    assert published(state)["backend"] == "neu" and published(state)["attempts"] == 2


@pytest.mark.parametrize("retry_after_s", [20, 75])
def test_the_timer_waits_exactly_until_the_reported_retry_time(retry_after_s):
    h = HistoryBuilder(workflows.RELAY_ORCHESTRATOR, input=request(), start=T0)
    replay(h)
    free_at = T0 + timedelta(seconds=retry_after_s)
    h.completed_activity(0, workflows.ATTEMPT_ACTIVITY, retry("weu", free_at))
    state = replay(h)
    [timer] = new_actions(state, 1)
    assert timer["actionType"] == CREATE_TIMER
    assert datetime.fromisoformat(timer["fireAt"].replace("Z", "+00:00")) == free_at
    status = state["customStatus"]
    assert (status["state"], status["attempt"], status["backend"], status["last_status"]) == ("waiting", 1, "weu", 429)
    assert datetime.fromisoformat(status["next_try_at"]) == free_at

    h.fired_timer(1, free_at)
    state = replay(h)
    [again] = new_actions(state, 2)
    assert activity_input(again)["attempt"] == 2


def test_backends_failing_until_the_deadline_end_as_expired_and_are_not_called_after_it():
    h = HistoryBuilder(workflows.RELAY_ORCHESTRATOR, input=request(deadline_s=60), start=T0)
    replay(h)
    h.completed_activity(0, workflows.ATTEMPT_ACTIVITY, retry("weu", T0 + timedelta(seconds=30)))
    replay(h)
    h.fired_timer(1, T0 + timedelta(seconds=30))
    replay(h)
    h.completed_activity(2, workflows.ATTEMPT_ACTIVITY, retry("weu", T0 + timedelta(seconds=300), status=503))
    state = replay(h)
    [timer] = new_actions(state, 3)
    assert timer["actionType"] == CREATE_TIMER
    deadline = T0 + timedelta(seconds=60)
    assert datetime.fromisoformat(timer["fireAt"].replace("Z", "+00:00")) == deadline  # capped at the deadline

    h.fired_timer(3, deadline)
    state = replay(h)
    [publish] = new_actions(state, 4)  # straight to the completion, no attempt after the deadline
    outcome = activity_input(publish)["outcome"]
    assert outcome["status"] == "expired" and outcome["error"]["code"] == "expired" and outcome["attempts"] == 2
    assert (outcome["backend"], outcome["deployment"]) == ("weu", "gpt-4o-mini-weu")  # the last one tried
    attempts = [a for a in state["actions"] if a.get("functionName") == workflows.ATTEMPT_ACTIVITY]
    assert len(attempts) == 2


def test_a_non_retryable_answer_fails_with_the_backends_error():
    h = HistoryBuilder(workflows.RELAY_ORCHESTRATOR, input=request(), start=T0)
    replay(h)
    error = {"code": "content_filter", "message": "filtered", "innererror": {"code": "ResponsibleAIPolicyViolation"}}
    h.completed_activity(
        0,
        workflows.ATTEMPT_ACTIVITY,
        {"status": "failed", "http_status": 400, "backend": "weu", "error": error, "result": {"error": error}},
    )
    state = replay(h)
    outcome = published(state)
    assert (outcome["status"], outcome["http_status"], outcome["error"]) == ("failed", 400, error)
    assert len(state["actions"]) == 2


def test_the_attempt_cap_ends_the_work_as_failed():
    h = HistoryBuilder(workflows.RELAY_ORCHESTRATOR, input=request(max_attempts=2), start=T0)
    replay(h)
    h.completed_activity(0, workflows.ATTEMPT_ACTIVITY, retry("weu", T0))
    replay(h)
    h.completed_activity(1, workflows.ATTEMPT_ACTIVITY, retry("neu", T0))
    outcome = published(replay(h))
    assert outcome["status"] == "failed" and outcome["error"]["code"] == "attempts_exhausted"
    assert (outcome["attempts"], outcome["backend"], outcome["deployment"]) == (2, "neu", "gpt-4o-mini-neu")


def crash(h: HistoryBuilder, event_id: int) -> int:
    """Every execution of the attempt at `event_id` fails (attempt and retry timer, three times): the next id."""
    for _ in range(3):
        h.failed_activity(event_id, workflows.ATTEMPT_ACTIVITY, "worker crashed")
        replay(h)
        h.fired_timer(event_id + 1, h.now + timedelta(seconds=2))
        event_id += 2
    return event_id


def test_an_attempt_whose_activity_keeps_crashing_is_tried_again_after_a_wait():
    """Storage down longer than the activity's own retries, workers recycled: one attempt spent, not the request."""
    h = HistoryBuilder(workflows.RELAY_ORCHESTRATOR, input=request(), start=T0)
    replay(h)
    event_id = crash(h, 0)
    state = replay(h)
    assert not state["isDone"] and state["actions"][-1]["actionType"] == CREATE_TIMER
    fire_at = h.now + timedelta(seconds=workflows.ATTEMPT_WAIT_S)
    assert state["customStatus"] == {
        "state": "waiting", "attempt": 1, "reason": "activity_failed", "next_try_at": fire_at.isoformat()
    }  # fmt: skip
    h.fired_timer(event_id, fire_at)
    state = replay(h)
    assert activity_input(state["actions"][-1])["attempt"] == 2
    h.completed_activity(event_id + 1, workflows.ATTEMPT_ACTIVITY, succeeded("neu"))
    assert published(replay(h)) == {**succeeded("neu"), "attempts": 2}


def test_an_activity_that_keeps_crashing_still_ends_in_a_completion():
    h = HistoryBuilder(workflows.RELAY_ORCHESTRATOR, input=request(max_attempts=2), start=T0)
    replay(h)
    event_id = crash(h, 0)
    replay(h)
    h.fired_timer(event_id, h.now + timedelta(seconds=workflows.ATTEMPT_WAIT_S))
    replay(h)
    crash(h, event_id + 1)
    outcome = published(replay(h))
    assert outcome["status"] == "failed" and outcome["error"]["code"] == "internal_error"
    assert outcome["attempts"] == 2


def test_a_wait_after_a_crash_never_passes_the_deadline():
    h = HistoryBuilder(workflows.RELAY_ORCHESTRATOR, input=request(deadline_s=5), start=T0)
    replay(h)
    event_id = crash(h, 0)  # 6 s of retries: past the 5 s deadline
    state = replay(h)
    deadline = T0 + timedelta(seconds=5)
    assert state["customStatus"]["next_try_at"] == deadline.isoformat()
    h.fired_timer(event_id, deadline)
    outcome = published(replay(h))
    assert outcome["status"] == "expired" and outcome["attempts"] == 1


def test_a_publish_that_keeps_failing_is_tried_again_on_a_backing_off_timer():
    h = HistoryBuilder(workflows.RELAY_ORCHESTRATOR, input=request(), start=T0)
    replay(h)
    h.completed_activity(0, workflows.ATTEMPT_ACTIVITY, succeeded("weu"))
    replay(h)
    event_id = 1
    for wait_s in (30, 60):  # each round: the activity's own retries fail, then a durable timer
        for _ in range(3):  # attempt, retry timer, attempt, retry timer, attempt, final retry timer
            h.failed_activity(event_id, workflows.PUBLISH_ACTIVITY, "Service Bus unreachable")
            replay(h)
            h.fired_timer(event_id + 1, h.now + timedelta(seconds=2))
            event_id += 2
        state = replay(h)
        assert not state["isDone"] and state["actions"][-1]["actionType"] == CREATE_TIMER
        fire_at = h.now + timedelta(seconds=wait_s)
        assert state["customStatus"]["next_try_at"] == fire_at.isoformat()
        assert state["customStatus"]["publish_failures"] == wait_s // 30
        h.fired_timer(event_id, fire_at)
        event_id += 1
        state = replay(h)
        assert state["actions"][-1]["functionName"] == workflows.PUBLISH_ACTIVITY  # and again
        assert published(state) == {**succeeded("weu"), "attempts": 1}
    message = {"id": "inst-1", "status": "succeeded", "result": {"object": "chat.completion"}}
    h.completed_activity(event_id, workflows.PUBLISH_ACTIVITY, message)
    state = replay(h)
    assert state["isDone"] and state["output"] == message
