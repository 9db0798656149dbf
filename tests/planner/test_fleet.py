"""The fleet planner (sweep, fleet bound, repair, region-mesh links, synthetic fleets) and the
configuration bound and mixed-stage chains.

Each test would fail if the piece it covers were wrong: a bound below a proven optimum or a
brute-force one, a sweep whose layout the exact evaluator does not carry at its claimed
flow, a replan that moves most layers, a mesh that answers differently from a dict.
"""

import random
import time
from pathlib import Path

import pytest
from plankit import TableCapacity, mesh, reference_case
from test_milp_and_bound import CAPS, MODEL, NODES, brute_force_optimum

from helix_planner.cluster import Cluster, Link, Node, RegionMesh
from helix_planner.config_bound import _types, configuration_bound, coverable_layers
from helix_planner.fleet import fleet_bound, fleet_classes, layers_moved, replace_lost
from helix_planner.flow import evaluate, handovers
from helix_planner.models import ModelSpec, get_model
from helix_planner.plan_format import Plan
from helix_planner.planner import PlannerOptions, capacity_model_for, plan_cluster
from helix_planner.profiles import Catalog
from helix_planner.stage_mix import stage_mix_layout
from helix_planner.sweep import sweep, sweep_layout
from helix_planner.synthetic import FLEETS, FleetSpec, fleet_cluster

HELIX = PlannerOptions(throughput_model="helix", time_limit=10)
Fleet = tuple[Cluster, ModelSpec, Plan]


@pytest.fixture(scope="module")
def fleet500(catalog: Catalog) -> Fleet:
    cluster = fleet_cluster(FLEETS[500])
    model = get_model("llama2-70b")
    plan = plan_cluster(cluster, model, HELIX, catalog=catalog)
    return cluster, model, plan


@pytest.fixture(scope="module")
def tiny_optimum() -> float:
    return brute_force_optimum(mesh(NODES), MODEL, CAPS)


def test_fleet_bound_is_never_below_a_brute_force_optimum(tiny_optimum: float) -> None:
    bound = fleet_bound(fleet_classes(mesh(NODES), MODEL, CAPS), MODEL.num_layers)
    assert bound >= tiny_optimum * (1 - 1e-6)


@pytest.mark.parametrize("case", ["small10", "single24", "geo24"])
def test_fleet_bound_is_never_below_a_proven_optimum(reference: Path, catalog: Catalog, case: str) -> None:
    cluster, model, capacity, _ = reference_case(reference, catalog, case)
    plan = plan_cluster(cluster, model, HELIX, catalog=catalog)
    assert plan.solver.status == "optimal"
    assert fleet_bound(fleet_classes(cluster, model, capacity), model.num_layers) >= plan.throughput * (1 - 1e-6)


def test_sweep_covers_every_layer_with_exactly_its_target() -> None:
    cluster = mesh([(f"n{i}", gpu, f"r{i % 2}") for i, gpu in enumerate(["fast", "mid", "slow"] * 6)])
    model = ModelSpec(name="toy", num_layers=6, hidden_size=1024, bytes_per_layer=1e9, kv_bytes_per_token_layer=1e3)
    pieces, target = sweep_layout(fleet_classes(cluster, model, CAPS), model.num_layers)
    assert target > 0 and len({p.node for p in pieces}) == len(pieces)
    for layer in range(model.num_layers):
        assert sum(p.flow for p in pieces if p.start <= layer < p.end) == pytest.approx(target, rel=1e-6)
    for p in pieces:
        assert p.flow <= CAPS.capacity(cluster.node(p.node).gpu, p.end - p.start) * (1 + 1e-9)
    layout = {p.node: (p.start, p.end) for p in pieces}
    assert evaluate(cluster, model, CAPS, layout).value == pytest.approx(target, rel=1e-5)  # fast links
    assert sweep(fleet_classes(cluster, model, CAPS), model.num_layers, target * 1.5) is None


def test_fleet_plan_is_what_the_evaluator_measures_within_its_bound(catalog: Catalog, fleet500: Fleet) -> None:
    cluster, model, plan = fleet500
    capacity = capacity_model_for(cluster, model, HELIX, catalog)
    assert plan.solver.method.startswith("sweep")
    assert evaluate(cluster, model, capacity, plan.layout).value == pytest.approx(plan.throughput, rel=1e-6)
    assert plan.upper_bound is not None and plan.throughput <= plan.upper_bound
    assert plan.gap is not None and plan.gap <= 0.05
    # paths under 1e-4 of the total are dropped from the pipelines
    assert sum(p.tokens_per_second for p in plan.pipelines) == pytest.approx(plan.throughput, rel=1e-2)


def test_replan_after_a_node_leaves_moves_few_layers(catalog: Catalog, fleet500: Fleet) -> None:
    cluster, model, plan = fleet500
    lost = max(plan.nodes, key=lambda n: n.flow).name
    smaller = cluster.without({lost})
    replanned = plan_cluster(smaller, model, PlannerOptions(throughput_model="helix", churn_weight=10.0),
                             previous=plan, catalog=catalog)
    assert lost not in replanned.layout and set(replanned.layout) <= set(smaller.node_names)
    placed = sum(end - start for start, end in plan.layout.values())
    assert layers_moved(plan.layout, replanned.layout) <= placed // 2
    assert replanned.throughput >= 0.95 * plan.throughput


