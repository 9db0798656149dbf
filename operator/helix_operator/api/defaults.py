"""Apply a structural schema's `default`s the way the API server does.

The CRD is the one place defaults are written; the operator applies them again so that
objects that skipped defaulting (created before a CRD upgrade, or in tests) read the same.
"""

import copy
from typing import Any

from helix_operator.api.openapi import Schema


def apply_defaults(schema: Schema, value: Any) -> Any:
    """A copy of `value` with every missing defaulted field filled in, recursively."""
    if isinstance(value, dict) and schema.get("type") == "object":
        out = dict(value)
        for key, sub in schema.get("properties", {}).items():
            if key not in out and "default" in sub:
                out[key] = copy.deepcopy(sub["default"])
            if key in out:
                out[key] = apply_defaults(sub, out[key])
        return out
    if isinstance(value, list) and schema.get("type") == "array":
        return [apply_defaults(schema["items"], item) for item in value]
    return value
