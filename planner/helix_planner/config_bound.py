"""A certified bound from layer configurations, by column generation.

Carrying F, every layer is covered by a set of nodes (a *configuration*: GPU types and the
layer counts they hold) whose capacities T_c(k) add up to at least F, and a node holding k
layers appears in k configurations. Dropping contiguity and the per-node flow, the question
becomes an LP: how many layers can configurations cover when node types are limited,

    max sum_S z_S   s.t.   sum_S z_S * w_c(S) <= N_c  for each GPU type c,

with w_c(S) = sum over type-c members of S of 1/k (a node of k layers is 1/k of a node per
layer). If not even this LP covers L layers, no placement carries F. Unlike the position-free
bound, which adds capacities over all layers, this sees that a layer needs *whole* nodes:
at F = 6,000 three nodes of 2,500 cover a layer, not 2.4. Columns come from pricing: given
the LP's duals y, the cheapest configuration minimises sum y_c/k over its members subject to
sum T >= F, a small integer program (HiGHS). The bound is certified by weak duality: with
min_S sum_c y_c w_c(S) = m from the exact pricing, y/m is dual feasible, so at most
sum_c N_c y_c / m layers can be covered, whatever columns were generated. Bisection on F.
"""

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import highspy
import numpy as np

from helix_planner.highs_session import new_highs
from helix_planner.topology import NodeClass

_MARGIN = 1e-6  # numerical safety: a verdict of "infeasible" needs this much room
_MAX_COLUMNS = 400


@dataclass(frozen=True)
class _Item:
    """A node of GPU type `kind` holding `layers` layers: capacity `capacity`."""

    kind: int
    layers: int
    capacity: float


def configuration_bound(classes: Sequence[NodeClass], num_layers: int, low: float, high: float, *,
                        deadline: float = math.inf, tolerance: float = 1e-4) -> float:
    """An upper bound on the flow: the smallest F in [low, high] at which the configuration LP
    proves that the layers cannot be covered (`high`, itself a valid bound, if none), searched
    until `deadline` (monotonic clock)."""
    counts, items = _types(classes)
    while high - low > tolerance * high and time.monotonic() < deadline:
        middle = (low + high) / 2
        if coverable_layers(counts, items, middle) < num_layers * (1 - _MARGIN):
            high = middle
        else:
            low = middle
    return high


def coverable_layers(counts: list[int], items: list[_Item], flow: float) -> float:
    """An upper bound on how many layers configurations carrying `flow` can cover."""
    inf = highspy.kHighsInf
    master = new_highs(1)
    for count in counts:
        master.addRow(-inf, float(count), 0, np.array([], dtype=np.int32), np.array([]))
    columns = 0

    def add(members: list[_Item]) -> None:
        nonlocal columns
        usage = np.zeros(len(counts))
        for item in members:
            usage[item.kind] += 1 / item.layers
        index = np.nonzero(usage)[0].astype(np.int32)
        master.addCol(-1.0, 0.0, inf, len(index), index, usage[index])
        columns += 1

    for item in items:  # start from one-type configurations
        needed = math.ceil(flow / item.capacity - 1e-12)
        if needed <= counts[item.kind]:
            add([item] * needed)
    if columns == 0:  # only mixed configurations cover a layer, if any: seed one
        seed = _cheapest(counts, items, flow, np.ones(len(counts)))
        if seed is None:
            return 0.0
        add(seed[1])
    while True:
        master.run()
        duals = np.maximum(0.0, -np.array(master.getSolution().row_dual))
        priced = _cheapest(counts, items, flow, duals)
        if priced is None:
            return 0.0
        cheapest, members = priced
        if cheapest >= 1 - 1e-7 or columns >= _MAX_COLUMNS:
            # weak duality: duals / cheapest are feasible for the dual of the full LP
            return float(np.dot(duals, counts)) / (cheapest * (1 - _MARGIN)) if cheapest > 0 else math.inf
        add(members)


def _cheapest(counts: list[int], items: list[_Item], flow: float,
              duals: np.ndarray) -> tuple[float, list[_Item]] | None:
    """The least sum y_c/k over a configuration with sum T >= flow (a lower bound on it from
    HiGHS' dual bound), and that configuration's members; None if no configuration covers."""
    pricing = new_highs(1)
    chosen = [pricing.addVariable(0, counts[i.kind], float(duals[i.kind]) / i.layers,
                                  type=highspy.HighsVarType.kInteger)
              for i in items]
    pricing.addConstr(pricing.qsum(i.capacity * x for i, x in zip(items, chosen)) >= flow)
    for kind, count in enumerate(counts):
        members = [x for i, x in zip(items, chosen) if i.kind == kind]
        if members:
            pricing.addConstr(pricing.qsum(members) <= count)
    pricing.setOptionValue("mip_rel_gap", 0.0)
    pricing.run()
    if pricing.getModelStatus() != highspy.HighsModelStatus.kOptimal:
        return None
    info = pricing.getInfo()
    value = min(info.objective_function_value, info.mip_dual_bound)
    members = [item for item, amount in zip(items, pricing.getSolution().col_value) for _ in range(round(amount))]
    return value, members


def _types(classes: Sequence[NodeClass]) -> tuple[list[int], list[_Item]]:
    """Node counts per GPU type and the (type, layers) items with positive capacity."""
    kinds = sorted({c.gpu for c in classes})
    counts = [sum(len(c.nodes) for c in classes if c.gpu == gpu) for gpu in kinds]
    caps = {c.gpu: c.caps for c in classes}
    items = [_Item(i, k, t) for i, gpu in enumerate(kinds) for k, t in enumerate(caps[gpu], start=1) if t > 0]
    return counts, items
