"""The simulator's building blocks on toy clusters whose answers can be worked out by hand."""

from dataclasses import replace

import numpy as np
import pytest

from helix_planner.cluster import SINK, SOURCE, Cluster, Link, Node
from helix_planner.errors import PlanningError
from helix_planner.models import ModelSpec
from helix_planner.pipelines import Pipeline, Stage
from helix_planner.profiles import Catalog, Curve, GpuType, MeasuredProfile
from helix_planner.sim.network import Channel
from helix_planner.sim.request import Request
from helix_planner.sim.simulation import Scenario, SimConfig, Simulation
from helix_planner.sim.workload import LengthTrace

LAYERS = 4
PROMPT = Curve((0.0, 1000.0), (0.0, 0.1))  # 0.1 ms per prompt token per layer
DECODE = Curve((0.0, 1.0, 101.0), (0.0, 0.002, 0.012))  # 2 ms for one sequence, +0.1 ms per extra one
TOY = ModelSpec(name="toy", num_layers=LAYERS, hidden_size=4096, bytes_per_layer=1e9, kv_bytes_per_token_layer=1e3)
FAST = 1e15  # bytes/s: links that cost nothing


def toy_catalog(kv_blocks: int = 10_000, decode_max: int = 100, prompt_max: int = 1) -> Catalog:
    profile = MeasuredProfile("toy", "G", PROMPT, DECODE, LAYERS, {k: kv_blocks for k in range(1, LAYERS + 1)},
                              {k: prompt_max for k in range(1, LAYERS + 1)},
                              {k: decode_max for k in range(1, LAYERS + 1)})
    return Catalog(gpus={"G": GpuType("G", 24e9, 1e12, 1e14, 1e10)}, measured={("toy", "G"): profile})


def toy_scenario(layout: dict[str, tuple[int, int]], pipelines: list[tuple[list[str], float]], *,
                 bandwidth: float = FAST, latency: float = 0.0, kv_blocks: int = 10_000, decode_max: int = 100,
                 prompt_max: int = 1) -> Scenario:
    """Nodes of GPU type G with `layout`, fully linked to each other and the front end."""
    cluster = Cluster([Node(name, "G") for name in layout])
    for a in [SOURCE, *layout]:
        for b in [*layout, SINK]:
            if a != b:
                cluster.add_link(Link(a, b, bandwidth, latency))
    flows = [Pipeline(tuple(Stage(n, *layout[n]) for n in names), weight) for names, weight in pipelines]
    return Scenario("toy", cluster, TOY, toy_catalog(kv_blocks, decode_max, prompt_max), layout, flows)


def fixed(inp: int, out: int) -> LengthTrace:
    return LengthTrace(f"fixed:{inp},{out}", np.array([inp]), np.array([out]))


def test_one_node_serving_one_request_at_a_time_matches_the_profile() -> None:
    scenario = toy_scenario({"a": (0, LAYERS)}, [(["a"], 1.0)])
    config = SimConfig(warmup=10.0, duration=120.0, max_in_flight=1)
    result = Simulation(scenario, "iwrr", config, fixed(100, 11)).run()
    prompt_pass = LAYERS * PROMPT(100)  # 0.04 s: returns the first token
    decode_pass = LAYERS * DECODE(1)  # 0.008 s per further token
    per_request = prompt_pass + 10 * decode_pass
    assert result.decode_throughput == pytest.approx(11 / per_request, rel=0.01)
    assert result.prompt_throughput == pytest.approx(100 / per_request, rel=0.01)
    assert result.ttft.p50 == pytest.approx(per_request + prompt_pass)  # queued while the previous one ran
    assert result.tpot.p99 == pytest.approx(decode_pass)
    assert result.nodes[0].busy == pytest.approx(1.0, abs=0.01)


def test_decode_steps_share_passes_up_to_the_batch_limit_and_prompts_ride_along() -> None:
    scenario = toy_scenario({"a": (0, LAYERS)}, [(["a"], 1.0)], decode_max=4, prompt_max=2)
    sim = Simulation(scenario, "iwrr", SimConfig(), fixed(10, 10))
    node, route = sim.nodes["a"], sim.graph.pipelines[0]
    requests = [Request(i, 50, 10, 0.0, route, tokens=1, prompt=False) for i in range(6)]
    requests += [Request(10 + i, 50, 10, 0.0, route, tokens=50) for i in range(3)]
    for request in requests:
        (node.prompts if request.prompt else node.decodes).append(request)
    seconds = node.start_pass()
    assert [r.rid for r in node.batch] == [0, 1, 2, 3, 10, 11]
    assert seconds == pytest.approx(LAYERS * (PROMPT(100) + DECODE(4)))
    assert node.start_pass() == pytest.approx(LAYERS * (PROMPT(50) + DECODE(2)))
    assert node.start_pass() == 0.0 and node.batch == []


