"""Merge a user's pod template overrides into a built pod, the way LeaderWorkerSet does.

Mappings merge recursively; `containers` merge by name (an override names the container it
changes); other lists are replaced. The built object is never mutated.
"""

import copy
from typing import Any, Mapping


def merge_template(pod: Mapping[str, Any], template: Mapping[str, Any]) -> dict[str, Any]:
    """`pod` with `template` (keys `metadata` and `spec`) merged over it."""
    merged = copy.deepcopy(dict(pod))
    for key in ("metadata", "spec"):
        if key in template:
            merged[key] = _merge(merged.get(key, {}), template[key])
    return merged


def _merge(base: Any, override: Any, key: str = "") -> Any:
    if isinstance(base, Mapping) and isinstance(override, Mapping):
        out = dict(base)
        for k, v in override.items():
            out[k] = _merge(out[k], v, k) if k in out else copy.deepcopy(v)
        return out
    if key in ("containers", "initContainers") and isinstance(base, list) and isinstance(override, list):
        out = [copy.deepcopy(c) for c in base]
        for item in override:
            index = next((i for i, c in enumerate(out) if c.get("name") == item.get("name")), None)
            if index is None:
                out.append(copy.deepcopy(item))
            else:
                out[index] = _merge(out[index], item)
        return out
    return copy.deepcopy(override)
