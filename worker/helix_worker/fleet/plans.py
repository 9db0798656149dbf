"""The plans `helix up` serves, made by the planner: a measured local fleet or a cluster YAML.

Local fleet (the default): the served checkpoint's per-layer prompt and decode latency is
measured quickly on the device the workers will use (`helix profile`'s code at a few points,
about a second for the demo model), written to the work directory in catalog format and
registered in an in-memory catalog as the device's GPU type (`CPU` on the host). Each
distinct slowdown factor s != 1 adds a type `CPU-x<s>` whose curves are s times the measured
ones, so unlike "GPUs" are real to the planner. Workers worker-0..N-1 share the device's
memory equally and talk over loopback links; `plan_cluster` places the layers with the
profiled throughput model, and every used worker runs with its factor as HELIX_SLOWDOWN, so
the planner and the emulation agree on how slow each worker is.

Cluster file: the planner places a cluster YAML for the checkpoint's real shape, and each
node is emulated by a local worker slowed down by its GPU's peak FLOP/s relative to the
fastest.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypedDict

import torch

from helix_planner.cluster import Cluster, Node
from helix_planner.errors import PlanningError
from helix_planner.models import ModelSpec, llama_like
from helix_planner.network import LinkSpec, NetworkModel, build_cluster
from helix_planner.plan_format import Plan
from helix_planner.planner import PlannerOptions, plan_cluster
from helix_planner.profiles import Catalog, Curve, GpuType, load_catalog
from helix_worker.envs import Settings
from helix_worker.errors import ServingError
from helix_worker.fleet.profile import ProfileOptions, device_memory, device_name, measure, write_profile
from helix_worker.model.config import ModelConfig, parse_dtype
from helix_worker.stage.main import resolve_device

LOCAL_PLAN_SECONDS = 5.0
CLUSTER_PLAN_SECONDS = 20.0
LOOPBACK = LinkSpec(bandwidth=10e9, latency=1e-4)  # 127.0.0.1 between processes: ~10 GB/s, 0.1 ms
class _QuickProfile(TypedDict):
    layers: int
    prompt_tokens: tuple[int, ...]
    decode_batches: tuple[int, ...]
    decode_context: int
    repeats: int


QUICK_PROFILE: _QuickProfile = {"layers": 1, "prompt_tokens": (16, 128, 512), "decode_batches": (1, 16, 64),
                                "decode_context": 32, "repeats": 3}


@dataclass(frozen=True)
class PlanInputs:
    """What the planner placed: a replan from observed capacity starts from these."""
    cluster: Cluster
    catalog: Catalog
    spec: ModelSpec
    time_limit: float


@dataclass(frozen=True)
class FleetPlan:
    plan: Plan
    slowdowns: dict[str, float]  # every node of the planned fleet, used by the plan or not
    inputs: PlanInputs | None = None  # None: planned elsewhere; nothing to replan from

    @property
    def unused(self) -> list[str]:
        used = {node.name for node in self.plan.nodes}
        return [name for name in self.slowdowns if name not in used]


def check_local_fleet(workers: int, slowdowns: tuple[float, ...]) -> None:
    if workers < 1:
        raise ServingError(f"--workers must be at least 1, not {workers}")
    if slowdowns and len(slowdowns) != workers:
        raise ServingError(f"give one slowdown factor per worker: {workers} workers, {len(slowdowns)} factors")


def model_spec(config: ModelConfig, name: str, dtype: str = "") -> ModelSpec:
    """The planner's view of the checkpoint (`dtype` overrides the checkpoint's, as HELIX_DTYPE does)."""
    return llama_like(name, num_layers=config.num_layers, hidden_size=config.hidden_size,
                      intermediate_size=config.intermediate_size, num_heads=config.num_heads,
                      num_kv_heads=config.num_kv_heads, vocab_size=config.vocab_size, dtype=dtype or config.dtype)


def local_fleet_plan(checkpoint: Path, config: ModelConfig, name: str, slowdowns: tuple[float, ...],
                     workdir: Path, settings: Settings, time_limit: float = LOCAL_PLAN_SECONDS,
                     out: Callable[[str], None] = print) -> FleetPlan:
    """Measure this device, then plan one node per slowdown factor (worker-0 ... worker-N-1)."""
    device = resolve_device(settings.device)
    base = _device_type(load_catalog(), device)
    out(f"measuring {name} on {base.name} ({device}) for the planner")
    with _torch_threads(settings.torch_threads):
        document = measure(ProfileOptions(checkpoint, base.name, device, dtype=parse_dtype(settings.dtype),
                                          **QUICK_PROFILE), log=lambda line: out(f"  {line}"))
    document["model"] = name
    profile = workdir / f"measured-{name}.yaml"
    write_profile(document, profile)
    local = replace(base, vram_bytes=device_memory(device) / len(slowdowns), nic_bytes_per_s=LOOPBACK.bandwidth,
                    labels=())  # the workers share the device's memory
    catalog, types = local_catalog(profile, name, local, slowdowns)
    nodes = [Node(f"worker-{i}", types[s], region="local") for i, s in enumerate(slowdowns)]
    cluster = build_cluster(nodes, NetworkModel(intra=LOOPBACK), name="local")
    out(f"planning {len(nodes)} local workers for {name} ({config.num_layers} layers); measured curves in {profile}")
    spec = model_spec(config, name, settings.dtype)
    plan = plan_with(cluster, spec, time_limit, catalog, out)
    return FleetPlan(plan, {node.name: s for node, s in zip(nodes, slowdowns)},
                     PlanInputs(cluster, catalog, spec, time_limit))


def local_catalog(profile: Path, model: str, local: GpuType,
                  slowdowns: tuple[float, ...]) -> tuple[Catalog, dict[float, str]]:
    """A catalog of `local` as measured in `profile` (a `helix profile` file for `local.name`), and for each
    factor s != 1 a type `<local>-x<s>` whose latency curves are s times the measured ones; the type per factor."""
    catalog = Catalog(gpus={local.name: local})
    catalog.merge_file(profile)
    measured = catalog.measurement(model, local.name)
    if measured is None:
        raise ServingError(f"profile {profile} has no measurement of {model} on {local.name}")
    types = {1.0: local.name}
    for slowdown in sorted(set(slowdowns) - {1.0}):
        types[slowdown] = f"{local.name}-x{slowdown:g}"
        catalog.gpus[types[slowdown]] = replace(local, name=types[slowdown])
        catalog.measured[(model, types[slowdown])] = replace(
            measured, gpu=types[slowdown], prompt=_scaled(measured.prompt, slowdown),
            decode=_scaled(measured.decode, slowdown))
    return catalog, types


def cluster_file_plan(path: Path, config: ModelConfig, name: str, settings: Settings,
                      time_limit: float = CLUSTER_PLAN_SECONDS, out: Callable[[str], None] = print) -> FleetPlan:
    """Plan a cluster YAML with the planner; emulate each GPU type by a compute slowdown."""
    from helix_planner.io.cluster_yaml import load_cluster_yaml

    cluster, _ = load_cluster_yaml(path)  # the checkpoint, not the file's `model:`, fixes the shape
    out(f"planning {path} for {name} ({config.num_layers} layers)")
    catalog = load_catalog()
    spec = model_spec(config, name, settings.dtype)
    plan = plan_with(cluster, spec, time_limit, catalog, out)
    flops = {node.name: catalog.gpu(node.gpu).peak_flops for node in cluster.nodes}
    fastest = max(flops.values())
    return FleetPlan(plan, {node: fastest / value for node, value in flops.items()},
                     PlanInputs(cluster, catalog, spec, time_limit))


def plan_with(cluster: Cluster, spec: ModelSpec, time_limit: float, catalog: Catalog,
              out: Callable[[str], None]) -> Plan:
    """The placement `helix up` serves: max flow under the profiled throughput model."""
    return plan_cluster(cluster, spec, PlannerOptions(time_limit=time_limit, throughput_model="profiled"),
                        catalog=catalog, progress=lambda line: out(f"  {line}"))


def _device_type(catalog: Catalog, device: torch.device) -> GpuType:
    """The catalog's type for the workers' device (`CPU` for the host), or one named after the device."""
    try:
        return catalog.gpu(device_name(device))
    except PlanningError:
        return replace(catalog.gpu("CPU"), name=device_name(device))


def _scaled(curve: Curve, factor: float) -> Curve:
    return Curve(curve.xs, tuple(seconds * factor for seconds in curve.seconds))


@contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    """Measure with the intra-op threads the workers will use (HELIX_TORCH_THREADS)."""
    previous = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