def test_a_link_sends_one_transfer_at_a_time() -> None:
    channel = Channel(bandwidth=1000.0, latency=0.5, token_bytes=10.0)
    assert channel.send(0.0, 100) == pytest.approx(1.5)  # 1000 bytes: 1 s on the wire, then latency
    assert channel.send(0.2, 50) == pytest.approx(2.0)  # waits for the first to leave at 1.0 s
    assert channel.backlog(1.0) == pytest.approx(0.5)
    assert channel.send(10.0, 10) == pytest.approx(10.6)  # an idle link starts at once


def test_prompt_activations_cross_a_slow_link_before_the_next_stage() -> None:
    layout = {"a": (0, 2), "b": (2, LAYERS)}
    bandwidth, latency = 8192e2, 0.01
    scenario = toy_scenario(layout, [(["a", "b"], 1.0)], bandwidth=bandwidth, latency=latency)
    config = SimConfig(mode="online", warmup=0.0, duration=30.0, arrivals=np.array([0.0, 10.0]))
    result = Simulation(scenario, "iwrr", config, fixed(100, 2)).run()
    ids_in = 100 * TOY.token_bytes / bandwidth + latency
    hidden_states = 100 * TOY.activation_bytes_per_token / bandwidth + latency  # 1 s on the wire
    token_out = TOY.token_bytes / bandwidth + latency
    expected = ids_in + 2 * PROMPT(100) + hidden_states + 2 * PROMPT(100) + token_out
    assert result.ttft_values == pytest.approx([expected, expected])


def test_requests_that_would_overflow_a_kv_cache_wait_and_are_all_served() -> None:
    # 10 blocks of 16 tokens over 4 layers hold 640 token-layers: one (100 + 11)-token request at a time
    scenario = toy_scenario({"a": (0, LAYERS)}, [(["a"], 1.0)], kv_blocks=10)
    config = SimConfig(mode="online", warmup=0.0, duration=5.0, arrivals=np.zeros(3))
    sim = Simulation(scenario, "iwrr", config, fixed(100, 11))
    result = sim.run()
    per_request = LAYERS * PROMPT(100) + 10 * LAYERS * DECODE(1)
    assert result.completed == 3 and result.rejected == 0
    assert result.ttft_values == pytest.approx([LAYERS * PROMPT(100) + i * per_request for i in range(3)])
    assert result.nodes[0].kv_max <= 1.0
    assert sim.nodes["a"].kv.reserved == pytest.approx(0.0) and sim.nodes["a"].kv.used == pytest.approx(0.0)


def test_the_plans_admission_cap_holds_requests_at_the_front_end() -> None:
    plenty = toy_scenario({"a": (0, LAYERS)}, [(["a"], 1.0)])
    config = SimConfig(mode="online", warmup=0.0, duration=5.0, arrivals=np.zeros(3))
    together = Simulation(plenty, "iwrr", config, fixed(100, 11)).run()
    capped = Simulation(replace(plenty, max_in_flight=1), "iwrr", config, fixed(100, 11)).run()
    per_request = LAYERS * PROMPT(100) + 10 * LAYERS * DECODE(1)
    assert capped.completed == together.completed == 3
    assert capped.ttft_values == pytest.approx([LAYERS * PROMPT(100) + i * per_request for i in range(3)])
    assert max(together.ttft_values) < capped.ttft_values[1]  # uncapped, none waits for another to finish


def test_a_request_longer_than_every_kv_cache_is_rejected_and_reported() -> None:
    scenario = toy_scenario({"a": (0, LAYERS)}, [(["a"], 1.0)], kv_blocks=10)
    lengths = LengthTrace("two", np.array([100, 1000]), np.array([11, 11]))
    config = SimConfig(mode="online", warmup=0.0, duration=5.0, arrivals=np.zeros(40))
    result = Simulation(scenario, "iwrr", config, lengths).run()
    assert result.rejected > 0 and result.completed + result.rejected == 40


def test_iwrr_shares_follow_the_flow_weights() -> None:
    scenario = toy_scenario({"a": (0, LAYERS), "b": (0, LAYERS)}, [(["a"], 3.0), (["b"], 1.0)])
    sim = Simulation(scenario, "iwrr", SimConfig(), fixed(10, 10))
    picks = [sim.scheduler.choose(Request(i, 10, 10, 0.0), 0.0)[0].node.name for i in range(40)]
    assert picks.count("a") == 30 and picks.count("b") == 10
    assert picks[:4] == ["a", "b", "a", "a"], "interleaved: the light pipeline is not starved until a round ends"


