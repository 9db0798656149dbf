"""The analytical serving model against the simulator, and the IWRR scheduler's lazy KV check."""

import numpy as np
import pytest
from plankit import reference_case

from helix_planner.planner import PlannerOptions, plan_cluster
from helix_planner.serving_model import estimate_serving
from helix_planner.serving_plan import ServingObjective, plan_for_serving
from helix_planner.sim.inputs import scenario_from_plan
from helix_planner.sim.request import Request
from helix_planner.sim.routes import route_fits
from helix_planner.sim.schedulers import IwrrScheduler
from helix_planner.sim.simulation import SimConfig, Simulation
from helix_planner.sim.workload import load_lengths

WINDOW = SimConfig(warmup=30.0, duration=60.0, seed=1)


def _scenarios(reference, catalog, floors):
    cluster, model, _, _ = reference_case(reference, catalog, "single24")
    plans = [plan_cluster(cluster, model, PlannerOptions(time_limit=3, throughput_model="helix",
                                                         min_layer_fraction=floor), catalog=catalog)
             for floor in floors]
    return cluster, model, [scenario_from_plan(p, cluster, model, catalog, f"floor {f}") for p, f in zip(plans, floors)]


def test_the_model_holds_what_the_simulator_admits_and_is_an_optimist(reference, catalog) -> None:
    _, _, scenarios = _scenarios(reference, catalog, (0.0, 0.85))
    lengths = load_lengths("fixed:750,240", reference)
    estimates = [estimate_serving(s, 750, 240) for s in scenarios]
    runs = [Simulation(s, "iwrr", WINDOW, lengths).run() for s in scenarios]
    for estimate, run in zip(estimates, runs):
        # KV room decides how many requests run: the progressive filling finds the simulator's count.
        assert estimate.in_flight == pytest.approx(run.in_flight_at_end, rel=0.02)
        assert estimate.ttft == pytest.approx(run.ttft.p50, rel=0.5)
        # Requests move in bunches that a steady-state average does not see: the model is optimistic.
        assert run.decode_throughput < estimate.decode_throughput < 3 * run.decode_throughput


def test_a_front_end_cap_limits_the_modelled_requests(reference, catalog) -> None:
    _, _, (scenario,) = _scenarios(reference, catalog, (0.0,))
    free = estimate_serving(scenario, 750, 240)
    capped = estimate_serving(type(scenario)(**{**scenario.__dict__, "max_in_flight": round(free.in_flight / 2)}),
                              750, 240)
    assert capped.in_flight == pytest.approx(round(free.in_flight / 2))
    assert capped.decode_throughput < free.decode_throughput


def test_large_clusters_are_judged_by_the_model(reference, catalog) -> None:
    cluster, model, _, _ = reference_case(reference, catalog, "single24")
    lengths = load_lengths("fixed:750,240", reference)
    objective = ServingObjective(floors=(0.0, 0.85), window=WINDOW, estimate_from_nodes=len(cluster.nodes))
    lines: list[str] = []
    plan, candidates = plan_for_serving(cluster, model, PlannerOptions(time_limit=4, throughput_model="helix"),
                                        lengths, objective, catalog=catalog, progress=lines.append)
    assert {c.judged_by for c in candidates} == {"model"}
    assert sum("estimated decode" in line for line in lines) == len(candidates)
    assert plan.layout == max(candidates, key=lambda c: c.decode_throughput).plan.layout


def test_iwrr_checks_kv_room_lazily_and_chooses_as_the_eager_check_did(reference, catalog) -> None:
    _, _, (scenario,) = _scenarios(reference, catalog, (0.0,))
    simulation = Simulation(scenario, "iwrr", WINDOW, load_lengths("fixed:750,240", reference))
    scheduler = simulation.scheduler
    assert isinstance(scheduler, IwrrScheduler)
    eager_twin = IwrrScheduler(simulation.graph, np.random.default_rng(0))
    routes = scheduler.routes
    rng = np.random.default_rng(0)
    refusals = 0
    for step in range(200):
        request = Request(step, 750, 240, 0.0)
        eager = [route_fits(route, request) for route in routes]
        expected = routes[eager_twin.iwrr.next(eager)] if any(eager) else None
        assert scheduler.choose(request, 0.0) is expected
        if expected is None:  # every route is full somewhere: free one node and go on
            refusals += 1
            route = routes[rng.integers(len(routes))]
            route[rng.integers(len(route))].node.kv.reserved = 0.0
            continue
        for hop in expected:
            hop.node.kv.reserve(request.worst_case_tokens * hop.layers * 50)
    assert refusals > 10
