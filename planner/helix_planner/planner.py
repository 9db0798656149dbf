"""Plan a cluster: heuristics, a certified bound, the MILP, and the plan document.

    plan = plan_cluster(cluster, model, PlannerOptions(time_limit=60))

Order of work: every heuristic placement is scored by the exact max-flow evaluator; the
position-free bound certifies how far the best can be from optimal; if the gap is larger
than asked, the MILP (HiGHS) searches from the best placement for the remaining time.
The plan's throughput is always the evaluator's max flow of the concrete placement.
"""

import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from helix_planner.bound import position_free_bound
from helix_planner.cluster import SINK, SOURCE, Cluster
from helix_planner.config_bound import configuration_bound
from helix_planner.errors import InfeasiblePlacement, ModelDoesNotFit, PlanningError
from helix_planner.fleet import (
    FLEET_NODES,
    fleet_bound,
    fleet_classes,
    fleet_layouts,
    layers_moved,
    repair,
    replace_lost,
)
from helix_planner.flow import FlowResult, evaluate
from helix_planner.heuristics import BASELINES
from helix_planner.milp import MilpSettings, MilpSolution, assign_nodes, build_model, class_counts, solve
from helix_planner.models import ModelSpec
from helix_planner.pipelines import decompose
from helix_planner.plan_format import Plan, PlannedEdge, PlannedNode, SolverReport
from helix_planner.profiles import Catalog, load_catalog
from helix_planner.regional import chain_layout
from helix_planner.stage_mix import stage_mix_layout
from helix_planner.sweep_search import beam_sweep, beam_sweep_targets
from helix_planner.throughput import CapacityModel
from helix_planner.throughput.helix import HelixCapacityModel
from helix_planner.throughput.min_layers import MinLayersCapacityModel
from helix_planner.throughput.profiled import ProfiledCapacityModel
from helix_planner.topology import Topology, build_topology

Layout = dict[str, tuple[int, int]]
METHODS = ("auto", "milp", "chain", "sweep", *BASELINES)
PARTIAL_INFERENCE_METHODS = ("petals", "swarm")
STAGE_MIX_SHARE = 0.15  # of the time limit, at most, for mixed-stage chains (counted from the start)
CONFIGURATION_SHARE = 0.2  # of the time limit, at most, for the configuration bound
BEAM_SHARE = 0.75  # of the time limit, at most, for staggered sweeps in one group (counted from the start)


@dataclass(frozen=True)
class PlannerOptions:
    time_limit: float = 60.0
    mip_gap: float = 1e-4
    threads: int = 2
    throughput_model: str = "profiled"
    method: str = "auto"
    churn_weight: float = 0.0
    seed: int = 0
    min_layer_fraction: float = 0.0  # each used node holds >= this share of its layer limit (see min_layers)


def capacity_model_for(cluster: Cluster, model: ModelSpec, options: PlannerOptions, catalog: Catalog) -> CapacityModel:
    """The node-capacity model the options name, validated against the cluster's GPU types."""
    gpus = {node.gpu for node in cluster.nodes}
    for gpu in sorted(gpus):
        catalog.gpu(gpu)
    if options.throughput_model == "helix":
        base: CapacityModel = HelixCapacityModel(catalog, model.name, model.num_layers, cluster.gpu_counts())
    elif options.throughput_model == "profiled":
        base = ProfiledCapacityModel(catalog, model, gpus)
    else:
        raise PlanningError(f"unknown throughput model {options.throughput_model!r}: use `profiled` or `helix`")
    return MinLayersCapacityModel(base, options.min_layer_fraction) if options.min_layer_fraction > 0 else base


def check_network(cluster: Cluster) -> None:
    """The front end must reach some node and hear back from some node."""
    if not any(src == SOURCE for src, _ in cluster.links):
        raise InfeasiblePlacement(f"the front end cannot reach any node of {cluster.name!r}: add front-end links "
                            "(network.frontend in YAML, [Link-source-i] in .ini)")
    if not any(dst == SINK for _, dst in cluster.links):
        raise InfeasiblePlacement(f"no node of {cluster.name!r} can answer the front end: add links to the sink")


