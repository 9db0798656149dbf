"""The serving objective: stage floors on the planner, candidates judged by the simulator."""

import json
import math
import threading
from dataclasses import replace

import pytest
from plankit import reference_case
from test_plan_cli import helix

from helix_planner.errors import PlanningError
from helix_planner.models import get_model
from helix_planner.planner import PlannerOptions, plan_cluster
from helix_planner.serving_plan import (
    FASTEST,
    HEURISTICS,
    Candidate,
    ServingObjective,
    choose,
    judge,
    plan_for_serving,
    without_slowest,
)
from helix_planner.sim.simulation import SimConfig
from helix_planner.sim.workload import load_lengths
from helix_planner.throughput.min_layers import MinLayersCapacityModel

SHORT = SimConfig(warmup=20.0, duration=60.0, seed=1)


def test_floor_zeroes_only_thin_assignments(reference, catalog) -> None:
    _, _, capacity, _ = reference_case(reference, catalog, "small10")
    floored = MinLayersCapacityModel(capacity, 0.5)
    for gpu in ("L4", "T4"):
        most = capacity.max_layers(gpu)
        assert floored.min_layers(gpu) == math.ceil(most / 2)
        for k in range(1, most + 1):
            expected = capacity.capacity(gpu, k) if k >= math.ceil(most / 2) else 0.0
            assert floored.capacity(gpu, k) == expected
    with pytest.raises(PlanningError, match=r"in \[0, 1\]"):
        MinLayersCapacityModel(capacity, 1.5)


def test_planned_nodes_respect_the_floor(reference, catalog) -> None:
    cluster, model, capacity, _ = reference_case(reference, catalog, "small10")
    options = PlannerOptions(time_limit=5, throughput_model="helix", min_layer_fraction=0.7)
    plan = plan_cluster(cluster, model, options, catalog=catalog)
    assert plan.throughput > 0
    for node in plan.nodes:
        assert node.end - node.start >= math.ceil(0.7 * capacity.max_layers(node.gpu_type))


def test_serving_objective_keeps_the_best_simulated_candidate(reference, catalog) -> None:
    cluster, model, _, _ = reference_case(reference, catalog, "small10")
    lengths = load_lengths("azure-conv", reference / "traces")
    lines: list[str] = []
    objective = ServingObjective(floors=(0.0, 0.7, 0.85), window=SHORT)
    plan, candidates = plan_for_serving(cluster, model, PlannerOptions(time_limit=6, throughput_model="helix"),
                                        lengths, objective, catalog=catalog, progress=lines.append)
    assert [c.floor for c in candidates] == [0.0, 0.7, 0.85]  # each floor gives its own layout here
    best = choose(candidates, objective.ttft_slo)
    assert plan.layout == best.plan.layout and plan.pipelines == best.plan.pipelines
    assert plan.upper_bound == pytest.approx(candidates[0].plan.upper_bound)  # the unrestricted bound
    assert plan.solver.method.startswith(f"serving(floor {best.floor:g}")
    assert sum("simulated decode" in line for line in lines) == 3 and "chose floor" in lines[-1]

    # With more seeds a candidate's figures are the means of one run per seed.
    each = [judge(best.plan, best.floor, replace(objective, window=replace(SHORT, seed=seed)), cluster, model,
                  catalog, lengths) for seed in (SHORT.seed, SHORT.seed + 1)]
    both = judge(best.plan, best.floor, replace(objective, seeds=2), cluster, model, catalog, lengths)
    assert each[0].decode_throughput != each[1].decode_throughput
    assert both.decode_throughput == pytest.approx((each[0].decode_throughput + each[1].decode_throughput) / 2)
    assert both.ttft_p95 == pytest.approx((each[0].ttft_p95 + each[1].ttft_p95) / 2)


def test_a_placement_missing_the_ttft_target_is_judged_again_with_fewer_requests_at_once(reference,
                                                                                        catalog) -> None:
    cluster, model, _, _ = reference_case(reference, catalog, "small10")
    lengths = load_lengths("azure-conv", reference / "traces")
    saturated = plan_for_serving(cluster, model, PlannerOptions(time_limit=4, throughput_model="helix"), lengths,
                                 ServingObjective(floors=(0.0,), window=SHORT), catalog=catalog)[1][0]
    target = 0.9 * saturated.ttft_p95
    plan, candidates = plan_for_serving(cluster, model, PlannerOptions(time_limit=4, throughput_model="helix"),
                                        lengths, ServingObjective(floors=(0.0,), window=SHORT, ttft_slo=target),
                                        catalog=catalog)
    caps = [c.plan.max_in_flight for c in candidates[1:]]
    assert candidates[0].plan.max_in_flight is None and caps and all(cap < saturated.in_flight for cap in caps)
    assert caps == sorted(set(caps), reverse=True)  # fewer each time, until one meets the target
    meeting = [c for c in candidates if c.ttft_p95 <= target]
    assert meeting == [candidates[-1]]  # the search stops at the first cap that meets it
    assert plan.max_in_flight == caps[-1] and f"max {caps[-1]} in flight" in plan.solver.method


def _candidate(floor: float, decode: float, ttft: float) -> Candidate:
    return Candidate(floor, plan=None, decode_throughput=decode, ttft_p95=ttft, in_flight=10)  # type: ignore[arg-type]


