"""The limits of Helix's gRPC servers (`transport.grpcserver`): an idle client connection is
closed, a unary call whose client never finishes sending its request (or that runs too long)
ends DEADLINE_EXCEEDED, while ordinary calls and long-lived streams go on."""

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from helix_proto import helix_stage_pb2 as pb
from helix_worker.envs import Settings
from helix_worker.stage.endpoint import StageEndpoint
from helix_worker.stage.server import StageIdentity
from helix_worker.transport.grpcserver import new_server, server_options

pytestmark = pytest.mark.timeout(60)
LIMITS = Settings(grpc_idle_seconds=0.5, grpc_unary_seconds=1.0)


async def _echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    if request == b"slow":
        await asyncio.sleep(3)
    return request


async def _hold(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    async for request in requests:
        yield request


async def _never() -> AsyncIterator[bytes]:
    """A client that opens a call and never sends its request (nor ends it)."""
    await asyncio.Event().wait()
    yield b""


async def _state(channel: grpc.aio.Channel, wanted: grpc.ChannelConnectivity, timeout: float) -> float:
    """Seconds until `channel` is in state `wanted`."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    while (state := channel.get_state()) != wanted:
        remaining = timeout - (loop.time() - began)
        assert remaining > 0, f"the channel stayed {state}"
        try:
            await asyncio.wait_for(channel.wait_for_state_change(state), remaining)
        except TimeoutError:
            pass
    return loop.time() - began


async def test_idle_and_slow_clients_are_dropped_while_calls_and_streams_go_on() -> None:
    server = new_server(LIMITS)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Limits", {
        "Echo": grpc.unary_unary_rpc_method_handler(_echo),
        "Hold": grpc.stream_stream_rpc_method_handler(_hold)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    address = f"127.0.0.1:{port}"
    # Each its own connection (channels to one address share one by default).
    idle, streaming, slow = (grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
                             for _ in range(3))
    try:
        assert await idle.unary_unary("/test.Limits/Echo")(b"hello", timeout=5) == b"hello"
        outbox: asyncio.Queue[bytes] = asyncio.Queue()

        async def requests() -> AsyncIterator[bytes]:
            while True:
                yield await outbox.get()

        stream = streaming.stream_stream("/test.Limits/Hold")(requests())
        outbox.put_nowait(b"one")
        assert await stream.read() == b"one"

        # A connection without calls is closed (GOAWAY: the channel goes idle), an open stream's is not.
        closed_after = await _state(idle, grpc.ChannelConnectivity.IDLE, 5)
        assert closed_after >= 0.3
        await asyncio.sleep(1.0)
        outbox.put_nowait(b"two")
        assert await asyncio.wait_for(stream.read(), 5) == b"two", "a stream's connection is never idle"
        assert streaming.get_state() == grpc.ChannelConnectivity.READY

        # A unary call whose request never comes, or whose answer takes too long, ends at the deadline.
        loop = asyncio.get_running_loop()
        for call in (lambda: slow.stream_unary("/test.Limits/Echo")(_never()),
                     lambda: slow.unary_unary("/test.Limits/Echo")(b"slow")):
            began = loop.time()
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await asyncio.wait_for(call(), 5)
            assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "HELIX_GRPC_UNARY_SECONDS" in ended.value.details()
            assert 0.9 <= loop.time() - began < 3
        # ...and a client that calls again reconnects and is answered as before.
        assert await idle.unary_unary("/test.Limits/Echo")(b"again", timeout=5) == b"again"
        assert await slow.unary_unary("/test.Limits/Echo")(b"quick", timeout=5) == b"quick"
        stream.cancel()
    finally:
        for channel in (idle, streaming, slow):
            await channel.close()
        await server.stop(None)


class _NoEngine:
    """Enough of an engine for a stage endpoint whose calls never reach it."""

    outputs = None


async def test_a_stage_server_keeps_the_limits() -> None:
    endpoint = await StageEndpoint.start(_NoEngine(), StageIdentity("solo", "m", "h"), "127.0.0.1", 0, LIMITS)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{endpoint.port}")
    try:
        describe = channel.stream_unary("/helix.stage.StageService/Describe",
                                        response_deserializer=pb.StageInfo.FromString)
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await asyncio.wait_for(describe(_never()), 5)
        assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        await channel.close()
        await endpoint.stop(None)


def test_connection_age_is_for_the_client_port_only() -> None:
    settings = Settings(grpc_max_connection_age_seconds=600, drain_seconds=30)
    client_port = dict(server_options(settings, clients=True))
    assert (client_port["grpc.max_connection_age_ms"], client_port["grpc.max_connection_age_grace_ms"]) == (600_000,
                                                                                                           30_000)
    assert "grpc.max_connection_age_ms" not in dict(server_options(settings)), "stage streams live on"
    assert dict(server_options(settings))["grpc.max_connection_idle_ms"] == 300_000
    assert "grpc.max_connection_idle_ms" not in dict(server_options(Settings(grpc_idle_seconds=0)))
