"""Index a Functions app the way the Python worker does, without the Functions host.

The pinned ``azure-functions-runtime`` worker (Python 3.13) indexes an app in two steps:
``loader.index_function_app(path)`` imports the module and calls ``app.get_functions()``, then
``functions.Registry().add_indexed_function(fn, protos=...)`` validates every function against its
Python signature. The second step catches errors that ``get_functions()`` alone misses, such as a
parameter that no binding declares or an annotation that does not match its binding's type.

``index_app(path)`` runs both steps in a fresh interpreter (importing an app has process-wide
effects: the module lands in ``sys.modules`` as ``function_app`` and the HTTP streaming extension
switches every HTTP function to FastAPI types), and returns the indexed function names or raises
``IndexingError`` carrying the worker's message.

``python -m tests.support.indexing PATH`` prints the report as JSON (exit code 1 on error).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import TypedDict

REPO_ROOT = Path(__file__).resolve().parents[2]


class IndexReport(TypedDict):
    declared: list[str]  # from app.get_functions()
    indexed: list[str]  # accepted by Registry().add_indexed_function
    http: list[str]  # functions with an httpTrigger binding


class IndexingError(RuntimeError):
    pass


# The worker only reads these enum values from its protobuf module while indexing. They match
# the BindingInfo.Direction / BindingInfo.DataType numbers of the Functions RPC protocol and the
# ints that azure.functions' bindings report (`binding.direction`, `binding.data_type`).
_BindingInfo = type("BindingInfo", (), {"in": 0, "out": 1, "inout": 2, "undefined": 0})
PROTOS = types.SimpleNamespace(BindingInfo=_BindingInfo)


def index_in_this_process(path: Path | str) -> IndexReport:
    """Index the app at ``path`` in the current interpreter (imports it as a top-level module)."""
    from azure_functions_runtime import loader
    from azure_functions_runtime.bindings import meta
    from azure_functions_runtime.functions import Registry

    app_file = Path(path).resolve()
    if str(app_file.parent) not in sys.path:
        sys.path.insert(0, str(app_file.parent))
    meta.load_binding_registry()
    functions = loader.index_function_app(str(app_file))
    registry = Registry()
    report: IndexReport = {"declared": [], "indexed": [], "http": []}
    for fn in functions:
        report["declared"].append(fn.get_function_name())
        info = registry.add_indexed_function(fn, protos=PROTOS)
        report["indexed"].append(info.name)
        if any(b.get("type") == "httpTrigger" for b in json.loads(fn.get_function_json())["bindings"]):
            report["http"].append(fn.get_function_name())
    return report


def index_app_report(path: Path | str, env: dict[str, str] | None = None, timeout_s: float = 60) -> IndexReport:
    """Index the app at ``path`` in a child interpreter (cwd = the app's folder, as the worker runs)."""
    app_file = Path(path).resolve()
    if not app_file.is_file():
        raise IndexingError(f"{app_file} does not exist")
    child_env = {**os.environ, **(env or {})}
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), child_env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-m", "tests.support.indexing", str(app_file)],
        cwd=app_file.parent,
        env=child_env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if result.returncode != 0:
        raise IndexingError(f"indexing {app_file} failed:\n{result.stderr.strip()}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def index_app(path: Path | str, env: dict[str, str] | None = None) -> list[str]:
    """Names of the functions the worker indexes from the app at ``path``; ``IndexingError`` if any fails."""
    return index_app_report(path, env)["indexed"]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m tests.support.indexing PATH/TO/function_app.py", file=sys.stderr)
        return 2
    try:
        report = index_in_this_process(args[0])
    except Exception as exc:  # the worker's FunctionLoadError, import errors, ...
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
