"""A managed batch's files in Blob Storage, read and written as streams, never held whole.

Each round's answers are kept as the backend sent them, in `batches/{id}/rounds/{round key}/results.jsonl`
and `errors.jsonl` (error lines without a response never ran and are not kept). What is known about a batch
(which lines are answered, how many succeeded, the usage) is a `Tally` built by streaming over those blobs:
it holds custom ids, not lines. Blobs of batches started before rounds had their own blobs
(`batches/{id}/results.jsonl`) are read the same way.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.batch_files import parse_line
from gateway.bodies import iter_lines
from gateway.bootstrap import Services

__all__ = ["Tally", "answers", "lines", "round_blob", "store_round", "tally"]

KINDS = ("results", "errors")


@dataclass(slots=True)
class Tally:
    """The batch's answers so far: custom ids of final results and errors, counts and usage."""

    results: set[str] = field(default_factory=set)
    errors: set[str] = field(default_factory=set)
    succeeded: int = 0
    failed_results: int = 0  # answered with a status >= 400
    usage: dict[str, int] = field(
        default_factory=lambda: {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    )

    @property
    def answered(self) -> set[str]:
        return self.results | self.errors

    @property
    def failed(self) -> int:
        return self.failed_results + len(self.errors)


def round_blob(batch_id: str, backend_batch_id: str, kind: str) -> str:
    """Where one round's answers go: the backend's batch id is hashed, never used in a blob name as sent."""
    key = hashlib.sha256(str(backend_batch_id).encode()).hexdigest()[:16]
    return f"batches/{batch_id}/rounds/{key}/{kind}.jsonl"


async def lines(services: Services, name: str) -> AsyncIterator[tuple[bytes, dict[str, Any]]]:
    """(raw line, parsed object) for each JSON-object line of a stored file; nothing when it does not exist."""
    blob = await services.results.open_blob(name)
    if blob is None:
        return
    async for raw in iter_lines(blob.chunks, services.settings.batch_max_bytes):
        line = parse_line(raw)
        if line is not None:
            yield raw, line


async def answers(services: Services, batch_id: str, kind: str) -> AsyncIterator[tuple[bytes, dict[str, Any]]]:
    """Every stored answer line of one kind ("results" or "errors"), round after round."""
    for name in await services.results.names(f"batches/{batch_id}/"):
        if name.endswith(f"/{kind}.jsonl"):
            async for item in lines(services, name):
                yield item


async def store_round(
    services: Services, name: str, chunks: AsyncIterable[bytes], keep: Callable[[dict[str, Any]], bool]
) -> int:
    """Writes the lines of a backend file that `keep` accepts, in blocks as they arrive; returns their count.

    The blob is committed only once the whole file was read, so a download that breaks off leaves the
    previous attempt's blob (or none) in place.
    """
    writer = await services.results.writer(name)
    kept = 0
    async for raw in iter_lines(chunks, services.settings.batch_max_bytes):
        line = parse_line(raw)
        if line is not None and isinstance(line.get("custom_id"), str) and keep(line):
            await writer.write(raw + b"\n")
            kept += 1
    await writer.commit("application/jsonl", {})
    return kept


async def tally(services: Services, batch_id: str) -> Tally:
    """What every round answered: a later duplicate of a result is ignored, a result overrides an error."""
    counted = Tally()
    async for _, line in answers(services, batch_id, "results"):
        custom_id = line.get("custom_id")
        if not isinstance(custom_id, str) or custom_id in counted.results:
            continue
        counted.results.add(custom_id)
        if status_of(line) < 400:
            counted.succeeded += 1
        else:
            counted.failed_results += 1
        add_usage(counted.usage, line)
    async for _, line in answers(services, batch_id, "errors"):
        custom_id = line.get("custom_id")
        if isinstance(custom_id, str) and custom_id not in counted.results:
            counted.errors.add(custom_id)
    return counted


def status_of(line: dict[str, Any]) -> int:
    """The HTTP status a backend gave one line (500 when it says nothing usable)."""
    response = line.get("response")
    try:
        return int((response or {}).get("status_code") or 500) if isinstance(response, dict) else 500
    except (TypeError, ValueError):
        return 500


def add_usage(total: dict[str, int], line: dict[str, Any]) -> None:
    response = line.get("response")
    body = response.get("body") if isinstance(response, dict) else None
    usage = body.get("usage") if isinstance(body, dict) else None
    if isinstance(usage, dict):
        for key in total:
            if type(usage.get(key)) is int:
                total[key] += usage[key]
