"""The placement MILP, modelled in PuLP and solved by HiGHS through highspy.

Formulation (per node class, see `topology`): integer n[c,a,k] = how many nodes of class c
hold layers [a, a+k); continuous y[c,a,k] = tokens/s through them, y <= T_c(k) n. At every
layer boundary l of every group, flow of ranges ending at l plus flow arriving from other
groups equals flow of ranges starting at l plus flow leaving for other groups. Cross-group
flow h[G,H,l] is bounded by what the classes ending (starting) at l can send (receive) over
their links. Inside one group the model is exact (links there cannot bind), so its dual
bound certifies too; across groups the planner uses a conservative link model to search,
and the certified bound comes from `bound`. Either way the plan's throughput is what the
max-flow evaluator measures on the concrete placement.

Compared with Helix's per-node formulation with start-index big-M switches, the interval
variables make layer contiguity exact in the LP, and counting identical nodes removes their
symmetry.
"""

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import highspy
import numpy as np
import pulp

from helix_planner.errors import InfeasiblePlacement, PlanningError
from helix_planner.highs_session import new_highs
from helix_planner.models import ModelSpec
from helix_planner.topology import NodeClass, Topology

Layout = dict[str, tuple[int, int]]
Progress = Callable[[str], None]


@dataclass(frozen=True)
class MilpSettings:
    time_limit: float = 60.0
    mip_gap: float = 1e-4
    threads: int = 2
    progress_every: float = 2.0
    seed: int = 0


@dataclass(frozen=True)
class MilpSolution:
    counts: dict[tuple[str, int, int], int]  # (class key, start, length) -> nodes
    objective: float
    bound: float
    status: str
    seconds: float
    optimal: bool


@dataclass
class PlacementModel:
    problem: pulp.LpProblem
    n: dict[tuple[str, int, int], pulp.LpVariable]
    y: dict[tuple[str, int, int], pulp.LpVariable]
    h: dict[tuple[int, int, int], pulp.LpVariable]


