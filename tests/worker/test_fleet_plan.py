"""`helix up`'s plans come from the planner: measured local curves, slowed-down types, unused workers."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from dataplane_helpers import NUM_LAYERS

from helix_planner.cluster import SOURCE, Node
from helix_planner.network import NetworkModel, build_cluster
from helix_planner.planner import PlannerOptions, plan_cluster
from helix_planner.profiles import load_catalog
from helix_planner.throughput.profiled import ProfiledCapacityModel
from helix_worker.envs import Settings
from helix_worker.errors import ServingError
from helix_worker.fleet.plans import FleetPlan, check_local_fleet, local_catalog, local_fleet_plan, model_spec
from helix_worker.fleet.profile import device_memory
from helix_worker.fleet.up import report_plan
from helix_worker.model.config import load_model_config


def test_local_fleet_is_measured_and_planned_with_slowed_down_types(checkpoint: Path, tmp_path: Path) -> None:
    config, lines = load_model_config(checkpoint), []
    fleet = local_fleet_plan(checkpoint, config, "tiny", (1.0, 1.0, 4.0), tmp_path,
                             Settings(device="cpu", torch_threads=1), out=lines.append)
    assert fleet.slowdowns == {"worker-0": 1.0, "worker-1": 1.0, "worker-2": 4.0}
    plan = fleet.plan
    assert plan.solver.method != "manual" and plan.throughput_model == "profiled" and plan.throughput > 0
    assert {n.name: n.gpu_type for n in plan.nodes}.items() <= {"worker-0": "CPU", "worker-1": "CPU",
                                                                "worker-2": "CPU-x4"}.items()
    assert any("decode batch" in line for line in lines) and any("plan " in line for line in lines)

    # The planner sees the measured curves, 4x slower for the slowed type, and room for every layer.
    local = replace(load_catalog().gpu("CPU"), vram_bytes=device_memory(torch.device("cpu")) / 3)
    catalog, types = local_catalog(tmp_path / "measured-tiny.yaml", "tiny", local, (1.0, 4.0))
    assert types == {1.0: "CPU", 4.0: "CPU-x4"}
    assert catalog.measurement("tiny", "CPU").decode(16) > 0
    capacity = ProfiledCapacityModel(catalog, model_spec(config, "tiny"), set(types.values()))
    assert capacity.max_layers("CPU") == capacity.max_layers("CPU-x4") == NUM_LAYERS
    for layers in range(1, NUM_LAYERS + 1):
        assert capacity.capacity("CPU-x4", layers) == pytest.approx(capacity.capacity("CPU", layers) / 4)


def test_workers_the_plan_leaves_out_are_reported(checkpoint: Path) -> None:
    nodes = [Node("worker-0", "CPU", "local"), Node("worker-1", "CPU", "local")]
    cut_off = {(SOURCE, "worker-1"), ("worker-0", "worker-1")}  # worker-1 reaches nobody
    cluster = build_cluster(nodes, NetworkModel(removed=cut_off), name="local")
    plan = plan_cluster(cluster, model_spec(load_model_config(checkpoint), "tiny"), PlannerOptions(time_limit=2))
    fleet, lines = FleetPlan(plan, {"worker-0": 1.0, "worker-1": 2.0}), []
    report_plan(fleet, out=lines.append)
    assert fleet.unused == ["worker-1"]
    assert lines[0].startswith("model tiny (6 layers) on local") and "worker-0" in lines[0]
    assert lines[-1] == "worker-1 (slowdown 2) is left unused by the plan: not started"


def test_local_fleet_needs_a_worker_and_one_factor_each() -> None:
    with pytest.raises(ServingError, match="at least 1"):
        check_local_fleet(0, ())
    with pytest.raises(ServingError, match="3 workers, 2 factors"):
        check_local_fleet(3, (1.0, 2.0))
    check_local_fleet(3, ())