def test_candidates_are_judged_by_a_calibrated_closed_loop_window(reference, catalog) -> None:
    """The bench judges the serving objective's candidates with the simulator calibrated to its served fleet."""
    cluster, model, _, _ = reference_case(reference, catalog, "small10")
    lengths = load_lengths("fixed:750,240", reference / "traces")
    calibrated = replace(SHORT, mode="closed", clients=16, step_overhead=0.005, hop_seconds=0.005, step_tokens=2048)
    _, candidates = plan_for_serving(cluster, model, PlannerOptions(time_limit=3, throughput_model="helix"), lengths,
                                     ServingObjective(floors=(0.0,), window=calibrated), catalog=catalog)
    plan = candidates[0].plan
    alone = judge(plan, 0.0, ServingObjective(window=replace(calibrated, step_overhead=0.0, hop_seconds=0.0)),
                  cluster, model, catalog, lengths)
    assert candidates[0].in_flight <= 16  # the closed loop's clients, not saturation
    assert 0 < candidates[0].decode_throughput < alone.decode_throughput


def test_choice_is_the_best_throughput_meeting_the_ttft_target() -> None:
    fast_start, faster, slow_start = _candidate(0.0, 100, 5.0), _candidate(0.5, 120, 5.4), _candidate(0.7, 200, 9.0)
    assert choose([fast_start, faster, slow_start], None) is slow_start
    assert choose([fast_start, faster, slow_start], 6.0) is faster
    assert choose([fast_start, faster, slow_start], 4.0) is fast_start  # none meets it: the lowest TTFT
    never_started = _candidate(0.85, 300, float("nan"))
    assert choose([fast_start, never_started], 6.0) is fast_start
    assert choose([never_started], 6.0) is never_started


def test_plan_command_serving_objective(reference) -> None:
    done = helix("plan", str(reference / "clusters" / "small10.ini"), "--model", "llama1-30b", "--throughput-model",
                 "helix", "--objective", "serving", "--time-limit", "4", "--lengths", "fixed:300,60",
                 "--slo-ttft", "30")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["solver"]["method"].startswith("serving(") and plan["solver"]["status"] == "simulated-best"
    assert "what serving would give" in done.stderr and "helix plan --objective serving" not in done.stderr
    bad = helix("plan", "--objective", "serving", "--scheduler", "fastest", "--time-limit", "2")
    assert bad.returncode != 0 and "unknown scheduler 'fastest'" in bad.stderr and "Traceback" not in bad.stderr
    none = helix("plan", "--objective", "serving", "--judge-seeds", "0", "--time-limit", "2")
    assert none.returncode != 0 and "--judge-seeds 0: give at least 1" in none.stderr


def test_cancelled_before_any_candidate_says_so(reference, catalog) -> None:
    cluster, model, _, _ = reference_case(reference, catalog, "small10")
    cancelled = threading.Event()
    cancelled.set()
    with pytest.raises(PlanningError, match="cancelled"):
        plan_for_serving(cluster, model, PlannerOptions(time_limit=2, throughput_model="helix"),
                         load_lengths("fixed:300,60", reference), catalog=catalog, cancel=cancelled)


def test_an_objective_with_heuristics_judges_the_baselines_and_the_fastest_types_beside_max_flow(reference,
                                                                                               catalog) -> None:
    cluster, model, _, _ = reference_case(reference, catalog, "small10")
    lengths = load_lengths("fixed:750,240", reference / "traces")
    window = replace(SHORT, mode="closed", clients=16, requests=48, warmup=0.0, duration=3600.0)
    lines: list[str] = []
    plan, candidates = plan_for_serving(cluster, model, PlannerOptions(time_limit=3, throughput_model="helix"),
                                        lengths, ServingObjective(floors=(0.0,), window=window, heuristics=HEURISTICS),
                                        catalog=catalog, progress=lines.append)
    fewer = without_slowest(cluster, model, catalog)
    assert [label for label, _ in fewer] == ["without T4"]  # the slower of small10's two types
    assert {n.gpu for n in fewer[0][1].nodes} == {"L4"}
    labels = [c.label for c in candidates]
    assert labels[0] == "floor 0" and set(labels[1:]) <= {"petals", "swarm", "separate", "without T4"}
    assert len({tuple(sorted(c.plan.layout.items())) for c in candidates}) == len(candidates)  # distinct layouts
    said = [line for line in lines if line.startswith(("serving    petals", "serving    swarm", "serving    separate",
                                                        "serving    without"))]
    assert len(candidates) == 1 + sum("simulated decode" in line for line in said)  # alike layouts go unsaid
    assert all("simulated decode" in line or "no placement" in line for line in said)
    assert labels[1:] == ["petals", "swarm", "separate"]  # each its own layout here
    assert any("without T4: no placement (llama1-30b does not fit" in line for line in said)  # four L4s: too few
    best = choose(candidates, None)
    assert plan.layout == best.plan.layout and plan.solver.method.startswith(f"serving({best.label}")


def test_max_flow_without_the_slowest_type_is_judged_where_the_rest_holds_the_model(reference, catalog) -> None:
    cluster, _, _, _ = reference_case(reference, catalog, "small10")
    model = get_model("llama3-8b")  # small enough for small10's T4s alone
    window = replace(SHORT, mode="closed", clients=16, requests=48, warmup=0.0, duration=3600.0)
    _, candidates = plan_for_serving(cluster, model, PlannerOptions(time_limit=3), load_lengths("fixed:750,240",
                                     reference / "traces"), ServingObjective(floors=(0.0,), window=window,
                                                                             heuristics=(FASTEST,)),
                                     catalog=catalog)
    slowest = without_slowest(cluster, model, catalog)[0][0].removeprefix("without ")
    fewer = next(c for c in candidates if c.label == f"without {slowest}")
    assert slowest not in {n.gpu_type for n in fewer.plan.nodes} and fewer.decode_throughput > 0
    assert [c.label for c in candidates] == ["floor 0", f"without {slowest}"]
