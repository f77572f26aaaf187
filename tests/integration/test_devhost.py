"""The development host serves a Functions app like `func start` would (tests/support/sample_app)."""

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import azure.functions as func
import httpx
import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse

from tests.support.devhost import (
    DevHost,
    apply_settings,
    build_asgi_app,
    discover_http_functions,
    read_route_prefix,
    read_settings,
    translate_route,
)

SAMPLE_APP = "tests.support.sample_app.function_app"
FUNCTION_KEY = "test-function-key"


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevHost]:
    settings = tmp_path_factory.mktemp("devhost") / "local.settings.json"
    settings.write_text(
        json.dumps(
            {
                "IsEncrypted": False,
                "Values": {"SAMPLE_IN_BOTH": "from-file", "SAMPLE_ONLY_IN_FILE": "from-file"},
            }
        )
    )
    env = {"SAMPLE_IN_BOTH": "from-env", "DEVHOST_FUNCTION_KEY": FUNCTION_KEY}
    with DevHost(env, settings_file=settings, app=SAMPLE_APP) as devhost:
        yield devhost


@pytest.fixture
async def client(host: DevHost) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=host.url, timeout=10) as http:
        yield http


# ------------------------------------------------------------------------------------------ routes


async def test_route_parameter_reaches_the_function(client: httpx.AsyncClient) -> None:
    body = (await client.get("/items/42", params={"q": "x"})).json()
    assert body == {
        "function": "get_item",
        "method": "GET",
        "path": "/items/42",
        "path_params": {"item_id": "42"},
        "query": {"q": "x"},
    }


async def test_literal_segment_beats_parameter(client: httpx.AsyncClient) -> None:
    # items/{item_id} is registered first in the sample app, items/special second.
    assert (await client.get("/items/special")).json()["function"] == "get_special_item"


async def test_catch_all_takes_the_rest_of_the_path(client: httpx.AsyncClient) -> None:
    body = (await client.get("/files/a/b/c.txt")).json()
    assert body["path_params"] == {"rest": "a/b/c.txt"}
    assert body["path"] == "/files/a/b/c.txt"
    assert (await client.get("/files")).json()["path_params"] == {}  # a catch-all may be empty


async def test_optional_parameter_and_constraint(client: httpx.AsyncClient) -> None:
    assert (await client.get("/greet/ada")).json()["path_params"] == {"name": "ada"}
    assert (await client.get("/greet")).json()["path_params"] == {}
    assert (await client.get("/numbers/-7")).json()["path_params"] == {"n": "-7"}  # a string, as on the host
    assert (await client.get("/numbers/seven")).status_code == 404


async def test_post_with_body(client: httpx.AsyncClient) -> None:
    body = (await client.post("/echo/bob", content=b"hello")).json()
    assert (body["function"], body["path_params"], body["body"]) == ("echo", {"name": "bob"}, "hello")


async def test_sync_function_is_served(client: httpx.AsyncClient) -> None:
    assert (await client.get("/sync")).json()["function"] == "sync_function"


async def test_unknown_route_or_method_is_404(client: httpx.AsyncClient) -> None:
    for response in (await client.get("/no/such/route"), await client.post("/items/42")):
        assert response.status_code == 404
        assert response.content == b""


# ------------------------------------------------------------------------------- auth and settings


async def test_function_auth_level_needs_the_key(client: httpx.AsyncClient) -> None:
    assert (await client.get("/secure")).status_code == 401
    assert (await client.get("/secure", headers={"x-functions-key": "wrong"})).status_code == 401
    assert (await client.get("/secure", headers={"x-functions-key": FUNCTION_KEY})).status_code == 200
    assert (await client.get("/secure", params={"code": FUNCTION_KEY})).status_code == 200


async def test_environment_beats_local_settings(client: httpx.AsyncClient) -> None:
    assert (await client.get("/settings/SAMPLE_IN_BOTH")).json()["value"] == "from-env"
    assert (await client.get("/settings/SAMPLE_ONLY_IN_FILE")).json()["value"] == "from-file"