def build_model(topology: Topology, model: ModelSpec, *, previous: dict[tuple[str, int, int], int] | None = None,
                churn_weight: float = 0.0, flow_cap: float = float("inf"),
                conservative_links: bool = False) -> PlacementModel:
    """The PuLP model; `previous` counts (class, start, length) of the running plan for churn.

    `flow_cap` is any known upper bound U on the total flow: no single node can usefully
    carry more than U, so capacities are capped at U, which tightens the LP relaxation.

    With `conservative_links`, flow between groups at a boundary is also limited to the
    slowest cross link times a count of sender/receiver pairs that surely exist: a model whose solutions
    the evaluator can usually realise, used to find placements; without it, the model is a
    relaxation whose optimum is a certified upper bound.
    """
    L = model.num_layers
    prob = pulp.LpProblem("helix_placement", pulp.LpMaximize)
    n: dict[tuple[str, int, int], pulp.LpVariable] = {}
    y: dict[tuple[str, int, int], pulp.LpVariable] = {}
    for cls in topology.classes:
        for k in range(1, cls.max_layers + 1):
            if cls.caps[k - 1] <= 0:
                continue
            for a in range(0, L - k + 1):
                if a == 0 and cls.source_cap <= 0 or a + k == L and cls.sink_cap <= 0:
                    continue
                key = (cls.key, a, k)
                cat = pulp.LpBinary if len(cls.nodes) == 1 else pulp.LpInteger
                n[key] = prob.add_variable(f"n_{cls.key}_{a}_{k}", 0, len(cls.nodes), cat)
                y[key] = prob.add_variable(f"y_{cls.key}_{a}_{k}", 0)
                prob += y[key] <= min(cls.caps[k - 1], flow_cap) * n[key], f"cap_{cls.key}_{a}_{k}"
        prob += pulp.lpSum(v for key, v in n.items() if key[0] == cls.key) <= len(cls.nodes), f"count_{cls.key}"

    by_class = {cls.key: cls for cls in topology.classes}
    ends: dict[tuple[int, int], list[pulp.LpVariable]] = {}
    starts: dict[tuple[int, int], list[pulp.LpVariable]] = {}
    end_counts: dict[tuple[str, int], list[pulp.LpVariable]] = {}
    start_counts: dict[tuple[str, int], list[pulp.LpVariable]] = {}
    for (ck, a, k), var in y.items():
        g = by_class[ck].group
        starts.setdefault((g, a), []).append(var)
        ends.setdefault((g, a + k), []).append(var)
        start_counts.setdefault((ck, a), []).append(n[(ck, a, k)])
        end_counts.setdefault((ck, a + k), []).append(n[(ck, a, k)])

    h: dict[tuple[int, int, int], pulp.LpVariable] = {}
    groups = range(len(topology.groups))
    for g in groups:
        for hh in groups:
            if g == hh:
                continue
            for l in range(1, L):
                send = pulp.lpSum(topology.cross_out[(c.key, hh)] * v
                                  for c in topology.classes if c.group == g
                                  for v in end_counts.get((c.key, l), []))
                receive = pulp.lpSum(topology.cross_in[(g, c.key)] * v
                                     for c in topology.classes if c.group == hh
                                     for v in start_counts.get((c.key, l), []))
                if not send or not receive:
                    continue
                var = h[(g, hh, l)] = prob.add_variable(f"h_{g}_{hh}_{l}", 0)
                prob += var <= send, f"send_{g}_{hh}_{l}"
                prob += var <= receive, f"recv_{g}_{hh}_{l}"
                if conservative_links:
                    _limit_pairs(prob, topology, g, hh, l, var, end_counts, start_counts)

    for g in groups:
        for l in range(1, L):
            out = [v for (a, b, ll), v in h.items() if a == g and ll == l]
            inc = [v for (a, b, ll), v in h.items() if b == g and ll == l]
            prob += (pulp.lpSum(ends.get((g, l), [])) + pulp.lpSum(inc)
                     == pulp.lpSum(starts.get((g, l), [])) + pulp.lpSum(out)), f"bal_{g}_{l}"
            if out:
                prob += pulp.lpSum(out) <= pulp.lpSum(ends.get((g, l), [])), f"sendown_{g}_{l}"
            if inc:
                prob += pulp.lpSum(inc) <= pulp.lpSum(starts.get((g, l), [])), f"recvown_{g}_{l}"

    for cls in topology.classes:
        first = [(y[key], n[key]) for key in y if key[0] == cls.key and key[1] == 0]
        last = [(y[key], n[key]) for key in y if key[0] == cls.key and key[1] + key[2] == L]
        if first:
            prob += (pulp.lpSum(v for v, _ in first) <= cls.source_cap * pulp.lpSum(c for _, c in first),
                     f"src_{cls.key}")
        if last:
            prob += pulp.lpSum(v for v, _ in last) <= cls.sink_cap * pulp.lpSum(c for _, c in last), f"snk_{cls.key}"

    total_in = pulp.lpSum(v for key, v in y.items() if key[1] == 0)
    total_out = pulp.lpSum(v for key, v in y.items() if key[1] + key[2] == L)
    prob += total_in == total_out, "in_equals_out"
    objective = total_in
    if previous and churn_weight > 0:
        moved = []
        for key, count in previous.items():
            if key in n:
                z = prob.add_variable(f"moved_{key[0]}_{key[1]}_{key[2]}", 0)
                prob += z >= count - n[key], f"churn_{key[0]}_{key[1]}_{key[2]}"
                moved.append(key[2] * z)
            else:
                moved.append(key[2] * count)
        objective = objective - churn_weight * pulp.lpSum(moved)
    prob += objective
    if not y:
        raise PlanningError("no node can hold any layer range of the model: check GPU memory and front-end links")
    return PlacementModel(prob, n, y, h)


def _limit_pairs(prob: pulp.LpProblem, topology: Topology, g: int, hh: int, l: int, flow: pulp.LpVariable,
                 end_counts: dict[tuple[str, int], list[pulp.LpVariable]],
                 start_counts: dict[tuple[str, int], list[pulp.LpVariable]]) -> None:
    """flow <= slowest link * (e + s) / 2, a count of pairs that surely exist.

    With e senders and s receivers there are e*s pairs, and e*s >= (e+s)/2 whenever both
    are at least 1; when either is 0 the balance constraints already stop the flow.
    """
    senders = pulp.lpSum(v for c in topology.classes if c.group == g for v in end_counts.get((c.key, l), []))
    receivers = pulp.lpSum(v for c in topology.classes if c.group == hh for v in start_counts.get((c.key, l), []))
    prob += flow <= topology.pair_min[(g, hh)] * 0.5 * (senders + receivers), f"pairs_{g}_{hh}_{l}"


