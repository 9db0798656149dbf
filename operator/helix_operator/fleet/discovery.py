"""Which Kubernetes nodes the planner may use, with their GPU type and region.

Node facts come from labels (NVIDIA GPU feature discovery, GKE, EKS/Karpenter, topology)
or from labels the spec names. Discovery is pure: nodes + pools + catalog in, a verdict
out, so tests feed it dicts and the controller feeds it the node index.
"""

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from helix_operator.api.meta import condition_true
from helix_operator.api.spec import PoolSpec, Requirement
from helix_planner.errors import PlanningError
from helix_planner.profiles import Catalog

# Tried in order when a pool names neither gpuType nor gpuTypeLabel.
GPU_LABELS = (
    "nvidia.com/gpu.product",               # NVIDIA GPU feature discovery / GPU operator
    "cloud.google.com/gke-accelerator",     # GKE
    "karpenter.k8s.aws/instance-gpu-name",  # Karpenter on EKS
    "k8s.amazonaws.com/accelerator",        # EKS managed node groups
)
GPU_COUNT_LABELS = ("nvidia.com/gpu.count", "karpenter.k8s.aws/instance-gpu-count")
REGION_LABELS = ("topology.kubernetes.io/region", "failure-domain.beta.kubernetes.io/region")
DEFAULT_REGION = "default"


@dataclass(frozen=True)
class NodeFacts:
    """What the operator keeps of a Node object (the node index holds these)."""

    name: str
    labels: Mapping[str, str]
    ready: bool
    unschedulable: bool
    deleting: bool = False
    gpu_capacity: Mapping[str, int] = field(default_factory=dict)


def node_facts(body: Mapping[str, Any]) -> NodeFacts:
    """Summarise a Node object: labels, Ready condition, cordon, allocatable GPUs."""
    metadata = body.get("metadata") or {}
    status = body.get("status") or {}
    ready = condition_true(status, "Ready")
    capacity = {}
    for key, value in (status.get("allocatable") or {}).items():
        if "gpu" in key and str(value).isdigit():
            capacity[key] = int(value)
    return NodeFacts(
        name=str(metadata.get("name")),
        labels=dict(metadata.get("labels") or {}),
        ready=ready,
        unschedulable=bool((body.get("spec") or {}).get("unschedulable")),
        deleting=bool(metadata.get("deletionTimestamp")),
        gpu_capacity=capacity,
    )


@dataclass(frozen=True)
class DiscoveredNode:
    name: str
    pool: str
    gpu_type: str
    region: str
    gpus: int


@dataclass(frozen=True)
class Discovery:
    """The usable nodes, and why the other matching ones are not."""

    nodes: tuple[DiscoveredNode, ...]
    unusable: Mapping[str, str]        # node -> NotReady / Cordoned / Deleting
    unknown_gpu: Mapping[str, str]     # node -> the label value or type no catalog entry matches
    short_pools: tuple[tuple[str, int, int], ...]  # (pool, usable, minNodes)

    @property
    def fingerprint(self) -> str:
        """Identifies what planning depends on: usable nodes with GPU type and region."""
        body = sorted((n.name, n.gpu_type, n.region) for n in self.nodes)
        return hashlib.sha256(json.dumps(body).encode()).hexdigest()[:16]

    def count_by(self, attribute: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for node in self.nodes:
            key = getattr(node, attribute)
            counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items()))


def matches(labels: Mapping[str, str], pool: PoolSpec) -> bool:
    """Label-selector semantics (matchLabels AND every matchExpression)."""
    if any(labels.get(k) != v for k, v in pool.match_labels.items()):
        return False
    return all(_requirement(labels, r) for r in pool.match_expressions)


def _requirement(labels: Mapping[str, str], req: Requirement) -> bool:
    present = req.key in labels
    if req.operator == "Exists":
        return present
    if req.operator == "DoesNotExist":
        return not present
    if req.operator == "In":
        return present and labels[req.key] in req.values
    return not present or labels[req.key] not in req.values  # NotIn


