"""Paged KV serving end to end with worker processes: prompts chunked across stages, KV running
out mid-decode (preemption, then re-prefill), no block left held afterwards, and how many
requests a stage holds at once compared with reserving prompt + max_tokens for each."""

import asyncio
import re
import urllib.request
from pathlib import Path

import pytest
from dataplane_helpers import assert_reference_runs, generate_with_logits, penalized_greedy, start_workers, write_plan

from helix_worker.engine.reference import ReferenceModel
from helix_worker.envs import Settings
from helix_worker.frontend.coordinator import Coordinator, GenerationRequest, ModelLimits
from helix_worker.protocol import SamplingParams
from helix_worker.security.tls import ClusterTLS
from helix_worker.transport.links import StreamLink

LIMITS = ModelLimits(vocab_size=380, max_positions=2048)
TWO_STAGES = [[("left", 0, 3), ("right", 3, 6)]]


def _metric(url: str, name: str) -> float:
    text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE))


async def _kv_left(address: str, tls: ClusterTLS, seconds: float = 5.0) -> int:
    """KV tokens the stage still holds once the releases sent so far had time to arrive."""
    link = StreamLink(address, "probe", max_message_bytes=1 << 20, tls=tls)
    for _ in range(int(seconds / 0.05)):
        if (used := int((await link.describe()).kv_used_tokens)) == 0:
            break
        await asyncio.sleep(0.05)
    return used


@pytest.mark.timeout(240)
async def test_chunked_prompts_and_preemption_keep_reference_tokens_and_leak_no_block(
        tmp_path: Path, checkpoint: Path, fleet) -> None:
    # Steps of at most 8 tokens cut every longer prompt into chunks on both stages; 6 blocks of
    # 8 tokens per stage hold 6 prompts at admission, but not their growth to 34 tokens each.
    fleet.env |= {"HELIX_MAX_BATCH_TOKENS": "8", "HELIX_KV_BLOCK_TOKENS": "8", "HELIX_KV_CACHE_TOKENS": "48"}
    plan, plan_path = write_plan(tmp_path, TWO_STAGES)
    endpoints = await asyncio.to_thread(start_workers, fleet, plan, plan_path, checkpoint)
    prompts = [list(range(30, 50)), [5, 17, 42], [7], list(range(100, 113)), [9, 8, 7, 6, 5], list(range(200, 206))]
    max_tokens = 14
    tls = fleet.member_tls("frontend")
    coordinator = Coordinator(plan, endpoints, LIMITS, Settings(), tls=tls)
    await coordinator.start()
    try:
        await coordinator.wait_ready(30)
        runs = await asyncio.wait_for(
            asyncio.gather(*(generate_with_logits(coordinator, p, max_tokens) for p in prompts)), 150)
        left = {name: await _kv_left(address, tls) for name, address in endpoints.items()}
    finally:
        await coordinator.close()
    assert_reference_runs(checkpoint, prompts, runs, max_tokens)
    urls = {child.name: child.http_url for child in fleet.children}
    assert sum(_metric(url, "helix_stage_preemptions_total") for url in urls.values()) > 0
    assert coordinator.metrics.registry.get_sample_value(
        "vllm:num_preemptions_total", {"model_name": coordinator.metrics.model_name}) > 0
    assert left == {name: 0 for name in endpoints}, "blocks still held after every request finished"
    for name in endpoints:
        # More pieces than requests x tokens: prompts really arrived in chunks.
        assert _metric(urls[name], "helix_stage_chunks_total") > len(prompts) * max_tokens


