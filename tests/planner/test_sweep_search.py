"""Beam search over layer sweeps: staggered placements that carry their target."""

import time

from plankit import reference_case

from helix_planner.bound import position_free_bound
from helix_planner.flow import evaluate
from helix_planner.sweep_search import beam_sweep, beam_sweep_targets
from helix_planner.topology import build_topology


def test_a_found_placement_carries_its_target_and_none_beats_the_bound(reference, catalog) -> None:
    cluster, model, capacity, _ = reference_case(reference, catalog, "small10")
    topology = build_topology(cluster, model, capacity)
    bound = position_free_bound(topology, model.num_layers)
    target = 0.97 * bound
    layout = beam_sweep(topology.classes, model.num_layers, target, time.monotonic() + 20)
    assert layout is not None
    assert evaluate(cluster, model, capacity, layout).value >= target * (1 - 1e-6)
    coverage = [sum(1 for start, end in layout.values() if start <= layer < end) for layer in range(model.num_layers)]
    assert min(coverage) >= 1
    assert beam_sweep(topology.classes, model.num_layers, bound * 1.01, time.monotonic() + 20) is None
    assert beam_sweep(topology.classes, model.num_layers, target, time.monotonic() - 1) is None  # past the deadline
    targets = beam_sweep_targets(100.0, 200.0)
    assert all(100.0 < t < 200.0 for t in targets) and len(set(targets)) == len(targets)
