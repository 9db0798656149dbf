"""Plan for served traffic: max-flow plans under several stage floors, scored by the simulator.

Max flow (Helix's objective, and `plan_cluster`'s) counts the tokens/s a placement could
sustain if every node were kept busy. Served traffic is bound by KV room and by the round
trip of every decode step through every stage, which max flow does not see: it prefers many
thin stages, and on the paper's clusters those deep pipelines lose decode throughput (and
time to first token) against shallower ones with less max flow. So this plans once per stage
floor (`PlannerOptions.min_layer_fraction`: each used node holds at least that share of the
layers it could), simulates every distinct placement saturated with the given request
lengths and scheduler, and keeps the one with the highest decode throughput (among those
meeting the p95 TTFT target when one is given). The result is an ordinary plan; its bound
is the unrestricted max-flow bound, so its gap says how much max flow it gives up. Where every
node's layer cap is below the floors' shares, the floors all give one layout, though several may
tie on max flow and serve far apart; an objective can then have the planner's baselines and
max flow on the fastest GPU types alone (`ServingObjective.heuristics`) judged beside them.

Saturated, a placement runs as many requests as KV room allows, and the last of them add
more time to first token (bigger decode batches ahead of every prompt, at every stage) than
decode throughput. So a placement that misses the TTFT target is also judged with the front
end admitting fewer requests at once (`CAP_FRACTIONS` of what it held saturated), and the
plan carries the cap that met the target (`Plan.max_in_flight`).

A fleet's saturated simulation costs minutes (its work is every decode step of tens of
thousands of requests at every stage), so clusters of `ServingObjective.estimate_from_nodes`
nodes or more are judged by the analytical model of `serving_model` instead, which follows
the same protocol in milliseconds per candidate; the benchmark simulates the chosen plan.
"""

import math
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from helix_planner.cluster import Cluster
from helix_planner.errors import InfeasiblePlacement, PlanningError
from helix_planner.fleet import FLEET_NODES
from helix_planner.heuristics import BASELINES
from helix_planner.models import ModelSpec
from helix_planner.plan_format import Plan
from helix_planner.planner import PlannerOptions, plan_cluster
from helix_planner.profiles import Catalog
from helix_planner.serving_model import estimate_serving
from helix_planner.sim.inputs import scenario_from_plan
from helix_planner.sim.metrics import SimResult
from helix_planner.sim.schedulers import scheduler_class
from helix_planner.sim.simulation import Scenario, SimConfig, Simulation
from helix_planner.sim.workload import LengthTrace
from helix_planner.throughput.profiled import layer_curves

FLOORS = (0.0, 0.3, 0.5, 0.7, 0.85)
FASTEST = "fastest"  # max flow on the fastest GPU types alone: without the slowest type, the two slowest, ...
HEURISTICS = (*BASELINES, FASTEST)
# Admission caps tried on a placement that misses the TTFT target, as shares of the requests it held saturated.
CAP_FRACTIONS = (0.95, 0.9, 0.85, 0.8, 0.75, 0.7)
DEFAULT_LENGTHS = "fixed:750,240"  # Helix's average request (prompt, output tokens)


@dataclass(frozen=True)
class ServingObjective:
    """How candidates are made and judged. The planning time limit is shared among floors. The
    judging runs use their own seed (1), so a benchmark that measures the chosen plan with the
    simulator's default seed (0) does not grade it on the sample it was chosen on."""

    floors: tuple[float, ...] = FLOORS
    # The front end's HELIX_ROUTING has a simulator counterpart of the same name (the operator passes
    # it); IWRR stays the default here because the closed-loop calibration was measured with it.
    scheduler: str = "iwrr"
    window: SimConfig = field(default_factory=lambda: SimConfig(warmup=60.0, duration=240.0, seed=1))
    ttft_slo: float | None = None  # seconds of p95 TTFT a candidate must meet (None: throughput alone)
    seeds: int = 1  # runs per candidate (seeds window.seed, +1, ...): one run's p95 TTFT moves by about ±10%
    estimate_from_nodes: int = FLEET_NODES  # clusters this large are judged by `serving_model`, not simulated
    # Alternatives judged beside the floors' max-flow plans (any of `HEURISTICS`): the planner's baselines, and
    # FASTEST, max flow without the slowest GPU types. Where every node's layer cap already meets the floors,
    # the floors all give one layout, one of several that tie on max flow.
    heuristics: tuple[str, ...] = ()