def solve(built: PlacementModel, settings: MilpSettings, *, warm_start: dict[tuple[str, int, int], int] | None = None,
          progress: Progress | None = None, cancel: threading.Event | None = None) -> MilpSolution:
    """Solve with HiGHS: time limit, relative gap, threads, warm start, progress lines."""
    columns = built.problem.variables()
    index = {v.name: i for i, v in enumerate(columns)}
    highs = new_highs(settings.threads)
    highs.setOptionValue("time_limit", float(settings.time_limit))
    highs.setOptionValue("mip_rel_gap", float(settings.mip_gap))
    highs.setOptionValue("random_seed", int(settings.seed))
    highs.passModel(_to_highs_lp(built.problem, columns, index))

    if warm_start:
        start = _complete_warm_start(built, columns, index, warm_start, settings)
        if start is not None:
            solution = highspy.HighsSolution()
            solution.col_value = start
            solution.value_valid = True
            highs.setSolution(solution)
            if progress:
                value = float(np.dot(np.array(highs.getLp().col_cost_), start))
                progress(f"milp warm start {value:.1f} tok/s")

    started = time.monotonic()
    last_report = [0.0]

    def on_interrupt(event: highspy.HighsCallbackEvent) -> None:
        now = time.monotonic() - started
        if cancel is not None and cancel.is_set():
            event.interrupt()
        if progress and now - last_report[0] >= settings.progress_every:
            last_report[0] = now
            out = event.data_out
            progress(_progress_line(out.mip_primal_bound, out.mip_dual_bound, now))

    def on_improving(event: highspy.HighsCallbackEvent) -> None:
        if progress:
            out = event.data_out
            progress(_progress_line(out.mip_primal_bound, out.mip_dual_bound, time.monotonic() - started,
                                    "new incumbent"))

    highs.cbMipInterrupt.subscribe(on_interrupt)
    highs.cbMipImprovingSolution.subscribe(on_improving)
    highs.run()
    seconds = time.monotonic() - started
    status = highs.getModelStatus()
    info = highs.getInfo()
    status_text = highs.modelStatusToString(status)
    if status == highspy.HighsModelStatus.kInfeasible:
        raise InfeasiblePlacement("the placement problem is infeasible: no contiguous layer assignment reaches "
                                  "the front end")
    if info.primal_solution_status != highspy.kSolutionStatusFeasible:
        raise PlanningError(
            f"HiGHS found no placement within {settings.time_limit:.0f}s ({status_text}); raise the time limit"
        )
    values = highs.getSolution().col_value
    counts = {key: int(round(values[index[var.name]])) for key, var in built.n.items()}
    counts = {key: c for key, c in counts.items() if c > 0}
    bound = float(info.mip_dual_bound) if math.isfinite(info.mip_dual_bound) else float("inf")
    return MilpSolution(
        counts=counts,
        objective=float(info.objective_function_value),
        bound=bound,
        status=status_text,
        seconds=seconds,
        optimal=status == highspy.HighsModelStatus.kOptimal,
    )


def _complete_warm_start(built: PlacementModel, columns: list[pulp.LpVariable], index: dict[str, int],
                         counts: dict[tuple[str, int, int], int], settings: MilpSettings) -> list[float] | None:
    """Fix the integer counts of a known placement and solve the LP for the flows.

    HiGHS accepts a start only if every column is feasible, so the continuous part (flows)
    comes from this LP rather than from rounding an evaluator's numbers.
    """
    lp = _to_highs_lp(built.problem, columns, index)
    lower, upper = np.array(lp.col_lower_), np.array(lp.col_upper_)
    for key, var in built.n.items():
        lower[index[var.name]] = upper[index[var.name]] = float(counts.get(key, 0))
    lp.col_lower_, lp.col_upper_ = lower, upper
    lp.integrality_ = [highspy.HighsVarType.kContinuous] * lp.num_col_
    fixed = new_highs(settings.threads)
    fixed.setOptionValue("time_limit", max(1.0, settings.time_limit / 10))
    fixed.passModel(lp)
    fixed.run()
    if fixed.getModelStatus() != highspy.HighsModelStatus.kOptimal:
        return None
    return list(fixed.getSolution().col_value)