def check_fits(cluster: Cluster, model: ModelSpec, capacity_model: CapacityModel) -> None:
    """The fleet must be able to hold every layer at least once."""
    slots = sum(capacity_model.max_layers(node.gpu) for node in cluster.nodes)
    if slots < model.num_layers:
        raise ModelDoesNotFit(
            f"{model.name} does not fit: its {model.num_layers} layers need room for {model.num_layers} "
            f"layer copies but the {len(cluster.nodes)} nodes hold at most {slots}; add GPU nodes or "
            "choose a smaller model"
        )


def plan_cluster(
    cluster: Cluster,
    model: ModelSpec,
    options: PlannerOptions | None = None,
    *,
    previous: Plan | None = None,
    catalog: Catalog | None = None,
    progress: Callable[[str], None] | None = None,
    cancel: threading.Event | None = None,
) -> Plan:
    """The best placement found within the time limit, with its certified bound and pipelines."""
    options = options or PlannerOptions()
    if options.method not in METHODS:
        raise PlanningError(f"unknown planning method {options.method!r}: use one of {', '.join(METHODS)}")
    say = progress or (lambda _line: None)
    started = time.monotonic()
    catalog = catalog or load_catalog()
    capacity_model = capacity_model_for(cluster, model, options, catalog)
    check_network(cluster)
    check_fits(cluster, model, capacity_model)
    if options.method == "sweep" or options.method == "auto" and len(cluster.nodes) >= FLEET_NODES:
        return _plan_fleet(cluster, model, capacity_model, options, previous, started, say)
    topology = build_topology(cluster, model, capacity_model)

    candidates = _candidates(cluster, model, capacity_model, topology, options, previous)
    if not candidates:
        raise PlanningError(f"method {options.method!r} produced no placement for this cluster")
    # Petals and Swarm layouts overlap by design: a stage may start inside a node's range.
    partial = options.method in PARTIAL_INFERENCE_METHODS
    scored = {name: evaluate(cluster, model, capacity_model, layout, partial_inference=partial)
              for name, layout in candidates.items()}
    for name, result in scored.items():
        say(f"heuristic {name:10s} {result.value:12.1f} tok/s")
    best_name = max(scored, key=lambda n: scored[n].value)
    best_layout, best = candidates[best_name], scored[best_name]

    bound = position_free_bound(topology, model.num_layers, threads=1)
    say(f"bound      position-free {bound:12.1f} tok/s")
    if options.method in ("auto", "milp") and _gap(best.value, bound) > options.mip_gap:
        share = started + STAGE_MIX_SHARE * options.time_limit
        layout, _ = stage_mix_layout(topology.classes, model.num_layers, best.value, bound, share)
        if layout:
            result = evaluate(cluster, model, capacity_model, layout)
            say(f"heuristic {'stage-mix':10s} {result.value:12.1f} tok/s")
            if result.value > best.value * (1 + 1e-9):
                best_name, best_layout, best = "stage-mix", layout, result
        share = time.monotonic() + CONFIGURATION_SHARE * options.time_limit
        bound = configuration_bound(topology.classes, model.num_layers, best.value, bound, deadline=share)
        say(f"bound      configurations {bound:11.1f} tok/s")
        if len(topology.groups) == 1 and _gap(best.value, bound) > options.mip_gap:
            share = started + BEAM_SHARE * options.time_limit
            for target in beam_sweep_targets(best.value, bound):
                layout = beam_sweep(topology.classes, model.num_layers, target, share) or {}
                if layout:
                    result = evaluate(cluster, model, capacity_model, layout)
                    say(f"heuristic {'beam-sweep':10s} {result.value:12.1f} tok/s (target {target:.1f})")
                    if result.value > best.value * (1 + 1e-9):
                        best_name, best_layout, best = "beam-sweep", layout, result
                if time.monotonic() > share:
                    break
    method, status = best_name, "heuristic"
    if options.method in ("auto", "milp") and _gap(best.value, bound) > options.mip_gap:
        # Leave a little of the budget for placing nodes, evaluating and decomposing the result.
        deadline = started + options.time_limit - min(5.0, 0.05 * options.time_limit)
        if deadline - time.monotonic() > 1.0:
            milp = _run_milp(topology, model, options, best_layout, previous, bound, deadline, say, cancel)
            layout = assign_nodes(milp.counts, topology, previous.layout if previous else None)
            result = evaluate(cluster, model, capacity_model, layout)
            say(f"milp       {result.value:12.1f} tok/s ({milp.status})")
            if result.value > best.value * (1 + 1e-9):
                best_layout, best, method = layout, result, "milp"
            exact = len(topology.groups) == 1 and options.churn_weight == 0
            if exact and milp.bound < bound:
                bound = max(milp.bound, best.value)
            status = milp.status
    if best.value <= 0:
        raise InfeasiblePlacement(_no_flow_message(cluster))
    gap = _gap(best.value, bound)
    if gap <= options.mip_gap:
        status = "optimal"
    seconds = time.monotonic() - started
    say(f"plan       {best.value:12.1f} tok/s  bound {bound:.1f}  gap {gap * 100:.3f}%  in {seconds:.1f}s")
    return _build_plan(cluster, model, capacity_model, best_layout, best, bound, options,
                       SolverReport(method=method, status=status, seconds=seconds, mip_gap=options.mip_gap,
                                    time_limit=options.time_limit, threads=options.threads))


