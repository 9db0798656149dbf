"""The planner's GPU catalog plus the cluster's GPUProfile objects.

A GPUProfile adds a GPU type, or overrides a built-in one when its `gpuType` names it
(case-insensitively), so users can serve on new hardware without rebuilding images.
"""

from typing import Any, Iterable, Mapping

from helix_planner.profiles import Catalog, GpuType
from helix_planner.units import parse_quantity

DEFAULT_NIC = 1.25e9


def gpu_type_from_profile(name: str, spec: Mapping[str, Any]) -> GpuType:
    """The GPU type a GPUProfile describes; ValueError says which field is wrong."""
    fields = {}
    for key, default in (("vram", None), ("memoryBandwidth", None), ("nic", DEFAULT_NIC)):
        value = spec.get(key, default)
        if value is None:
            raise ValueError(f"spec.{key} is required (e.g. 80GB, 3.35e12)")
        try:
            fields[key] = parse_quantity(value)
        except ValueError as err:
            raise ValueError(f"spec.{key}: {err}") from None
    return GpuType(
        name=str(spec.get("gpuType") or name),
        vram_bytes=fields["vram"],
        memory_bandwidth=fields["memoryBandwidth"],
        peak_flops=float(spec["peakFlops"]),
        nic_bytes_per_s=fields["nic"],
        gpus=int(spec.get("gpus", 1)),
        labels=tuple(str(label) for label in spec.get("labels") or ()),
    )


def with_profiles(base: Catalog, profiles: Iterable[tuple[str, Mapping[str, Any]]]) -> Catalog:
    """A copy of `base` with every valid (name, spec) profile merged in; invalid ones are left out."""
    catalog = Catalog(gpus=dict(base.gpus), measured=base.measured, helix_tables=base.helix_tables)
    for name, spec in sorted(profiles, key=lambda item: item[0]):
        try:
            gpu = gpu_type_from_profile(name, spec)
        except (ValueError, KeyError, TypeError):
            continue
        key = next((k for k in catalog.gpus if k.lower() == gpu.name.lower()), gpu.name)
        catalog.gpus[key] = GpuType(key, gpu.vram_bytes, gpu.memory_bandwidth, gpu.peak_flops, gpu.nic_bytes_per_s,
                                    gpu.gpus, gpu.labels)
    return catalog
