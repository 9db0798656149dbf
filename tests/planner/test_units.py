import pytest

from helix_planner.units import eval_unit_expr, parse_quantity


@pytest.mark.parametrize(("text", "value"), [
    ("12.5 * mbps", 12.5e6), ("1000 * mbps", 1e9), ("10 * gbps", 1e10), ("16 * GB", 16e9),
    ("1 * MilliSec", 1e-3), ("50 * MilliSec", 0.05), ("2 * Byte", 2.0), ("1323 * mbps", 1.323e9),
])
def test_artifact_units_are_bytes_not_bits(text: str, value: float) -> None:
    assert eval_unit_expr(text) == pytest.approx(value)


def test_artifact_expressions_reject_code() -> None:
    with pytest.raises(ValueError):
        eval_unit_expr("__import__('os').system('true')")


@pytest.mark.parametrize(("text", "value"), [
    ("40GB", 40e9), ("80GiB", 80 * 2**30), ("25Gbps", 25e9 / 8), ("1.25GB/s", 1.25e9),
    ("1ms", 1e-3), ("0.05s", 0.05), ("1e9", 1e9), (12, 12.0),
])
def test_project_quantities_use_ordinary_units(text, value) -> None:
    assert parse_quantity(text) == pytest.approx(value)


def test_bad_quantity_says_what_to_write() -> None:
    with pytest.raises(ValueError, match="25Gbps"):
        parse_quantity("fast")