@dataclass(frozen=True)
class Candidate:
    """A plan and how it did: means over the judging runs."""

    floor: float
    plan: Plan
    decode_throughput: float
    ttft_p95: float
    in_flight: float  # requests admitted at the end of a saturated run
    judged_by: str = "simulator"  # or "model": then ttft_p95 is the model's typical time to first token
    heuristic: str = ""  # what made it if not a floor's max-flow plan: a baseline ("swarm"), or "without T4"

    @property
    def label(self) -> str:
        return self.heuristic or f"floor {self.floor:g}"


def plan_for_serving(cluster: Cluster, model: ModelSpec, options: PlannerOptions, lengths: LengthTrace,
                     objective: ServingObjective | None = None, *, catalog: Catalog, previous: Plan | None = None,
                     progress: Callable[[str], None] | None = None,
                     cancel: threading.Event | None = None) -> tuple[Plan, list[Candidate]]:
    """The chosen plan and every candidate that was simulated (in floor order)."""
    objective = objective or ServingObjective()
    scheduler_class(objective.scheduler)  # an unknown name fails before any planning
    if not objective.floors or objective.floors[0] != 0.0:
        raise PlanningError("the serving objective needs floor 0 first: it gives the unrestricted max-flow bound")
    say = progress or (lambda _line: None)
    started = time.monotonic()
    budget = options.time_limit / len(objective.floors)
    candidates: list[Candidate] = []
    bound = 0.0
    for floor in objective.floors:
        if cancel is not None and cancel.is_set():
            break
        try:
            plan = plan_cluster(cluster, model, replace(options, time_limit=budget, min_layer_fraction=floor),
                                previous=previous, catalog=catalog, cancel=cancel)
        except InfeasiblePlacement as error:
            say(f"serving    floor {floor:.2f}: no placement ({error})")
            continue
        bound = bound or plan.upper_bound or 0.0
        if any(c.plan.layout == plan.layout for c in candidates):
            continue
        saturated = judge(plan, floor, objective, cluster, model, catalog, lengths)
        say(f"serving    floor {floor:.2f}: max flow {plan.throughput:9.1f}  {_judged(saturated)}  "
            f"{max(len(p.stages) for p in plan.pipelines)} stages deep")
        candidates.append(saturated)
        if objective.ttft_slo is None or saturated.ttft_p95 <= objective.ttft_slo:
            continue
        held = round(saturated.in_flight)
        for cap in sorted({max(1, round(f * held)) for f in CAP_FRACTIONS} - {held}, reverse=True):
            capped = judge(replace(plan, max_in_flight=cap), floor, objective, cluster, model, catalog, lengths)
            say(f"serving    floor {floor:.2f}, at most {cap} in flight: {_judged(capped)}")
            candidates.append(capped)
            if capped.ttft_p95 <= objective.ttft_slo:
                break
    alternatives = [(method, cluster, replace(options, method=method, min_layer_fraction=0.0))
                    for method in objective.heuristics if method != FASTEST]
    if FASTEST in objective.heuristics:
        alternatives += [(label, fewer, replace(options, time_limit=budget, min_layer_fraction=0.0))
                         for label, fewer in without_slowest(cluster, model, catalog)]
    for label, planned_on, planning in alternatives:
        if cancel is not None and cancel.is_set():
            break
        try:
            plan = plan_cluster(planned_on, model, planning, catalog=catalog, cancel=cancel)
        except PlanningError as error:
            say(f"serving    {label}: no placement ({error})")
            continue
        if any(c.plan.layout == plan.layout for c in candidates):
            continue
        judged = replace(judge(plan, 0.0, objective, cluster, model, catalog, lengths), heuristic=label)
        say(f"serving    {label}: max flow {plan.throughput:9.1f}  {_judged(judged)}")
        candidates.append(judged)
    if not candidates:
        if cancel is not None and cancel.is_set():
            raise PlanningError("planning was cancelled before any candidate was judged")
        raise InfeasiblePlacement(f"no stage floor gives a placement for {cluster.name!r}")
    chosen = choose(candidates, objective.ttft_slo)
    chosen_cap = chosen.plan.max_in_flight
    say(f"serving    chose {chosen.label}" + (f", at most {chosen_cap} requests in flight" if chosen_cap else ""))
    shape = chosen.label + (f", max {chosen_cap} in flight" if chosen_cap else "")
    solver = replace(chosen.plan.solver, method=f"serving({shape}, {chosen.plan.solver.method})",
                     status="simulated-best", time_limit=options.time_limit, seconds=time.monotonic() - started)
    return replace(chosen.plan, upper_bound=max(bound, chosen.plan.throughput), solver=solver), candidates


