"""Max flow, bottlenecks and pipeline decomposition on hand-checkable clusters."""

from collections import Counter

import pytest
from plankit import TableCapacity, mesh

from helix_planner.flow import evaluate
from helix_planner.models import ModelSpec
from helix_planner.pipelines import InterleavedWeightedRoundRobin, decompose

MODEL = ModelSpec(name="toy", num_layers=4, hidden_size=1024, bytes_per_layer=1e9, kv_bytes_per_token_layer=1e3)
CAPS = TableCapacity({"big": [400.0, 300.0, 200.0, 100.0], "small": [150.0, 100.0]})


def test_two_parallel_halves_add_up() -> None:
    cluster = mesh([("a", "big", "r"), ("b", "big", "r"), ("c", "small", "r"), ("d", "small", "r")])
    layout = {"a": (0, 2), "b": (2, 4), "c": (0, 2), "d": (2, 4)}
    result = evaluate(cluster, MODEL, CAPS, layout)
    # a->b carries 300, c->d 100, and c->b / a->d let the 400 of the two halves mix.
    assert result.value == pytest.approx(400.0, rel=1e-6)
    assert sum(result.node_flow.values()) == pytest.approx(800.0, rel=1e-6)


def test_slow_link_is_named_as_bottleneck() -> None:
    # 1024 hidden x 2 bytes = 2048 B/token, so 2048 * 50 B/s carries 50 tok/s between regions.
    cluster = mesh([("a", "big", "east"), ("b", "big", "west")], inter=2048 * 50)
    result = evaluate(cluster, MODEL, CAPS, {"a": (0, 2), "b": (2, 4)})
    assert result.value == pytest.approx(50.0, rel=1e-5)
    assert result.bottlenecks == ["link a->b (50.0 tok/s)"]


def test_ranges_must_meet_exactly_without_partial_inference() -> None:
    cluster = mesh([("a", "big", "r"), ("b", "big", "r")])
    overlapping = {"a": (0, 3), "b": (2, 4)}
    assert evaluate(cluster, MODEL, CAPS, overlapping).value == 0.0
    assert evaluate(cluster, MODEL, CAPS, overlapping, partial_inference=True).value == pytest.approx(200.0, rel=1e-6)


def test_pipelines_decompose_the_flow() -> None:
    cluster = mesh([("a", "big", "r"), ("b", "big", "r"), ("c", "small", "r"), ("d", "small", "r")])
    layout = {"a": (0, 2), "b": (2, 4), "c": (0, 2), "d": (2, 4)}
    result = evaluate(cluster, MODEL, CAPS, layout)
    pipelines = decompose(result.edge_flow, layout)
    assert sum(p.tokens_per_second for p in pipelines) == pytest.approx(result.value, rel=1e-6)
    for pipeline in pipelines:
        assert [s.start for s in pipeline.stages][0] == 0 and pipeline.stages[-1].end == 4
        assert all(x.end == y.start for x, y in zip(pipeline.stages, pipeline.stages[1:]))


def test_iwrr_follows_weights_and_interleaves() -> None:
    rr = InterleavedWeightedRoundRobin([300.0, 100.0, 200.0])
    picks = [rr.next() for _ in range(600)]
    counts = Counter(picks)
    assert counts[0] / counts[1] == pytest.approx(3.0, rel=0.06)
    assert counts[2] / counts[1] == pytest.approx(2.0, rel=0.06)
    longest_run = max(len(run) for run in "".join(map(str, picks)).replace("1", " ").replace("2", " ").split())
    assert longest_run < 10, "the heavy item must not be served in one long burst"


def test_iwrr_skips_unavailable_items() -> None:
    rr = InterleavedWeightedRoundRobin([5.0, 1.0])
    assert {rr.next(available=[False, True]) for _ in range(20)} == {1}
    with pytest.raises(LookupError):
        rr.next(available=[False, False])
