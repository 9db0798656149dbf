"""Stage chains across regions: a constructive placement for clusters with slow links.

Where links between groups (regions) are slow, the flow crossing from one region to the
next needs several sender/receiver pairs. This builds the pipeline as a chain of *stages*
(identical nodes of one class holding the same layers), region after region, with enough
nodes at each region's first and last stage that the cross links carry the target flow,
and finds the largest target flow for which the chain covers every layer (bisection).
"""

import itertools
import math
from dataclasses import dataclass

from helix_planner.models import ModelSpec
from helix_planner.topology import NodeClass, Topology

Layout = dict[str, tuple[int, int]]


@dataclass(frozen=True)
class _Stage:
    cls: NodeClass
    layers: int
    nodes: int


def chain_layout(topology: Topology, model: ModelSpec, *, max_orders: int = 120) -> tuple[Layout, float]:
    """The best of one chain through the regions and one chain per self-sufficient region.

    Regions that can hold the whole model each get their own chain (no slow links used);
    the others are chained together; their flows add up. Returns the layout and the flow
    target it was built for (0 if nothing covers the model).
    """
    groups = list(range(len(topology.groups)))
    across = _best_chain(topology, model, [tuple(p) for r in range(1, len(groups) + 1)
                                           for p in itertools.permutations(groups, r)][:max_orders])
    alone = {g: _best_chain(topology, model, [(g,)]) for g in groups}
    self_sufficient = [g for g in groups if alone[g][1] > 0]
    rest = [g for g in groups if alone[g][1] <= 0]
    layout: Layout = {}
    total = 0.0
    for g in self_sufficient:
        layout.update(alone[g][0])
        total += alone[g][1]
    if len(rest) > 1:
        joined = _best_chain(topology, model, [p for r in range(2, len(rest) + 1)
                                               for p in itertools.permutations(rest, r)][:max_orders])
        layout.update(joined[0])
        total += joined[1]
    return (layout, total) if total > across[1] else across


def _best_chain(topology: Topology, model: ModelSpec, orders: list[tuple[int, ...]]) -> tuple[Layout, float]:
    """Bisection on the flow target over the given region orders."""
    best: tuple[list[_Stage], float] | None = None
    low, high = 0.0, max((max(c.caps) for c in topology.classes), default=0.0)
    for _ in range(40):
        target = (low + high) / 2
        chain = next((c for order in orders if (c := _chain(topology, order, target, model.num_layers))), None)
        if chain is None:
            high = target
        else:
            low, best = target, (chain, target)
        if high - low < 1e-3 * max(high, 1.0):
            break
    if best is None:
        return {}, 0.0
    return _to_layout(best[0], model.num_layers), best[1]


def _stage_options(cls: NodeClass, target: float, min_nodes: int, available: int) -> list[_Stage]:
    """Stages of this class carrying `target`, best layers-per-node first."""
    options = []
    for k, cap in enumerate(cls.caps, start=1):
        if cap <= 0:
            continue
        nodes = max(min_nodes, math.ceil(target / cap - 1e-9))
        if nodes <= available:
            options.append(_Stage(cls, k, nodes))
    return sorted(options, key=lambda s: (-s.layers / s.nodes, -s.layers))


def _region_stages(topology: Topology, group: int, target: float, fan_in: int, fan_out: int) -> list[_Stage] | None:
    """Stages for one region: the entry and exit stages that leave the most layers, then greedy.

    Every entry and exit option is tried (a region has few classes and layer counts), and the
    nodes left fill middle stages, most layers per node first.
    """
    classes = [c for c in topology.classes if c.group == group]
    sizes = {c.key: len(c.nodes) for c in classes}
    needs_exit = fan_out > 1
    if fan_in <= 1 and not needs_exit:
        return _fill(classes, target, sizes) or None
    entries = [o for c in classes for o in _stage_options(c, target, fan_in, sizes[c.key])]
    best: list[_Stage] | None = None
    best_layers = -1
    for entry in entries:
        left = dict(sizes)
        left[entry.cls.key] -= entry.nodes
        exits = [o for c in classes for o in _stage_options(c, target, fan_out, left[c.key])] if needs_exit else [None]
        for exit_stage in exits:
            remaining = dict(left)
            if exit_stage is not None:
                remaining[exit_stage.cls.key] -= exit_stage.nodes
            middle = _fill(classes, target, remaining)
            stages = [entry, *middle, *([exit_stage] if exit_stage else [])]
            layers = sum(s.layers for s in stages)
            if layers > best_layers:
                best, best_layers = stages, layers
    return best


def _fill(classes: list[NodeClass], target: float, left: dict[str, int]) -> list[_Stage]:
    """Middle stages from the nodes left, most layers per node first."""
    stages: list[_Stage] = []
    while True:
        options = [o for c in classes for o in _stage_options(c, target, 1, left[c.key])]
        if not options:
            return stages
        stage = max(options, key=lambda s: (s.layers / s.nodes, s.layers))
        left[stage.cls.key] -= stage.nodes
        stages.append(stage)


def _chain(topology: Topology, order: tuple[int, ...], target: float, num_layers: int) -> list[_Stage] | None:
    """Stages covering all layers at `target` through the regions in `order`, or None.

    Each region picks how many nodes end it (its fan-out) to leave itself the most layers;
    the next region must then start with enough nodes for the cross links to carry `target`.
    """
    chain: list[_Stage] = []
    fan_in = 1
    for position, group in enumerate(order):
        following = order[position + 1] if position + 1 < len(order) else None
        best: tuple[list[_Stage], int] | None = None
        for fan_out in range(1, 5) if following is not None else (1,):
            if following is not None and _fan_needed(topology, group, following, target, fan_out) is None:
                continue
            stages = _region_stages(topology, group, target, fan_in, fan_out)
            if stages is not None and (best is None or sum(s.layers for s in stages) > sum(s.layers for s in best[0])):
                best = (stages, fan_out)
        if best is None:
            return None
        chain += best[0]
        if following is not None:
            fan_in = _fan_needed(topology, group, following, target, best[1]) or 1
    return chain if sum(s.layers for s in chain) >= num_layers else None


def _fan_needed(topology: Topology, src: int, dst: int, target: float, senders: int) -> int | None:
    """Receivers needed so that senders x receivers slowest links carry `target`."""
    slowest = topology.pair_min.get((src, dst), 0.0)
    if slowest <= 0:
        return None
    receivers = math.ceil(target / (slowest * senders) - 1e-9)
    return receivers if receivers <= 4 else None


def _to_layout(chain: list[_Stage], num_layers: int) -> Layout:
    """Lay stages end to end; trim the surplus from the longest stages (shorter is faster)."""
    lengths = [s.layers for s in chain]
    surplus = sum(lengths) - num_layers
    while surplus > 0:
        i = max(range(len(lengths)), key=lambda j: lengths[j])
        lengths[i] -= 1
        surplus -= 1
    layout: Layout = {}
    used: dict[str, int] = {}
    position = 0
    for stage, length in zip(chain, lengths):
        if length <= 0:
            continue
        start = used.get(stage.cls.key, 0)
        for name in stage.cls.nodes[start:start + stage.nodes]:
            layout[name] = (position, position + length)
        used[stage.cls.key] = start + stage.nodes
        position += length
    return layout
