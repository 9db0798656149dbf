"""The MILP and the position-free bound against brute force on tiny clusters."""

import itertools

import pytest
from plankit import TableCapacity, mesh

from helix_planner.bound import position_free_bound
from helix_planner.errors import PlanningError
from helix_planner.flow import evaluate
from helix_planner.milp import MilpSettings, assign_nodes, build_model, class_counts, solve
from helix_planner.models import ModelSpec
from helix_planner.topology import build_topology

MODEL = ModelSpec(name="toy", num_layers=4, hidden_size=1024, bytes_per_layer=1e9, kv_bytes_per_token_layer=1e3)
# Per-node capacity when holding k layers: more layers, fewer tokens/s; unlike GPU types.
CAPS = TableCapacity({
    "fast": [900.0, 520.0, 330.0, 240.0],
    "mid": [600.0, 290.0, 170.0],
    "slow": [350.0, 160.0],
})
NODES = [("f0", "fast", "r"), ("f1", "fast", "r"), ("m0", "mid", "r"), ("s0", "slow", "r")]


def brute_force_optimum(cluster, model, caps) -> float:
    """Max flow over every assignment of a range (or none) to every node."""
    options = {}
    for node in cluster.nodes:
        k_max = caps.max_layers(node.gpu)
        options[node.name] = [None] + [(a, a + k) for k in range(1, k_max + 1) for a in range(model.num_layers - k + 1)]
    best = 0.0
    for choice in itertools.product(*options.values()):
        layout = {name: rng for name, rng in zip(options, choice) if rng is not None}
        covered = set().union(*(range(a, b) for a, b in layout.values())) if layout else set()
        if len(covered) < model.num_layers:
            continue
        best = max(best, evaluate(cluster, model, caps, layout).value)
    return best


@pytest.fixture(scope="module")
def tiny():
    cluster = mesh(NODES)
    return cluster, build_topology(cluster, MODEL, CAPS), brute_force_optimum(cluster, MODEL, CAPS)


def test_identical_nodes_form_one_class(tiny) -> None:
    _, topology, _ = tiny
    assert sorted((c.gpu, len(c.nodes)) for c in topology.classes) == [("fast", 2), ("mid", 1), ("slow", 1)]
    assert len(topology.groups) == 1


def test_bound_is_never_below_the_true_optimum(tiny) -> None:
    _, topology, optimum = tiny
    bound = position_free_bound(topology, MODEL.num_layers)
    assert optimum > 0
    assert bound >= optimum * (1 - 1e-6)


def test_milp_finds_the_brute_force_optimum(tiny) -> None:
    cluster, topology, optimum = tiny
    solution = solve(build_model(topology, MODEL), MilpSettings(time_limit=20, mip_gap=0.0))
    assert solution.optimal and solution.status == "Optimal"
    layout = assign_nodes(solution.counts, topology)
    assert evaluate(cluster, MODEL, CAPS, layout).value == pytest.approx(optimum, rel=1e-6)
    assert solution.bound == pytest.approx(optimum, rel=1e-4)


def test_warm_start_and_progress_lines(tiny) -> None:
    cluster, topology, optimum = tiny
    start = {"f0": (0, 2), "f1": (2, 4)}
    lines: list[str] = []
    solve(build_model(topology, MODEL), MilpSettings(time_limit=20, progress_every=0.0),
          warm_start=class_counts(start, topology), progress=lines.append)
    warm = evaluate(cluster, MODEL, CAPS, start).value
    assert any(line.startswith(f"milp warm start {warm:.1f}") for line in lines)
    assert any("incumbent" in line and "bound" in line and "gap" in line for line in lines)


def test_churn_weight_keeps_the_previous_placement(tiny) -> None:
    cluster, topology, optimum = tiny
    previous = {"f0": (0, 1), "f1": (1, 4)}
    counts = class_counts(previous, topology)
    heavy = solve(build_model(topology, MODEL, previous=counts, churn_weight=1e4), MilpSettings(time_limit=20))
    kept = assign_nodes(heavy.counts, topology, previous)
    assert {name: kept.get(name) for name in previous} == previous, "moving a layer costs more than it gains"
    free = solve(build_model(topology, MODEL, previous=counts, churn_weight=0.0), MilpSettings(time_limit=20))
    assert evaluate(cluster, MODEL, CAPS, assign_nodes(free.counts, topology, previous)).value == pytest.approx(optimum)


def test_time_limit_status_comes_from_highs() -> None:
    big_model = ModelSpec(name="toy80", num_layers=80, hidden_size=1024, bytes_per_layer=1e9,
                          kv_bytes_per_token_layer=1e3)
    caps = TableCapacity({"a": [1000.0 / k ** 1.1 for k in range(1, 13)], "b": [700.0 / k ** 1.2 for k in range(1, 8)],
                          "c": [400.0 / k ** 1.3 for k in range(1, 5)]})
    nodes = [(f"a{i}", "a", "r") for i in range(4)] + [(f"b{i}", "b", "r") for i in range(8)] + \
            [(f"c{i}", "c", "r") for i in range(12)]
    cluster = mesh(nodes)
    topology = build_topology(cluster, big_model, caps)
    solution = solve(build_model(topology, big_model), MilpSettings(time_limit=0.5, mip_gap=0.0))
    if not solution.optimal:
        assert solution.status == "Time limit reached"
    assert solution.bound >= solution.objective


def test_model_without_placeable_ranges_is_a_clear_error() -> None:
    cluster = mesh([("x", "none", "r")])
    caps = TableCapacity({"none": []})
    with pytest.raises(PlanningError, match="no node can hold"):
        build_model(build_topology(cluster, MODEL, caps), MODEL)


def test_cross_region_bound_holds_and_is_tighter_on_slow_links() -> None:
    # Neither region can hold all 5 layers; the cross links carry only 150 tok/s.
    model = ModelSpec(name="toy5", num_layers=5, hidden_size=1024, bytes_per_layer=1e9, kv_bytes_per_token_layer=1e3)
    caps = TableCapacity({"fast": [900.0, 520.0], "mid": [600.0, 290.0]})
    nodes = [("f0", "fast", "east"), ("m0", "mid", "east"), ("f1", "fast", "west")]
    slow, fast = mesh(nodes, inter=2048 * 150), mesh(nodes)
    slow_topology, fast_topology = build_topology(slow, model, caps), build_topology(fast, model, caps)
    assert len(slow_topology.groups) == 2 and len(fast_topology.groups) == 1
    slow_bound = position_free_bound(slow_topology, model.num_layers)
    assert slow_bound >= brute_force_optimum(slow, model, caps) * (1 - 1e-6)
    assert slow_bound < position_free_bound(fast_topology, model.num_layers)
