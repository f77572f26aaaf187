"""The ids clients send back to the gateway, checked before they reach a blob name, a Durable instance id, a table
row or an upstream path.

Every id the gateway hands out has a fixed shape (it made them), so anything else is refused outright: a
path like `/results/..%2F..%2Fx` must never become a blob name, nor `/v1/files/a/../b` a Durable query.
A malformed id gets the same 404 as an unknown one, so the answer reveals nothing about what exists.
The error message does not echo the id: it may hold control characters or be megabytes long.
"""

from __future__ import annotations

import hashlib
import re
from typing import TypeGuard

from . import errors

__all__ = [
    "batch_created_ms",
    "batch_id",
    "caller_tag",
    "file_id",
    "instance_id",
    "is_response_id",
    "new_batch_id",
    "response_id",
    "unknown",
]

# uuid4().hex: the async path's instance ids (starter.accept).
_INSTANCE = re.compile(r"[0-9a-f]{32}")
# batch_ + caller tag + creation time + random (new_batch_id); older batches: batch_ + uuid4().hex.
_BATCH = re.compile(r"batch_[0-9a-f]{32,48}")
_TAGGED_BATCH = re.compile(r"batch_[0-9a-f]{12}(?P<ms>[0-9a-f]{12})[0-9a-f]{20}")
# Uploads (file- + uuid4().hex), and the merged output and error files of a batch.
_FILE = re.compile(r"file-[0-9a-f]{32}|batch_[0-9a-f]{32,48}-(?:output|errors)")
# A backend's response ids (resp_ and hex on Azure and OpenAI): a table row key and a path segment here.
_RESPONSE = re.compile(r"resp_[A-Za-z0-9_-]{1,128}")
_TAG_CHARS = 12


def instance_id(value: str, *, what: str = "result") -> str:
    """An async request's instance id (`/results/{id}`, `/status/{id}`); 404 `{what}_not_found` otherwise."""
    return _checked(_INSTANCE, value, what)


def batch_id(value: str) -> str:
    """A batch id the gateway issued; 404 `batch_not_found` otherwise."""
    return _checked(_BATCH, value, "batch")


def file_id(value: str) -> str:
    """A file id the gateway issued; 404 `file_not_found` otherwise."""
    return _checked(_FILE, value, "file")


def response_id(value: str) -> str:
    """A Responses API id, by the backends' shape (`resp_...`); 404 `response_not_found` otherwise."""
    return _checked(_RESPONSE, value, "response")


def is_response_id(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and _RESPONSE.fullmatch(value) is not None


def caller_tag(caller: str) -> str:
    """A short, stable, non-reversible tag of a caller, so one caller's batches are one id prefix."""
    return hashlib.sha256(caller.encode()).hexdigest()[:_TAG_CHARS]


def new_batch_id(caller: str, created_ms: int, unique: str) -> str:
    """`batch_<caller tag><creation ms><20 random hex>`: a caller's batches are one id prefix (a filtered
    query lists them), and sorting their ids sorts them by creation time (ids are the list cursor)."""
    return f"batch_{caller_tag(caller)}{created_ms:012x}{unique[:20]}"


def batch_created_ms(value: str) -> int | None:
    """The creation time (epoch ms) written into a batch id by `new_batch_id`; None for older ids."""
    match = _TAGGED_BATCH.fullmatch(value)
    return int(match["ms"], 16) if match else None


def unknown(what: str) -> errors.GatewayError:
    """The one 404 for an id that is malformed, unknown or someone else's: the answer tells them apart for nobody."""
    return errors.not_found(f"No {what} with this id.", code=f"{what}_not_found")


def _checked(pattern: re.Pattern[str], value: str, what: str) -> str:
    if not isinstance(value, str) or pattern.fullmatch(value) is None:
        raise unknown(what)
    return value
