"""An outbound stage stream: one long-lived `Connect` call to a stage, with a send queue.

Used by the front end (a link to every stage) and by stages (a link to each next hop).
Sends never block the caller; events and the link going down reach callbacks, and the
owner decides when to reconnect. With `data_channel`, the link offers the stage a raw TCP
side channel (`datachannel`) and, once it is open, sends every message there instead of
on the gRPC stream, which then carries only events back; when the stage does not answer
the offer or the channel cannot connect, messages go on the gRPC stream as before. With
`tls` (the cluster's, see `security.tls`) the stream and the data channel use mutual TLS.
Each link pings its peer as `Keepalive` says, so that a link cut on the way is noticed within
the same bound as a hung stage.
"""

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass

import grpc
import torch

from helix_proto import helix_stage_pb2 as pb
from helix_proto import helix_stage_pb2_grpc as pb_grpc
from helix_worker.envs import Settings
from helix_worker.protocol import Chunk, Hop
from helix_worker.security.tls import ClusterTLS
from helix_worker.transport import datachannel, wire

log = logging.getLogger(__name__)
PEER_HEADER = "helix-peer"


@dataclass(frozen=True)
class Keepalive:
    """How a link notices a peer it can no longer reach: a ping every `interval` seconds, even on
    an idle stream, and the connection given up when one has no answer within `timeout`. A link
    cut on the way (a partition, a dead NAT entry) sends no RST; without this only the kernel's
    retransmissions would end it, after minutes. Links use the liveness bounds
    (HELIX_HEARTBEAT_SECONDS, HELIX_HUNG_SECONDS), so a cut stage-to-stage link is noticed within
    heartbeat + hung seconds, like a hung stage; servers accept pings that often (`grpcserver`)."""

    interval: float
    timeout: float

    @classmethod
    def of(cls, settings: Settings) -> "Keepalive":
        return cls(settings.heartbeat_seconds, settings.hung_seconds)


def milliseconds(seconds: float) -> int:
    """A duration as gRPC's channel arguments take it (at least 1 ms)."""
    return max(1, round(seconds * 1000))


def channel_options(max_message_bytes: int, keepalive: Keepalive) -> list[tuple[str, int]]:
    """Client side: message limits, and pings as `keepalive` says. gRPC ends a connection on an
    unanswered ping after `grpc.http2.ping_timeout_ms` (a minute unless set), whatever
    `grpc.keepalive_timeout_ms` says, so both are set."""
    timeout = milliseconds(keepalive.timeout)
    return [("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.keepalive_time_ms", milliseconds(keepalive.interval)),
            ("grpc.keepalive_timeout_ms", timeout), ("grpc.http2.ping_timeout_ms", timeout),
            ("grpc.http2.max_pings_without_data", 0), ("grpc.keepalive_permit_without_calls", 1)]


class StreamLink:
    def __init__(self, address: str, peer_name: str, *, max_message_bytes: int, data_channel: bool = True,
                 on_event: Callable[[pb.StageEvent], None] | None = None,
                 on_down: Callable[["StreamLink"], None] | None = None, tls: ClusterTLS | None = None,
                 keepalive: Keepalive | None = None) -> None:
        """`keepalive`: the liveness bounds of the default Settings unless given."""
        self.address, self.peer_name = address, peer_name
        self._options = channel_options(max_message_bytes, keepalive or Keepalive.of(Settings()))
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

    async def describe(self, timeout: float = 5.0, next_hops: Iterable[Hop] = ()) -> pb.StageInfo:
        """The stage's StageInfo; for each of `next_hops` it says whether it would forward there."""
        channel = self._channel or self._new_channel()
        request = pb.DescribeRequest(peer=self.peer_name, next_hops=[wire.hop_to_proto(h) for h in next_hops])
        try:
            return await pb_grpc.StageServiceStub(channel).Describe(request, timeout=timeout)
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
