"""plan_cluster end to end: optimality on the paper's small case, plan documents, bad input."""

import json
from dataclasses import replace

import pytest
from plankit import reference_case

from helix_planner.cluster import Link, Node
from helix_planner.errors import PlanningError
from helix_planner.io.cluster_yaml import cluster_from_mapping
from helix_planner.models import get_model, model_from_mapping
from helix_planner.network import NetworkModel, build_cluster
from helix_planner.plan_format import load_plan
from helix_planner.planner import PlannerOptions, plan_cluster


def test_small10_is_proven_optimal(reference, catalog) -> None:
    cluster, model, _, published = reference_case(reference, catalog, "small10")
    plan = plan_cluster(cluster, model, PlannerOptions(time_limit=30, throughput_model="helix"), catalog=catalog)
    assert plan.throughput >= published * 0.999
    assert plan.gap is not None and plan.gap < 1e-4
    assert plan.solver.status == "optimal"


def test_single24_beats_the_published_helix_plan(reference, catalog) -> None:
    cluster, model, _, published = reference_case(reference, catalog, "single24")
    plan = plan_cluster(cluster, model, PlannerOptions(time_limit=10, throughput_model="helix"), catalog=catalog)
    assert plan.throughput > 1.5 * published
    assert plan.upper_bound >= plan.throughput
    assert plan.gap < 0.01


def test_plan_document_round_trips_and_pipelines_carry_the_flow(reference, catalog) -> None:
    cluster, model, _, _ = reference_case(reference, catalog, "hetero42")
    plan = plan_cluster(cluster, model, PlannerOptions(time_limit=3, throughput_model="helix"), catalog=catalog)
    document = json.loads(plan.to_json())
    assert document["schemaVersion"] == 1 and document["planHash"] == plan.plan_hash
    again = load_plan(plan.to_json())
    assert again.plan_hash == plan.plan_hash and again.layout == plan.layout
    assert sum(p.tokens_per_second for p in plan.pipelines) == pytest.approx(plan.throughput, rel=1e-3)
    for pipeline in plan.pipelines:
        assert pipeline.stages[0].start == 0 and pipeline.stages[-1].end == model.num_layers
        assert all(a.end == b.start for a, b in zip(pipeline.stages, pipeline.stages[1:]))
    assert document["maxInFlight"] is None and again.max_in_flight is None
    capped = replace(plan, max_in_flight=300)
    assert load_plan(capped.to_json()).max_in_flight == 300
    assert capped.plan_hash != plan.plan_hash  # the front end runs differently, so a rollout must see it
    for bad in (0, -5, "many", 2.5):
        with pytest.raises(PlanningError, match="maxInFlight must be a positive integer"):
            load_plan(json.dumps({**document, "maxInFlight": bad}))


def test_replan_from_previous_plan_keeps_nodes_in_place(reference, catalog) -> None:
    cluster, model, _, _ = reference_case(reference, catalog, "single24")
    options = PlannerOptions(time_limit=5, throughput_model="helix", churn_weight=50.0)
    first = plan_cluster(cluster, model, options, catalog=catalog)
    again = plan_cluster(cluster, model, options, previous=first, catalog=catalog)
    assert again.throughput >= first.throughput * 0.999
    moved = [n for n, rng in first.layout.items() if again.layout.get(n) != rng]
    assert len(moved) <= 2


def _yaml_cluster(nodes, network=None):
    return cluster_from_mapping({"nodes": nodes, "network": network or {}})[0]


def test_profiled_model_plans_gpus_without_measurements(catalog) -> None:
    cluster = _yaml_cluster([{"name": f"h{i}", "gpu": "H100", "region": "a"} for i in range(2)]
                            + [{"name": f"l{i}", "gpu": "L40S", "region": "b"} for i in range(3)],
                            {"interRegion": {"bandwidth": "10Gbps", "latency": "20ms"}})
    plan = plan_cluster(cluster, get_model("llama3-70b"), PlannerOptions(time_limit=5), catalog=catalog)
    assert plan.throughput > 0 and plan.upper_bound >= plan.throughput
    assert plan.throughput_model == "profiled"


def test_model_too_large_for_the_fleet(catalog) -> None:
    cluster = _yaml_cluster([{"name": "t0", "gpu": "T4"}])
    with pytest.raises(PlanningError, match="does not fit.*add GPU nodes"):
        plan_cluster(cluster, get_model("llama3-70b"), PlannerOptions(time_limit=5), catalog=catalog)


def test_unknown_gpu_type_names_the_fix(catalog) -> None:
    cluster = _yaml_cluster([{"name": "x", "gpu": "B200"}])
    with pytest.raises(PlanningError, match="unknown GPU type 'B200'.*catalog"):
        plan_cluster(cluster, get_model("llama3-8b"), PlannerOptions(time_limit=5), catalog=catalog)


def test_disconnected_network_is_explained(catalog) -> None:
    cluster = build_cluster([Node("a", "A100"), Node("b", "A100")], NetworkModel())
    for key in [k for k in cluster.links if k[0] == "source"]:
        del cluster.links[key]
    with pytest.raises(PlanningError, match="front end cannot reach"):
        plan_cluster(cluster, get_model("llama3-8b"), PlannerOptions(time_limit=5), catalog=catalog)


def test_partitioned_network_is_explained(catalog) -> None:
    # Each node holds at most half of the model and they have no link to each other.
    cluster = _yaml_cluster([{"name": "a", "gpu": "L4", "region": "x"}, {"name": "b", "gpu": "L4", "region": "y"}],
                            {"links": [{"from": "a", "to": "b", "disabled": True}]})
    model = model_from_mapping({"name": "half", "numLayers": 20, "hiddenSize": 4096, "bytesPerLayer": 0.9e9,
                                "kvBytesPerTokenLayer": 4096})
    with pytest.raises(PlanningError, match="no placement carries any flow"):
        plan_cluster(cluster, model, PlannerOptions(time_limit=5), catalog=catalog)


def test_zero_bandwidth_link_is_rejected() -> None:
    cluster = _yaml_cluster([{"name": "a", "gpu": "A100"}])
    with pytest.raises(PlanningError, match="zero bandwidth"):
        cluster.add_link(Link("a", "sink", 0.0))


def test_geo24_is_proven_optimal_above_the_published_plan(reference, catalog) -> None:
    cluster, model, _, published = reference_case(reference, catalog, "geo24")
    plan = plan_cluster(cluster, model, PlannerOptions(time_limit=20, throughput_model="helix"), catalog=catalog)
    assert plan.throughput > 1.4 * published
    assert plan.gap < 1e-4 and plan.solver.status == "optimal"