def test_banner_says_it_is_not_a_production_host(host: DevHost) -> None:
    assert "NOT a production host" in host.log()


# ----------------------------------------------------------------------------- streaming and errors


async def test_streaming_passes_each_chunk_through(client: httpx.AsyncClient) -> None:
    """The app yields its second chunk only after /release/{token} is called, which the test does
    only once it has the first chunk: a host that buffered the response would never deliver it."""
    token = uuid.uuid4().hex
    async with client.stream("GET", f"/stream/{token}") as response:
        assert response.status_code == 200
        chunks = response.aiter_raw()
        first = await asyncio.wait_for(anext(chunks), timeout=10)  # fails, not hangs, if buffered
        assert first == b"first\n"
        assert (await client.post(f"/release/{token}")).status_code == 204
        rest = b"".join([chunk async for chunk in chunks])
    assert rest == b"second\n"


async def test_unhandled_exception_is_an_empty_500(client: httpx.AsyncClient, host: DevHost) -> None:
    response = await client.get("/boom")
    assert response.status_code == 500
    assert response.content == b""
    assert "RuntimeError: sample secret" in host.log()  # the traceback goes to the host's log only


# ---------------------------------------------------------------------- pure parts, no subprocess


def test_route_translation() -> None:
    assert translate_route("items/{id}", "") == [("/items/{id:str}", (0, 3))]
    assert translate_route("items/{id:int}", "api") == [("/api/items/{id:fn_int}", (0, 0, 2))]
    assert [p for p, _ in translate_route("files/{*rest}", "")] == ["/files/{rest:path}", "/files"]
    assert [p for p, _ in translate_route("a/{b?}/{c?}", "")] == ["/a/{b:str}/{c:str}", "/a/{b:str}", "/a"]
    assert [p for p, _ in translate_route("/docs/{name}.{ext}", "")] == ["/docs/{name:str}.{ext:str}"]


def test_route_prefix_from_host_json(tmp_path: Path, repo_root: Path) -> None:
    assert read_route_prefix(tmp_path) == "api"  # no host.json: the Functions default
    (tmp_path / "host.json").write_text(json.dumps({"version": "2.0", "extensions": {"http": {"routePrefix": "/x/"}}}))
    assert read_route_prefix(tmp_path) == "x"
    assert read_route_prefix(repo_root) == ""  # this project serves its routes without a prefix


def test_settings_never_override_the_environment(tmp_path: Path) -> None:
    settings = tmp_path / "local.settings.json"
    settings.write_text(json.dumps({"Values": {"A": "file", "B": "file", "C": True}}))
    environ = {"A": "env"}
    assert apply_settings(read_settings(settings), environ) == ["B", "C"]
    assert environ == {"A": "env", "B": "file", "C": "true"}
    assert read_settings(tmp_path / "missing.json") == {}


def _app_with_a_blob_input() -> func.FunctionApp:
    app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

    @app.route(route="with-blob", methods=["GET"])
    @app.blob_input(arg_name="blob", path="container/name", connection="Storage")
    async def with_blob(req: Request, blob: str) -> PlainTextResponse:
        return PlainTextResponse(f"{req.url.path}:{blob}")

    return app


async def test_other_bindings_need_a_provider() -> None:
    served, skipped = discover_http_functions(_app_with_a_blob_input(), providers={})
    assert served == []
    assert len(skipped) == 1 and "'with_blob'" in skipped[0] and "blob" in skipped[0]

    async def provide_blob(binding, request: Request) -> str:
        return f"{binding['path']} for {request.method}"

    providers = {"blob": provide_blob}
    served, skipped = discover_http_functions(_app_with_a_blob_input(), providers=providers)
    assert [fn.name for fn in served] == ["with_blob"] and skipped == []
    router = build_asgi_app(served, route_prefix="", providers=providers)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=router), base_url="http://devhost") as http:
        response = await http.get("/with-blob")
    assert response.text == "/with-blob:container/name for GET"
