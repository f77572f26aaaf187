"""The Azure Monitor workbook: deployed by main.bicep over the gateway's Application Insights, one panel per query.

Read from the pycep parse trees (the Bicep compiler is not available here): the workbook module's panels load
every docs/queries/*.kql file and nothing else, the resource is a shared workbook with a stable GUID name bound
to the component, and main.bicep passes it the component's id. The queries themselves are checked against
what the code emits by tests/unit/test_kql_contract.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.infra.test_bicep import BICEP, MAIN, ROOT, body, module_path, tree, walk

WORKBOOK = BICEP / "modules" / "workbook.bicep"
QUERIES = sorted((ROOT / "docs" / "queries").glob("*.kql"))


def loaded_files(node: Any) -> list[Path]:
    """Every file a loadTextContent() in `node` reads, resolved as Bicep does (relative to the .bicep file)."""
    return [
        (WORKBOOK.parent / n["function"]["parameters"]["file_path"]).resolve()
        for n in walk(node)
        if isinstance(n, dict) and isinstance(n.get("function"), dict) and n["function"]["type"] == "load_text_content"
    ]


def test_main_deploys_the_workbook_over_the_application_insights_component() -> None:
    module = tree(MAIN)["modules"]["workbook"]
    assert module_path("workbook") == WORKBOOK
    source = body(module["config"])["params"]["applicationInsightsId"]
    assert json.dumps(source).count("applicationInsightsId") == 1 and '"monitoring"' in json.dumps(source)
    assert "applicationInsightsId" in tree(BICEP / "modules" / "monitoring.bicep")["outputs"]


def test_the_workbook_is_a_shared_workbook_named_by_a_stable_guid_of_its_component() -> None:
    [resource] = [r for r in tree(WORKBOOK)["resources"].values() if r["type"] == "Microsoft.Insights/workbooks"]
    config = body(resource["config"])
    assert config["kind"] == "shared"
    name = config["name"]["function"]
    assert name["type"] == "guid" and name["parameters"]["base_string"] == "applicationInsightsId"
    properties = config["properties"]
    assert properties["sourceId"] == "applicationInsightsId" and properties["category"] == "workbook"
    assert properties["serializedData"]["function"] == {"type": "string", "parameters": {"value_to_convert": "content"}}


def test_every_query_file_is_a_panel_and_every_panel_is_a_query_file() -> None:
    panels = tree(WORKBOOK)["variables"]["panels"]["value"]
    files = loaded_files(panels)
    assert len(files) == len(panels) == len(set(files))
    assert all(f.is_file() for f in files), [str(f) for f in files if not f.is_file()]
    assert sorted(files) == [q.resolve() for q in QUERIES]
    assert all(p["title"] and p["visualization"] in ("table", "timechart", "barchart") for p in panels)


def test_the_workbook_content_is_built_from_the_panels_with_the_component_as_fallback() -> None:
    content = tree(WORKBOOK)["variables"]["content"]["value"]
    assert content["version"] == "Notebook/1.0"
    assert content["fallbackResourceIds"] == ["applicationInsightsId"]
    text = json.dumps(content["items"])
    assert '"panels"' in text and "KqlItem/1.0" in text and "microsoft.insights/components" in text
    # Queries reach the workbook only through loadTextContent: no copy of a query lives in the Bicep file.
    assert "customMetrics" not in WORKBOOK.read_text(encoding="utf-8")