def _progress_line(primal: float, dual: float, elapsed: float, note: str = "") -> str:
    finite = dual and math.isfinite(dual) and math.isfinite(primal) and dual > 0
    gap = (dual - primal) / dual * 100 if finite else float("nan")
    incumbent = f"{primal:10.1f}" if math.isfinite(primal) else "         -"
    return f"milp {elapsed:7.1f}s  incumbent {incumbent}  bound {dual:10.1f}  gap {gap:6.2f}%  {note}".rstrip()


def _to_highs_lp(problem: pulp.LpProblem, columns: list[pulp.LpVariable], index: dict[str, int]) -> highspy.HighsLp:
    """Translate the PuLP model into HiGHS arrays (column-wise costs/bounds, row-wise matrix)."""
    lp = highspy.HighsLp()
    inf = highspy.kHighsInf
    lp.num_col_ = len(columns)
    sense = 1.0 if problem.sense == pulp.LpMaximize else -1.0
    costs = np.zeros(len(columns))
    for var, coef in problem.objective.items():
        costs[index[var.name]] = coef
    lp.col_cost_ = costs
    lp.offset_ = float(problem.objective.constant or 0.0)
    lp.sense_ = highspy.ObjSense.kMaximize if sense > 0 else highspy.ObjSense.kMinimize
    lp.col_lower_ = np.array([-inf if v.lowBound is None else float(v.lowBound) for v in columns])
    lp.col_upper_ = np.array([inf if v.upBound is None else float(v.upBound) for v in columns])
    lp.integrality_ = [highspy.HighsVarType.kInteger if v.cat == pulp.LpInteger else highspy.HighsVarType.kContinuous
                       for v in columns]
    lower: list[float] = []
    upper: list[float] = []
    starts: list[int] = [0]
    indices: list[int] = []
    values: list[float] = []
    for constraint in problem.constraints():
        rhs = -float(constraint.constant)
        if constraint.sense == pulp.LpConstraintEQ:
            lower.append(rhs)
            upper.append(rhs)
        elif constraint.sense == pulp.LpConstraintLE:
            lower.append(-inf)
            upper.append(rhs)
        else:
            lower.append(rhs)
            upper.append(inf)
        for var, coef in constraint.items():
            indices.append(index[var.name])
            values.append(float(coef))
        starts.append(len(indices))
    lp.num_row_ = len(lower)
    lp.row_lower_ = np.array(lower)
    lp.row_upper_ = np.array(upper)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    lp.a_matrix_.start_ = np.array(starts, dtype=np.int32)
    lp.a_matrix_.index_ = np.array(indices, dtype=np.int32)
    lp.a_matrix_.value_ = np.array(values)
    lp.a_matrix_.num_col_ = len(columns)
    lp.a_matrix_.num_row_ = len(lower)
    return lp


def class_counts(layout: Layout, topology: Topology) -> dict[tuple[str, int, int], int]:
    """A concrete layout as (class, start, length) counts: for warm starts and churn."""
    owner = {name: cls for cls in topology.classes for name in cls.nodes}
    counts: dict[tuple[str, int, int], int] = {}
    for name, (start, end) in layout.items():
        if name in owner:
            key = (owner[name].key, start, end - start)
            counts[key] = counts.get(key, 0) + 1
    return counts


def assign_nodes(counts: dict[tuple[str, int, int], int], topology: Topology,
                 previous: Layout | None = None) -> Layout:
    """Give each counted range a concrete node of its class, keeping nodes where they were."""
    by_key: dict[str, NodeClass] = {cls.key: cls for cls in topology.classes}
    layout: Layout = {}
    for class_key in sorted({key[0] for key in counts}):
        wanted = sorted(((a, a + k), c) for (ck, a, k), c in counts.items() if ck == class_key)
        free = list(by_key[class_key].nodes)
        pending: list[tuple[int, int]] = []
        for rng, count in wanted:
            for _ in range(count):
                keeper = next((n for n in free if previous and previous.get(n) == rng), None)
                if keeper is None:
                    pending.append(rng)
                else:
                    free.remove(keeper)
                    layout[keeper] = rng
        for rng in pending:
            layout[free.pop(0)] = rng
    return layout