def test_region_mesh_answers_as_the_dict_of_its_links() -> None:
    regions = {"a": "x", "b": "x", "c": "y"}
    pairs = {("x", "x"): (10.0, 0.1), ("x", "y"): (2.0, 0.5), ("y", "x"): (3.0, 0.5)}
    links = RegionMesh(regions, pairs)
    links[("source", "a")] = Link("source", "a", 5.0)
    links[("a", "b")] = Link("a", "b", 7.0)
    expected = {("source", "a"): 5.0, ("a", "b"): 7.0, ("b", "a"): 10.0, ("a", "c"): 2.0, ("b", "c"): 2.0,
                ("c", "a"): 3.0, ("c", "b"): 3.0}
    assert {k: v.bandwidth for k, v in links.items()} == expected and len(links) == len(expected)
    del links[("c", "b")]
    assert ("c", "b") not in links and links.get(("c", "b")) is None
    cluster = Cluster([Node(n, "T4", r) for n, r in regions.items()], links)
    assert set(cluster.without({"a"}).links) == {("b", "c")}
    assert cluster.link_signature() != cluster.without({"a"}).link_signature()


def test_fleets_are_seeded_and_shaped_as_documented() -> None:
    for size, spec in FLEETS.items():
        cluster = fleet_cluster(spec)
        assert len(cluster.nodes) == size and len(cluster.regions()) == spec.regions
        assert 6 <= spec.regions <= 10 and len(cluster.gpu_counts()) >= 6
    small = FleetSpec(40, 3, seed=4)
    assert fleet_cluster(small).gpu_counts() == fleet_cluster(small).gpu_counts()
    one, other = fleet_cluster(small), fleet_cluster(FleetSpec(40, 3, seed=5))
    assert [n.gpu for n in one.nodes] != [n.gpu for n in other.nodes]
    a, b = one.nodes[0].name, next(n.name for n in one.nodes if n.region != one.nodes[0].region)
    wan, lan = one.link(a, b), one.link(a, one.nodes[1].name)
    assert wan is not None and lan is not None and wan.bandwidth < lan.bandwidth


def test_handovers_are_the_pairs_where_one_range_ends_and_the_next_starts() -> None:
    rng = random.Random(3)
    layout = {f"n{i}": (a, a + rng.randint(1, 3)) for i in range(40) for a in [rng.randrange(8)]}
    names = sorted(layout)
    expected = {(a, b) for a in names for b in names if layout[a][1] == layout[b][0]}
    assert set(handovers(names, layout, False)) == expected


def test_table_capacity_fleet_of_one_type_splits_the_model_evenly() -> None:
    caps = TableCapacity({"g": [100.0, 50.0]})
    cluster = mesh([(f"n{i}", "g", "r") for i in range(8)])
    model = ModelSpec(name="toy", num_layers=4, hidden_size=1024, bytes_per_layer=1e9, kv_bytes_per_token_layer=1e3)
    classes = fleet_classes(cluster, model, caps)
    pieces, target = sweep_layout(classes, model.num_layers)
    assert target == pytest.approx(200.0, rel=1e-5)  # 8 nodes x 100 layer-tokens/s over 4 layers
    assert fleet_bound(classes, model.num_layers) == pytest.approx(200.0, rel=1e-4)
    assert len(pieces) == 8


def test_configuration_bound_holds_on_tiny_clusters(tiny_optimum: float) -> None:
    other = [("f0", "fast", "r"), ("m0", "mid", "r"), ("m1", "mid", "r"), ("s0", "slow", "r")]
    for nodes, optimum in ((NODES, tiny_optimum), (other, brute_force_optimum(mesh(other), MODEL, CAPS))):
        cluster = mesh(nodes)
        classes = fleet_classes(cluster, MODEL, CAPS)
        high = fleet_bound(classes, MODEL.num_layers)
        bound = configuration_bound(classes, MODEL.num_layers, 0.0, high)
        assert optimum * (1 - 1e-6) <= bound <= high


@pytest.mark.parametrize("case", ["small10", "geo24"])
def test_configuration_bound_is_never_below_a_proven_optimum(reference: Path, catalog: Catalog, case: str) -> None:
    cluster, model, capacity, _ = reference_case(reference, catalog, case)
    plan = plan_cluster(cluster, model, HELIX, catalog=catalog)
    assert plan.solver.status == "optimal"
    classes = fleet_classes(cluster, model, capacity)
    bound = configuration_bound(classes, model.num_layers, 0.0, fleet_bound(classes, model.num_layers))
    assert bound >= plan.throughput * (1 - 1e-6)


def test_hetero42_mixed_stages_beat_single_type_stages_and_the_bound_certifies(reference: Path,
                                                                               catalog: Catalog) -> None:
    cluster, model, capacity, _ = reference_case(reference, catalog, "hetero42")
    classes = fleet_classes(cluster, model, capacity)
    layout, target = stage_mix_layout(classes, model.num_layers, 5813.7, 6281.3, time.monotonic() + 8)
    assert target > 5813.7  # the single-type stage chain's flow
    assert evaluate(cluster, model, capacity, layout).value >= target * (1 - 1e-6)
    counts, items = _types(classes)
    assert coverable_layers(counts, items, 6100.0) < model.num_layers  # so no placement carries 6,100


def test_a_lost_node_replaced_by_an_unused_one_moves_only_its_layers(catalog: Catalog, fleet500: Fleet) -> None:
    cluster, model, plan = fleet500
    spare = next(n for n in cluster.nodes if n.name not in plan.layout)
    lost = next(n for n in plan.nodes if n.gpu_type == spare.gpu)  # an unused node of its type can take its range
    classes = fleet_classes(cluster.without({lost.name}), model, capacity_model_for(cluster, model, HELIX, catalog))
    replaced = replace_lost(plan.layout, classes)
    newcomers = {n: r for n, r in replaced.items() if n not in plan.layout}
    assert lost.name not in replaced and list(newcomers.values()) == [(lost.start, lost.end)]
    assert layers_moved(plan.layout, replaced) == lost.end - lost.start
