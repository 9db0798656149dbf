"""An outbound stage stream: one long-lived `Connect` call to a stage, with a send queue.

Used by the front end (a link to every stage) and by stages (a link to each next hop).
Sends never block the caller; events and the link going down reach callbacks, and the
owner decides when to reconnect. With `data_channel`, the link offers the stage a raw TCP
side channel (`datachannel`) and, once it is open, sends every message there instead of
on the gRPC stream, which then carries only events back; when the stage does not answer
the offer or the channel cannot connect, messages go on the gRPC stream as before. With
`tls` (the cluster's, see `security.tls`) the stream and the data channel use mutual TLS.
"""

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import grpc
import torch

from helix_proto import helix_stage_pb2 as pb
from helix_proto import helix_stage_pb2_grpc as pb_grpc
from helix_worker.protocol import Chunk
from helix_worker.security.tls import ClusterTLS
from helix_worker.transport import datachannel, wire

log = logging.getLogger(__name__)
PEER_HEADER = "helix-peer"


KEEPALIVE_MS = 10_000


def channel_options(max_message_bytes: int, keepalive_ms: int = KEEPALIVE_MS) -> list[tuple[str, int]]:
    """Client side: ping every `keepalive_ms`, even on an idle stream, to notice a dead peer."""
    return [("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.keepalive_time_ms", keepalive_ms), ("grpc.keepalive_timeout_ms", 5_000),
            ("grpc.http2.max_pings_without_data", 0), ("grpc.keepalive_permit_without_calls", 1)]


def server_options(max_message_bytes: int, keepalive_ms: int = KEEPALIVE_MS, *,
                   max_receive_bytes: int | None = None) -> list[tuple[str, int]]:
    """Server side: accept the clients' keepalive pings. gRPC servers by default allow one ping
    without data per 5 minutes and answer the third early one with GOAWAY too_many_pings, which
    broke every idle front-end and stage-to-stage stream after about 30 seconds.
    `max_receive_bytes` caps what clients send when that is less than what the server sends."""
    receive = max_message_bytes if max_receive_bytes is None else max_receive_bytes
    options = [(k, receive if k == "grpc.max_receive_message_length" else v)
               for k, v in channel_options(max_message_bytes, keepalive_ms)]
    return options + [
        ("grpc.http2.min_ping_interval_without_data_ms", keepalive_ms // 2),
        ("grpc.http2.min_time_between_pings_ms", keepalive_ms // 2)]


class StreamLink:
    def __init__(self, address: str, peer_name: str, *, max_message_bytes: int, data_channel: bool = True,
                 on_event: Callable[[pb.StageEvent], None] | None = None,
                 on_down: Callable[["StreamLink"], None] | None = None, tls: ClusterTLS | None = None) -> None:
        self.address, self.peer_name = address, peer_name
        self._options = channel_options(max_message_bytes)
        self._tls = tls
        self._offer_data = data_channel
        self._on_event, self._on_down = on_event, on_down
        self._channel: grpc.aio.Channel | None = None
        self._call: grpc.aio.StreamStreamCall[pb.StageRequest, pb.StageEvent] | None = None
        self._data: datachannel.DataSender | None = None
        self._queue: asyncio.Queue[pb.StageRequest | None] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self.up = False

    @property
    def transport(self) -> str:
        """What messages travel on: "tcp" (the data channel) or "grpc"."""
        return "tcp" if self._data is not None else "grpc"

    async def connect(self, timeout: float = 5.0) -> None:
        """Open the stream; raises grpc.aio.AioRpcError or TimeoutError if the stage is unreachable."""
        await self.close()
        self._channel = self._new_channel()
        self._queue = asyncio.Queue()
        metadata: tuple[tuple[str, str], ...] = ((PEER_HEADER, self.peer_name),)
        if self._offer_data:
            metadata += ((datachannel.HEADER, datachannel.OFFER),)
        call = pb_grpc.StageServiceStub(self._channel).Connect(self._requests(self._queue), metadata=metadata)
        try:
            answer = dict(await asyncio.wait_for(call.initial_metadata(), timeout)).get(datachannel.HEADER)
            if isinstance(answer, str) and answer:  # a text header (only `-bin` headers carry bytes)
                await self._open_data(answer, timeout)
        except BaseException:
            call.cancel()
            await self._channel.close()
            self._channel = None
            raise
        self._call, self.up = call, True
        self._reader = asyncio.create_task(self._read(call))

    async def _open_data(self, answer: str, timeout: float) -> None:
        try:
            self._data = await datachannel.DataSender.open(self.address, answer, timeout, self._data_lost, self._tls)
        except (OSError, TimeoutError, ValueError) as err:
            log.warning("data channel to %s unavailable (%s); sending on the gRPC stream", self.address,
                        err or type(err).__name__)

    async def describe(self, timeout: float = 5.0) -> pb.StageInfo:
        channel = self._channel or self._new_channel()
        try:
            return await pb_grpc.StageServiceStub(channel).Describe(pb.DescribeRequest(peer=self.peer_name),
                                                                  timeout=timeout)
        finally:
            if channel is not self._channel:
                await channel.close()

    def _new_channel(self) -> grpc.aio.Channel:
        if self._tls is None:
            return grpc.aio.insecure_channel(self.address, options=self._options)
        return grpc.aio.secure_channel(self.address, self._tls.channel_credentials(),
                                       options=self._options + self._tls.channel_options())

    def send(self, message: pb.StageRequest) -> bool:
        """Queue a message; False if the link is down (nothing is queued then)."""
        if not self.up:
            return False
        if self._data is not None:
            self._data.send(message.SerializeToString())
        else:
            self._queue.put_nowait(message)
        return True

    def send_batch(self, chunks: list[Chunk], payload: torch.Tensor) -> bool:
        """Queue a forward batch; on the data channel its tensor's bytes are not copied."""
        if self._data is None:
            return self.send(wire.batch_to_proto(chunks, payload))
        if not self.up:
            return False
        header = wire.batch_to_proto(chunks, payload, with_data=False).SerializeToString()
        self._data.send(header, wire.tensor_bytes(payload))
        return True

    async def close(self) -> None:
        self._stop_sending()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
            self._reader = None
        self._call = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    @staticmethod
    async def _requests(queue: asyncio.Queue[pb.StageRequest | None]) -> AsyncIterator[pb.StageRequest]:
        while (message := await queue.get()) is not None:
            yield message

    async def _read(self, call: grpc.aio.StreamStreamCall[pb.StageRequest, pb.StageEvent]) -> None:
        try:
            async for event in call:
                if self._on_event is not None:
                    self._on_event(event)
            log.info("stream to %s ended", self.address)
        except grpc.aio.AioRpcError as err:
            log.info("stream to %s broke: %s", self.address, err.code().name)
        except asyncio.CancelledError:
            call.cancel()
            raise
        self._went_down()

    def _data_lost(self) -> None:
        log.info("data channel to %s broke", self.address)
        self._data = None
        if self._call is not None:
            self._call.cancel()
        self._went_down()

    def _went_down(self) -> None:
        if not self.up:
            return
        self._stop_sending()
        if self._on_down is not None:
            self._on_down(self)

    def _stop_sending(self) -> None:
        """Mark the link down, end the gRPC request stream and close the data channel."""
        self.up = False
        self._queue.put_nowait(None)
        if self._data is not None:
            self._data.close()
            self._data = None