def discover(nodes: Iterable[NodeFacts], pools: Iterable[PoolSpec], catalog: Catalog,
             gpu_resource: str = "nvidia.com/gpu") -> Discovery:
    """Assign each node to its first matching pool and read its GPU type and region."""
    pools = list(pools)
    usable: dict[str, list[DiscoveredNode]] = {pool.name: [] for pool in pools}
    unusable: dict[str, str] = {}
    unknown: dict[str, str] = {}
    for node in sorted(nodes, key=lambda n: n.name):
        pool = next((p for p in pools if matches(node.labels, p)), None)
        if pool is None:
            continue
        problem = "Deleting" if node.deleting else "NotReady" if not node.ready else \
            "Cordoned" if node.unschedulable else None
        if problem:
            unusable[node.name] = problem
            continue
        gpu = _gpu_type(node, pool, catalog, gpu_resource)
        if isinstance(gpu, str):
            unknown[node.name] = gpu
            continue
        usable[pool.name].append(DiscoveredNode(node.name, pool.name, gpu[0], _region(node, pool), gpu[1]))
    chosen: list[DiscoveredNode] = []
    short = []
    for pool in pools:
        members = usable[pool.name][: pool.max_nodes] if pool.max_nodes else usable[pool.name]
        chosen += members
        if len(members) < pool.min_nodes:
            short.append((pool.name, len(members), pool.min_nodes))
    return Discovery(tuple(chosen), unusable, unknown, tuple(short))


def _gpu_type(node: NodeFacts, pool: PoolSpec, catalog: Catalog, gpu_resource: str) -> tuple[str, int] | str:
    """(catalog type, GPUs) or, when unknown, a description of what was read."""
    if pool.gpu_type:
        value, source = pool.gpu_type, f"pool {pool.name} gpuType"
    else:
        keys = (pool.gpu_type_label,) if pool.gpu_type_label else GPU_LABELS
        label = next((k for k in keys if k in node.labels), None)
        if label is None:
            return f"no GPU label ({', '.join(keys)})"
        value, source = node.labels[label], label
    try:
        gpu = catalog.gpu(value)
    except PlanningError:
        return f"{source}={value}"
    count = _gpu_count(node, gpu_resource)
    if count > 1 and gpu.gpus == 1:
        multi = f"{gpu.name}x{count}"
        if multi in catalog.gpus:
            return multi, count
    return gpu.name, gpu.gpus


def _gpu_count(node: NodeFacts, gpu_resource: str) -> int:
    for key in GPU_COUNT_LABELS:
        if str(node.labels.get(key, "")).isdigit():
            return int(node.labels[key])
    return node.gpu_capacity.get(gpu_resource, 1)


def _region(node: NodeFacts, pool: PoolSpec) -> str:
    if pool.region:
        return pool.region
    for key in (pool.region_label,) if pool.region_label else REGION_LABELS:
        if node.labels.get(key):
            return node.labels[key]
    return DEFAULT_REGION


def nodes_problem(discovery: Discovery, pools: Iterable[PoolSpec]) -> tuple[str, str] | None:
    """(reason, message) when discovery gives the planner nothing sound to work with."""
    if discovery.unknown_gpu:
        shown = sorted(discovery.unknown_gpu.items())[:5]
        what = "; ".join(f"{node}: {value}" for node, value in shown)
        hidden = len(discovery.unknown_gpu) - len(shown)
        more = f" (and {hidden} more)" if hidden else ""
        return ("UnknownGPUType", f"no known GPU type matches {what}{more}: create a GPUProfile whose labels "
                "include that value, or set gpuType on the node pool")
    if not discovery.nodes:
        pool_names = ", ".join(p.name for p in pools)
        idle = f"; {len(discovery.unusable)} matching nodes are NotReady or cordoned" if discovery.unusable else ""
        return ("NoMatchingNodes", f"no Ready, schedulable node matches node pools {pool_names}{idle}: check the "
                "pools' selectors against `kubectl get nodes --show-labels`")
    if discovery.short_pools:
        pool, have, need = discovery.short_pools[0]
        return ("InsufficientNodes", f"node pool {pool} has {have} usable nodes but minNodes is {need}")
    return None
