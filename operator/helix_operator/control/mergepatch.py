"""JSON merge patches (RFC 7386) that turn one document into another.

A merge patch cannot drop a map key unless it says `null`, so writing a status as-is would
leave stale keys (a GPU type no longer present) behind; `diff` emits the nulls, and an
empty diff means there is nothing to write.
"""

from collections.abc import Iterable, Mapping
from typing import Any


def diff(old: Mapping[str, Any], new: Mapping[str, Any], keys: Iterable[str] | None = None) -> dict[str, Any]:
    """The merge patch from `old` to `new`, limited to `keys` at the top level when given."""
    patch: dict[str, Any] = {}
    for key in keys if keys is not None else set(old) | set(new):
        if key not in new:
            if key in old:
                patch[key] = None
        elif key not in old:
            patch[key] = new[key]
        elif isinstance(old[key], Mapping) and isinstance(new[key], Mapping):
            sub = diff(old[key], new[key])
            if sub:
                patch[key] = sub
        elif old[key] != new[key]:
            patch[key] = new[key]
    return patch
