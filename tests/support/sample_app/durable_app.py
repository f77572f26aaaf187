"""Sample Durable Functions app for the development host's Durable stand-in (tests/integration/test_durable_standin.py).

Same stack as the gateway (a ``df.DFApp`` with the FastAPI HTTP types). HTTP functions use the real
``DurableOrchestrationClient``; orchestrators and activities run on the stand-in's replay engine.

Activities keep their counters in module state: they run inside the development host's process, so the
counters are what that process saw (tests read them through ``GET side_effects/{key}``).
"""

import json
import threading
from collections import Counter
from datetime import timedelta

import azure.durable_functions as df
import azure.functions as func
from azurefunctions.extensions.http.fastapi import JSONResponse, Request, Response

app = df.DFApp(http_auth_level=func.AuthLevel.ANONYMOUS)

RETRY_EVERY_20_S = df.RetryOptions(first_retry_interval_in_milliseconds=20_000, max_number_of_attempts=3)

_counts: Counter[str] = Counter()
_counts_lock = threading.Lock()  # sync activities run in worker threads


def _bump(key: str) -> int:
    with _counts_lock:
        _counts[key] += 1
        return _counts[key]


# -------------------------------------------------------------------------------------------- HTTP


@app.route(route="orchestrators/{name}", methods=["POST"])
@app.durable_client_input(client_name="client")
async def start_orchestration(req: Request, client: df.DurableOrchestrationClient) -> JSONResponse:
    """Starts orchestrator ``name`` with the JSON body as input; answers 202 + the management payload."""
    body = await req.body()
    instance_id = await client.start_new(
        req.path_params["name"], req.query_params.get("instanceId"), json.loads(body) if body else None
    )
    payload = client.create_http_management_payload(instance_id)
    return JSONResponse(payload, status_code=202, headers={"Location": payload["statusQueryGetUri"]})


@app.route(route="instances/{instance_id}", methods=["GET"])
@app.durable_client_input(client_name="client")
async def get_instance(req: Request, client: df.DurableOrchestrationClient) -> JSONResponse:
    """The SDK client's view of an instance (``get_status``), 404 when unknown."""
    status = await client.get_status(req.path_params["instance_id"])
    if not status:
        return JSONResponse({"error": "not found"}, status_code=404)
    return JSONResponse(status.to_json())


@app.route(route="instances/{instance_id}/terminate", methods=["POST"])
@app.durable_client_input(client_name="client")
async def terminate_instance(req: Request, client: df.DurableOrchestrationClient) -> Response:
    """Terminates an instance through the SDK client (``?reason=``)."""
    await client.terminate(req.path_params["instance_id"], req.query_params.get("reason", "terminated"))
    return Response(status_code=202)


@app.route(route="side_effects/{key}", methods=["GET"])
async def side_effects(req: Request) -> JSONResponse:
    """How many times activities recorded ``key`` in this process."""
    key = req.path_params["key"]
    return JSONResponse({"key": key, "count": _counts[key]})


# ---------------------------------------------------------------------------------- orchestrators


@app.orchestration_trigger(context_name="context")
def hello_sequence(context: df.DurableOrchestrationContext):
    """Calls ``say_hello`` for each name in turn; returns the greetings."""
    greetings = []
    for name in context.get_input() or []:
        greetings.append((yield context.call_activity("say_hello", name)))
    return greetings


@app.orchestration_trigger(context_name="context")
def hello_fan_out(context: df.DurableOrchestrationContext):
    """Calls ``say_hello`` for every name at once (``task_all``)."""
    return (yield context.task_all([context.call_activity("say_hello", n) for n in context.get_input()]))


@app.orchestration_trigger(context_name="context")
def timer_then_hello(context: df.DurableOrchestrationContext):
    """Waits ``seconds`` on a durable timer (custom status says so), then greets."""
    seconds = context.get_input()["seconds"]
    fire_at = context.current_utc_datetime + timedelta(seconds=seconds)
    context.set_custom_status({"stage": "waiting", "until": fire_at.isoformat()})
    yield context.create_timer(fire_at)
    context.set_custom_status({"stage": "greeting"})
    greeting = yield context.call_activity("say_hello", "timer")
    context.set_custom_status({"stage": "done"})
    return greeting


@app.orchestration_trigger(context_name="context")
def elapsed_after_timer(context: df.DurableOrchestrationContext):
    """Waits ``input`` seconds on a durable timer; returns the seconds ``current_utc_datetime`` advanced."""
    started = context.current_utc_datetime
    yield context.create_timer(started + timedelta(seconds=context.get_input()))
    return (context.current_utc_datetime - started).total_seconds()


@app.orchestration_trigger(context_name="context")
def retry_flaky(context: df.DurableOrchestrationContext):
    """Calls ``flaky`` with retries (3 attempts, 20 s apart); input ``{"key", "fail_times"}``."""
    return (yield context.call_activity_with_retry("flaky", RETRY_EVERY_20_S, context.get_input()))


@app.orchestration_trigger(context_name="context")
def call_failing(context: df.DurableOrchestrationContext):
    """Calls ``always_fails`` without retry: the orchestration fails."""
    return (yield context.call_activity("always_fails", context.get_input()))


@app.orchestration_trigger(context_name="context")
def record_with_retry(context: df.DurableOrchestrationContext):
    """Calls ``record_side_effect`` with retries; returns what the successful execution counted."""
    retry = df.RetryOptions(first_retry_interval_in_milliseconds=1_000, max_number_of_attempts=3)
    return (yield context.call_activity_with_retry("record_side_effect", retry, context.get_input()))


@app.orchestration_trigger(context_name="context")
def long_wait(context: df.DurableOrchestrationContext):
    """Sleeps a day on a durable timer (for terminate tests)."""
    context.set_custom_status("sleeping")
    yield context.create_timer(context.current_utc_datetime + timedelta(days=1))
    return "woke up"


@app.orchestration_trigger(context_name="context")
def wait_for_approval(context: df.DurableOrchestrationContext):
    """Waits for the external event ``approval`` and returns its data."""
    context.set_custom_status("awaiting approval")
    approval = yield context.wait_for_external_event("approval")
    context.set_custom_status("approved")
    return approval


# ------------------------------------------------------------------------------------- activities


@app.activity_trigger(input_name="name")
async def say_hello(name: str) -> str:
    """Async activity."""
    return f"Hello {name}!"


@app.activity_trigger(input_name="request")
def flaky(request: dict) -> dict:
    """Sync activity failing its first ``fail_times`` calls for ``key``."""
    attempt = _bump(f"flaky:{request['key']}")
    if attempt <= request["fail_times"]:
        raise RuntimeError(f"flaky failure {attempt}")
    return {"key": request["key"], "attempts": attempt}


@app.activity_trigger(input_name="value")
def always_fails(value: str) -> str:
    raise ValueError(f"cannot handle {value!r}")


@app.activity_trigger(input_name="key")
async def record_side_effect(key: str) -> int:
    """Records a side effect (a counter another function reads) and returns the count."""
    return _bump(key)
