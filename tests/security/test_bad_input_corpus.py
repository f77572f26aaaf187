"""The bad-input corpus against the devhost with two fake backends, asserted over the whole corpus at once.

Over every answer: no 500, no traceback, no secret (backend keys, the gateway key, the storage account key,
connection-string markers); every error the gateway makes has OpenAI's shape, and a backend's error it relays
at least has an `error` object. Over every request the fakes received: only known operations on valid
deployment names, in a form Azure serves them in (the operation table of `gateway/surface.py`). Two kinds
of answer come from the host, not the gateway, and are counted apart: the HTTP server refusing bytes it
cannot parse (only for cases marked `wire`), and the host's empty 404 for a path or method no function is
registered for.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter

from gateway.surface import OPERATIONS, V1_OPERATIONS
from tests.security.corpus import Case, corpus
from tests.support.raw_http import RawResponse, build_request, send_raw

# The functions the app registers (route, methods): errors on these paths are the gateway's own.
ALL = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}
OWNED = [
    (re.compile(r"/openai/deployments/[^/]+(/.*)?"), ALL),
    (re.compile(r"/v1(/.*)?"), ALL),
    (re.compile(r"/openai/v1(/.*)?"), ALL),
    (re.compile(r"/openai/models"), ALL),
    (re.compile(r"/openai/(files|batches)(/.*)?"), ALL),
    (re.compile(r"/results/[^/]+"), ALL),
    (re.compile(r"/status/[^/]+"), ALL),
    (re.compile(r"/health"), {"GET"}),
]
UPSTREAM = re.compile(r"/openai/deployments/(?P<deployment>[A-Za-z0-9_.-]{1,64})/(?P<operation>.+)")
# The v1 surface (any operation) and the resource-level dated API (Responses); ids in their issued shape.
UPSTREAM_V1 = re.compile(r"/openai/(?P<v1>v1/)?(?P<operation>.+)")
RESPONSE_ID = re.compile(r"^responses/resp_[A-Za-z0-9_-]{1,128}(?=/|$)")
SERVER_REFUSAL = b"Invalid HTTP request received."
TRACEBACK = ("Traceback (most recent call last)", 'File "/')
CONCURRENCY = 6


def owned(case: Case) -> bool:
    return any(pattern.fullmatch(case.path) and case.method in methods for pattern, methods in OWNED)


def problems(case: Case, answer: RawResponse, secrets: tuple[str, ...]) -> tuple[str, list[str]]:
    """(how the answer is classed, what is wrong with it)."""
    text = answer.raw.decode("latin-1")
    wrong = [f"leaks {s[:12]}..." for s in secrets if s in text]
    wrong += ["traceback"] if any(t in text for t in TRACEBACK) else []
    if answer.status == 0:
        return "no answer", [*wrong, "no parseable answer"]
    if answer.status >= 500 and answer.status not in (502, 503, 504):
        wrong.append(f"status {answer.status}")
    if answer.status < 400 or case.method == "HEAD":
        return f"{answer.status // 100}xx", wrong
    if answer.body == SERVER_REFUSAL:
        return "refused by the HTTP server", wrong if case.wire else [*wrong, "refused by the server unexpectedly"]
    if not answer.body:
        if answer.status == 404 and not owned(case):
            return "host 404 (no function)", wrong
        return "4xx", [*wrong, "empty error body"]
    try:
        error = json.loads(answer.body)["error"]
    except (ValueError, KeyError, TypeError):
        return "4xx", [*wrong, "error body is not JSON with 'error'"]
    if answer.header("x-gateway-backend") is not None:  # a backend's own error, relayed as it is
        ok = isinstance(error, dict) and "message" in error
    else:
        ok = isinstance(error, dict) and {"message", "type", "param", "code"} <= error.keys()
        ok = ok and isinstance(error["message"], str) and isinstance(error["type"], str)
    return f"{answer.status // 100}xx", wrong if ok else [*wrong, "error body not in OpenAI's shape"]


def _errors(log: str) -> str:
    """The exception lines of the devhost's log (one per failure), to say why an answer was a 500."""
    lines = log.splitlines()
    exception = re.compile(r"\w[\w.]*(Error|Exception|Disconnect)\b")
    found = [f"{lines[i]} <- {lines[i - 1].strip()}" for i in range(1, len(lines)) if exception.match(lines[i])]
    return "\n".join(dict.fromkeys(found))


