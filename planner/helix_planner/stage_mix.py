"""Stage chains whose stages mix GPU types, found by column generation.

A stage is a set of nodes holding the same layers; a chain of stages carries F when every
stage's capacities add up to F. `regional.chain_layout` builds stages of one class each, so
each stage overshoots F by up to a node; mixing types inside a stage (two L4s and a T4 where
three L4s were too many) wastes less. For a target F this is a cutting-stock problem:

    max sum_(l,S) l * u_(l,S)   s.t.   sum_(l,S) S_c * u_(l,S) <= N_c  for each GPU type c,

over stages of l layers with type counts S, sum_c S_c T_c(l) >= F; integer u = how many such
stages. Its LP is solved by column generation (pricing: for each l, the cheapest S under the
duals, a small integer program), then the integer program over the generated stages gives a
chain; if it covers every layer, the chain carries F. Bisection on F, within a time budget.
Links are not modelled: the planner scores the layout with the exact max flow.
"""

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import highspy
import numpy as np

from helix_planner.highs_session import new_highs
from helix_planner.topology import NodeClass

Layout = dict[str, tuple[int, int]]
_MAX_ROUNDS = 60


@dataclass(frozen=True)
class _Kind:
    """Nodes of one GPU type and their T(1..K)."""

    nodes: tuple[str, ...]
    caps: tuple[float, ...]

    def capacity(self, layers: int) -> float:
        return self.caps[layers - 1] if layers <= len(self.caps) else 0.0


Stage = tuple[int, tuple[int, ...]]  # (layers, nodes per kind)


def stage_mix_layout(classes: Sequence[NodeClass], num_layers: int, low: float, high: float,
                     deadline: float, *, tolerance: float = 1e-3) -> tuple[Layout, float]:
    """The best mixed-stage chain found with a target in [low, high] before `deadline`
    (monotonic clock), and its target; ({}, 0) if none covers the model."""
    kinds = _kinds(classes)
    best: tuple[list[Stage], float] | None = None
    while high - low > tolerance * high and time.monotonic() < deadline:
        middle = (low + high) / 2
        stages = _chain(kinds, num_layers, middle, deadline)
        if stages is None:
            high = middle
        else:
            low, best = middle, (stages, middle)
    if best is None:
        return {}, 0.0
    return _to_layout(kinds, best[0], num_layers, best[1]), best[1]


def _chain(kinds: list[_Kind], num_layers: int, flow: float, deadline: float) -> list[Stage] | None:
    """Stages covering at least `num_layers` layers at `flow`, or None."""
    counts = [len(k.nodes) for k in kinds]
    longest = max(len(k.caps) for k in kinds)
    inf = highspy.kHighsInf
    master = new_highs(1)
    for count in counts:
        master.addRow(-inf, float(count), 0, np.array([], dtype=np.int32), np.array([]))
    columns: list[Stage] = []

    def add(stage: Stage) -> None:
        index = np.array([i for i, n in enumerate(stage[1]) if n], dtype=np.int32)
        master.addCol(-float(stage[0]), 0.0, inf, len(index), index, np.array([float(stage[1][i]) for i in index]))
        columns.append(stage)

    for i, kind in enumerate(kinds):  # one-type stages to start from
        for layers in range(1, len(kind.caps) + 1):
            cap = kind.capacity(layers)
            needed = math.ceil(flow / cap - 1e-12) if cap > 0 else counts[i] + 1
            if needed <= counts[i]:
                add((layers, tuple(needed if j == i else 0 for j in range(len(kinds)))))
    if not columns:
        return None
    for _ in range(_MAX_ROUNDS):
        master.run()
        duals = np.maximum(0.0, -np.array(master.getSolution().row_dual))
        fresh = [s for layers in range(1, longest + 1)
                 if (s := _cheapest_stage(kinds, counts, layers, flow, duals)) is not None and s not in columns]
        if not fresh or time.monotonic() > deadline:
            break
        for stage in fresh:
            add(stage)
    master.run()
    if -master.getInfo().objective_function_value < num_layers - 1e-6:
        return None
    return _integer_chain(columns, counts, num_layers, deadline)


