"""Replay-level tests of the managed batch orchestrator (no host, no I/O)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from orchestrations import workflows as wf
from tests.support.durable_history import HistoryBuilder, run_orchestrator

T0 = datetime(2026, 11, 25, 8, 0, 0, tzinfo=UTC)
CREATE_TIMER = 5  # azure.durable_functions.models.actions.ActionType
JOB = {
    "id": "batch_1",
    "lines": 3,
    "created_at": int(T0.timestamp()),
    "window_s": 86400,
    "max_rounds": 3,
    "poll_min_s": 10,
    "poll_max_s": 300,
    "model": "gpt-4o-mini",
}


def replay(h: HistoryBuilder) -> dict:
    return run_orchestrator(wf.batch_job, h)


def last(state: dict) -> dict:
    return state["actions"][-1]


def payload(action: dict) -> dict:
    return json.loads(action["input"])


def submitted(backend: str) -> dict:
    return {"status": "submitted", "backend": backend, "backend_batch_id": f"{backend}-b", "lines": 3}


def poll(status: str, completed: int = 0, **extra) -> dict:
    return {
        "status": status,
        "request_counts": {"total": 3, "completed": completed, "failed": 0},
        "cancel_requested": False,
        **extra,
    }


class Run:
    """Plays the Durable runtime for one batch: ids advance as the orchestrator schedules things."""

    def __init__(self) -> None:
        self.h = HistoryBuilder(wf.BATCH_ORCHESTRATOR, input=JOB, start=T0)
        self.next_id = 0
        self.state = replay(self.h)

    def activity(self, name: str, result) -> dict:
        action = last(self.state)
        assert action["functionName"] == name, action
        self.h.completed_activity(self.next_id, name, result)
        self.next_id += 1
        self.state = replay(self.h)
        return payload(action)

    def timer(self) -> datetime:
        action = last(self.state)
        assert action["actionType"] == CREATE_TIMER, action
        fire_at = datetime.fromisoformat(action["fireAt"].replace("Z", "+00:00"))
        self.h.fired_timer(self.next_id, fire_at)
        self.next_id += 1
        self.state = replay(self.h)
        return fire_at


def test_happy_path_polls_with_backing_off_timers_then_collects_and_finishes():
    run = Run()
    assert run.state["customStatus"]["status"] == "validating"
    assert run.activity(wf.BATCH_SUBMIT, submitted("weu"))["round"] == 1
    first = run.timer()
    assert first == T0 + timedelta(seconds=10)
    assert run.activity(wf.BATCH_POLL, poll("in_progress", 1))["backend_batch_id"] == "weu-b"
    status = run.state["customStatus"]
    assert (status["status"], status["request_counts"]["completed"], status["backend"]) == ("in_progress", 1, "weu")
    second = run.timer()
    assert second - first == timedelta(seconds=20)  # backing off
    run.activity(wf.BATCH_POLL, poll("completed", 3, output_file_id="out"))
    assert run.state["customStatus"]["status"] == "finalizing"
    collect = run.activity(wf.BATCH_COLLECT, {"succeeded": 3, "failed": 0, "remaining": 0, "usage": {}})
    assert collect["poll"]["output_file_id"] == "out"
    final = {"status": "completed", "request_counts": {"total": 3, "completed": 3, "failed": 0}}
    finish = run.activity(wf.BATCH_FINISH, final)
    assert finish["end"]["status"] == "completed" and finish["end"]["rounds"] == 1
    assert run.state["isDone"] and run.state["output"] == final


def test_an_expired_round_resubmits_the_unfinished_lines_to_another_backend():
    run = Run()
    run.activity(wf.BATCH_SUBMIT, submitted("weu"))
    run.timer()
    run.activity(wf.BATCH_POLL, poll("expired", 2, output_file_id="partial"))
    run.activity(wf.BATCH_COLLECT, {"succeeded": 2, "failed": 0, "remaining": 1, "usage": {}})
    again = run.activity(wf.BATCH_SUBMIT, submitted("neu"))  # the next submit, avoiding the backend that expired
    assert again["round"] == 2 and again["avoid"] == ["weu"]
    run.timer()
    run.activity(wf.BATCH_POLL, poll("completed", 1))
    run.activity(wf.BATCH_COLLECT, {"succeeded": 3, "failed": 0, "remaining": 0, "usage": {}})
    finish = run.activity(wf.BATCH_FINISH, {"status": "completed"})
    assert finish["end"] == {
        "status": "completed",
        "rounds": 2,
        "in_progress_at": int(T0.timestamp()),
        "finalizing_at": finish["end"]["finalizing_at"],
        "cancelling_at": None,
    }


def test_rounds_are_bounded_and_partial_results_are_reported_as_expired():
    run = Run()
    for round_, backend in ((1, "weu"), (2, "neu"), (3, "swc")):
        assert run.activity(wf.BATCH_SUBMIT, submitted(backend))["round"] == round_
        run.timer()
        run.activity(wf.BATCH_POLL, poll("expired", 1))
        run.activity(wf.BATCH_COLLECT, {"succeeded": 1, "failed": 0, "remaining": 2, "usage": {}})
    finish = run.activity(wf.BATCH_FINISH, {"status": "expired"})
    assert finish["end"]["status"] == "expired" and finish["end"]["rounds"] == 3


def test_cancel_cancels_the_backend_batch_and_ends_cancelled():
    run = Run()
    run.activity(wf.BATCH_SUBMIT, submitted("weu"))
    run.timer()
    run.activity(wf.BATCH_POLL, poll("in_progress", 1, cancel_requested=True))
    cancel = run.activity(wf.BATCH_CANCEL, {"status": "cancelling"})
    assert cancel["backend_batch_id"] == "weu-b"
    assert run.state["customStatus"]["status"] == "cancelling"
    run.timer()
    run.activity(wf.BATCH_POLL, poll("cancelled", 1, cancel_requested=True))
    run.activity(wf.BATCH_COLLECT, {"succeeded": 1, "failed": 0, "remaining": 2, "usage": {}})
    finish = run.activity(wf.BATCH_FINISH, {"status": "cancelled"})
    assert finish["end"]["status"] == "cancelled" and finish["end"]["cancelling_at"] is not None
    assert [a["functionName"] for a in run.state["actions"] if a.get("functionName")].count(wf.BATCH_SUBMIT) == 1


def test_no_backend_available_waits_and_tries_again():
    run = Run()
    retry_at = T0 + timedelta(seconds=30)
    run.activity(wf.BATCH_SUBMIT, {"status": "unavailable", "backend": "weu", "retry_at": retry_at.timestamp()})
    assert run.timer() == retry_at
    assert run.activity(wf.BATCH_SUBMIT, submitted("neu"))["avoid"] == ["weu"]
