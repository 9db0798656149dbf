"""GPU types and per-layer latency curves: the catalog the throughput models read.

The built-in catalog lives in `catalog/` as YAML: `gpus.yaml` (hardware) and
`measured-<model>.yaml` (per-layer prompt/decode latency curves and vLLM batch limits
measured by the Helix authors, imported from the reference data by `helix catalog import`).
Users add GPU types or measurements by dropping files of the same shape into a directory
given with `--catalog` or `HELIX_CATALOG`; later files override earlier ones.
"""

import bisect
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from helix_planner.errors import PlanningError, UnknownGpuType
from helix_planner.units import parse_quantity

BUILTIN_CATALOG_DIR = Path(__file__).parent / "catalog"


@dataclass(frozen=True)
class GpuType:
    """Hardware facts of one node type (a node may hold several GPUs run tensor-parallel)."""

    name: str
    vram_bytes: float
    memory_bandwidth: float
    peak_flops: float
    nic_bytes_per_s: float
    gpus: int = 1
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class Curve:
    """Piecewise-linear latency of ONE layer (seconds) against batch size or token count."""

    xs: tuple[float, ...]
    seconds: tuple[float, ...]

    def __call__(self, x: float) -> float:
        """Interpolate; beyond the last point extrapolate along the last segment's slope."""
        xs, ys = self.xs, self.seconds
        if x <= xs[0]:
            return ys[0]
        i = bisect.bisect_left(xs, x)
        if i < len(xs) and xs[i] == x:
            return ys[i]
        if i >= len(xs):
            i = len(xs) - 1
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        return y0 + (y1 - y0) * (x - x0) / (x1 - x0)

    @property
    def max_x(self) -> float:
        return self.xs[-1]


@dataclass(frozen=True)
class MeasuredProfile:
    """What was measured for one (model, GPU type): curves and vLLM's limits per layer count."""

    model: str
    gpu: str
    prompt: Curve
    decode: Curve
    max_layers: int
    kv_blocks: dict[int, int] = field(default_factory=dict)
    prompt_max_requests: dict[int, int] = field(default_factory=dict)
    decode_max_tokens: dict[int, int] = field(default_factory=dict)
    block_size: int = 16


@dataclass(frozen=True)
class HelixTables:
    """Helix's per-model constants for its node-throughput fixed point (see throughput.helix)."""

    typical_layers: dict[str, int]
    typical_layers_small: dict[str, int]
    initial_perf: dict[str, float]
    avg_input_len: int = 750
    avg_output_len: int = 240
    kv_high_water_mark: float = 0.3
    iterations: int = 10


@dataclass
class Catalog:
    """Every GPU type and measurement known to this process."""

    gpus: dict[str, GpuType] = field(default_factory=dict)
    measured: dict[tuple[str, str], MeasuredProfile] = field(default_factory=dict)
    helix_tables: dict[str, HelixTables] = field(default_factory=dict)

    def gpu(self, name: str) -> GpuType:
        if name in self.gpus:
            return self.gpus[name]
        for gpu in self.gpus.values():
            if name.lower() == gpu.name.lower() or name in gpu.labels:
                return gpu
        raise UnknownGpuType(
            f"unknown GPU type {name!r}: known types are {', '.join(sorted(self.gpus))}; add it in a "
            "catalog file (vram, memoryBandwidth, peakFlops, nic) passed with --catalog or HELIX_CATALOG"
        )

    def measurement(self, model: str, gpu: str) -> MeasuredProfile | None:
        return self.measured.get((model, gpu))

    def merge_file(self, path: Path) -> None:
        """Add the GPU types, measurements and Helix tables of one catalog YAML file."""
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise PlanningError(f"cannot read catalog file {path}: {err}") from None
        for name, spec in (data.get("gpus") or {}).items():
            self.gpus[name] = gpu_from_mapping(str(name), spec, source=str(path))
        model = data.get("model")
        if not isinstance(model, str):
            if data.get("measured") or "helixTables" in data:
                raise PlanningError(f"catalog file {path}: `measured` and `helixTables` need a `model` name")
            return
        for gpu, spec in (data.get("measured") or {}).items():
            self.measured[(model, gpu)] = _measured_from_mapping(model, str(gpu), spec)
        if "helixTables" in data:
            tables = data["helixTables"]
            self.helix_tables[model] = HelixTables(
                typical_layers=dict(tables["typicalLayers"]),
                typical_layers_small=dict(tables["typicalLayersWhenCapacityBelow1.2L"]),
                initial_perf={k: float(v) for k, v in tables["initialNormalizedPerf"].items()},
                avg_input_len=int(tables.get("avgInputLen", 750)),
                avg_output_len=int(tables.get("avgOutputLen", 240)),
                kv_high_water_mark=float(tables.get("kvHighWaterMark", 0.3)),
                iterations=int(tables.get("fixedPointIterations", 10)),
            )


