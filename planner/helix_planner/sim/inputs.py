"""Build what to simulate from files: a cluster, and a layout given as a Helix `[Solution]`
.ini, a plan JSON, a baseline heuristic's name, or nothing (then the planner plans it).

The pipelines come from the plan, or from the max flow of the layout under the chosen
throughput model; a plan that names nodes or GPU types the cluster lacks is refused.
"""

from collections.abc import Callable
from pathlib import Path

from helix_planner.cluster import Cluster
from helix_planner.errors import PlanningError
from helix_planner.flow import evaluate
from helix_planner.heuristics import BASELINES
from helix_planner.io.cluster_files import load_cluster
from helix_planner.io.helix_ini import load_layout_ini
from helix_planner.models import ModelSpec, get_model
from helix_planner.pipelines import decompose
from helix_planner.plan_format import Plan, load_plan
from helix_planner.planner import PlannerOptions, capacity_model_for, plan_cluster
from helix_planner.profiles import Catalog
from helix_planner.sim.simulation import Scenario

OVERLAPPING_BASELINES = ("petals", "swarm")  # their stages overlap: routed with partial inference


def load_scenario(cluster_source: str, layout: str | None, catalog: Catalog, *, model_name: str | None = None,
                  throughput_model: str = "profiled", partial_inference: bool = False, plan_time_limit: float = 30.0,
                  progress: Callable[[str], None] | None = None) -> Scenario:
    cluster, cluster_model = load_cluster(cluster_source)
    model = get_model(model_name) if model_name else cluster_model or get_model("llama2-70b")
    options = PlannerOptions(time_limit=plan_time_limit, throughput_model=throughput_model)
    if layout is None:
        plan = plan_cluster(cluster, model, options, catalog=catalog, progress=progress)
        return scenario_from_plan(plan, cluster, model, catalog, f"{cluster.name}: planned ({plan.solver.method})")
    if layout.endswith(".json"):
        path = Path(layout)
        if not path.is_file():
            raise PlanningError(f"plan file {layout} not found")
        return scenario_from_plan(load_plan(path.read_text()), cluster, model, catalog, f"{cluster.name}: {path.name}")
    capacity = capacity_model_for(cluster, model, options, catalog)
    if layout in BASELINES:
        placement = BASELINES[layout](cluster, model, capacity)
        partial_inference = partial_inference or layout in OVERLAPPING_BASELINES
        label = f"{cluster.name}: {layout} heuristic"
    elif layout.endswith(".ini"):
        if not Path(layout).is_file():
            raise PlanningError(f"layout file {layout} not found")
        placement = load_layout_ini(Path(layout), cluster)
        label = f"{cluster.name}: {Path(layout).parent.name}/{Path(layout).name}"
    else:
        raise PlanningError(f"--layout {layout!r}: give a Helix [Solution] .ini, a plan .json, or one of "
                            f"{', '.join(BASELINES)}")
    flow = evaluate(cluster, model, capacity, placement, partial_inference=partial_inference)
    if flow.value <= 0:
        hint = "" if partial_inference else "; for overlapping (Petals/Swarm) layouts add --partial-inference"
        raise PlanningError(f"layout {layout} carries no flow on {cluster.name}{hint}")
    return Scenario(label, cluster, model, catalog, placement, decompose(flow.edge_flow, placement), partial_inference)


def scenario_from_plan(plan: Plan, cluster: Cluster, model: ModelSpec, catalog: Catalog, label: str) -> Scenario:
    if plan.model.get("name") != model.name:
        raise PlanningError(f"plan/cluster mismatch: the plan is for {plan.model.get('name')!r}, "
                            f"the simulation for {model.name!r} (use --model)")
    for node in plan.nodes:
        gpu = next((n.gpu for n in cluster.nodes if n.name == node.name), None)
        if gpu is None:
            raise PlanningError(f"plan/cluster mismatch: plan node {node.name} is not in cluster {cluster.name!r}")
        if gpu != node.gpu_type:
            raise PlanningError(f"plan/cluster mismatch: plan node {node.name} is a {node.gpu_type}, "
                                f"the cluster says {gpu}")
    return Scenario(label, cluster, model, catalog, plan.layout, plan.pipelines,
                    any(s.start != plan.layout[s.node][0] for p in plan.pipelines for s in p.stages),
                    plan.max_in_flight)
