"""The simulator on the paper's clusters and published layouts (short windows)."""

from pathlib import Path

import numpy as np
import pytest

from helix_planner.sim.inputs import load_scenario
from helix_planner.sim.simulation import SimConfig, Simulation
from helix_planner.sim.workload import arrival_times, load_lengths

PUBLISHED_SINGLE24_HELIX = 252.1  # decode tok/s, Helix layout + IWRR, offline (reference README)
SHORT = SimConfig(warmup=60.0, duration=120.0)


def simulate(reference: Path, catalog, case: str, layout: str, scheduler: str, config: SimConfig = SHORT,
             partial: bool = False):
    layouts = {"single24": "single24-llama70b", "geo24": "geo24-llama70b", "hetero42": "hetero42-llama70b"}
    scenario = load_scenario(str(reference / "clusters" / f"{case}.ini"),
                             str(reference / "layouts" / layouts[case] / f"{layout}.ini"), catalog,
                             throughput_model="helix", partial_inference=partial)
    return Simulation(scenario, scheduler, config, load_lengths("azure-conv", reference / "traces")).run()


def test_single24_helix_layout_serves_about_what_the_paper_simulated(reference, catalog) -> None:
    result = simulate(reference, catalog, "single24", "helix", "iwrr")
    assert result.decode_throughput == pytest.approx(PUBLISHED_SINGLE24_HELIX, rel=0.15)
    assert result.prompt_throughput > result.decode_throughput, "Azure conversations are prompt-heavy"
    assert result.ttft.p50 < result.ttft.p95 <= result.ttft.p99
    assert all(0 < n.busy < 1 and 0 < n.kv_max <= 1 for n in result.nodes)


def test_helix_layout_outserves_the_swarm_layout_on_single24(reference, catalog) -> None:
    helix = simulate(reference, catalog, "single24", "helix", "iwrr")
    swarm = simulate(reference, catalog, "single24", "swarm", "swarm",
                     SimConfig(warmup=60.0, duration=120.0, max_in_flight=180),
                     partial=True)
    assert helix.decode_throughput > 1.3 * swarm.decode_throughput
    assert swarm.in_flight_at_end <= 180


def test_light_online_load_is_served_as_it_arrives_and_faster_than_a_saturated_cluster(reference, catalog) -> None:
    arrivals = arrival_times("poisson", 0.2, 600.0, np.random.default_rng(0), reference / "traces")
    light = simulate(reference, catalog, "single24", "helix", "iwrr",
                     SimConfig(mode="online", warmup=300.0, duration=300.0, arrivals=arrivals))
    saturated = simulate(reference, catalog, "single24", "helix", "iwrr")
    assert light.waiting_at_end == 0 and light.rejected == 0
    assert light.decode_throughput == pytest.approx(0.2 * 232, rel=0.25)  # in equilibrium: rate x mean output
    assert light.tpot.p50 < saturated.tpot.p50 / 2
    assert light.ttft.p50 < saturated.ttft.p50
