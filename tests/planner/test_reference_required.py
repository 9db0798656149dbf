"""Tests that read the Helix reference data skip without it on a developer's machine, and fail
in CI (CI=true), where a skip would hide that the comparisons with the paper never ran."""

from pathlib import Path

import pytest
from plankit import require_reference


def test_missing_reference_data_fails_in_ci(tmp_path: Path) -> None:
    with pytest.raises(pytest.fail.Exception, match="not found at .*absent: put it there or set HELIX_REFERENCE"):
        require_reference({"HELIX_REFERENCE": str(tmp_path / "absent"), "CI": "true"})


def test_missing_reference_data_skips_elsewhere(tmp_path: Path) -> None:
    with pytest.raises(pytest.skip.Exception, match="not found at .*absent"):
        require_reference({"HELIX_REFERENCE": str(tmp_path / "absent")})


def test_present_reference_data_is_used(tmp_path: Path) -> None:
    (tmp_path / "gpu_constants.json").write_text("{}")
    assert require_reference({"HELIX_REFERENCE": str(tmp_path), "CI": "true"}) == tmp_path
