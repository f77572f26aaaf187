"""What reaches Azure and what `pip install .` installs: the deployment zip and the wheel, built offline.

The zip is built as `azd deploy` builds it (the project folder minus `.funcignore`, see
tests/support/deploy_package.py); it must hold the app's runtime files and nothing else, import on its own
(no test or benchmark module reachable) and stay small. The wheel must hold the two packages and not tests/.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support.deploy_package import build_zip, package_files

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = {"function_app.py", "host.json", "requirements.txt", "gateway", "orchestrations"}
PACKAGES = ("gateway", "orchestrations")
MAX_PACKAGE_BYTES = 5 * 1024 * 1024
# Enough for function_app.py to build the gateway at import (nothing is contacted until a request comes).
IMPORT_ENV = {
    "AzureWebJobsStorage__accountName": "packagecheck",
    "GATEWAY_BACKEND_1": "name=weu;host=https://weu.openai.azure.com;mode=direct;usemi=true",
    "GATEWAY_API_KEYS": "package-check-key",
}


def sources(*packages: str) -> set[str]:
    """The Python files of the repository's packages, as package-relative POSIX paths."""
    return {p.relative_to(ROOT).as_posix() for name in packages for p in (ROOT / name).rglob("*.py")}


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_zip(ROOT, tmp_path_factory.mktemp("deploy") / "package.zip")


@pytest.fixture(scope="module")
def unpacked(package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("site")
    with zipfile.ZipFile(package) as archive:
        archive.extractall(target)
    return target


# ------------------------------------------------------------------------------------------------------------------
# The deployment zip
# ------------------------------------------------------------------------------------------------------------------


def test_the_package_holds_the_runtime_files_and_nothing_else(package: Path) -> None:
    names = zipfile.ZipFile(package).namelist()
    assert {name.split("/")[0] for name in names} == RUNTIME
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".pyo"))]
    missing = sources(*PACKAGES) - set(names)
    assert not missing, f"runtime sources left out of the package: {sorted(missing)}"


def test_the_package_stays_small(package: Path) -> None:
    assert package.stat().st_size < MAX_PACKAGE_BYTES


def test_function_app_imports_from_the_package_alone(unpacked: Path, tmp_path: Path) -> None:
    """The app is imported from the unpacked zip in an isolated interpreter: the repository is not on sys.path."""
    probe = (
        "import json, sys\n"
        f"sys.path.insert(0, {str(unpacked)!r})\n"
        "import function_app\n"
        "mine = {n: getattr(m, '__file__', None) for n, m in sys.modules.items()\n"
        "        if n.split('.')[0] in ('function_app', 'gateway', 'orchestrations', 'tests', 'bench')}\n"
        "print(json.dumps({'modules': mine, 'functions': len(function_app.app.get_functions())}))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **IMPORT_ENV}
    done = subprocess.run(
        [sys.executable, "-I", "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["functions"] > 0
    outside = {name: path for name, path in report["modules"].items() if not str(path).startswith(str(unpacked))}
    assert not outside, f"modules loaded from outside the package: {outside}"
    assert {"function_app", "gateway.http", "orchestrations.blueprint"} <= set(report["modules"])


def _requirement_closure(requirements: Path) -> set[str]:
    """requirements.txt's distributions and everything they depend on (as installed here), canonical names."""
    pending = [
        Requirement(line).name
        for line in requirements.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    seen: set[str] = set()
    while pending:
        name = canonicalize_name(pending.pop())
        if name in seen:
            continue
        seen.add(name)
        for text in metadata.requires(name) or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    return seen


def test_every_import_in_the_package_is_a_runtime_dependency(unpacked: Path) -> None:
    """Lazy imports included: each module the package imports is its own, the standard library's, or installed
    by requirements.txt (what the remote build installs), never a test-only package."""
    closure = _requirement_closure(unpacked / "requirements.txt")
    provided = {
        top
        for top, distributions in metadata.packages_distributions().items()
        if any(canonicalize_name(d) in closure for d in distributions)
    }
    allowed = set(sys.stdlib_module_names) | provided | {"function_app", *PACKAGES}
    unresolved: dict[str, set[str]] = {}
    for path in unpacked.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = {node.module.split(".")[0]}
            else:
                continue
            for name in names - allowed:
                unresolved.setdefault(path.relative_to(unpacked).as_posix(), set()).add(name)
    assert not unresolved, f"imports no runtime dependency provides: {unresolved}"


def test_the_builder_honours_gitignore_syntax(tmp_path: Path) -> None:
    """Guards the checks above: the builder really leaves out what a .funcignore says, negations included."""
    for name in ("app/a.py", "app/__pycache__/a.cpython-313.pyc", "app/debug.log", "docs/x.md", "main.py", "x.log"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x", encoding="utf-8")
    assert "docs/x.md" in package_files(tmp_path)  # no ignore file: everything
    (tmp_path / ".funcignore").write_text("/*\n!/app/\n!/main.py\n__pycache__/\n*.log\n", encoding="utf-8")
    assert package_files(tmp_path) == ["app/a.py", "main.py"]


# ------------------------------------------------------------------------------------------------------------------
# The wheel (`pip install .`)
# ------------------------------------------------------------------------------------------------------------------


def test_pip_builds_a_wheel_of_the_two_packages_offline(tmp_path: Path) -> None:
    """Built from a copy, so setuptools' build/ and egg-info never land in the work tree."""
    source = tmp_path / "src"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "node_modules", "__pycache__", "*_cache", "build", "*.egg-info", "results", ".azurite"
        ),
    )
    out = tmp_path / "dist"
    offline = ["--no-deps", "--no-build-isolation", "--no-index", "--disable-pip-version-check", "-q"]
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), *offline, "-w", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [wheel] = out.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops - {n for n in tops if n.endswith(".dist-info")} == set(PACKAGES)
    assert not [n for n in names if n.startswith(("tests/", "bench/")) or n == "function_app.py"]
    assert sources(*PACKAGES) <= set(names)
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    requires = {
        str(Requirement(line.split(":", 1)[1].strip()))
        for line in zipfile.ZipFile(wheel).read(meta).decode().splitlines()
        if line.startswith("Requires-Dist:")
    }
    pinned = {
        str(Requirement(line))
        for line in (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert requires == pinned, "the wheel must require exactly what requirements.txt pins"
