"""Baseline placements from the paper's comparison: Petals, Swarm and separate pipelines.

They are usable on their own (`helix plan --method petals`) and as warm starts for the MILP.
Each returns a layout: node name -> [start, end).
"""

import math

from helix_planner.cluster import Cluster
from helix_planner.models import ModelSpec
from helix_planner.throughput import CapacityModel

Layout = dict[str, tuple[int, int]]


def _usable(cluster: Cluster, capacity_model: CapacityModel, num_layers: int) -> list[tuple[str, int, float]]:
    """(node, layers it holds at most, its capacity then), strongest first."""
    rows = []
    for node in cluster.nodes:
        k = min(capacity_model.max_layers(node.gpu), num_layers)
        if k > 0:
            rows.append((node.name, k, capacity_model.capacity(node.gpu, k)))
    return sorted(rows, key=lambda r: (-r[2] * r[1], r[0]))


def petals(cluster: Cluster, model: ModelSpec, capacity_model: CapacityModel) -> Layout:
    """Each node, strongest first, fills as many layers as it can where coverage is weakest."""
    L = model.num_layers
    coverage = [0.0] * L
    layout: Layout = {}
    for name, k, cap in _usable(cluster, capacity_model, L):
        start = min(range(L - k + 1), key=lambda a: (min(coverage[a:a + k]), sum(coverage[a:a + k]), a))
        layout[name] = (start, start + k)
        for layer in range(start, start + k):
            coverage[layer] += cap
    return layout


def swarm(cluster: Cluster, model: ModelSpec, capacity_model: CapacityModel) -> Layout:
    """Equal stages sized for the weakest node; each node joins the stage with least capacity."""
    L = model.num_layers
    usable = _usable(cluster, capacity_model, L)
    if not usable:
        return {}
    stage_len = min(k for _, k, _ in usable)
    stages = math.ceil(L / stage_len)
    bounds = [round(i * L / stages) for i in range(stages + 1)]
    load = [0.0] * stages
    layout: Layout = {}
    for name, _, _ in usable:
        gpu = cluster.node(name).gpu
        stage = min(range(stages), key=lambda s: (load[s], s))
        start, end = bounds[stage], bounds[stage + 1]
        layout[name] = (start, end)
        load[stage] += capacity_model.capacity(gpu, end - start)
    return layout


def separate_pipelines(cluster: Cluster, model: ModelSpec, capacity_model: CapacityModel) -> Layout:
    """Homogeneous pipelines per GPU type and region; leftover nodes form mixed pipelines."""
    L = model.num_layers
    layout: Layout = {}
    leftovers: list[tuple[str, int]] = []
    groups: dict[tuple[str, str], list[str]] = {}
    for node in cluster.nodes:
        if capacity_model.max_layers(node.gpu) > 0:
            groups.setdefault((node.region, node.gpu), []).append(node.name)
    for (_, gpu), names in sorted(groups.items()):
        k = min(capacity_model.max_layers(gpu), L)
        per_pipeline = math.ceil(L / k)
        full = len(names) // per_pipeline
        for p in range(full):
            layout.update(split_chain([(n, k) for n in names[p * per_pipeline:(p + 1) * per_pipeline]], L))
        leftovers += [(n, k) for n in names[full * per_pipeline:]]
    leftovers.sort(key=lambda item: -item[1])
    while sum(k for _, k in leftovers) >= L:
        chain, total = [], 0
        while total < L:
            chain.append(leftovers.pop(0))
            total += chain[-1][1]
        layout.update(split_chain(chain, L))
    return layout


def split_chain(chain: list[tuple[str, int]], num_layers: int) -> Layout:
    """Cut [0, L) among a chain of nodes in proportion to the layers each can hold (<= that)."""
    total = sum(k for _, k in chain)
    layout: Layout = {}
    position = acc = 0
    for name, k in chain:
        acc += k
        end = acc * num_layers // total
        if end > position:
            layout[name] = (position, end)
        position = end
    return layout


BASELINES = {"petals": petals, "swarm": swarm, "separate": separate_pipelines}
