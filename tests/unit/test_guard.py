"""Request-line and header checks, ids and names: what may reach an upstream URL, a blob name or an instance id."""

import json

import pytest

from gateway import guard, ids, validate
from gateway.errors import GatewayError
from gateway.translate import resolve, upstream_path

V = "2024-10-21"
CHAT = b'{"messages": [{"role": "user", "content": "hi"}]}'


def error_of(call) -> tuple[int, dict]:
    with pytest.raises(GatewayError) as info:
        call()
    return info.value.status, json.loads(info.value.body())["error"]


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("/openai/deployments/gpt-4o/../../files", ""),
        ("/openai/deployments/gpt-4o/./chat/completions", ""),
        ("/v1/files/a/..", ""),
        ("/openai/deployments/gpt-4o/../files", "/openai/deployments/gpt-4o%2F..%2Ffiles"),
        ("/openai/deployments/gpt-4o/chat/completions", "/openai/deployments/gpt-4o%2fchat/completions"),
        ("/v1/files/a\\b", ""),
        ("/v1/files/a", "/v1/files/a%5Cb"),
        ("/v1/files/%2e%2e", "/v1/files/%252e%252e"),
        ("/v1/files/\x00", "/v1/files/%00"),
        ("/v1/files/é", "/v1/files/%C3%A9"),
        ("/v1/files/a b", "/v1/files/a%20b"),
        ("/v1/files/.%2e/x", ""),
    ],
)
def test_unsafe_paths_are_refused_in_either_form(path, raw):
    status, error = error_of(lambda: guard.check_path(path, raw))
    assert status == 400 and error["code"] == "invalid_path" and error["type"] == "invalid_request_error"
    assert "\x00" not in error["message"] and "é" not in error["message"]


def test_plain_paths_pass():
    path = "/openai/deployments/gpt-4o.mini_2/chat/completions"
    guard.check_path(path, path)
    guard.check_path("/v1/files/file-abc/content")


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ([("x-a", "v\rinjected: y")], 400, "invalid_header"),
        ([("x-a", "caf\xc3\xa9")], 400, "invalid_header"),
        ([("x-a", "a\x00b")], 400, "invalid_header"),
        ([("api-key", "a"), ("api-key", "b")], 400, "invalid_header"),
        ([("content-type", "application/json"), ("content-type", "text/plain")], 400, "invalid_header"),
        ([("x-a", "a" * guard.MAX_HEADER_BYTES)], 431, "headers_too_large"),
        ([(f"x-{i}", "a" * 4000) for i in range(10)], 431, "headers_too_large"),
    ],
)
def test_unsafe_headers_are_refused(headers, status, code):
    got, error = error_of(lambda: guard.check_headers(headers))
    assert (got, error["code"]) == (status, code)


def test_ordinary_headers_pass_including_repeated_harmless_ones():
    guard.check_headers([("accept", "a"), ("accept", "b"), ("api-key", "k"), ("user-agent", "OpenAI/Python 1.0\t")])


@pytest.mark.parametrize(
    "path",
    [
        "/openai/deployments/gpt-4o/../../files",
        "/openai/deployments/gpt-4o/files",
        "/openai/deployments/gpt-4o/chat/completions/../../files",
        "/openai/deployments/gpt-4o/batches",
        "/openai/deployments/" + "a" * 65 + "/chat/completions",
        "/openai/deployments/../chat/completions",
        "/openai/deployments/a:b/chat/completions",
    ],
)
def test_azure_style_routes_only_known_operations_and_azure_names(path):
    status, error = error_of(lambda: resolve("POST", path, "", "application/json", CHAT, V))
    assert (status, error["code"]) == (404, "route_not_found")


def test_a_known_operation_becomes_the_upstream_path_and_nothing_else():
    route = resolve("POST", "/openai/deployments/gpt-4o/chat/completions/", "", "application/json", CHAT, V)
    assert upstream_path(route, "gpt-4o") == f"/openai/deployments/gpt-4o/chat/completions?api-version={V}"


@pytest.mark.parametrize(
    ("model", "code"),
    [("../../files", "invalid_model"), ("a" * 65, "invalid_model"), ("..", "invalid_model"), (5, "invalid_type")],
)
def test_v1_model_names_follow_azures_rule(model, code):
    body = json.dumps({"model": model, "messages": []}).encode()
    status, error = error_of(lambda: resolve("POST", "/v1/chat/completions", "", "application/json", body, V))
    assert (status, error["code"], error["param"]) == (400, code, "model")


def test_a_strange_api_version_is_refused():
    status, error = error_of(
        lambda: resolve("POST", "/v1/chat/completions", "api-version=x%0d%0ay", "application/json", CHAT, V)
    )
    assert (status, error["param"]) == (400, "api-version")


def test_ids_have_the_shape_the_gateway_gave_them():
    tag = ids.caller_tag("team-a")
    batch = ids.new_batch_id("team-a", 1_764_000_000_123, "0" * 32)
    assert batch.startswith("batch_" + tag) and ids.batch_id(batch) == batch
    assert ids.batch_created_ms(batch) == 1_764_000_000_123 and ids.batch_created_ms("batch_" + "0" * 32) is None
    assert ids.new_batch_id("team-a", 2, "f" * 32) > ids.new_batch_id("team-a", 1, "f" * 32)
    assert ids.file_id(batch + "-output") and ids.file_id("file-" + "a" * 32)
    assert ids.instance_id("f" * 32)
    for bad, check in [
        ("../x", ids.instance_id),
        ("F" * 32, ids.instance_id),
        ("batch_../x", ids.batch_id),
        ("file-abc/../../x", ids.file_id),
        ("file-" + "a" * 32 + "\n", ids.file_id),
    ]:
        status, error = error_of(lambda bad=bad, check=check: check(bad))
        assert status == 404 and error["code"].endswith("_not_found") and bad not in error["message"]


def test_is_name_is_azures_deployment_rule():
    assert validate.is_name("gpt-4o-mini_2024.07") and validate.is_name("a" * 64)
    assert not any(validate.is_name(x) for x in ("", ".", "..", "a" * 65, "a/b", "a b", "é", None))


def test_the_one_search_on_the_way_in_finds_whatever_one_of_the_three_rules_finds():
    """The fast path (one combined search) must never pass a path one of the three rules refuses."""
    import itertools

    parts = ["a", ".", "..", "%2e", "%2E", "%2f", "%5C", "%25", "\\", " ", "\u212a", "\x7f", "é", "~", "%41"]
    for combo in itertools.product(parts, repeat=3):
        form = "/" + "/".join(combo)
        slow = any(rule.search(form) for rule in (guard._ENCODED_SEPARATOR, guard._DOT_SEGMENT, guard._UNSAFE_CHAR))
        assert bool(guard._ANY_UNSAFE_PATH.search(form)) == slow, form