def known_upstream(method: str, path: str) -> bool:
    """A request a backend may get: a known operation, with its method, in a form Azure serves it in."""
    if (match := UPSTREAM.fullmatch(path)) is not None:
        return method == "POST" and match["operation"] in V1_OPERATIONS
    if (match := UPSTREAM_V1.fullmatch(path)) is None or match["operation"].startswith("deployments/"):
        return False
    spec = OPERATIONS.get(RESPONSE_ID.sub("responses/{id}", match["operation"]))
    return spec is not None and method in spec.methods and (bool(match["v1"]) or spec.legacy == "resource")


def out_of_bounds(stack) -> list[str]:
    return [
        f"{fake.name}: {request.method} {request.path[:80]}"
        for fake in (stack.weu, stack.neu)
        for request in fake.requests
        if not known_upstream(request.method, request.path)
    ]


def test_the_bounds_refuse_what_they_should():
    assert known_upstream("POST", "/openai/v1/responses") and known_upstream("GET", "/openai/responses/resp_1")
    assert known_upstream("POST", "/openai/deployments/gpt-4o/chat/completions")
    assert not known_upstream("GET", "/openai/v1/responses")
    assert not known_upstream("POST", "/openai/chat/completions")  # not a resource-level operation
    assert not known_upstream("POST", "/openai/v1/files") and not known_upstream("GET", "/openai/responses/x/../y")


async def run(stack, cases: list[Case]) -> list[RawResponse]:
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(case: Case) -> RawResponse:
        request = build_request(case.method.encode(), case.target, case.headers, case.body)
        async with gate:
            try:
                return await send_raw(stack.host.host, stack.host.port, request, timeout_s=20)
            except (TimeoutError, OSError) as exc:  # no answer at all: reported as status 0
                return RawResponse(0, [], b"", type(exc).__name__.encode())

    return await asyncio.gather(*(one(case) for case in cases))


async def test_the_bad_input_corpus(stack, capsys):
    cases = corpus()
    assert len(cases) >= 300
    started = time.monotonic()
    answers = await run(stack, cases)
    elapsed = time.monotonic() - started
    classes: Counter[str] = Counter()
    failures = []
    for case, answer in zip(cases, answers, strict=True):
        kind, wrong = problems(case, answer, stack.secrets)
        classes[kind] += 1
        failures += [f"[{case.category}] {case.name!r} -> {answer.status}: {w}" for w in wrong]
    escaped = out_of_bounds(stack)
    log = stack.host.log()
    log_leaks = [s[:12] for s in stack.secrets if s in log]
    with capsys.disabled():
        print(
            f"\nbad-input corpus: {len(cases)} cases in {elapsed:.1f} s; "
            + ", ".join(f"{k}: {v}" for k, v in sorted(classes.items()))
            + f"; 500s: {sum('status 5' in f for f in failures)}"
            + f"; leaks: {sum('leaks' in f or 'traceback' in f for f in failures) + len(log_leaks)}"
            + f"; out-of-bounds backend requests: {len(escaped)}"
            + f"; backend requests: {len(stack.weu.requests) + len(stack.neu.requests)}"
        )
    assert not failures, "\n".join(failures[:40]) + "\n--- devhost log ---\n" + _errors(log)
    assert not escaped, escaped[:20]
    assert not log_leaks, "the devhost log holds a secret"
    assert sum(v for k, v in classes.items() if k in ("2xx", "4xx")) > len(cases) // 2  # the corpus reached the app
