"""spec.planner.objective reaches the planner: MaxFlow by default, Serving on request."""

import logging
import threading

import pytest
from opkit import fleet, fleet_spec

from helix_operator.api.spec import parse_spec
from helix_operator.fleet.discovery import discover, node_facts
from helix_operator.planning import runner
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


def test_serving_candidates_are_judged_with_the_front_ends_routing(monkeypatch) -> None:
    judged_with = []

    def stop_at_the_objective(cluster, model, options, lengths, objective, **kwargs):
        judged_with.append(objective.scheduler)
        raise RuntimeError("the objective is built")

    monkeypatch.setattr(runner, "plan_for_serving", stop_at_the_objective)
    keys = set()
    for routing in ("adaptive", "iwrr"):
        spec = parse_spec(fleet_spec(objective="Serving") | {"frontend": {"routing": routing}})
        found = discover([node_facts(n) for n in fleet()], spec.pools, CATALOG)
        keys.add(inputs_key(spec, found, CATALOG))
        with pytest.raises(RuntimeError, match="the objective is built"):
            solve(PlanRequest("test", spec, found, CATALOG), threading.Event(), logging.getLogger("test"))
    assert judged_with == ["adaptive", "iwrr"]
    assert len(keys) == 2  # a routing change replans a Serving cluster (a MaxFlow one ignores it)
