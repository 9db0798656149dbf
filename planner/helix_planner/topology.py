"""Node classes for the MILP: interchangeable nodes are counted, not named.

A *group* is a set of nodes whose links among themselves can never limit the flow (each
link carries at least what either end can process) — a region, typically. Inside a group,
which node hands activations to which does not matter, so nodes of one GPU type in one
group form a *class* and the MILP only counts how many of them hold each layer range. This
removes the symmetry between identical nodes that makes Helix's per-node MILP hard.
"""

from collections.abc import Callable
from dataclasses import dataclass

from helix_planner.cluster import SINK, SOURCE, Cluster
from helix_planner.flow import edge_capacity
from helix_planner.models import ModelSpec
from helix_planner.throughput import CapacityModel


@dataclass(frozen=True)
class NodeClass:
    """Nodes of one GPU type in one group, with per-range capacities T(k), k = 1..len(caps)."""

    key: str
    group: int
    gpu: str
    nodes: tuple[str, ...]
    caps: tuple[float, ...]
    source_cap: float
    sink_cap: float

    @property
    def max_layers(self) -> int:
        return len(self.caps)


@dataclass(frozen=True)
class Topology:
    classes: list[NodeClass]
    groups: list[tuple[str, ...]]
    # cross_out[(class key, group)]: most tokens/s one node of the class can send into the group
    cross_out: dict[tuple[str, int], float]
    # cross_in[(group, class key)]: most tokens/s one node of the class can receive from the group
    cross_in: dict[tuple[int, str], float]
    # pair_min[(g, h)]: the slowest existing link from group g to group h (tokens/s)
    pair_min: dict[tuple[int, int], float]
    # fastest link between any two groups (tokens/s), 0 with a single group
    cross_max: float = 0.0


def build_topology(cluster: Cluster, model: ModelSpec, capacity_model: CapacityModel) -> Topology:
    peak = {}
    for node in cluster.nodes:
        k_max = capacity_model.max_layers(node.gpu)
        peak[node.name] = max((capacity_model.capacity(node.gpu, k) for k in range(1, k_max + 1)), default=0.0)

    def free(a: str, b: str) -> bool:
        need = min(peak[a], peak[b])
        return edge_capacity(cluster, model, a, b) >= need and edge_capacity(cluster, model, b, a) >= need

    groups: list[list[str]] = []
    for region in cluster.regions():
        for node in (n for n in cluster.nodes if n.region == region):
            for group in groups:
                if cluster.node(group[0]).region == region and all(free(node.name, m) for m in group):
                    group.append(node.name)
                    break
            else:
                groups.append([node.name])
    _merge_free_groups(groups, free)

    ceiling = sum(peak.values())  # no edge can usefully carry more; keeps the MILP well scaled
    classes: list[NodeClass] = []
    for g, members in enumerate(groups):
        by_gpu: dict[str, list[str]] = {}
        for name in members:
            by_gpu.setdefault(cluster.node(name).gpu, []).append(name)
        for gpu, names in sorted(by_gpu.items()):
            k_max = capacity_model.max_layers(gpu)
            if k_max <= 0:
                continue
            caps = tuple(capacity_model.capacity(gpu, k) for k in range(1, min(k_max, model.num_layers) + 1))
            classes.append(NodeClass(
                key=f"g{g}-{gpu}", group=g, gpu=gpu, nodes=tuple(names), caps=caps,
                source_cap=min(ceiling, max(edge_capacity(cluster, model, SOURCE, n) for n in names)),
                sink_cap=min(ceiling, max(edge_capacity(cluster, model, n, SINK) for n in names)),
            ))
    cross_out: dict[tuple[str, int], float] = {}
    cross_in: dict[tuple[int, str], float] = {}
    if len(groups) > 1:
        for cls in classes:
            for h, others in enumerate(groups):
                if h == cls.group:
                    continue
                cross_out[(cls.key, h)] = min(ceiling, max(
                    sum(edge_capacity(cluster, model, n, o) for o in others) for n in cls.nodes))
                cross_in[(h, cls.key)] = min(ceiling, max(
                    sum(edge_capacity(cluster, model, o, n) for o in others) for n in cls.nodes))
    pair_min: dict[tuple[int, int], float] = {}
    cross_max = 0.0
    for g, senders in enumerate(groups):
        for h, receivers in enumerate(groups):
            if g != h:
                links = [c for a in senders for b in receivers if (c := edge_capacity(cluster, model, a, b)) > 0]
                pair_min[(g, h)] = min(links, default=0.0)
                cross_max = max(cross_max, *links) if links else cross_max
    return Topology(classes, [tuple(g) for g in groups], cross_out, cross_in, pair_min, cross_max)


def _merge_free_groups(groups: list[list[str]], free: Callable[[str, str], bool]) -> None:
    """Merge groups (e.g. regions joined by fast links) whose every cross pair is free."""
    merged = True
    while merged:
        merged = False
        for i in range(len(groups)):
            for j in range(i + 1, len(groups)):
                if all(free(a, b) for a in groups[i] for b in groups[j]):
                    groups[i].extend(groups.pop(j))
                    merged = True
                    break
            if merged:
                break
