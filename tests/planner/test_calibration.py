"""The simulator's calibration to a served fleet: scales, step and hop overheads and the load, each
recovered from metrics built with known values."""

from dataclasses import replace

import pytest

from helix_planner.cluster import SINK, SOURCE, Cluster, Link, Node
from helix_planner.errors import PlanningError
from helix_planner.models import ModelSpec
from helix_planner.observed import NodeObservation, Observed, StepSample
from helix_planner.profiles import Catalog, Curve, GpuType, MeasuredProfile
from helix_planner.sim.calibration import RequestTotals, ServedLoad, ServedMetrics, StageMetrics, calibrate

PROMPT = Curve((0.0, 1000.0), (0.0, 0.1))  # 0.1 ms per prompt token per layer
DECODE = Curve((0.0, 1.0, 101.0), (0.0, 0.002, 0.012))
TOY = ModelSpec(name="toy", num_layers=4, hidden_size=4096, bytes_per_layer=1e9, kv_bytes_per_token_layer=1e3)
LATENCY = 0.01
CATALOG = Catalog(gpus={"G": GpuType("G", 24e9, 1e12, 1e14, 1e10)},
                  measured={("toy", "G"): MeasuredProfile("toy", "G", PROMPT, DECODE, 4, {}, {}, {})})


def two_stages() -> Cluster:
    cluster = Cluster([Node("a", "G"), Node("b", "G")])
    for src, dst in [(SOURCE, "a"), ("a", "b"), ("b", SINK)]:
        cluster.add_link(Link(src, dst, 1e15, LATENCY))
    return cluster


def served(decode_scale: float, prompt_scale: float, *, prefill: bool = True) -> ServedMetrics:
    """Stages a [0, 2) and b [2, 4) whose steps took the profile times the scales; 1 ms and 3 ms per step beyond
    compute; decode tokens 10 ms on each stage; round trips 4 ms per message beyond stages and links."""
    def node(start: int) -> NodeObservation:
        return NodeObservation("G", (start, start + 2),
                               tuple(StepSample(b, 2, 2 * DECODE(b) * decode_scale) for b in (1, 8, 16)),
                               tuple(StepSample(t, 2, 2 * PROMPT(t) * prompt_scale) for t in (100, 200)) if prefill
                               else ())

    trip = 2 * 0.010 + 3 * LATENCY + 3 * 0.004
    return ServedMetrics(100.0, {"a": StageMetrics(100, 1.0, 400, 50, 0.5, 0.1),
                                 "b": StageMetrics(100, 1.0, 400, 50, 0.5, 0.3)},
                         {("a", "b"): (50, 50 * trip)}, RequestTotals(10, 20.0, 1000, 500),
                         Observed("p", {"a": node(0), "b": node(2)}, {}))


def test_the_calibration_recovers_the_scales_and_overheads_it_was_built_with() -> None:
    calibration = calibrate(served(2.0, 1.5), two_stages(), TOY, CATALOG, "toy", 512)
    assert calibration.compute_scale == pytest.approx(2.0) and calibration.prompt_scale == pytest.approx(1.5)
    assert calibration.gpu_scales == {"G": pytest.approx(2.0)}  # each type's own stages: both are G here
    assert calibration.step_seconds == pytest.approx(0.002)  # (0.1 + 0.3) s over 200 steps
    assert calibration.hop_seconds == pytest.approx(0.004, rel=1e-6)
    config = calibration.config(clients=4, requests=16, seed=1)
    assert (config.mode, config.clients, config.requests, config.step_tokens) == ("closed", 4, 16, 512)
    assert (config.compute_scale, config.prompt_scale, config.hop_seconds) == pytest.approx((2.0, 1.5, 0.004))
    assert config.gpu_scales == calibration.gpu_scales


def test_a_window_is_the_change_between_two_readings_and_its_load_follows_littles_law() -> None:
    later = served(1.0, 1.0)
    earlier = replace(later, at=90.0, stages={"a": StageMetrics(40, 0.4, 160, 20, 0.2, 0.04)},
                      round_trips={}, requests=RequestTotals(6, 12.0, 600, 300))
    window = later.since(earlier)
    assert window.stages["a"] == StageMetrics(60, 0.6, 240, 30, 0.3, pytest.approx(0.06))
    assert window.stages["b"] == later.stages["b"]  # new since the earlier reading: counted whole
    assert window.round_trips == later.round_trips
    assert window.load(later.at - earlier.at) == ServedLoad(0.8, 100.0, 50.0)  # 8 s of latency in 10 s


def test_nothing_to_calibrate_with_is_one_clear_error() -> None:
    with pytest.raises(PlanningError, match="no prefill steps"):
        calibrate(served(1.0, 1.0, prefill=False), two_stages(), TOY, CATALOG, "toy", 512)
    quiet = served(1.0, 1.0)
    with pytest.raises(PlanningError, match="no request finished in the 10 s measured"):
        quiet.since(quiet).load(10.0)
