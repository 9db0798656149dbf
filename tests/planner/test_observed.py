"""Observed capacity against the catalog: ratios, effective inputs, and the debounced, churn-aware tracker."""

import json

import pytest

from helix_planner.errors import PlanningError
from helix_planner.io.cluster_yaml import cluster_from_mapping
from helix_planner.models import get_model
from helix_planner.observed import (
    DriftTracker,
    LinkSample,
    NodeObservation,
    Observed,
    StepSample,
    drifts,
    effective_inputs,
    measured_ratios,
    parse_observed,
    plan_value,
    restore_gpu_types,
)
from helix_planner.planner import PlannerOptions, plan_cluster
from helix_planner.throughput.profiled import layer_curves

MODEL = get_model("llama3-8b")
GBPS = 1.25e8  # bytes/s of 1 Gbit/s


@pytest.fixture(scope="module")
def fleet(catalog):
    nodes = [{"name": f"w-{i}", "gpu": "A100" if i < 2 else "L4", "region": "a" if i % 2 == 0 else "b"}
             for i in range(4)]
    cluster, _ = cluster_from_mapping({"nodes": nodes, "network": {
        "intraRegion": {"bandwidth": "10Gbps", "latency": "1ms"},
        "interRegion": {"bandwidth": "1Gbps", "latency": "20ms"}}})
    plan = plan_cluster(cluster, MODEL, PlannerOptions(time_limit=5), catalog=catalog)
    return cluster, plan


def steps(catalog, gpu: str, slowdown: float, layers: int = 8, count: int = 8) -> NodeObservation:
    """Decode and prefill steps that take `slowdown` times what the catalog says."""
    prompt, decode = layer_curves(catalog, MODEL, catalog.gpu(gpu))
    return NodeObservation(gpu, (0, layers),
                           tuple(StepSample(b, layers, layers * decode(b) * slowdown) for b in range(1, count + 1)),
                           (StepSample(512, layers, layers * prompt(512) * slowdown),))


def observed_with(catalog, cluster, slow: dict[str, float], links: dict[tuple[str, str], float]) -> Observed:
    nodes = {n.name: steps(catalog, n.gpu, slow.get(n.name, 1.0)) for n in cluster.nodes}
    frames = {key: tuple(LinkSample(1 << 20, (1 << 20) / (cluster.link(*key).bandwidth * share)) for _ in range(4))
              for key, share in links.items()}
    return Observed("abc", nodes, frames)


def test_the_document_round_trips_through_json(catalog, fleet) -> None:
    cluster, _ = fleet
    observed = observed_with(catalog, cluster, {"w-0": 2.0}, {("w-0", "w-1"): 0.5})
    document = json.loads(json.dumps(observed.to_document()))
    assert parse_observed(document) == observed
    assert document["links"]["w-0>w-1"]["bytesPerSecond"] == pytest.approx(0.5 * GBPS)


@pytest.mark.parametrize("document, complaint", [
    ({"nodes": {"w-0": {"layers": [0, 4], "decode": [[1, 4]]}}}, r"nodes.w-0.decode\[0\] must be a list of 3"),
    ({"nodes": {"w-0": {"decode": []}}}, "nodes.w-0.layers must be a list of 2"),
    ({"links": {"w-0": {"samples": []}}}, "link 'w-0' must be named 'from>to'"),
    ([1, 2], "the document must be an object"),
])
def test_a_malformed_document_names_the_field(document, complaint) -> None:
    with pytest.raises(PlanningError, match=complaint):
        parse_observed(document)