@pytest.mark.timeout(240)
async def test_paging_holds_three_times_the_requests_of_reserving_max_tokens(
        tmp_path: Path, checkpoint: Path, fleet) -> None:
    """Prompts of 8 tokens whose clients stop after 24 of max_tokens 96 (4x): reserving prompt +
    max_tokens would hold 2048 // 104 = 19 at a time."""
    fleet.env |= {"HELIX_KV_BLOCK_TOKENS": "8", "HELIX_KV_CACHE_TOKENS": "2048"}
    plan, plan_path = write_plan(tmp_path, [[("solo", 0, 6)]])
    endpoints = await asyncio.to_thread(start_workers, fleet, plan, plan_path, checkpoint)
    prompt, output, max_tokens = list(range(60, 68)), 24, 96
    reserving = 2048 // (len(prompt) + max_tokens)
    tls = fleet.member_tls("frontend")
    coordinator = Coordinator(plan, endpoints, LIMITS, Settings(), tls=tls)
    samples: list[int] = []

    async def watch() -> None:
        while True:
            samples.append(coordinator.admitted)
            await asyncio.sleep(0.005)

    async def client(index: int) -> list[int]:
        tokens = []
        stream = coordinator.generate(GenerationRequest(tuple(prompt[index % 4:]), max_tokens))
        async for event in stream:
            tokens.append(event.token_id)
            if len(tokens) == output:
                break
        await stream.aclose()
        return tokens

    await coordinator.start()
    watcher = asyncio.create_task(watch())
    try:
        await coordinator.wait_ready(30)
        runs = await asyncio.wait_for(asyncio.gather(*(client(i) for i in range(128))), 150)
        left = await _kv_left(endpoints["solo"], tls)
    finally:
        watcher.cancel()
        await coordinator.close()
    busy = [n for n in samples if n > 0]
    print(f"reserving prompt + max_tokens: {reserving}; paged: peak {max(busy)}, mean {sum(busy) / len(busy):.1f}")
    assert max(busy) >= 3 * reserving and sum(busy) / len(busy) >= 3 * reserving, (reserving, max(busy))
    reference = ReferenceModel(checkpoint)
    for i in range(4):
        assert runs[i] == reference.greedy(prompt[i:], output).tokens
    assert left == 0


@pytest.mark.timeout(240)
async def test_penalties_count_the_tokens_before_a_preemption(tmp_path: Path, checkpoint: Path, fleet) -> None:
    """Requests preempted mid-decode are re-prefilled as new requests at the last stage; their
    prompt and the tokens generated so far ride on the prefill, so the penalties still count
    them and every request ends with the tokens of a penalized decode without interruption."""
    fleet.env |= {"HELIX_MAX_BATCH_TOKENS": "8", "HELIX_KV_BLOCK_TOKENS": "8", "HELIX_KV_CACHE_TOKENS": "48"}
    plan, plan_path = write_plan(tmp_path, TWO_STAGES)
    endpoints = await asyncio.to_thread(start_workers, fleet, plan, plan_path, checkpoint)
    prompts = [[7, 8, 7, 8], [5, 17, 42], [9, 8, 7, 6, 5], list(range(200, 206)), [3, 3, 3], [100, 101, 100]]
    max_tokens = 14
    sampling = SamplingParams(frequency_penalty=1.0, presence_penalty=0.5, repetition_penalty=1.3)
    coordinator = Coordinator(plan, endpoints, LIMITS, Settings(), tls=fleet.member_tls("frontend"))
    await coordinator.start()

    async def tokens(prompt: list[int]) -> list[int]:
        return [e.token_id async for e in coordinator.generate(GenerationRequest(tuple(prompt), max_tokens, sampling))]

    try:
        await coordinator.wait_ready(30)
        runs = await asyncio.wait_for(asyncio.gather(*(tokens(p) for p in prompts)), 150)
    finally:
        await coordinator.close()
    assert coordinator.metrics.registry.get_sample_value(
        "vllm:num_preemptions_total", {"model_name": coordinator.metrics.model_name}) > 0
    reference = ReferenceModel(checkpoint)
    assert runs == [penalized_greedy(reference, p, max_tokens, frequency=1.0, presence=0.5, repetition=1.3)
                    for p in prompts]