def _cheapest_stage(kinds: list[_Kind], counts: list[int], layers: int, flow: float,
                    duals: np.ndarray) -> Stage | None:
    """The stage of `layers` layers with the least dual cost, if it improves the LP."""
    caps = [k.capacity(layers) for k in kinds]
    if sum(c * n for c, n in zip(caps, counts)) < flow:
        return None
    pricing = new_highs(1)
    chosen = [pricing.addVariable(0, n if c > 0 else 0, float(y), type=highspy.HighsVarType.kInteger)
              for c, n, y in zip(caps, counts, duals)]
    pricing.addConstr(pricing.qsum(c * x for c, x in zip(caps, chosen)) >= flow)
    pricing.setOptionValue("mip_rel_gap", 0.0)
    pricing.run()
    if pricing.getModelStatus() != highspy.HighsModelStatus.kOptimal:
        return None
    if layers - pricing.getInfo().objective_function_value <= 1e-7:
        return None
    return layers, tuple(int(round(v)) for v in pricing.getSolution().col_value)


def _integer_chain(columns: list[Stage], counts: list[int], num_layers: int, deadline: float) -> list[Stage] | None:
    """Integer stage counts over the generated stages covering the most layers."""
    solver = new_highs(1)
    uses = [solver.addVariable(0, num_layers, -float(layers), type=highspy.HighsVarType.kInteger)
            for layers, _ in columns]
    for kind, count in enumerate(counts):
        members = [nodes[kind] * u for (_, nodes), u in zip(columns, uses) if nodes[kind]]
        if members:
            solver.addConstr(solver.qsum(members) <= count)
    solver.setOptionValue("time_limit", max(0.5, deadline - time.monotonic()))
    solver.setOptionValue("mip_rel_gap", 0.0)
    solver.run()
    if solver.getInfo().primal_solution_status != highspy.kSolutionStatusFeasible:
        return None
    if -solver.getInfo().objective_function_value < num_layers - 1e-6:
        return None
    values = solver.getSolution().col_value
    return [stage for stage, v in zip(columns, values) for _ in range(int(round(v)))]


def _to_layout(kinds: list[_Kind], stages: list[Stage], num_layers: int, flow: float) -> Layout:
    """Stages end to end, longest first; surplus layers come off stages that still carry
    `flow` with one layer fewer."""
    lengths = sorted(((layers, nodes) for layers, nodes in stages), key=lambda s: -s[0])
    sizes = [layers for layers, _ in lengths]
    surplus = sum(sizes) - num_layers

    def carries(i: int, layers: int) -> bool:
        return layers > 0 and sum(k.capacity(layers) * n for k, n in zip(kinds, lengths[i][1])) >= flow

    while surplus > 0:
        trimmable = [i for i in range(len(sizes)) if sizes[i] == 1 or carries(i, sizes[i] - 1)]
        if not trimmable:
            break
        i = max(trimmable, key=lambda j: sizes[j])
        sizes[i] -= 1
        surplus -= 1
    layout: Layout = {}
    taken = [0] * len(kinds)
    position = 0
    for size, (_, nodes) in zip(sizes, lengths):
        if size <= 0:
            continue
        for kind, count in enumerate(nodes):
            for name in kinds[kind].nodes[taken[kind]:taken[kind] + count]:
                layout[name] = (position, position + size)
            taken[kind] += count
        position += size
    return layout if position == num_layers else {}


def _kinds(classes: Sequence[NodeClass]) -> list[_Kind]:
    """Classes merged by GPU type (regions ignored: the evaluator judges the links)."""
    gpus = sorted({c.gpu for c in classes})
    return [_Kind(tuple(n for c in classes if c.gpu == gpu for n in c.nodes),
                  next(c.caps for c in classes if c.gpu == gpu))
            for gpu in gpus]
