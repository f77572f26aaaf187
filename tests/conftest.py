"""Fixtures shared by every test folder."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.azurite import Azurite

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """One in-memory Azurite for the whole session (fails, never skips, without node_modules).

    Tests that stop or restart storage must start their own ``Azurite()`` instead."""
    with Azurite() as storage:
        yield storage
