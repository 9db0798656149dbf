"""Merge a user's pod template overrides into a built pod, like a strategic merge patch.

Mappings merge recursively; the lists of `api.mergekeys.MERGE_KEYS` (containers, volumes, env,
volumeMounts, ports...) merge item by item on their key, so an override names the item it
changes and adds the others; other lists are replaced. The built object is never mutated.
"""

import copy
from collections.abc import Mapping
from typing import Any

from helix_operator.api.mergekeys import MERGE_KEYS

# Items that are one value each: merging an override's valueFrom or emptyDir into the built
# item's value or configMap would leave both, which the API server refuses, so they replace it.
WHOLE_ITEMS = ("env", "volumes")


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
    if key in MERGE_KEYS and isinstance(base, list) and isinstance(override, list):
        merge_key = MERGE_KEYS[key]
        items = [copy.deepcopy(c) for c in base]
        for item in override:
            index = next((i for i, c in enumerate(items) if c.get(merge_key) == item.get(merge_key)), None)
            if index is None:
                items.append(copy.deepcopy(item))
            elif key in WHOLE_ITEMS:
                items[index] = copy.deepcopy(item)
            else:
                items[index] = _merge(items[index], item)
        return items
    return copy.deepcopy(override)
