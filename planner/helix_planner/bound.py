"""A certified upper bound on the flow that ignores where layers sit (position-free).

Any placement carrying flow F satisfies, for the layer counts k_i nodes hold:
  * every layer covered by a single node needs that node's T_i(k_i) >= F ("full" nodes);
  * a layer covered by two or more nodes uses that many layer slots, and the slots add up
    to sum_i k_i;
  * the flow through all layers, L*F, equals sum_i k_i f_i <= sum_i k_i min(T_i(k_i), F).
Whether some integer choice of k_i per node class meets all three is a small MILP without
positions (so without the positional symmetry that stalls branch and bound); the largest
F for which it does (bisection) bounds every placement. Links are ignored, so the bound
holds for any network; it is what makes the gaps on full-mesh clusters small.
"""

import highspy
import numpy as np

from helix_planner.highs_session import new_highs
from helix_planner.topology import Topology


def position_free_bound(topology: Topology, num_layers: int, *, threads: int = 1, tolerance: float = 1e-5) -> float:
    """Largest F that the position-free relaxation admits (relative precision `tolerance`)."""
    high = max((max(c.caps) for c in topology.classes), default=0.0) * len(topology.classes) * num_layers
    high = min(high, _lp_ceiling(topology, num_layers))
    low = 0.0
    if high <= 0:
        return 0.0
    if _admits(topology, num_layers, high, threads):
        return high
    while high - low > tolerance * high:
        middle = (low + high) / 2
        if _admits(topology, num_layers, middle, threads):
            low = middle
        else:
            high = middle
    return high


def _lp_ceiling(topology: Topology, num_layers: int) -> float:
    """sum over nodes of max_k k T(k) / L: no placement can beat spreading capacity evenly."""
    return sum(len(c.nodes) * max(k * t for k, t in enumerate(c.caps, start=1)) for c in topology.classes) / num_layers


def _admits(topology: Topology, num_layers: int, flow: float, threads: int) -> bool:
    """Whether some per-class choice of layer counts can cover all layers at `flow`."""
    highs = new_highs(threads)
    choices = [(c, k, t) for c in topology.classes for k, t in enumerate(c.caps, start=1) if t > 0]
    n = [highs.addVariable(0, len(c.nodes), type=highspy.HighsVarType.kInteger) for c, _, _ in choices]
    single = highs.addVariable(0, num_layers)
    multi = highs.addVariable(0, num_layers)
    for cls in topology.classes:
        members = [v for v, (c, _, _) in zip(n, choices) if c.key == cls.key]
        if members:
            highs.addConstr(highs.qsum(members) <= len(cls.nodes))
    slots = highs.qsum(k * v for v, (_, k, _) in zip(n, choices))
    full = [k * v for v, (_, k, t) in zip(n, choices) if t >= flow]
    highs.addConstr(single <= (highs.qsum(full) if full else 0))
    highs.addConstr(single + 2 * multi <= slots)
    highs.addConstr(highs.qsum(k * min(t, flow) * v for v, (_, k, t) in zip(n, choices)) >= num_layers * flow)
    highs.addConstr(single + multi >= num_layers)
    highs.setOptionValue("mip_rel_gap", 0.0)
    highs.run()
    status = highs.getModelStatus()
    return status == highspy.HighsModelStatus.kOptimal and bool(np.isfinite(highs.getInfo().objective_function_value))
