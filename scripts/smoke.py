"""Smoke test of a deployed gateway with the official `openai` client: is it up and answering as it should?

    python scripts/smoke.py --url https://<app>.azurewebsites.net --key <gateway key>
                            [--model gpt-4o-mini] [--embedding-model text-embedding-3-small]

The key may come from GATEWAY_SMOKE_KEY instead of --key (keeps it out of the process list). Checks: models
list, chat through `OpenAI(base_url=URL/v1)` and through `AzureOpenAI(azure_endpoint=URL)`, a stream,
embeddings (the --embedding-model, else the first embeddings model of the models list; a SKIP line saying so
when there is none), and one async request (`Prefer: respond-async`: 202, then the `Location` is polled with
the same key until it is no longer running). One line per check with its latency; the exit code is 0 only when
every check that ran passed. Nothing secret is printed.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any

try:
    import httpx
    from openai import AzureOpenAI, OpenAI
except ImportError:  # run outside the project's virtual environment
    sys.exit("scripts/smoke.py needs the openai package: pip install openai (or use make smoke)")

MESSAGES = [{"role": "user", "content": "Say hello in five words."}]
RUNNING = {"running", "pending", "accepted", "queued", "in_progress", "notstarted", "continuedasnew"}
FAILED = {"failed", "expired", "cancelled", "canceled", "terminated", "error"}


class CheckFailed(Exception):
    """A check got an answer, but not the one a healthy gateway gives."""


def check_models(v1: OpenAI, model: str, listed: list[str]) -> str:
    """The models the gateway lists for this key (kept in `listed` for the embeddings check)."""
    ids = [m.id for m in v1.models.list()]
    listed.extend(ids)
    # A backend without a `deployments=` list serves any name and lists none, so an empty list is no failure.
    if ids and model not in ids:
        raise CheckFailed(f"{model!r} is not among the models the gateway serves: {ids}")
    return f"{len(ids)} model(s)"


def _reply(completion: Any) -> str:
    message = completion.choices[0].message
    text = message.content or "".join(c.function.arguments for c in message.tool_calls or [])
    if not text:
        raise CheckFailed("the completion has no content")
    return text


def check_chat(client: OpenAI, model: str) -> str:
    raw = client.chat.completions.with_raw_response.create(model=model, messages=MESSAGES, max_tokens=32)
    completion = raw.parse()
    tokens = completion.usage.total_tokens if completion.usage else "?"
    return f"backend {raw.headers.get('x-gateway-backend', '?')}, {tokens} tokens: {_reply(completion)[:40]!r}"


def check_stream(v1: OpenAI, model: str) -> str:
    chunks = list(v1.chat.completions.create(model=model, messages=MESSAGES, max_tokens=32, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finished = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    if not text or not finished:
        raise CheckFailed(f"stream of {len(chunks)} chunk(s) without text or finish_reason")
    return f"{len(chunks)} chunks, finish_reason {finished[-1]}"


def embeddings_model(ids: list[str]) -> str | None:
    """The first listed model whose name says it embeds (text-embedding-3-small, text-embedding-ada-002, ...):
    model aliases carry no capabilities, so the name is all there is to go on."""
    return next((name for name in ids if "embed" in name.lower()), None)


def check_embeddings(v1: OpenAI, model: str) -> str:
    result = v1.embeddings.create(model=model, input=["hello gateway"])
    vector = result.data[0].embedding
    if not vector:
        raise CheckFailed("empty embedding")
    return f"{model}: {len(vector)} dimensions"


def _find_completion(value: Any, depth: int = 0) -> dict[str, Any] | None:
    """The chat completion in a poll answer: the answer itself, or nested in a status object."""
    if not isinstance(value, dict) or depth > 4:
        return None
    if value.get("object") == "chat.completion" and value.get("choices"):
        return value
    for key in ("output", "result", "response", "body"):
        if (found := _find_completion(value.get(key), depth + 1)) is not None:
            return found
    return None


def _states(value: Any) -> set[str]:
    """Every status word of a poll answer and of its `output` (lower case)."""
    found: set[str] = set()
    for node in (value, value.get("output") if isinstance(value, dict) else None):
        if isinstance(node, dict):
            found |= {str(node[k]).lower() for k in ("runtimeStatus", "status") if isinstance(node.get(k), str)}
    return found


def check_async(v1: OpenAI, http: httpx.Client, model: str, timeout_s: float, poll_cap_s: float) -> str:
    raw = v1.chat.completions.with_raw_response.create(
        model=model, messages=MESSAGES, max_tokens=32, extra_headers={"Prefer": "respond-async"}
    )
    answer = raw.http_response
    if answer.status_code != 202 or not answer.headers.get("location"):
        raise CheckFailed(f"expected 202 with a Location, got {answer.status_code}")
    base = httpx.URL(str(answer.url))  # the openai client's own URL type is not httpx's
    status_url = base.join(answer.headers["location"])  # relative or absolute
    wait, deadline, polls = _retry_after(answer, poll_cap_s), time.monotonic() + timeout_s, 0
    while True:
        time.sleep(min(wait, max(0.0, deadline - time.monotonic())))
        poll = http.get(status_url)
        polls += 1
        body = poll.json() if "json" in poll.headers.get("content-type", "") else None
        if poll.status_code != 202 and not (_states(body) & RUNNING):
            break
        if time.monotonic() >= deadline:
            raise CheckFailed(f"still running after {timeout_s:.0f} s ({polls} polls)")
        wait = _retry_after(poll, poll_cap_s)
    if poll.status_code != 200 or _states(body) & FAILED:
        raise CheckFailed(f"status answer {poll.status_code} {sorted(_states(body))}")
    completion = _find_completion(body)
    if completion is None and isinstance(body, dict) and body.get("result_url"):
        result = http.get(base.join(body["result_url"]))
        completion = _find_completion(result.json()) if result.status_code == 200 else None
    if completion is None:
        raise CheckFailed("the finished request carries no chat completion")
    return f"202, then {polls} poll(s): {completion['choices'][0]['message'].get('content', '')[:40]!r}"


def _retry_after(response: httpx.Response, cap_s: float) -> float:
    try:
        return min(cap_s, max(0.0, float(response.headers.get("retry-after", "1"))))
    except ValueError:  # an HTTP date: poll again soon rather than parse it
        return min(cap_s, 1.0)


def redact(text: str, key: str) -> str:
    """``text`` without the gateway key or any key-bearing query value (a status URL may carry ``code=``)."""
    text = text.replace(key, "***") if key else text
    return re.sub(r"\b(code|sig|key|api-key)=[^&\s'\"]+", r"\1=***", text, flags=re.IGNORECASE)


def run(name: str, check: Callable[[], str], key: str, out: list[bool]) -> None:
    """Runs one check and prints its line: PASS/FAIL, name, latency, detail."""
    started = time.perf_counter()
    try:
        detail, ok = check(), True
    except Exception as error:  # any failure is this check's result, and the next check still runs
        detail, ok = f"{type(error).__name__}: {str(error)[:200]}", False
    elapsed_ms = (time.perf_counter() - started) * 1000
    print(f"{'PASS' if ok else 'FAIL'}  {name:<12} {elapsed_ms:8.0f} ms  {redact(detail, key)}", flush=True)
    out.append(ok)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Smoke test of a deployed gateway (official openai client).")
    parser.add_argument("--url", required=True, help="the gateway's base URL, e.g. https://<app>.azurewebsites.net")
    parser.add_argument("--key", default=os.environ.get("GATEWAY_SMOKE_KEY"), help="a gateway key")
    parser.add_argument("--model", default="gpt-4o-mini", help="chat model alias (default gpt-4o-mini)")
    parser.add_argument(
        "--embedding-model", help="embedding model alias (default: the first embeddings model the gateway lists)"
    )
    parser.add_argument("--api-version", default="2024-10-21", help="api-version for the AzureOpenAI client")
    parser.add_argument("--timeout", type=float, default=60, help="seconds per request")
    parser.add_argument("--async-timeout", type=float, default=120, help="seconds to wait for the async request")
    parser.add_argument("--poll-cap", type=float, default=5, help="longest wait between polls, whatever Retry-After")
    args = parser.parse_args(argv)
    if not args.key:
        parser.error("--key (or GATEWAY_SMOKE_KEY) is required")
    url = args.url.rstrip("/")
    v1 = OpenAI(base_url=f"{url}/v1", api_key=args.key, max_retries=0, timeout=args.timeout)
    azure = AzureOpenAI(
        azure_endpoint=url, api_key=args.key, api_version=args.api_version, max_retries=0, timeout=args.timeout
    )
    # A status route may redirect to the result when done (303): follow it, with the same key.
    http = httpx.Client(headers={"api-key": args.key}, timeout=args.timeout, follow_redirects=True)
    results: list[bool] = []
    listed: list[str] = []
    print(f"Smoke test of {url} (model {args.model})", flush=True)
    with v1, azure, http:
        run("models", lambda: check_models(v1, args.model, listed), args.key, results)
        models_read = results[-1] or bool(listed)  # read, even when the chat model was missing from it
        run("chat v1", lambda: check_chat(v1, args.model), args.key, results)
        run("chat azure", lambda: check_chat(azure, args.model), args.key, results)
        run("stream", lambda: check_stream(v1, args.model), args.key, results)
        embedding_model = args.embedding_model or embeddings_model(listed)
        if embedding_model:
            run("embeddings", lambda: check_embeddings(v1, embedding_model), args.key, results)
        else:
            why = "none in the models list" if models_read else "the models list could not be read"
            detail = f"skipped: no embeddings model ({why}; name one with --embedding-model)"
            print(f"SKIP  {'embeddings':<12} {'':>11}  {detail}", flush=True)
        run("async", lambda: check_async(v1, http, args.model, args.async_timeout, args.poll_cap), args.key, results)
    print(f"smoke: {sum(results)} of {len(results)} checks passed", flush=True)
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