def without_slowest(cluster: Cluster, model: ModelSpec, catalog: Catalog) -> list[tuple[str, Cluster]]:
    """`cluster` less its slowest GPU type, less its two slowest, ... (by a one-row decode step per layer), each
    with what it left out. Max flow uses every node it can; with few requests in flight, a shallower pipeline
    of faster GPUs can serve more."""
    step = {gpu: layer_curves(catalog, model, catalog.gpu(gpu))[1](1.0) for gpu in cluster.gpu_counts()}
    slowest_first = sorted(step, key=lambda gpu: step[gpu], reverse=True)
    return [(f"without {', '.join(slowest_first[:k])}",
             cluster.without({n.name for n in cluster.nodes if n.gpu in slowest_first[:k]}))
            for k in range(1, len(slowest_first))]


def judge(plan: Plan, floor: float, objective: ServingObjective, cluster: Cluster, model: ModelSpec,
          catalog: Catalog, lengths: LengthTrace) -> Candidate:
    """`plan` simulated saturated with the objective's scheduler, window and seeds (estimated
    by `serving_model` on clusters of `objective.estimate_from_nodes` nodes or more)."""
    scenario = scenario_from_plan(plan, cluster, model, catalog, f"{cluster.name}: floor {floor:.2f}")
    if len(cluster.nodes) >= objective.estimate_from_nodes:
        estimate = estimate_serving(scenario, float(lengths.inputs.mean()), float(lengths.outputs.mean()),
                                    objective.window.kv_high_water)
        return Candidate(floor, plan, estimate.decode_throughput, estimate.ttft, estimate.in_flight, "model")
    runs = judging_runs(scenario, objective, lengths)
    return Candidate(floor, plan, statistics.mean(r.decode_throughput for r in runs),
                     statistics.mean(r.ttft.p95 for r in runs), statistics.mean(r.in_flight_at_end for r in runs))


def judging_runs(scenario: Scenario, objective: ServingObjective, lengths: LengthTrace) -> list[SimResult]:
    """`scenario` run with the objective's scheduler and window, once per judging seed."""
    return [Simulation(scenario, objective.scheduler, replace(objective.window, seed=objective.window.seed + i),
                       lengths).run() for i in range(objective.seeds)]


def _judged(candidate: Candidate) -> str:
    if candidate.judged_by == "model":
        return (f"estimated decode {candidate.decode_throughput:8.1f} tok/s  TTFT {candidate.ttft_p95:6.1f} s "
                "(analytical model)")
    return f"simulated decode {candidate.decode_throughput:8.1f} tok/s  p95 TTFT {candidate.ttft_p95:6.1f} s"


def choose(candidates: list[Candidate], ttft_slo: float | None) -> Candidate:
    """Highest decode throughput among the candidates whose p95 TTFT meets `ttft_slo`; the
    lowest p95 TTFT when none does (a run too short to see a first token never meets it)."""
    def ttft(c: Candidate) -> float:
        return c.ttft_p95 if math.isfinite(c.ttft_p95) else math.inf

    meeting = [c for c in candidates if ttft_slo is None or ttft(c) <= ttft_slo]
    if not meeting:
        return min(candidates, key=ttft)
    return max(meeting, key=lambda c: c.decode_throughput)
