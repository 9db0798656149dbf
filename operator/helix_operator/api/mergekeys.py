"""The merge keys of a pod template's lists, as Kubernetes' strategic merge patch declares them.

A user's `spec.worker.template` / `spec.frontend.template` adds to what the operator builds:
an env var or a /dev/shm volume must not drop the operator's plan volume or HELIX_* variables,
so these lists merge item by item on their key (every other list is replaced, as in a patch).
"""

from collections.abc import Iterator, Mapping
from typing import Any

# Field name -> the key its items merge on (k8s.io/api/core/v1 patchMergeKey tags).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "imagePullSecrets": "name",
    "resourceClaims": "name",
    "hostAliases": "ip",
    "env": "name",
    "ports": "containerPort",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
}


def missing_merge_keys(value: Any, at: str) -> Iterator[tuple[str, str]]:
    """(field path, what to change) for each item of a merged list that lacks its merge key."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if key in MERGE_KEYS and isinstance(item, list):
                for i, element in enumerate(item):
                    if isinstance(element, Mapping) and MERGE_KEYS[key] not in element:
                        yield (f"{at}.{key}[{i}]", f"needs {MERGE_KEYS[key]}: items of {key} merge into the "
                                                   f"operator's by {MERGE_KEYS[key]}")
                    yield from missing_merge_keys(element, f"{at}.{key}[{i}]")
            else:
                yield from missing_merge_keys(item, f"{at}.{key}")
