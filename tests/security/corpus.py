"""The bad-input corpus: requests no SDK would send, generated from small tables with a fixed seed.

Each case is the exact bytes of one HTTP/1.1 request (see tests/support/raw_http.py), in one of the
categories the hardening issue lists: paths, methods, headers, bodies, content types, multipart, ids,
query strings, `Prefer` values and keys; and the 2026 surface (Azure v1 paths, Responses and their ids,
realtime client secrets, models by id, image edits). Most cases carry the right gateway key, so they get past
authentication and exercise what comes after it. The seed keeps the corpus the same on every run.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from urllib.parse import unquote

__all__ = ["GATEWAY_KEY", "Case", "corpus"]

GATEWAY_KEY = "gw-corpus-CANARY-7f3a9c1e5b"
JSON = (b"Content-Type", b"application/json")
MESSAGES = [{"role": "user", "content": "hi"}]
CHAT = {"model": "gpt-4o-mini", "messages": MESSAGES}
HEX = "0123456789abcdef"


@dataclass(frozen=True, slots=True)
class Case:
    category: str
    name: str
    method: str
    target: bytes  # the request target as sent: path and query, percent-encoded or not
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes | None = None
    wire: bool = False  # bytes an HTTP parser may refuse before the app sees them

    @property
    def path(self) -> str:
        """The path as the host decodes it (what routes match on)."""
        return unquote(self.target.split(b"?", 1)[0].decode("latin-1"))


def _case(category, name, method="POST", target=b"/v1/chat/completions", headers=None, body=None, *, key=True,
          wire=False) -> Case:  # fmt: skip
    base = [(b"api-key", GATEWAY_KEY.encode())] if key else []
    return Case(category, name, method, target, tuple(base + list(headers or [])), body, wire)


def _json(value) -> bytes:
    return json.dumps(value).encode()


def paths() -> list[Case]:
    body = _json({"messages": MESSAGES})
    azure = b"/openai/deployments/"
    targets = [
        azure + b"gpt-4o-mini/../../files",
        azure + b"gpt-4o-mini/../../batches",
        azure + b"gpt-4o-mini/chat/completions/../../../files",
        azure + b"gpt-4o-mini/./chat/completions",
        azure + b"gpt-4o-mini%2F..%2F..%2Ffiles/chat/completions",
        azure + b"gpt-4o-mini/chat%2Fcompletions",
        azure + b"gpt-4o-mini/chat%2fcompletions",
        azure + b"gpt-4o-mini%5C..%5C/chat/completions",
        azure + b"gpt-4o-mini\\..\\files/chat/completions",
        azure + b"gpt-4o-mini/%2e%2e/%2e%2e/files",
        azure + b"gpt-4o-mini/%252e%252e/files",
        azure + b"gpt-4o-mini/chat/completions%00",
        azure + b"gpt-4o-mini/chat/completions%0d%0aX-Injected:%201",
        azure + b"gpt-4o-mini%09/chat/completions",
        azure + b"gpt%C3%A9/chat/completions",
        azure + b"gpt\xc3\xa9/chat/completions",
        azure + b"gpt-4o-mini/chat/completions;x=1",
        azure + b"gpt-4o-mini/files",
        azure + b"gpt-4o-mini/batches",
        azure + b"gpt-4o-mini/fine_tuning/jobs",
        azure + b"gpt-4o-mini/extensions/chat/completions",
        azure + b"gpt-4o-mini/chat/completions/x",
        azure + b"gpt-4o-mini//chat/completions",
        azure + b"gpt-4o-mini",
        azure + b"..",
        azure + b"./chat/completions",
        azure + b"a" * 65 + b"/chat/completions",
        azure + b"a:b/chat/completions",
        azure + b"a%20b/chat/completions",
        azure + b"gpt-4o-mini/" + b"x/" * 500 + b"chat/completions",
        b"/v1/chat/completions/../../openai/files",
        b"/v1/../openai/files",
        b"/v1/%2e%2e/openai/files",
        b"/v1/chat%2Fcompletions",
        b"/v1/chat/completions%00",
        b"/v1//chat/completions",
        b"/V1/chat/completions",
        b"/v1/chat/Completions",
        b"/v1/fine_tuning/jobs",
        b"/v1/assistants",
        b"/v1",
        b"/v1/",
        b"/openai/models/..",
        b"/openai/deployments/",
        b"/openai/files/../deployments/gpt-4o-mini/chat/completions",
        b"/results/../openai/files",
        b"/results/..%2F..%2Fx",
        b"/status/../openai/files",
        b"/status/..%2F..%2Fx",
        b"/health/../v1/models",
        b"/" + b"a" * 6000,
        b"/%ff%fe",
        b"*",
    ]
    def wire(target: bytes) -> bool:
        return target == b"*" or any(byte >= 0x80 for byte in target)

    cases = [_case("paths", t.decode("latin-1")[:60], "POST", t, [JSON], body, wire=wire(t)) for t in targets]
    cases += [_case("paths", "GET " + t.decode("latin-1")[:60], "GET", t, wire=wire(t)) for t in targets[::3]]
    return cases


def methods() -> list[Case]:
    routes = [b"/v1/chat/completions", b"/openai/deployments/gpt-4o-mini/embeddings", b"/v1/models",
              b"/v1/files", b"/v1/batches", b"/v1/batches/batch_" + b"0" * 32, b"/results/" + b"0" * 32,
              b"/status/" + b"0" * 32]  # fmt: skip
    verbs = ["GET", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE", "FOO"]
    return [
        _case("methods", f"{verb} {route.decode()}", verb, route, [JSON], b"{}" if verb in ("PUT", "PATCH") else None)
        for route in routes
        for verb in verbs
    ]


def headers() -> list[Case]:
    body = _json(CHAT)
    variants: list[tuple[str, list[tuple[bytes, bytes]], bool]] = [
        ("huge value", [(b"X-Big", b"a" * 9000)], False),
        ("huge total", [(f"X-H{i}".encode(), b"b" * 3000) for i in range(12)], False),
        ("chunked body", [(b"Transfer-Encoding", b"chunked")], False),
        ("many headers", [(f"X-N{i}".encode(), b"v") for i in range(300)], False),
        ("duplicated api-key same", [(b"api-key", GATEWAY_KEY.encode())], False),
        ("duplicated api-key other", [(b"api-key", b"other")], False),
        ("duplicated content-type", [(b"Content-Type", b"text/plain")], False),
        ("duplicated prefer", [(b"Prefer", b"respond-async"), (b"Prefer", b"respond-async")], False),
        ("bare CR in value", [(b"X-A", b"v\rInjected: yes")], True),
        ("CRLF folded value", [(b"X-A", b"v\r\n Injected: yes")], True),
        ("NUL in value", [(b"X-A", b"a\x00b")], True),
        ("non-ASCII value", [(b"X-Custom", "café ☕".encode())], False),
        ("latin-1 value", [(b"X-Custom", b"caf\xe9")], False),
        ("non-ASCII name", [("X-Café".encode(), b"v")], True),
        ("non-ASCII user-agent", [(b"User-Agent", "OpenAI/Python ☃".encode())], False),
        ("x-request-id control", [(b"x-request-id", b"id\x01x")], True),
        ("x-request-id long", [(b"x-request-id", b"r" * 5000)], False),
        ("x-request-id injection", [(b"x-request-id", b"a%0d%0aSet-Cookie: x")], False),
        ("host header odd", [(b"X-Forwarded-Host", b"evil.example/../x")], False),
        ("content-length and chunked", [(b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"4")], True),
        ("content-length negative", [(b"Content-Length", b"-1")], True),
        ("content-length huge", [(b"Content-Length", b"99999999999999")], True),
        ("accept-encoding gzip", [(b"Accept-Encoding", b"gzip, br")], False),
        ("authorization and api-key", [(b"Authorization", b"Bearer something-else")], False),
        ("x-functions-key forwarded?", [(b"x-functions-key", b"devhost-function-key")], False),
        ("cookie", [(b"Cookie", b"a=" + b"c" * 4000)], False),
        ("expect 100", [(b"Expect", b"100-continue")], False),
        ("tab in value", [(b"X-A", b"a\tb")], False),
        ("empty value", [(b"X-Empty", b"")], False),
        ("header with colon name", [(b"X:A", b"v")], True),
        ("space before colon", [(b"X-A ", b"v")], True),
    ]
    chunked = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    cases = []
    for name, extra, wire in variants:
        data = chunked if "chunked" in name else body
        for target in (b"/v1/chat/completions", b"/openai/deployments/gpt-4o-mini/chat/completions"):
            cases.append(_case("headers", f"{name} {target[:12].decode()}", "POST", target, [JSON, *extra], data,
                               wire=wire))  # fmt: skip
    return cases


BAD_VALUES = [None, True, False, 0, -1, 2**40, 1.5, -0.0, 1e308, "x", "", "é" * 3, [], [1], {}, {"a": 1}, [[[[]]]]]
FIELDS = ["model", "messages", "stream", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n",
          "stream_options", "stop", "user", "tools", "logit_bias", "seed"]  # fmt: skip


def bodies(rng: random.Random) -> list[Case]:
    cases = []
    raw_bodies = [
        ("array", b"[]"), ("string", b'"x"'), ("number", b"1"), ("null", b"null"), ("true", b"true"),
        ("empty", b""), ("not json", b"{oops"), ("trailing garbage", _json(CHAT) + b"xx"),
        ("invalid utf-8", b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "\xff\xfe"}]}'),
        ("utf-16", json.dumps(CHAT).encode("utf-16")), ("bom", b"\xef\xbb\xbf" + _json(CHAT)),
        ("deep nesting", b'{"a":' + b"[" * 50_000 + b"]" * 50_000 + b"}"),
        ("huge int", b'{"model": "gpt-4o-mini", "messages": [], "max_tokens": 1' + b"0" * 5000 + b"}"),
        ("1e400", b'{"model": "gpt-4o-mini", "messages": [], "temperature": 1e400}'),
        ("NaN", b'{"model": "gpt-4o-mini", "messages": [], "temperature": NaN}'),
        ("lone surrogate", b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "\\ud800"}]}'),
        ("nul in string", b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "a\\u0000b"}]}'),
        ("duplicate keys", b'{"model": "gpt-4o-mini", "model": "../../x", "messages": []}'),
        ("big string", _json({**CHAT, "user": "u" * 300_000})),
        ("many keys", _json({**CHAT, **{f"k{i}": i for i in range(5000)}})),
    ]  # fmt: skip
    for name, data in raw_bodies:
        for target in (b"/v1/chat/completions", b"/openai/deployments/gpt-4o-mini/chat/completions"):
            cases.append(_case("bodies", f"{name} {target[:12].decode()}", "POST", target, [JSON], data))
    for field in FIELDS:
        for value in BAD_VALUES:
            body = {**CHAT, field: value}
            target = rng.choice([b"/v1/chat/completions", b"/openai/deployments/gpt-4o-mini/chat/completions"])
            cases.append(_case("bodies", f"{field}={json.dumps(value)[:20]}", "POST", target, [JSON], _json(body)))
    others = [
        (b"/v1/embeddings", {"model": "text-embedding-3-small"}),
        (b"/v1/embeddings", {"model": "text-embedding-3-small", "input": {"a": 1}}),
        (b"/v1/embeddings", {"model": "text-embedding-3-small", "input": "x", "dimensions": -5}),
        (b"/v1/completions", {"model": "gpt-4o-mini", "prompt": 5}),
        (b"/v1/completions", {"model": "gpt-4o-mini", "prompt": "x", "logprobs": True}),
        (b"/v1/images/generations", {"model": "dall-e-3", "prompt": ["a"]}),
        (b"/v1/images/generations", {"model": "dall-e-3"}),
        (b"/v1/audio/speech", {"model": "tts", "input": "x"}),
        (b"/v1/audio/speech", {"model": "tts", "input": 1, "voice": "alloy"}),
        (b"/openai/deployments/tts/audio/speech", {"input": "x", "voice": "alloy", "speed": 100}),
        (b"/v1/batches", [1, 2]),
        (b"/v1/batches", {"input_file_id": 5, "endpoint": "/v1/chat/completions"}),
        (b"/v1/batches", {"input_file_id": "file-" + "0" * 32, "endpoint": "/v1/chat/completions"}),
        (b"/v1/batches", {"input_file_id": "../../x", "endpoint": "/v1/chat/completions"}),
        (b"/v1/batches", {"input_file_id": "f", "endpoint": "/v1/x", "completion_window": "99999h"}),
        (b"/v1/batches", {"input_file_id": "f", "endpoint": "/v1/chat/completions", "metadata": "x"}),
        (b"/openai/batches", {"input_file_id": "f", "endpoint": ["/v1/chat/completions"]}),
    ]
    cases += [_case("bodies", f"{t.decode()} {json.dumps(b)[:30]}", "POST", t, [JSON], _json(b)) for t, b in others]
    return cases


def content_types() -> list[Case]:
    types = [b"text/plain", b"application/xml", b"application/x-www-form-urlencoded", b"multipart/form-data",
             b"multipart/form-data; boundary=x", b"application/json; charset=latin-1", b"application/jsonx",
             b"application/json, text/plain", b"APPLICATION/JSON", b"*/*", b"",
             b"application/json; " + b"p=v; " * 500]  # fmt: skip
    cases = []
    for content_type in types:
        for target in (b"/v1/chat/completions", b"/openai/deployments/whisper/audio/transcriptions", b"/v1/batches"):
            name = f"{content_type[:40].decode()} {target[:20].decode()}"
            cases.append(_case("content types", name, "POST", target, [(b"Content-Type", content_type)], _json(CHAT)))
    return cases


def _form(parts: list[tuple[str, str | None, bytes]], boundary: bytes = b"XyZ") -> bytes:
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += b"--" + boundary + f"\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return out + b"--" + boundary + b"--\r\n"


def multipart() -> list[Case]:
    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": CHAT}
    good = _json(line) + b"\n"
    mp = (b"Content-Type", b"multipart/form-data; boundary=XyZ")
    uploads = [
        ("good file", _form([("purpose", None, b"batch"), ("file", "in.jsonl", good)])),
        ("no purpose", _form([("file", "in.jsonl", good)])),
        ("wrong purpose", _form([("purpose", None, b"fine-tune"), ("file", "in.jsonl", good)])),
        ("long purpose", _form([("purpose", None, b"b" * 5000), ("file", "in.jsonl", good)])),
        ("no file", _form([("purpose", None, b"batch")])),
        ("two files", _form([("purpose", None, b"batch"), ("file", "a", good), ("file", "b", good)])),
        ("traversal filename", _form([("purpose", None, b"batch"), ("file", "../../../etc/passwd", good)])),
        ("non-ASCII filename", _form([("purpose", None, b"batch"), ("file", "résumé☃.jsonl", good)])),
        ("huge filename", _form([("purpose", None, b"batch"), ("file", "f" * 9000, good)])),
        ("unclosed", _form([("purpose", None, b"batch"), ("file", "a", good)])[:-9]),
        ("no disposition", b"--XyZ\r\nContent-Type: text/plain\r\n\r\nx\r\n--XyZ--\r\n"),
        ("huge part headers", b"--XyZ\r\nX-A: " + b"a" * 20_000 + b"\r\n\r\nx\r\n--XyZ--\r\n"),
        ("empty body", b""),
        ("garbage", b"\x00\x01\x02" * 100),
        ("empty file", _form([("purpose", None, b"batch"), ("file", "in.jsonl", b"")])),
        ("bad jsonl", _form([("purpose", None, b"batch"), ("file", "in.jsonl", good + b"{oops\n")])),
        ("line not object", _form([("purpose", None, b"batch"), ("file", "in.jsonl", b"[1]\n")])),
        ("bad line model", _form([("purpose", None, b"batch"),
                                  ("file", "a", _json({**line, "body": {**CHAT, "model": "../x"}}))])),
        ("bad line url", _form([("purpose", None, b"batch"), ("file", "a", _json({**line, "url": ["x"]}))])),
        ("bad line messages", _form([("purpose", None, b"batch"),
                                     ("file", "a", _json({**line, "body": {"model": "m", "messages": 1}}))])),
        ("deep line", _form([("purpose", None, b"batch"), ("file", "a", b"[" * 50_000 + b"]" * 50_000)])),
        ("invalid utf-8 line", _form([("purpose", None, b"batch"), ("file", "a", b'{"custom_id": "\xff"}\n')])),
        ("long line", _form([("purpose", None, b"batch"), ("file", "a", b"x" * 300_000)])),
    ]  # fmt: skip
    cases = []
    for name, data in uploads:
        for target in (b"/v1/files", b"/openai/files"):
            cases.append(_case("multipart", f"{name} {target.decode()}", "POST", target, [mp], data))
    audio = [
        ("no boundary", b"multipart/form-data", _form([("model", None, b"whisper"), ("file", "a.wav", b"RIFF")])),
        ("boundary mismatch", b"multipart/form-data; boundary=Other", _form([("model", None, b"whisper")])),
        ("long boundary", b"multipart/form-data; boundary=" + b"b" * 200, b"--" + b"b" * 200 + b"--\r\n"),
        ("model traversal", mp[1], _form([("model", None, b"../../files"), ("file", "a.wav", b"RIFF")])),
        ("model non-ASCII", mp[1], _form([("model", None, "whisperé".encode()), ("file", "a.wav", b"RIFF")])),
        ("no model", mp[1], _form([("file", "a.wav", b"RIFF")])),
        ("quoted boundary", b'multipart/form-data; boundary="XyZ"', _form([("model", None, b"whisper")])),
    ]
    for name, content_type, data in audio:
        cases.append(_case("multipart", "audio " + name, "POST", b"/v1/audio/transcriptions",
                           [(b"Content-Type", content_type)], data))  # fmt: skip
    return cases


def ids(rng: random.Random) -> list[Case]:
    bad = [b"..", b"%2e%2e", b"..%2F..%2Fx", b"a%2Fb", b"%00", b"%0d%0a", b"x" * 3000, b"%C3%A9", b"F" * 32,
           b"0" * 31, b"0" * 33, b"batch_..", b"file-..", b"file-" + b"0" * 32 + b"%2F..", b"-", b"_"]  # fmt: skip
    bad.append("".join(rng.choice(HEX) for _ in range(32)).encode())  # well formed, unknown
    routes = [("GET", b"/results/"), ("DELETE", b"/results/"), ("GET", b"/status/"), ("DELETE", b"/status/"),
              ("GET", b"/v1/files/"), ("GET", b"/openai/files/"), ("GET", b"/v1/batches/"),
              ("POST", b"/v1/batches/")]  # fmt: skip
    cases = []
    for value in bad:
        for method, prefix in routes:
            target = prefix + value + (b"/cancel" if method == "POST" else b"")
            cases.append(_case("ids", f"{method} {target[:50].decode('latin-1')}", method, target))
        cases.append(_case("ids", f"content {value[:30].decode()}", "GET", b"/v1/files/" + value + b"/content"))
    cases.append(_case("ids", "files content of a batch id", "GET", b"/v1/files/batch_" + b"0" * 44 + b"-output"))
    return cases


def queries() -> list[Case]:
    values = [b"api-version=", b"api-version=%0d%0aX:1", b"api-version=" + b"9" * 500, b"api-version=a/b",
              b"api-version=2024-10-21&api-version=../x", b"code=abc", b"a=%ff%fe", b"a=%00", b"x=" + b"q" * 7000,
              b"a=1;b=2", b"&&&==", b"api-version=2024-10-21&foo=%2F..%2F", b"%zz=%zz",
              b"api-version=preview"]  # fmt: skip
    cases = []
    for query in values:
        for target in (b"/v1/chat/completions", b"/openai/deployments/gpt-4o-mini/chat/completions"):
            cases.append(_case("queries", f"{query[:30].decode()} {target[:12].decode()}", "POST",
                               target + b"?" + query, [JSON], _json(CHAT)))  # fmt: skip
    for query in (b"limit=0", b"limit=-1", b"limit=abc", b"limit=1000", b"after=../x", b"after=batch_%2F..",
                  b"after=batch_" + b"0" * 32, b"limit=2&after=", b"limit=" + b"9" * 100):  # fmt: skip
        cases.append(_case("queries", f"list {query[:30].decode()}", "GET", b"/v1/batches?" + query))
    return cases


def prefers() -> list[Case]:
    values = [b"respond-async", b"RESPOND-ASYNC", b"respond-async; wait=abc", b"wait=5, respond-async",
              b"respond-async, respond-async", b"handling=lenient", b"respond-async" + b" " * 3000, b";;;,,,",
              b"respond-async=\"x\"", b"respond-async; " + b"x=1; " * 1000, "respond-async, é".encode()]  # fmt: skip
    bodies = [_json(CHAT), _json({**CHAT, "stream": True}), b"[1]", _json({"model": "../x", "messages": []})]
    cases = []
    for index, value in enumerate(values):
        for body in bodies[: 2 if index % 2 else 4]:
            cases.append(_case("prefer", f"{value[:30].decode('latin-1')} {body[:20].decode()}", "POST",
                               b"/v1/chat/completions", [JSON, (b"Prefer", value)], body))  # fmt: skip
    cases.append(_case("prefer", "on GET models", "GET", b"/v1/models", [(b"Prefer", b"respond-async")]))
    return cases


def keys() -> list[Case]:
    key = GATEWAY_KEY.encode()
    presented = [
        [(b"api-key", b"")], [(b"api-key", key[:-1])], [(b"api-key", key + b"x")], [(b"api-key", key.upper())],
        [(b"api-key", b" " + key)], [(b"api-key", key[::-1])], [(b"api-key", b"k" * 7000)], [(b"api-key", b"corpus")],
        [(b"api-key", b"corpus:" + key)], [(b"Authorization", b"Bearer ")], [(b"Authorization", b"Bearer " + key[:-1])],
        [(b"Authorization", b"Basic " + key)], [(b"Authorization", b"bearer " + key)], [(b"Authorization", key)],
        [(b"api-key", key + b"\x00")], [(b"api-key", "é".encode() + key)], [(b"api-key", b"weu-backend-CANARY")],
        [(b"x-functions-key", b"devhost-function-key")], [],
    ]  # fmt: skip
    cases = []
    for index, headers in enumerate(presented):
        for target in (b"/v1/chat/completions", b"/v1/files", b"/results/" + b"0" * 32, b"/status/" + b"0" * 32):
            method = "GET" if target.startswith((b"/results", b"/status")) else "POST"
            wire = any(b"\x00" in v for _, v in headers)
            cases.append(_case("keys", f"key variant {index} {target[:10].decode()}", method, target,
                               [JSON, *headers], _json(CHAT), key=False, wire=wire))  # fmt: skip
    return cases


def surface_2026(rng: random.Random) -> list[Case]:
    """Azure's v1 surface, Responses (ids, chains, background), realtime client secrets, models by id, image edits."""
    cases = []
    odd_paths = [
        b"/openai/v1/chat/completions/../../files", b"/openai/v1/responses/resp_1/../../files",
        b"/openai/v1/%2e%2e/deployments/gpt-4o-mini/chat/completions",
        b"/openai/v1/deployments/gpt-4o-mini/chat/completions", b"/openai/v1/responses/resp_1/input_items/x",
        b"/v1/responses/resp_%2F..", b"/v1/responses/resp_" + b"a" * 5000, b"/v1/responses/resp_a/cancel/x",
        b"/v1/responses/resp_a%00", b"/v1/responses/resp_a;x", b"/v1/models/" + b"x" * 100, b"/v1/models/%2e%2e",
        b"/openai/v1/models/gpt-4o-mini/x", b"/openai/v1/realtime/client_secrets/x", b"/openai/v1/realtime/calls",
        b"/openai/v1/realtime", b"/openai/v1", b"/openai/v1/", b"/openai/v1/files/../batches",
        b"/openai/v1/responses//cancel", b"/v1/responses/%72esp_1",
    ]  # fmt: skip
    for target in odd_paths:
        for method in ("GET", "POST", "DELETE"):
            cases.append(_case("2026", f"{method} {target[:50].decode('latin-1')}", method, target, [JSON], b"{}"))
    routes = [b"/v1/responses", b"/openai/v1/responses/resp_abc", b"/v1/responses/resp_abc/cancel",
              b"/openai/v1/responses/resp_abc/input_items", b"/v1/realtime/client_secrets",
              b"/openai/v1/models/whisper", b"/openai/v1/images/edits"]  # fmt: skip
    for route in routes:
        for verb in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"):
            body = b"{}" if verb != "GET" else None
            cases.append(_case("2026", f"{verb} {route.decode()}", verb, route, [JSON], body))
    responses = {"model": "gpt-4o-mini", "input": "hi"}
    bad_ids = ["resp_../x", "../../x", "resp_" + "a" * 300, "resp_a/../b", "resp_a\u0000", "", "resp_a b"]
    for field in ("previous_response_id", "input", "background", "stream", "store", "max_output_tokens", "model",
                  "instructions", "tools", "metadata", "include"):  # fmt: skip
        for value in [*BAD_VALUES, *(bad_ids if field == "previous_response_id" else [])]:
            target = rng.choice([b"/v1/responses", b"/openai/v1/responses"])
            name = f"responses {field}={json.dumps(value)[:20]}"
            cases.append(_case("2026", name, "POST", target, [JSON], _json({**responses, field: value})))
    for extra in ({"previous_response_id": "resp_" + "0" * 40}, {"background": True}, {"stream": True},
                  {"stream": True, "stream_options": {"include_usage": True}}, {"store": False}):  # fmt: skip
        body = _json({**responses, **extra})
        cases.append(_case("2026", f"responses {extra}"[:60], "POST", b"/v1/responses", [JSON], body))
    sessions = [
        None, "x", [], {}, {"type": "realtime"}, {"type": "realtime", "model": "../../files"},
        {"type": "realtime", "model": 5}, {"type": "transcription"}, {"type": "transcription", "audio": "x"},
        {"type": "transcription", "audio": {"input": {"transcription": {"model": "../x"}}}},
        {"type": "realtime", "model": "gpt-4o-mini"}, {"type": "realtime", "model": "gpt-4o-mini", "x": "y" * 9000},
    ]  # fmt: skip
    for session in sessions:
        for target in (b"/v1/realtime/client_secrets", b"/openai/v1/realtime/client_secrets"):
            body = _json({"session": session, "expires_after": rng.choice([None, "x", {"seconds": -5}])})
            cases.append(_case("2026", f"realtime {json.dumps(session)[:30]}", "POST", target, [JSON], body))
    mp = b"multipart/form-data; boundary=XyZ"
    image = ("image", "a.png", b"PNG")
    edits = [
        ("edit ok", mp, _form([("model", None, b"dall-e-3"), ("prompt", None, b"hat"), image])),
        ("edit no model", mp, _form([("prompt", None, b"hat"), image])),
        ("edit model traversal", mp, _form([("model", None, b"../../files"), image])),
        ("edit two models", mp, _form([("model", None, b"dall-e-3"), ("model", None, b"../x"), image])),
        ("edit no boundary", b"multipart/form-data", _form([("model", None, b"dall-e-3")])),
        ("edit json", b"application/json", _json({"model": "dall-e-3", "prompt": "x"})),
    ]
    for name, content_type, data in edits:
        for target in (b"/v1/images/edits", b"/openai/v1/images/edits", b"/openai/deployments/dall-e-3/images/edits"):
            headers = [(b"Content-Type", content_type)]
            cases.append(_case("2026", f"{name} {target[:20].decode()}", "POST", target, headers, data))
    queries = [b"api-version=preview", b"api-version=2024-10-21", b"api-version=latest&x=%2F..",
               b"api-version=" + b"9" * 80, b"stream=true", b"stream=true&starting_after=abc",
               b"include[]=x&limit=-1"]  # fmt: skip
    targets = [("POST", b"/openai/v1/chat/completions"), ("GET", b"/v1/responses/resp_abc"),
               ("POST", b"/openai/v1/responses")]  # fmt: skip
    for query in queries:
        for method, target in targets:
            body = _json(CHAT if b"chat" in target else responses) if method == "POST" else None
            name = f"{method} {target.decode()}?{query[:30].decode()}"
            cases.append(_case("2026", name, method, target + b"?" + query, [JSON], body))
    return cases


def corpus(seed: int = 11) -> list[Case]:
    rng = random.Random(seed)
    return [
        *paths(), *methods(), *headers(), *bodies(rng), *content_types(), *multipart(), *ids(rng), *queries(),
        *prefers(), *keys(), *surface_2026(rng),
    ]  # fmt: skip
