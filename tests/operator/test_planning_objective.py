"""spec.planner.objective reaches the planner: MaxFlow by default, Serving on request."""

import logging
import threading

from opkit import fleet, fleet_spec

from helix_operator.api.spec import parse_spec
from helix_operator.fleet.discovery import discover, node_facts
from helix_operator.planning.inputs import inputs_key
from helix_operator.planning.runner import PlanRequest, solve
from helix_planner.profiles import load_catalog

CATALOG = load_catalog()


def _plan(**planner):
    spec = parse_spec(fleet_spec(**planner))
    found = discover([node_facts(n) for n in fleet()], spec.pools, CATALOG)
    return spec, found, solve(PlanRequest("test", spec, found, CATALOG), threading.Event(), logging.getLogger("test"))


def test_default_objective_is_max_flow() -> None:
    spec, _, plan = _plan()
    assert spec.planner.objective == "MaxFlow"
    assert not plan.solver.method.startswith("serving")


def test_serving_objective_plans_per_stage_floor_and_changes_the_inputs_key() -> None:
    spec, found, plan = _plan(objective="Serving", sloTtftSeconds=60, timeLimitSeconds=5)
    assert spec.planner.slo_ttft == 60
    assert plan.solver.method.startswith("serving(floor ") and plan.solver.status == "simulated-best"
    assert plan.throughput > 0 and plan.pipelines
    max_flow = parse_spec(fleet_spec(timeLimitSeconds=5))
    assert inputs_key(spec, found, CATALOG) != inputs_key(max_flow, found, CATALOG)
