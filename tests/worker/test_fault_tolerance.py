"""Kill a stage mid-generation: its requests re-prefill on another pipeline and finish with
the reference tokens; the broken pipeline leaves rotation and returns when the stage does."""

import asyncio
from pathlib import Path

import pytest
from dataplane_helpers import start_workers, write_plan

from helix_worker.engine.reference import ReferenceModel
from helix_worker.envs import Settings
from helix_worker.frontend.coordinator import Coordinator, GenerationRequest, ModelLimits

PROMPTS = [[11, 12, 13], [40, 41, 42, 43, 44, 45], [9], [300, 301, 302, 303], [77, 78]]
MAX_TOKENS = 40


async def _wait_for(condition, timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.mark.timeout(240)
async def test_killed_stage_requests_finish_with_reference_tokens(tmp_path: Path, checkpoint: Path, fleet) -> None:
    # Two pipelines sharing the first stage: head -> tail-1 and head -> tail-2.
    plan, plan_path = write_plan(tmp_path, [[("head", 0, 3), ("tail-1", 3, 6)], [("head", 0, 3), ("tail-2", 3, 6)]])
    endpoints = await asyncio.to_thread(start_workers, fleet, plan, plan_path, checkpoint)
    # IWRR puts every other request on tail-1 (adaptive routing may leave it idle: test_adaptive_routing)
    coordinator = Coordinator(plan, endpoints, ModelLimits(380, 2048), Settings(reconnect_seconds=0.2, routing="iwrr"),
                              tls=fleet.member_tls("frontend"))
    await coordinator.start()
    progress = {i: [] for i in range(len(PROMPTS))}

    async def run(index: int) -> list[int]:
        async for event in coordinator.generate(GenerationRequest(tuple(PROMPTS[index]), MAX_TOKENS)):
            progress[index].append(event.token_id)
        return progress[index]

    try:
        await coordinator.wait_ready(30)
        tasks = [asyncio.create_task(run(i)) for i in range(len(PROMPTS))]
        await _wait_for(lambda: all(len(t) >= 2 for t in progress.values()), 60)
        victim = next(c for c in fleet.children if c.name == "tail-1")
        fleet.kill(victim)
        results = await asyncio.wait_for(asyncio.gather(*tasks), 120)
        assert coordinator.metrics.registry.get_sample_value(
            "helix_failovers_total", {"model_name": coordinator.metrics.model_name}) >= 1
        assert not coordinator.routes.up["tail-1"]
        assert [len(tokens) for tokens in results] == [MAX_TOKENS] * len(PROMPTS)

        # While tail-1 is down, new requests all go to the other pipeline.
        assert coordinator.routes.choose(10).nodes == ("head", "tail-2")
        assert coordinator.routes.choose(10).nodes == ("head", "tail-2")

        # The stage comes back on its old address and its pipeline rejoins the rotation.
        restarted = fleet.start_worker(plan_path, "tail-1", checkpoint, port=victim.ports["grpc"])
        await asyncio.to_thread(fleet.wait, restarted)
        await _wait_for(lambda: coordinator.routes.up["tail-1"], 30)
        # head lost its link to tail-1 with it: the pipeline rejoins once head says it reaches tail-1
        # again (it tries when a heartbeat asks), within a heartbeat or two of tail-1's return.
        rejoined = next(r for r in coordinator.routes.routes if r.nodes == ("head", "tail-1"))
        await _wait_for(lambda: coordinator.routes.usable(rejoined), 10)
        chosen = {coordinator.routes.choose(10).nodes for _ in range(4)}
        assert chosen == {("head", "tail-1"), ("head", "tail-2")}
        after = [t async for t in _tokens(coordinator, PROMPTS[0])]
    finally:
        await coordinator.close()

    reference = ReferenceModel(checkpoint)
    for prompt, tokens in zip(PROMPTS, results):
        assert tokens == reference.greedy(prompt, MAX_TOKENS).tokens
    assert after == reference.greedy(PROMPTS[0], MAX_TOKENS).tokens


async def _tokens(coordinator: Coordinator, prompt: list[int]):
    async for event in coordinator.generate(GenerationRequest(tuple(prompt), MAX_TOKENS)):
        yield event.token_id