def _plan_fleet(cluster: Cluster, model: ModelSpec, capacity_model: CapacityModel, options: PlannerOptions,
                previous: Plan | None, started: float, say: Callable[[str], None]) -> Plan:
    """Large fleets: the sweeps, the baselines (and, replanning, the repaired previous layout)
    scored by the exact max flow, less `churn_weight` per layer moved; certified by the fleet
    bound. A replan that charges for churn skips the baselines: they move nearly every layer."""
    classes = fleet_classes(cluster, model, capacity_model)
    candidates = fleet_layouts(classes, model.num_layers, previous.layout if previous else None)
    if previous is None or options.churn_weight == 0:
        candidates.update({name: fn(cluster, model, capacity_model) for name, fn in BASELINES.items()})
    if previous is not None:
        flows = {n.name: n.flow for n in previous.nodes}
        for direction, backward in (("forward", False), ("backward", True)):
            candidates[f"repair-{direction}"] = repair(previous.layout, flows, classes, model.num_layers,
                                                       previous.throughput, backward=backward)
        candidates["replace"] = replace_lost(previous.layout, classes)
    scored = {name: evaluate(cluster, model, capacity_model, layout) for name, layout in candidates.items()}
    moved = {name: layers_moved(previous.layout, layout) if previous else 0 for name, layout in candidates.items()}
    for name, result in scored.items():
        say(f"fleet      {name:14s} {result.value:12.1f} tok/s  {moved[name]:6d} layers moved")
    best_name = max(scored, key=lambda n: scored[n].value - options.churn_weight * moved[n])
    best = scored[best_name]
    if best.value <= 0:
        raise InfeasiblePlacement(_no_flow_message(cluster))
    bound = fleet_bound(classes, model.num_layers)
    gap = _gap(best.value, bound)
    seconds = time.monotonic() - started
    say(f"plan       {best.value:12.1f} tok/s  bound {bound:.1f}  gap {gap * 100:.3f}%  in {seconds:.1f}s")
    status = "optimal" if gap <= options.mip_gap else "heuristic"
    return _build_plan(cluster, model, capacity_model, candidates[best_name], best, bound, options,
                       SolverReport(method=best_name, status=status, seconds=seconds, mip_gap=options.mip_gap,
                                    time_limit=options.time_limit, threads=options.threads))