def test_kv_aware_schedulers_avoid_full_nodes_and_blind_ones_still_pick_them() -> None:
    scenario = toy_scenario({"a": (0, LAYERS), "b": (0, LAYERS)}, [(["a"], 1.0), (["b"], 1.0)], kv_blocks=10)
    for name in ("iwrr", "adaptive"):
        sim = Simulation(scenario, name, SimConfig(), fixed(100, 11))
        sim.nodes["a"].kv.reserve(sim.nodes["a"].kv.capacity)
        assert {sim.scheduler.choose(Request(i, 100, 11, 0.0), 0.0)[0].node.name for i in range(6)} == {"b"}
        sim.nodes["b"].kv.reserve(sim.nodes["b"].kv.capacity)
        assert sim.scheduler.choose(Request(9, 100, 11, 0.0), 0.0) is None
    blind = Simulation(scenario, "random", SimConfig(), fixed(100, 11))
    blind.nodes["a"].kv.reserve(blind.nodes["a"].kv.capacity)
    picks = {blind.scheduler.choose(Request(i, 100, 11, 0.0), 0.0)[0].node.name for i in range(20)}
    assert picks == {"a", "b"}


def test_adaptive_prefers_the_route_with_less_latency() -> None:
    layout = {"a": (0, 2), "b": (2, LAYERS), "c": (0, LAYERS)}
    scenario = toy_scenario(layout, [(["a", "b"], 1.0), (["c"], 1.0)], latency=0.05)
    sim = Simulation(scenario, "adaptive", SimConfig(), fixed(100, 11))
    assert [hop.node.name for hop in sim.scheduler.choose(Request(1, 100, 11, 0.0), 0.0)] == ["c"]


def test_partial_inference_routes_enter_mid_range_and_skip_earlier_layers() -> None:
    layout = {"a": (0, 3), "b": (1, LAYERS)}
    overlapping = toy_scenario(layout, [])
    scenario = Scenario("overlap", overlapping.cluster, TOY, overlapping.catalog, layout, [], partial_inference=True)
    sim = Simulation(scenario, "random", SimConfig(), fixed(100, 11))
    route = sim.scheduler.choose(Request(1, 100, 11, 0.0), 0.0)
    assert [(h.node.name, h.start, h.end) for h in route] == [("a", 0, 3), ("b", 3, LAYERS)]
    node = sim.nodes["b"]
    entering = Request(2, 100, 11, 0.0, route, stage=1, tokens=1, prompt=False)
    node.decodes.append(entering)
    assert node.start_pass() == pytest.approx(1 * DECODE(1))


def test_unknown_scheduler_and_bad_settings_are_one_clear_error() -> None:
    scenario = toy_scenario({"a": (0, LAYERS)}, [(["a"], 1.0)])
    with pytest.raises(PlanningError, match="unknown scheduler 'fastest'"):
        Simulation(scenario, "fastest", SimConfig(), fixed(10, 10))
    with pytest.raises(PlanningError, match="online mode needs arrivals"):
        Simulation(scenario, "iwrr", SimConfig(mode="online"), fixed(10, 10))
    with pytest.raises(PlanningError, match="plan/cluster mismatch"):
        bad = [Pipeline((Stage("a", 0, 2),), 1.0)]
        Simulation(Scenario("toy", scenario.cluster, TOY, scenario.catalog, scenario.layout, bad), "iwrr",
                   SimConfig(), fixed(10, 10))


def test_same_seed_same_numbers_other_seed_other_numbers() -> None:
    scenario = toy_scenario({"a": (0, 2), "b": (2, LAYERS), "c": (0, 2), "d": (2, LAYERS)},
                            [(["a", "b"], 1.0), (["c", "d"], 1.0)], kv_blocks=200)
    lengths = LengthTrace("mix", np.array([20, 300, 80]), np.array([5, 40, 200]))

    def run(seed: int, scheduler: str) -> tuple:
        r = Simulation(scenario, scheduler, SimConfig(warmup=5.0, duration=20.0, seed=seed), lengths).run()
        return r.decode_throughput, r.ttft, r.tpot, r.series["kvUtilisation"]

    for scheduler in ("iwrr", "random", "swarm", "shortest-queue", "adaptive"):
        assert run(3, scheduler) == run(3, scheduler)
    assert run(3, "random") != run(4, "random")


# Closed loop and calibration to a served fleet (bench/closed_loop.py)

PROMPT_PASS = LAYERS * PROMPT(100)
DECODE_PASS = LAYERS * DECODE(1)
PER_REQUEST = PROMPT_PASS + 10 * DECODE_PASS  # a prompt of 100 tokens and 10 more output tokens, alone