DEFAULT_NIC = 1.25e9  # 10 Gbit/s, bytes/s


def gpu_from_mapping(name: str, spec: Mapping[str, Any], *, source: str) -> GpuType:
    """A GPU type from its catalog fields (a catalog file or a GPUProfile object's spec)."""
    fields = {}
    for key, default in (("vram", None), ("memoryBandwidth", None), ("peakFlops", None), ("nic", DEFAULT_NIC)):
        value = spec.get(key, default)
        if value is None:
            raise PlanningError(f"GPU type {name!r} in {source}: {key} is required (e.g. vram: 80GB, "
                                "memoryBandwidth: 3.35e12, peakFlops: 989e12)")
        try:
            fields[key] = parse_quantity(value)
        except ValueError as err:
            raise PlanningError(f"GPU type {name!r} in {source}: {key}: {err}") from None
    return GpuType(
        name=name,
        vram_bytes=fields["vram"],
        memory_bandwidth=fields["memoryBandwidth"],
        peak_flops=fields["peakFlops"],
        nic_bytes_per_s=fields["nic"],
        gpus=int(spec.get("gpus", 1)),
        labels=tuple(str(label) for label in spec.get("labels") or ()),
    )


def _measured_from_mapping(model: str, gpu: str, spec: Mapping[str, Any]) -> MeasuredProfile:
    def curve(points: list[list[float]]) -> Curve:
        pts = sorted((float(x), float(ms) / 1000.0) for x, ms in points)
        return Curve(tuple(p[0] for p in pts), tuple(p[1] for p in pts))

    def table(key: str) -> dict[int, int]:
        return {int(k): int(v) for k, v in (spec.get(key) or {}).items()}

    return MeasuredProfile(
        model=model,
        gpu=gpu,
        prompt=curve(spec["promptMs"]),
        decode=curve(spec["decodeMs"]),
        max_layers=int(spec["maxLayers"]),
        kv_blocks=table("kvBlocks"),
        prompt_max_requests=table("promptMaxRequests"),
        decode_max_tokens=table("decodeMaxTokens"),
        block_size=int(spec.get("blockSize", 16)),
    )


def load_catalog(extra_dirs: list[Path] | None = None) -> Catalog:
    """The built-in catalog, then every `*.yaml` of HELIX_CATALOG and `extra_dirs` in name order."""
    catalog = Catalog()
    dirs = [BUILTIN_CATALOG_DIR]
    if os.environ.get("HELIX_CATALOG"):
        dirs += [Path(p) for p in os.environ["HELIX_CATALOG"].split(os.pathsep) if p]
    dirs += list(extra_dirs or [])
    for directory in dirs:
        if directory.is_file():
            catalog.merge_file(directory)
            continue
        if not directory.is_dir():
            raise PlanningError(f"catalog directory {directory} does not exist")
        for path in sorted(directory.glob("*.yaml")):
            catalog.merge_file(path)
    return catalog
