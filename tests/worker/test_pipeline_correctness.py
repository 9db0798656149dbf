"""One, two and three stages in as many processes generate exactly what a single process
computes, with prompts longer than a step's budget chunked across the stages, and messages on
the TCP data channel (the default) and on the gRPC streams alone."""

import asyncio
import re
import urllib.request
from pathlib import Path

import pytest
from dataplane_helpers import assert_reference_runs, generate_with_logits, start_workers, write_plan

from helix_worker.envs import Settings
from helix_worker.frontend.coordinator import Coordinator, ModelLimits

PROMPTS = [[5, 17, 42], list(range(30, 50)), [7], [100, 3, 250, 9, 11, 12, 13], list(range(200, 212))]
# The first two start together (one batch of unequal prefills); the rest arrive while they decode.
DELAYS = [0.0, 0.0, 0.004, 0.008, 0.016]
MAX_TOKENS = 8


def _histogram_count(metrics: str, name: str, label: str = "") -> float:
    """The histogram's count, summed over its series (those with `label`, e.g. 'phase="decode"', if given)."""
    return sum(float(v) for v in re.findall(rf"^{name}_count\{{[^}}]*{label}[^}}]*\}} (\S+)$", metrics, re.MULTILINE))


def _counter(metrics: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{name}_total\{{[^}}]*\}} (\S+)$", metrics, re.MULTILINE))


CHAINS = {1: [("stage-a", 0, 6)], 2: [("stage-a", 0, 3), ("stage-b", 3, 6)],
          3: [("stage-a", 0, 2), ("stage-b", 2, 4), ("stage-c", 4, 6)]}


@pytest.mark.timeout(180)
@pytest.mark.parametrize("stages, data_channel", [(1, "tcp"), (2, "tcp"), (3, "tcp"), (3, "grpc")])
async def test_pipelines_match_single_process(tmp_path: Path, checkpoint: Path, fleet, stages: int,
                                              data_channel: str) -> None:
    plan, plan_path = write_plan(tmp_path, [CHAINS[stages]])
    fleet.env["HELIX_DATA_CHANNEL"] = data_channel
    fleet.env["HELIX_MAX_BATCH_TOKENS"] = "12"  # the 13- and 20-token prompts run in chunks
    endpoints = await asyncio.to_thread(start_workers, fleet, plan, plan_path, checkpoint)
    coordinator = Coordinator(plan, endpoints, ModelLimits(vocab_size=380, max_positions=2048),
                              Settings(data_channel=data_channel), tls=fleet.member_tls("frontend"))
    await coordinator.start()
    try:
        await coordinator.wait_ready(30)
        runs = await asyncio.gather(*(generate_with_logits(coordinator, p, MAX_TOKENS, d)
                                      for p, d in zip(PROMPTS, DELAYS)))
    finally:
        await coordinator.close()

    assert_reference_runs(checkpoint, PROMPTS, runs, MAX_TOKENS)

    # Continuous batching really mixed requests: fewer steps than chunks on every stage.
    for child in fleet.children:
        text = urllib.request.urlopen(child.http_url + "/metrics", timeout=5).read().decode()
        steps = _histogram_count(text, "helix_stage_batch_requests")
        chunks = _counter(text, "helix_stage_chunks")
        assert chunks > len(PROMPTS) * MAX_TOKENS, child.name  # one piece per token, and prompt chunks
        assert 0 < steps < chunks, f"{child.name}: {steps} steps for {chunks} chunks"
        # Each chunk's time here is counted under its phase, and every step's cost beyond its compute.
        prefill, decode = (_histogram_count(text, "helix_stage_hop_seconds", f'phase="{phase}"')
                           for phase in ("prefill", "decode"))
        assert prefill >= len(PROMPTS) and decode > 0 and prefill + decode == chunks, child.name
        assert _histogram_count(text, "helix_stage_step_overhead_seconds") == steps, child.name
        assert "sending on the gRPC stream" not in child.log_path.read_text(), f"{child.name} fell back"
