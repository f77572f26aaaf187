"""Per-instance HTTP concurrency on Flex Consumption: set, bounded, sized per instance memory, and documented.

Without `scaleAndConcurrency.triggers.http.perInstanceConcurrency`, Flex Consumption gives a Python app 1, so
every in-flight request (a stream of seconds to minutes) takes an instance of its own. The defaults come from
the stream-concurrency benchmark (docs/capacity.md); these checks keep the Bicep, the parameter and the docs
in agreement. Parse-tree helpers are those of test_bicep.py.
"""

from __future__ import annotations

import re
from typing import Any

from tests.infra.test_bicep import DEPLOY_DOC, FUNCTION_APP, MAIN, ROOT, body, decorators, one_resource, tree

CAPACITY_DOC = ROOT / "docs" / "capacity.md"
PARAM = "httpPerInstanceConcurrency"


def evaluate(node: Any, params: dict[str, Any]) -> Any:
    """Evaluates the small subset of Bicep expressions a parameter default uses here (?:, ==, literals)."""
    if isinstance(node, bool | int | float):
        return node
    if isinstance(node, str):
        return params[node]
    operator = node["operator"]
    operands = operator["operands"]
    if operator["type"] == "conditional":
        branch = "true_value" if evaluate(operands["condition"], params) else "false_value"
        return evaluate(operands[branch], params)
    if operator["type"] == "equals":
        return evaluate(operands["operand_1"], params) == evaluate(operands["operand_2"], params)
    raise AssertionError(f"unexpected expression in the default of {PARAM}: {operator['type']}")


def main_defaults() -> dict[int, int]:
    """The default per-instance concurrency main.bicep gives each allowed instance size."""
    params = tree(MAIN)["parameters"]
    sizes = decorators(params["instanceMemoryMB"])["allowed"]
    return {size: evaluate(params[PARAM]["default"], {"instanceMemoryMB": size}) for size in sizes}


def documented_defaults() -> dict[int, int]:
    """docs/capacity.md's table: `| 2,048 MB | ... | **100** |` rows of the per-instance concurrency section."""
    text = CAPACITY_DOC.read_text(encoding="utf-8")
    section = text.split("## Per-instance concurrency", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| ([\d,]+) MB \|.*\| \*\*(\d+)\*\* \|$", section, re.MULTILINE)
    return {int(size.replace(",", "")): int(value) for size, value in rows}


def test_the_function_app_sets_http_per_instance_concurrency_from_its_parameter() -> None:
    scale = one_resource(FUNCTION_APP, "Microsoft.Web/sites")["properties"]["functionAppConfig"]["scaleAndConcurrency"]
    assert scale["triggers"] == {"http": {"perInstanceConcurrency": PARAM}}
    declared = tree(FUNCTION_APP)["parameters"][PARAM]
    assert declared["type"] == "int" and declared.get("default") is None, "the module must get it from main.bicep"
    assert decorators(declared)["min_value"] == 1 and decorators(declared)["max_value"] == 1000


def test_main_passes_its_parameter_to_the_module() -> None:
    module = body(tree(MAIN)["modules"]["gateway"]["config"])
    assert module["params"][PARAM] == PARAM
    declared = tree(MAIN)["parameters"][PARAM]
    assert decorators(declared)["min_value"] == 1 and decorators(declared)["max_value"] == 1000
    assert "perInstanceConcurrency" in decorators(declared)["description"]


def test_every_instance_size_gets_a_measured_default_above_pythons_one() -> None:
    defaults = main_defaults()
    assert set(defaults) == {512, 2048, 4096}
    assert all(isinstance(v, int) and v > 1 for v in defaults.values()), defaults
    # More memory and cores never lower the default.
    assert defaults[512] <= defaults[2048] <= defaults[4096]


def test_the_defaults_are_the_ones_docs_capacity_md_derives() -> None:
    assert documented_defaults() == main_defaults()


def test_the_deploy_doc_explains_the_parameter() -> None:
    doc = DEPLOY_DOC.read_text(encoding="utf-8")
    line = next(line for line in doc.splitlines() if f"`{PARAM}`" in line)
    assert "capacity.md" in line