def one_node(config: SimConfig, inp: int = 100, out: int = 11) -> tuple[float, float, float]:
    """Decode tok/s, p50 and p95 TTFT of one node holding every layer."""
    result = Simulation(toy_scenario({"a": (0, LAYERS)}, [(["a"], 1.0)]), "iwrr", config, fixed(inp, out)).run()
    return result.decode_throughput, result.ttft.p50, result.ttft.p95


def test_a_closed_loop_client_waits_for_no_one_before_it_sends() -> None:
    closed = one_node(SimConfig(mode="closed", clients=1, warmup=10.0, duration=120.0))
    offline = one_node(SimConfig(warmup=10.0, duration=120.0, max_in_flight=1))
    assert closed[0] == pytest.approx(offline[0], rel=0.01) == pytest.approx(11 / PER_REQUEST, rel=0.01)
    assert closed[2] == pytest.approx(PROMPT_PASS)  # sent when the previous one finished
    assert offline[2] == pytest.approx(PER_REQUEST + PROMPT_PASS)  # created while the previous one ran


def test_a_finite_closed_loop_ends_its_span_when_the_last_request_finishes() -> None:
    throughput, _, ttft = one_node(SimConfig(mode="closed", clients=1, requests=3, warmup=0.0, duration=600.0))
    assert throughput == pytest.approx(3 * 11 / (3 * PER_REQUEST))  # the benchmark client's tokens over its time
    assert ttft == pytest.approx(PROMPT_PASS)


def test_contention_step_overhead_and_hop_overhead_lengthen_every_pass_and_message() -> None:
    hop, per_pass, slower = 0.003, 0.002, 2.0  # the step overhead in seconds: not slowed with the layers
    seconds = slower * PER_REQUEST + 11 * per_pass + 11 * 2 * hop  # 11 passes; two messages per token
    throughput, _, ttft = one_node(SimConfig(mode="closed", clients=1, warmup=10.0, duration=120.0,
                                             compute_scale=slower, step_overhead=per_pass, hop_seconds=hop))
    assert throughput == pytest.approx(11 / seconds, rel=0.01)
    assert ttft == pytest.approx(slower * PROMPT_PASS + per_pass + 2 * hop)
    _, _, prompt_slower = one_node(SimConfig(mode="closed", clients=1, warmup=10.0, duration=120.0,
                                             compute_scale=slower, prompt_scale=1.5))
    assert prompt_slower == pytest.approx(1.5 * PROMPT_PASS)  # prompts at their own scale


def test_a_gpu_types_own_scale_replaces_the_common_one_for_its_nodes() -> None:
    common = one_node(SimConfig(mode="closed", clients=1, warmup=10.0, duration=120.0, compute_scale=2.0))
    own = one_node(SimConfig(mode="closed", clients=1, warmup=10.0, duration=120.0, compute_scale=1.0,
                             gpu_scales={"G": 2.0}))
    other = one_node(SimConfig(mode="closed", clients=1, warmup=10.0, duration=120.0, compute_scale=2.0,
                               gpu_scales={"H": 5.0}))
    assert own == pytest.approx(common) and other == pytest.approx(common)
    assert own[2] == pytest.approx(2.0 * PROMPT_PASS)


def test_the_engine_step_budget_runs_prompts_together_within_its_tokens() -> None:
    def first_tokens(step_tokens: int | None) -> float:
        """p50 TTFT of two one-token requests sent together (and of nothing else: the window ends first)."""
        return one_node(SimConfig(mode="closed", clients=2, warmup=0.0, duration=PROMPT_PASS * 2.1,
                                  step_tokens=step_tokens), out=1)[1]
    one_at_a_time = (PROMPT_PASS + 2 * PROMPT_PASS) / 2
    assert first_tokens(None) == pytest.approx(one_at_a_time)  # vLLM's limit in the toy profile: a prompt a pass
    assert first_tokens(200) == pytest.approx(LAYERS * PROMPT(200))  # both in one step
    assert first_tokens(150) == pytest.approx(one_at_a_time)  # the second does not fit: the next step


@pytest.mark.parametrize("config", [SimConfig(mode="closed"), SimConfig(step_overhead=-1.0),
                                    SimConfig(compute_scale=0.0), SimConfig(prompt_scale=0.0),
                                    SimConfig(hop_seconds=-1.0), SimConfig(gpu_scales={"G": 0.0}),
                                    SimConfig(step_tokens=0), SimConfig(requests=3)])
def test_bad_closed_loop_or_calibration_settings_are_one_clear_error(config: SimConfig) -> None:
    with pytest.raises(PlanningError, match="clients|calibration|closed mode"):
        config.check()