def _candidates(cluster: Cluster, model: ModelSpec, capacity_model: CapacityModel, topology: Topology,
                options: PlannerOptions, previous: Plan | None) -> dict[str, Layout]:
    if options.method in BASELINES:
        return {options.method: BASELINES[options.method](cluster, model, capacity_model)}
    candidates = {"chain": chain_layout(topology, model)[0]}
    if options.method != "chain":
        candidates.update({name: fn(cluster, model, capacity_model) for name, fn in BASELINES.items()})
    if previous is not None:
        kept = {n: r for n, r in previous.layout.items() if n in set(cluster.node_names)
                and r[1] - r[0] <= capacity_model.max_layers(cluster.node(n).gpu)}
        candidates["previous"] = kept
    return {name: layout for name, layout in candidates.items() if layout}


def _run_milp(topology: Topology, model: ModelSpec, options: PlannerOptions, start: Layout, previous: Plan | None,
              bound: float, deadline: float, say: Callable[[str], None],
              cancel: threading.Event | None) -> MilpSolution:
    """The MILP from the best placement so far; capacities capped at the certified bound."""
    previous_counts = class_counts(previous.layout, topology) if previous else None
    built = build_model(topology, model, previous=previous_counts, churn_weight=options.churn_weight,
                        flow_cap=bound, conservative_links=len(topology.groups) > 1)
    seconds = max(1.0, deadline - time.monotonic())
    settings = MilpSettings(time_limit=seconds, mip_gap=options.mip_gap, threads=options.threads, seed=options.seed)
    return solve(built, settings, warm_start=class_counts(start, topology), progress=say, cancel=cancel)


def _gap(value: float, bound: float) -> float:
    return max(0.0, (bound - value) / bound) if bound > 0 else 0.0


def _no_flow_message(cluster: Cluster) -> str:
    return (f"no placement carries any flow in cluster {cluster.name!r}: the front end cannot reach a node "
            "holding the first layer, or no path of links joins nodes that can hold the model in order; "
            "check the network (missing or zero-bandwidth links) and the front-end links")


def _build_plan(cluster: Cluster, model: ModelSpec, capacity_model: CapacityModel, layout: Layout,
                result: FlowResult, bound: float, options: PlannerOptions, solver: SolverReport) -> Plan:
    nodes = [
        PlannedNode(name=n.name, gpu_type=n.gpu, region=n.region, start=layout[n.name][0], end=layout[n.name][1],
                    capacity=result.node_capacity.get(n.name, 0.0), flow=result.node_flow.get(n.name, 0.0))
        for n in cluster.nodes if n.name in layout and result.node_flow.get(n.name, 0.0) > 1e-9
    ]
    used = {n.name for n in nodes}
    edges = [PlannedEdge(a, b, flow, result.edge_capacity.get((a, b), 0.0))
             for (a, b), flow in sorted(result.edge_flow.items()) if flow > 1e-9]
    pipelines = decompose(result.edge_flow, {k: v for k, v in layout.items() if k in used})
    return Plan(
        model={"name": model.name, "numLayers": model.num_layers, "hiddenSize": model.hidden_size,
               "dtype": model.dtype},
        cluster=cluster.name,
        throughput_model=capacity_model.name,
        nodes=nodes,
        edges=edges,
        pipelines=pipelines,
        throughput=result.value,
        upper_bound=bound,
        solver=solver,
        inputs_hash=inputs_hash(cluster, model, options),
        bottlenecks=result.bottlenecks,
    )


def inputs_hash(cluster: Cluster, model: ModelSpec, options: PlannerOptions) -> str:
    """Identifies what was planned for: nodes, links, model and planner options."""
    body = {
        "nodes": [(n.name, n.gpu, n.region) for n in cluster.nodes],
        "links": cluster.link_signature(),
        "model": asdict(model),
        "options": asdict(options),
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]
