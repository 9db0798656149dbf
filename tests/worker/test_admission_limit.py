"""The plan's `maxInFlight` caps the requests the front end runs at once: the rest wait in its
queue and finish later with the same tokens; HELIX_MAX_IN_FLIGHT overrides the plan's cap."""

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest
from dataplane_helpers import start_workers, write_plan

from helix_worker.engine.reference import ReferenceModel
from helix_worker.envs import Settings
from helix_worker.frontend.coordinator import Coordinator, GenerationRequest, ModelLimits

PROMPTS = [[5, 17, 42], [7, 8], [100, 3, 250, 9], [30, 31, 32, 33, 34]]
MAX_TOKENS = 12


async def _most_admitted_at_once(coordinator: Coordinator) -> tuple[int, list[list[int]]]:
    """Run every prompt at once; the most requests that held a route together, and their tokens."""
    most = 0

    async def watch() -> None:
        nonlocal most
        while True:
            most = max(most, coordinator.admitted)
            await asyncio.sleep(0.002)

    async def run(prompt: list[int]) -> list[int]:
        return [e.token_id async for e in coordinator.generate(GenerationRequest(tuple(prompt), MAX_TOKENS))]

    watcher = asyncio.create_task(watch())
    try:
        tokens = await asyncio.wait_for(asyncio.gather(*(run(p) for p in PROMPTS)), 120)
    finally:
        watcher.cancel()
    return most, tokens


@pytest.mark.timeout(180)
async def test_plan_cap_holds_requests_back_without_losing_any(tmp_path: Path, checkpoint: Path, fleet) -> None:
    plan, plan_path = write_plan(tmp_path, [[("solo", 0, 6)]])
    endpoints = await asyncio.to_thread(start_workers, fleet, plan, plan_path, checkpoint)
    expected = [ReferenceModel(checkpoint).greedy(p, MAX_TOKENS).tokens for p in PROMPTS]
    limits = ModelLimits(vocab_size=380, max_positions=2048)
    cases = ((1, Settings(), 1), (1, Settings(max_in_flight=2), 2), (None, Settings(), None))
    for cap, settings, most_allowed in cases:
        coordinator = Coordinator(replace(plan, max_in_flight=cap), endpoints, limits, settings,
                                  tls=fleet.member_tls("frontend"))
        await coordinator.start()
        try:
            await coordinator.wait_ready(30)
            most, tokens = await _most_admitted_at_once(coordinator)
        finally:
            await coordinator.close()
        assert tokens == expected
        if most_allowed is None:
            assert most > 2  # without a cap all four run together: the check above can fail
        else:
            assert most == most_allowed
