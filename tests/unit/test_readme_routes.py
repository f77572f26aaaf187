"""The README's route table stays true to `gateway/surface.py`: every operation served, on the rows that say so."""

import re
from pathlib import Path

from gateway.surface import OPERATIONS, V1_OPERATIONS

README = Path(__file__).resolve().parents[2] / "README.md"


def route_rows() -> list[tuple[str, str]]:
    """(route cell, methods cell) of each row of the route table."""
    lines = README.read_text().splitlines()
    start = lines.index("| route | methods | what |") + 2
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split(" | ")]
        rows.append((cells[0], cells[1]))
    return rows


def test_the_azure_native_row_lists_exactly_the_operations_served_under_a_deployment():
    [row] = [line for line in README.read_text().splitlines() if line.startswith("| `/openai/deployments/")]
    listed = row.split("Azure-native passthrough: ", 1)[1].split(" — ", 1)[0].split(", ")
    names = {re.sub(r" \(.*\)$", "", item): item for item in listed}
    assert sorted(names) == sorted(V1_OPERATIONS)
    multipart = {name for name, body in V1_OPERATIONS.items() if body == "multipart"}
    assert {name for name, item in names.items() if item.endswith("(multipart)")} == multipart


def test_every_v1_operation_has_a_row_with_its_methods():
    rows = route_rows()
    found: dict[str, str] = {}
    for route, methods in rows:
        for path in re.findall(r"`/v1/([^`?]+)`", route):
            found[path.rstrip("/")] = methods
    models = {"models", "models/{id}"}
    assert sorted(set(found) - models - {"files", "batches"}) == sorted(OPERATIONS)
    for name, spec in OPERATIONS.items():
        assert set(spec.methods) <= {m.strip() for m in found[name].split(",")}, name
