"""The TCP data channel between a link and a stage endpoint: negotiated over the gRPC stream,
tensors intact and in order, and a clean fallback to the gRPC stream when it cannot work."""

import asyncio
import socket

import grpc
import pytest
import torch

from helix_proto import helix_stage_pb2_grpc as pb_grpc
from helix_worker.envs import Settings
from helix_worker.protocol import Chunk, Hop, Phase
from helix_worker.stage.endpoint import StageEndpoint
from helix_worker.stage.server import StageIdentity, StageServicer
from helix_worker.transport import wire
from helix_worker.transport.datachannel import DataListener, DataSender
from helix_worker.transport.links import StreamLink

pytestmark = pytest.mark.timeout(30)
MIB = 1 << 20
HOP = Hop("solo", "unused", 0, 1)


class _Recorder:
    """Stands in for the engine behind the endpoint: records what the stage decoded, in order."""

    def __init__(self) -> None:
        self.outputs = None
        self.seen: list[tuple[str, object]] = []
        self.changed = asyncio.Event()

    def submit(self, chunks: list[Chunk], payload: torch.Tensor) -> None:
        self.seen.append((chunks[0].request_id, payload))
        self.changed.set()

    def release(self, request_ids: list[str]) -> None:
        self.seen.append(("release", request_ids))
        self.changed.set()

    async def wait_for(self, count: int) -> None:
        while len(self.seen) < count:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), 10)


def _chunk(request_id: str, rows: int) -> Chunk:
    return Chunk(request_id, Phase.DECODE, 0, rows, (HOP,), "fe")


@pytest.fixture
async def endpoint():
    """Start endpoints (data channel per `mode`) with a recorder; all stopped at the end."""
    started: list[StageEndpoint] = []

    async def start(mode: str = "tcp", max_message_bytes: int = 64 * MIB,
                    data_port: int = 0) -> tuple[StageEndpoint, _Recorder]:
        recorder = _Recorder()
        settings = Settings(data_channel=mode, max_message_bytes=max_message_bytes, data_port=data_port)
        started.append(await StageEndpoint.start(recorder, StageIdentity("solo", "m", "h"), "127.0.0.1", 0, settings))
        return started[-1], recorder

    yield start
    for each in started:
        await each.stop(None)


async def _link(port: int, **kwargs) -> StreamLink:
    link = StreamLink(f"127.0.0.1:{port}", "fe", max_message_bytes=64 * MIB, **kwargs)
    await link.connect()
    return link


async def test_tensors_arrive_intact_and_in_order(endpoint) -> None:
    stage, recorder = await endpoint()
    link = await _link(stage.port)
    assert link.transport == "tcp"
    sent = {"f32": torch.randn(768, 1024),  # 3 MiB, more than a socket buffer takes at once
            "bf16": torch.randn(5, 64).to(torch.bfloat16), "ids": torch.tensor([3, 1, 4, 1, 5]),
            "none": torch.empty(0, 64), "strided": torch.randn(64, 8).t()}
    for name, tensor in sent.items():
        link.send_batch([_chunk(name, tensor.shape[0])], tensor)
        link.send(wire.release_to_proto([name]))
    await recorder.wait_for(2 * len(sent))
    assert [name for name, _ in recorder.seen] == [n for name in sent for n in (name, "release")]
    for (name, got), want in zip(recorder.seen[::2], sent.values()):
        assert got.dtype == want.dtype and torch.equal(got, want), name
    await link.close()


@pytest.mark.parametrize("stage_mode, offer", [("grpc", True), ("tcp", False)])
async def test_either_side_can_keep_to_the_grpc_stream(endpoint, stage_mode: str, offer: bool) -> None:
    stage, recorder = await endpoint(stage_mode)
    link = await _link(stage.port, data_channel=offer)
    assert link.transport == "grpc"
    link.send_batch([_chunk("r", 2)], torch.ones(2, 4))
    await recorder.wait_for(1)
    assert torch.equal(recorder.seen[0][1], torch.ones(2, 4))
    await link.close()


async def test_listener_binds_the_configured_port(endpoint) -> None:
    """Workers in pods listen on a fixed port (HELIX_DATA_PORT), which network policies can open."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    stage, recorder = await endpoint(data_port=free)
    assert stage.data_port == free
    link = await _link(stage.port)
    assert link.transport == "tcp"
    link.send_batch([_chunk("r", 1)], torch.tensor([7]))
    await recorder.wait_for(1)
    await link.close()


async def test_unreachable_channel_falls_back_to_the_grpc_stream() -> None:
    """The stage answers with a port its address does not reach (as behind a network policy
    that opens only the gRPC port): the link sends on the gRPC stream instead."""
    recorder = _Recorder()
    listener = DataListener(MIB)
    await listener.start("127.0.0.2")
    servicer = StageServicer(recorder, StageIdentity("solo", "m", "h"), max_message_bytes=MIB, data_listener=listener)
    server = grpc.aio.server()
    pb_grpc.add_StageServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        link = await _link(port)
        assert link.transport == "grpc" and link.up
        link.send_batch([_chunk("r", 1)], torch.tensor([7]))
        await recorder.wait_for(1)
        await link.close()
    finally:
        await server.stop(None)
        await listener.close()


async def test_link_goes_down_when_its_data_channel_breaks(endpoint) -> None:
    stage, recorder = await endpoint()
    down = asyncio.Event()
    link = await _link(stage.port, on_down=lambda _: down.set())
    assert link.transport == "tcp"
    await stage.servicer.data_listener.close()  # closes every channel, as a dying stage would
    await asyncio.wait_for(down.wait(), 10)
    assert not link.up and not link.send_batch([_chunk("r", 1)], torch.tensor([1]))
    await link.close()


async def test_oversized_message_closes_the_channel(endpoint) -> None:
    stage, recorder = await endpoint(max_message_bytes=4096)
    down = asyncio.Event()
    link = await _link(stage.port, on_down=lambda _: down.set())
    link.send_batch([_chunk("big", 8)], torch.zeros(8, 1024))
    await asyncio.wait_for(down.wait(), 10)
    assert recorder.seen == []
    await link.close()


async def test_wrong_token_is_refused(endpoint) -> None:
    stage, _ = await endpoint()
    answer = f"{stage.data_port} {'00' * 16}"
    with pytest.raises(ConnectionError):
        await DataSender.open(f"127.0.0.1:{stage.port}", answer, 5.0, on_lost=lambda: None)
