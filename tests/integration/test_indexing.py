"""Worker indexing (azure-functions-runtime, as the Functions host does it) of our apps."""

import json
import textwrap
from pathlib import Path

import pytest

from tests.support.indexing import IndexingError, index_app, index_app_report


def test_sample_app_indexes(repo_root: Path) -> None:
    names = index_app(repo_root / "tests" / "support" / "sample_app" / "function_app.py")
    assert {"get_item", "get_file", "secure", "stream", "release", "sync_function"} <= set(names)


def test_function_app_indexes(repo_root: Path) -> None:
    # With valid settings (the sample a newcomer starts from) the full app is indexed: every data-plane, async,
    # batch and operator function. Misconfigured, it indexes the stand-in routes instead (the test below).
    sample_settings = json.loads((repo_root / "local.settings.sample.json").read_text())["Values"]
    report = index_app_report(repo_root / "function_app.py", env=sample_settings)
    assert report["indexed"] == report["declared"], "every function of app.get_functions() is indexed"
    assert report["http"], "the gateway has at least one HTTP function"


@pytest.mark.parametrize(
    "broken",
    [
        {"GATEWAY_BACKEND_1": None},  # no backend at all
        {"GATEWAY_SYNC_BUDGET_S": "500"},  # over Azure's 230 s limit
        {"GATEWAY_STRATEGY": "fastest"},
        {"GATEWAY_TYPO_SETTING": "1"},
        {"AzureWebJobsStorage": None},
    ],
)
def test_a_misconfigured_app_still_indexes_its_http_functions(repo_root: Path, broken: dict) -> None:
    """The host must not see an empty app: /health and the data-plane routes are there to say what is wrong."""
    settings = json.loads((repo_root / "local.settings.sample.json").read_text())["Values"]
    settings = {k: v for k, v in {**settings, **broken}.items() if v is not None}
    report = index_app_report(repo_root / "function_app.py", env=settings)
    assert report["indexed"] == report["declared"]
    assert {"health", "misconfigured_0", "misconfigured_1", "misconfigured_operator"} <= set(report["http"])


def write_app(folder: Path, body: str) -> Path:
    app_file = folder / "function_app.py"
    app_file.write_text(textwrap.dedent(body))
    return app_file


def test_catches_what_get_functions_misses(tmp_path: Path) -> None:
    app_file = write_app(
        tmp_path,
        """
        import azure.functions as func

        app = func.FunctionApp()

        @app.route(route="hello")
        def hello(req: func.HttpRequest, undeclared) -> func.HttpResponse:
            return func.HttpResponse("hello")

        assert [f.get_function_name() for f in app.get_functions()] == ["hello"]  # the SDK is happy
        app.functions_bindings = None  # allow the worker's own get_functions() call
    """,
    )
    with pytest.raises(IndexingError, match=r"declared in Python but not in the function definition.*undeclared"):
        index_app(app_file)


def test_catches_a_classic_request_type_next_to_the_streaming_extension(tmp_path: Path) -> None:
    app_file = write_app(
        tmp_path,
        """
        import azure.functions as func
        from azurefunctions.extensions.http.fastapi import Request  # switches HTTP functions to FastAPI types

        app = func.FunctionApp()

        @app.route(route="hello")
        def hello(req: func.HttpRequest) -> func.HttpResponse:
            return func.HttpResponse("hello")
    """,
    )
    with pytest.raises(IndexingError, match=r"do not match .* annotation HttpRequest"):
        index_app(app_file)


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(IndexingError, match="does not exist"):
        index_app(tmp_path / "function_app.py")
