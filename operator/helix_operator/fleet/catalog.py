"""The planner's GPU catalog plus the cluster's GPUProfile objects.

A GPUProfile adds a GPU type, or overrides a built-in one when its `gpuType` names it
(case-insensitively), so users can serve on new hardware without rebuilding images.
"""

from collections.abc import Iterable, Mapping
from typing import Any

from helix_planner.errors import PlanningError
from helix_planner.profiles import Catalog, GpuType, gpu_from_mapping


def gpu_type_from_profile(name: str, spec: Mapping[str, Any]) -> GpuType:
    """The GPU type a GPUProfile describes (its `gpuType`, else its name); PlanningError says which field is wrong."""
    return gpu_from_mapping(str(spec.get("gpuType") or name), spec, source=f"GPUProfile {name}")


def with_profiles(base: Catalog, profiles: Iterable[tuple[str, Mapping[str, Any]]]) -> Catalog:
    """A copy of `base` with every valid (name, spec) profile merged in; invalid ones are left out."""
    catalog = Catalog(gpus=dict(base.gpus), measured=base.measured, helix_tables=base.helix_tables)
    for name, spec in sorted(profiles, key=lambda item: item[0]):
        try:
            gpu = gpu_type_from_profile(name, spec)
        except (PlanningError, KeyError, TypeError):
            continue
        key = next((k for k in catalog.gpus if k.lower() == gpu.name.lower()), gpu.name)
        catalog.gpus[key] = GpuType(key, gpu.vram_bytes, gpu.memory_bandwidth, gpu.peak_flops, gpu.nic_bytes_per_s,
                                    gpu.gpus, gpu.labels)
    return catalog
