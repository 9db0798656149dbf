"""One stage over real gRPC in-process, messages on the data channel or on the gRPC stream:
results, failures (too long for the pool, unknown request, bad payload), releases, and the HTTP
health/readiness/metrics endpoints of a worker process."""

import asyncio
import urllib.request
from pathlib import Path

import pytest
import torch
from dataplane_helpers import MODEL, write_plan

from helix_proto import helix_stage_pb2 as pb
from helix_worker.engine.model import LayerSlice
from helix_worker.engine.reference import ReferenceModel
from helix_worker.engine.stage_engine import StageEngine
from helix_worker.envs import Settings
from helix_worker.protocol import Chunk, FailureKind, Hop, Phase
from helix_worker.stage.endpoint import StageEndpoint
from helix_worker.stage.server import StageIdentity
from helix_worker.transport import wire
from helix_worker.transport.links import StreamLink


@pytest.fixture(params=["tcp", "grpc"])
async def stage(checkpoint: Path, request: pytest.FixtureRequest):
    """The whole model as one stage with a 64-token KV cache (16 blocks of 4), and a front-end
    link to it that sends on the data channel (tcp) or on the gRPC stream."""
    model = LayerSlice.load(checkpoint, 0, 6)
    engine = StageEngine("solo", model, model.new_pool(17, 4), max_batch_tokens=256)
    settings = Settings(max_message_bytes=1 << 20, data_channel=request.param)
    endpoint = await StageEndpoint.start(engine, StageIdentity("solo", "tiny", "hash"), "127.0.0.1", 0, settings)
    runner = asyncio.create_task(engine.run())
    events: asyncio.Queue[pb.StageEvent] = asyncio.Queue()
    link = StreamLink(f"127.0.0.1:{endpoint.port}", "fe", max_message_bytes=1 << 20, on_event=events.put_nowait)
    await link.connect()
    assert link.transport == request.param
    try:
        yield engine, link, events, Hop("solo", f"127.0.0.1:{endpoint.port}", 0, 6)
    finally:
        await link.close()
        runner.cancel()
        await endpoint.stop(None)


def _prefill(link: StreamLink, hop: Hop, rid: str, ids: list[int]) -> None:
    link.send_batch([Chunk(rid, Phase.PREFILL, 0, len(ids), (hop,), "fe")], torch.tensor(ids))


async def test_prefill_returns_the_reference_token(stage, checkpoint: Path) -> None:
    engine, link, events, hop = stage
    _prefill(link, hop, "r1", [5, 6, 7, 8, 9])
    event = await asyncio.wait_for(events.get(), 10)
    assert [r.request_id for r in event.results] == ["r1"]
    assert event.results[0].token_id == ReferenceModel(checkpoint).greedy([5, 6, 7, 8, 9], 1).tokens[0]
    assert event.results[0].position == 5
    assert engine.usage().used_tokens == 8 and engine.usage().requests == 1  # two blocks of 4
    link.send(wire.release_to_proto(["r1"]))
    await asyncio.sleep(0.2)
    assert engine.usage().used_tokens == 0 and engine.usage().requests == 0


async def test_failures_come_back_per_request(stage) -> None:
    engine, link, events, hop = stage
    _prefill(link, hop, "big", list(range(70)))  # the stage holds only 64 tokens
    link.send_batch([Chunk("ghost", Phase.DECODE, 4, 1, (hop,), "fe")], torch.tensor([3]))
    link.send_batch([Chunk("lost", Phase.PREFILL, 0, 1, (Hop("other", "x:1", 0, 6),), "fe")], torch.tensor([3]))
    odd = wire.chunk_to_proto(Chunk("odd", Phase.PREFILL, 0, 1, (hop,), "fe"))
    bad_dtype = pb.StageRequest(batch=pb.ForwardBatch(chunks=[odd],
                                                      payload=pb.Tensor(dtype="complex32", shape=[1], data=b"\0" * 4)))
    link.send(bad_dtype)
    short_chunk = wire.chunk_to_proto(Chunk("short", Phase.PREFILL, 0, 2, (hop,), "fe"))
    short = pb.StageRequest(batch=pb.ForwardBatch(chunks=[short_chunk],
                                                  payload=pb.Tensor(dtype="int64", shape=[2], data=b"\0" * 8)))
    link.send(short)  # two int64 announced, eight bytes sent
    kinds = {}
    while len(kinds) < 5:
        event = await asyncio.wait_for(events.get(), 10)
        kinds |= {e.request_id: (e.kind, e.message) for e in event.errors}
    assert kinds["big"][0] == FailureKind.INVALID and "70 tokens need 18 KV blocks" in kinds["big"][1]
    assert kinds["ghost"][0] == FailureKind.ROUTE_BROKEN and "no KV cache" in kinds["ghost"][1]
    assert kinds["lost"][0] == FailureKind.INVALID and "not solo" in kinds["lost"][1]
    assert kinds["odd"][0] == FailureKind.INVALID and "complex32" in kinds["odd"][1]
    assert kinds["short"][0] == FailureKind.INVALID and "8 bytes do not hold" in kinds["short"][1]
    assert engine.usage().requests == 0


async def test_late_chunks_of_released_requests_are_dropped(stage) -> None:
    engine, link, events, hop = stage
    link.send(wire.release_to_proto(["gone"]))
    _prefill(link, hop, "gone", [1, 2, 3])
    _prefill(link, hop, "kept", [1, 2, 3])
    event = await asyncio.wait_for(events.get(), 10)
    assert [r.request_id for r in event.results] == ["kept"]
    assert not engine.holds("gone") and engine.holds("kept")


async def test_describe_reports_layers_and_kv(stage) -> None:
    _, link, _, _ = stage
    info = await link.describe()
    assert (info.node, info.start, info.end, info.num_layers, info.kv_capacity_tokens) == ("solo", 0, 6, 6, 64)
    assert (info.kv_block_tokens, info.kv_used_tokens) == (4, 0)


@pytest.mark.timeout(120)
def test_worker_process_health_readiness_and_metrics(tmp_path: Path, checkpoint: Path, fleet) -> None:
    plan, plan_path = write_plan(tmp_path, [[("only", 0, 6)]])
    child = fleet.wait(fleet.start_worker(plan_path, "only", checkpoint))
    for path in ("/healthz", "/readyz"):
        with urllib.request.urlopen(child.http_url + path, timeout=5) as response:
            assert response.status == 200
    metrics = urllib.request.urlopen(child.http_url + "/metrics", timeout=5).read().decode()
    for name in ("helix_stage_tokens_total", "helix_stage_batch_requests", "helix_stage_kv_tokens",
                 "helix_stage_queue_length", "helix_stage_hop_seconds", "helix_stage_step_overhead_seconds"):
        assert name in metrics
    assert f'helix_stage_kv_tokens{{model_name="{MODEL}",node="only",state="capacity"}} 4096.0' in metrics
    assert f'vllm:kv_cache_usage_perc{{model_name="{MODEL}",node="only"}} 0.0' in metrics


def test_unknown_node_is_one_clear_error(tmp_path: Path, checkpoint: Path, fleet) -> None:
    plan, plan_path = write_plan(tmp_path, [[("only", 0, 6)]])
    child = fleet.start_worker(plan_path, "nobody", checkpoint)
    assert child.process.wait(timeout=60) == 2
    log = child.log_path.read_text()
    assert "error: node 'nobody' is not in the plan" in log and "Traceback" not in log
