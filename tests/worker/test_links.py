"""gRPC keepalive between the front end and stages: an idle stream must stay up."""

import asyncio

import grpc
import pytest

from helix_worker.envs import Settings
from helix_worker.transport.grpcserver import server_options
from helix_worker.transport.links import Keepalive, channel_options

pytestmark = pytest.mark.timeout(30)
KEEPALIVE = Keepalive(0.3, 5.0)  # links ping every heartbeat (1 s by default); the servers' tolerance scales with it
IDLE_SECONDS = 6.0  # a default server answers GOAWAY too_many_pings after about 3.6 s


async def _idle_stream(server_opts: list[tuple[str, int]]) -> bool:
    """Open a bidirectional stream, send nothing for IDLE_SECONDS; whether it is still open."""
    async def hold(requests, context):
        await context.send_initial_metadata(())
        async for _ in requests:
            pass
        yield b""

    handler = grpc.method_handlers_generic_handler("test.Idle", {"Hold": grpc.stream_stream_rpc_method_handler(hold)})
    server = grpc.aio.server(options=server_opts)
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    outbox: asyncio.Queue = asyncio.Queue()

    async def requests():
        while (item := await outbox.get()) is not None:
            yield item

    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=channel_options(1 << 20, KEEPALIVE))
    try:
        call = channel.stream_stream("/test.Idle/Hold")(requests())
        await call.initial_metadata()
        await asyncio.sleep(IDLE_SECONDS)
        return not call.done()
    finally:
        outbox.put_nowait(None)
        await channel.close()
        await server.stop(None)


async def test_idle_streams_survive_keepalive_pings() -> None:
    """With the server options an idle stream stays open; with gRPC's default server policy
    (what the options fix) it is closed by GOAWAY too_many_pings. Both run at once."""
    fixed, default = await asyncio.gather(_idle_stream(server_options(Settings(heartbeat_seconds=KEEPALIVE.interval))),
                                          _idle_stream(channel_options(1 << 20, KEEPALIVE)))
    assert fixed and not default
