"""A certified upper bound on the flow that ignores where layers sit (position-free).

Any placement carrying flow F satisfies, for the layer counts k_i nodes hold:
  * every layer covered by a single node needs that node's T_i(k_i) >= F ("full" nodes);
  * a layer covered by two or more nodes uses that many layer slots, and the slots add up
    to sum_i k_i;
  * the flow through all layers, L*F, equals sum_i k_i f_i <= sum_i k_i min(T_i(k_i), F).
Whether some integer choice of k_i per node class meets all three is a small MILP without
positions (so without the positional symmetry that stalls branch and bound); the largest
F for which it does (bisection) bounds every placement.

Slow links between groups (regions) add one more necessary condition. A node carrying less
than F ("partial") has every layer it holds covered by another node too. Where flow crosses
from one group to another at a layer boundary, either two or more nodes end there (their
flows share at most F, so each is partial), or two or more start there (likewise), or one
node hands to one node over a single cross link, which carries at most `cross_max` < F, so
both are partial. Hence if F exceeds both the fastest cross link and what the groups can
carry each on their own (so some flow must cross), at least two nodes are partial.
"""

from collections.abc import Callable

import highspy
import numpy as np

from helix_planner.highs_session import new_highs
from helix_planner.topology import NodeClass, Topology


def position_free_bound(topology: Topology, num_layers: int, *, threads: int = 1, tolerance: float = 1e-5) -> float:
    """Largest F that the position-free relaxation admits (relative precision `tolerance`)."""
    classes = topology.classes
    alone = 0.0
    if len(topology.groups) > 1:
        alone = sum(_bisect([c for c in classes if c.group == g], num_layers, threads, tolerance, lambda _f: 0)
                    for g in range(len(topology.groups)))

    def partial_needed(flow: float) -> int:
        return 2 if len(topology.groups) > 1 and flow > max(alone, topology.cross_max) else 0

    return _bisect(classes, num_layers, threads, tolerance, partial_needed)


def _bisect(classes: list[NodeClass], num_layers: int, threads: int, tolerance: float,
            partial_needed: Callable[[float], int]) -> float:
    high = min(max((max(c.caps) for c in classes), default=0.0) * len(classes) * num_layers,
               _lp_ceiling(classes, num_layers))
    low = 0.0
    if high <= 0 or sum(len(c.nodes) * c.max_layers for c in classes) < num_layers:
        return 0.0
    if _admits(classes, num_layers, high, threads, partial_needed(high)):
        return high
    while high - low > tolerance * high:
        if high < 1e-6:
            return 0.0
        middle = (low + high) / 2
        if _admits(classes, num_layers, middle, threads, partial_needed(middle)):
            low = middle
        else:
            high = middle
    return high


def _lp_ceiling(classes: list[NodeClass], num_layers: int) -> float:
    """sum over nodes of max_k k T(k) / L: no placement can beat spreading capacity evenly."""
    return sum(len(c.nodes) * max(k * t for k, t in enumerate(c.caps, start=1)) for c in classes) / num_layers


def _admits(classes: list[NodeClass], num_layers: int, flow: float, threads: int, partial: int) -> bool:
    """Whether some per-class choice of layer counts can cover all layers at `flow`,
    with at least `partial` nodes carrying less than `flow`."""
    highs = new_highs(threads)
    choices = [(c, k, t) for c in classes for k, t in enumerate(c.caps, start=1) if t > 0]
    n = [highs.addVariable(0, len(c.nodes), type=highspy.HighsVarType.kInteger) for c, _, _ in choices]
    # p: nodes that could carry `flow` alone but carry less (all of their layers are multi-covered)
    p = [highs.addVariable(0, len(c.nodes), type=highspy.HighsVarType.kInteger) if t >= flow else None
         for c, _, t in choices]
    single = highs.addVariable(0, num_layers)
    multi = highs.addVariable(0, num_layers)
    for cls in classes:
        members = [v for v, (c, _, _) in zip(n, choices) if c.key == cls.key]
        if members:
            highs.addConstr(highs.qsum(members) <= len(cls.nodes))
    for count, maybe in zip(n, p):
        if maybe is not None:
            highs.addConstr(maybe <= count)
    if partial:
        partial_nodes = [v for v, (_, _, t) in zip(n, choices) if t < flow] + [v for v in p if v is not None]
        highs.addConstr(highs.qsum(partial_nodes) >= partial)
    slots = highs.qsum(k * v for v, (_, k, _) in zip(n, choices))
    full = [k * (v - maybe) for v, maybe, (_, k, t) in zip(n, p, choices) if t >= flow]
    highs.addConstr(single <= (highs.qsum(full) if full else 0))
    highs.addConstr(single + 2 * multi <= slots)
    highs.addConstr(highs.qsum(k * min(t, flow) * v for v, (_, k, t) in zip(n, choices)) >= num_layers * flow)
    highs.addConstr(single + multi >= num_layers)
    highs.setOptionValue("mip_rel_gap", 0.0)
    highs.run()
    status = highs.getModelStatus()
    return status == highspy.HighsModelStatus.kOptimal and bool(np.isfinite(highs.getInfo().objective_function_value))
