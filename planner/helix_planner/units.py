"""Unit expressions as written in the Helix artifact's `.ini` files.

The artifact's names lie (see the reference README): `mbps` is 1e6 *bytes*/s, `gbps`
1e9 bytes/s, `GB` 1e9 bytes and `MilliSec` 1e-3 s. Values are arithmetic expressions over
those names, so they are evaluated with a tiny, safe arithmetic evaluator (never `eval`).
"""

import ast
import operator as _op
import re
from collections.abc import Callable

UNIT_NAMES: dict[str, float] = {
    "Byte": 1.0,
    "KB": 1e3,
    "MB": 1e6,
    "GB": 1e9,
    "kbps": 1e3,
    "mbps": 1e6,
    "gbps": 1e9,
    "Sec": 1.0,
    "MilliSec": 1e-3,
}

_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: _op.add, ast.Sub: _op.sub, ast.Mult: _op.mul, ast.Div: _op.truediv}


def eval_unit_expr(text: str) -> float:
    """Evaluate e.g. `12.5 * mbps` to 12.5e6; raises ValueError on anything else."""

    def walk(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return float(node.value)
        if isinstance(node, ast.Name) and node.id in UNIT_NAMES:
            return UNIT_NAMES[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            return _BINARY[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -walk(node.operand)
        raise ValueError(f"unsupported unit expression {text!r}")

    return walk(ast.parse(text.strip(), mode="eval"))


_QUANTITY = re.compile(r"^([0-9.eE+-]+)\s*([kKmMgGtT]i?)?(B/s|Bps|bps|B|s)?$")
_PREFIX = {"k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
_UNIT = {None: 1.0, "B": 1.0, "B/s": 1.0, "Bps": 1.0, "bps": 1 / 8, "s": 1.0}


def parse_quantity(value: float | int | str) -> float:
    """Read the project's own YAML quantities in ordinary units, returning bytes, bytes/s or s.

    `40e9`, `40GB`, `80GiB` (bytes); `25Gbps` (bits/s, so 3.125e9 B/s), `1.25GB/s` (bytes/s);
    `1ms`, `0.05s` (seconds). A bare number is taken as already in base units.
    """
    if isinstance(value, (int, float)):
        return float(value)
    text = value.strip()
    for unit, scale in (("ms", 1e-3), ("us", 1e-6)):
        if text.endswith(unit):
            try:
                return float(text[: -len(unit)]) * scale
            except ValueError:
                break
    match = _QUANTITY.match(text)
    if match is None:
        raise ValueError(f"cannot read quantity {value!r}: use e.g. 40GB, 80GiB, 25Gbps, 1.25GB/s or 1ms")
    number, prefix, unit = match.groups()
    if prefix == "m" and unit is None:
        raise ValueError(f"ambiguous quantity {value!r}: write 1ms for milliseconds or 1MB for bytes")
    scale = _PREFIX[prefix.lower()] if prefix else 1.0
    return float(number) * scale * _UNIT[unit]
