"""Fixtures for planner tests: the Helix reference data beside the checkout, the catalog."""

from pathlib import Path

import pytest
from plankit import require_reference

from helix_planner.profiles import load_catalog


@pytest.fixture(scope="session")
def reference() -> Path:
    return require_reference()


@pytest.fixture(scope="session")
def catalog():
    return load_catalog()


