"""Fixtures for planner tests: the Helix reference data beside the checkout, the catalog."""

from pathlib import Path

import pytest
from plankit import REFERENCE

from helix_planner.profiles import load_catalog


@pytest.fixture(scope="session")
def reference() -> Path:
    if not (REFERENCE / "gpu_constants.json").exists():
        pytest.skip(f"Helix reference data not found at {REFERENCE} (set HELIX_REFERENCE)")
    return REFERENCE


@pytest.fixture(scope="session")
def catalog():
    return load_catalog()