def test_a_slow_node_and_a_thin_link_drift_and_nothing_else(catalog, fleet) -> None:
    cluster, _ = fleet
    observed = observed_with(catalog, cluster, {"w-2": 2.1, "w-1": 1.1}, {("w-0", "w-1"): 0.5, ("w-2", "w-3"): 1.0})
    ratios = {d.key: d.ratio for d in measured_ratios(cluster, catalog, MODEL, observed)}
    assert ratios["w-2"] == pytest.approx(2.1) and ratios["w-1"] == pytest.approx(1.1)
    assert ratios["w-0>w-1"] == pytest.approx(0.5) and ratios["w-2>w-3"] == pytest.approx(1.0)
    found = drifts(cluster, catalog, MODEL, observed, threshold=0.25)
    assert [d.key for d in found] == ["w-2", "w-0>w-1"]
    assert found[0].description == "w-2 decodes 2.10x slower than its L4 profile"


def test_effective_inputs_plan_around_the_slow_node(catalog, fleet) -> None:
    cluster, plan = fleet
    slow = "w-2"  # an L4 holding half of a two-stage pipeline: moving layers off it pays
    observed = observed_with(catalog, cluster, {slow: 3.0}, {})
    effective = effective_inputs(cluster, catalog, MODEL, observed, threshold=0.25)
    derived = effective.cluster.node(slow).gpu
    assert derived == "L4@observed-3.00x" and derived in effective.catalog.gpus
    assert derived not in catalog.gpus  # the caller's catalog is left alone
    assert plan_value(plan, cluster, catalog, MODEL) == pytest.approx(plan.throughput, rel=1e-3)
    degraded = plan_value(plan, effective.cluster, effective.catalog, MODEL)
    assert degraded < 0.9 * plan.throughput
    fresh = plan_cluster(effective.cluster, MODEL, PlannerOptions(time_limit=5), catalog=effective.catalog)
    restored = restore_gpu_types(fresh, cluster)
    assert {n.gpu_type for n in restored.nodes} <= {"A100", "L4"}
    assert plan_value(restored, effective.cluster, effective.catalog, MODEL) > degraded


def test_a_thin_link_gets_its_observed_bandwidth(catalog, fleet) -> None:
    cluster, _ = fleet
    observed = observed_with(catalog, cluster, {}, {("w-0", "w-1"): 0.4})
    effective = effective_inputs(cluster, catalog, MODEL, observed, threshold=0.25)
    assert effective.cluster.link("w-0", "w-1").bandwidth == pytest.approx(0.4 * GBPS)
    assert effective.cluster.link("w-1", "w-0").bandwidth == pytest.approx(GBPS)
    assert cluster.link("w-0", "w-1").bandwidth == pytest.approx(GBPS)


def test_the_tracker_waits_out_the_debounce_and_ignores_flapping(catalog, fleet) -> None:
    cluster, _ = fleet
    calm = measured_ratios(cluster, catalog, MODEL, observed_with(catalog, cluster, {"w-2": 1.2}, {}))
    slow = measured_ratios(cluster, catalog, MODEL, observed_with(catalog, cluster, {"w-2": 2.1}, {}))
    tracker = DriftTracker(threshold=0.25, debounce_seconds=30, min_gain=0.05)
    assert all(tracker.update(calm, t) is None for t in (0, 40, 80))  # below the threshold
    for t in (100, 120, 125):  # drifting, then calm once: the clock restarts
        assert tracker.update(slow, t) is None
    assert tracker.update(calm, 130) is None
    assert tracker.update(slow, 140) is None and tracker.update(slow, 165) is None
    sustained = tracker.update(slow, 180)
    assert sustained is not None and [d.key for d in sustained.drifts] == ["w-2"]
    assert sustained.message == "w-2 decodes 2.10x slower than its L4 profile for 40 s"
    tracker.settle()
    assert tracker.update(slow, 300) is None  # acted on: no longer drift
    assert tracker.update(calm, 301) is None and tracker.update(calm, 331) is not None  # back to normal is drift too


def test_replanning_must_gain_enough() -> None:
    tracker = DriftTracker(min_gain=0.1)
    assert tracker.worth_replanning(100.0, 111.0)
    assert not tracker.worth_replanning(100.0, 105.0)
    assert not tracker.worth_replanning(0.0, 0.0)
    with pytest.raises(PlanningError, match="threshold > 0"):
        DriftTracker(threshold=0)
