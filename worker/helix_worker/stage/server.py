"""gRPC adapter of a stage: the `StageService` servicer and the engine's outputs.

Each upstream peer (the front end, or a previous stage) holds one `Connect` stream and
names itself in call metadata; the stage writes events addressed to that peer (sampled
tokens, request failures) onto its stream. A peer that offers a data channel and gets one
sends its messages there; they are handled exactly as those read from the stream, and the
stream ends when the channel does. Hidden states for the next hop go out through one
`StreamLink` per next-hop address, which pings as the liveness bounds say (`Keepalive`). If
such a link breaks, or cannot be made, every request it carried gets a ROUTE_BROKEN failure at
its front end, which re-routes it and leaves that link out of its routes while this stage,
asked at each heartbeat (`next_hop_problems`), says it still cannot reach the next stage; it
tries again each time it is asked. A next hop the stage may not dial (`PlanPeers`) is never
dialled: its requests fail as INVALID, saying so, and the heartbeat answer names it too.
"""

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
import torch

from helix_proto import helix_stage_pb2 as pb
from helix_proto import helix_stage_pb2_grpc as pb_grpc
from helix_worker.engine.observations import FrameTiming, StepTiming, Window
from helix_worker.engine.stage_engine import StageEngine
from helix_worker.envs import Settings
from helix_worker.protocol import Chunk, Failure, FailureKind, Hop, Sampled
from helix_worker.security.peers import PlanPeers
from helix_worker.security.tls import ClusterTLS
from helix_worker.transport import datachannel, wire
from helix_worker.transport.links import PEER_HEADER, Keepalive, StreamLink

log = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext[pb.StageRequest, pb.StageEvent]


@dataclass(frozen=True)
class StageIdentity:
    node: str
    model: str
    plan_hash: str


class StageServicer(pb_grpc.StageServiceServicer):
    """Also the engine's `Outputs`: routes hidden states onward and events back to peers."""

    def __init__(self, engine: StageEngine, identity: StageIdentity, *, max_message_bytes: int,
                 data_listener: datachannel.DataListener | None = None, tls: ClusterTLS | None = None,
                 peers: PlanPeers | None = None, keepalive: Keepalive | None = None) -> None:
        """Links to next stages use `tls` and `keepalive` (the default Settings' bounds unless
        given) and go only to `peers` (none: no next hop at all). With `data_listener`, peers
        may open data channels to this stage, and its own links to next stages offer them too."""
        self.engine, self.identity = engine, identity
        self.max_message_bytes = max_message_bytes
        self.data_listener = data_listener
        self.tls, self.peers = tls, peers or PlanPeers()
        self.keepalive = keepalive or Keepalive.of(Settings())
        self._peers: dict[str, asyncio.Queue[pb.StageEvent]] = {}
        self._links: dict[str, StreamLink] = {}
        self._carried: dict[str, dict[str, str]] = {}  # link address -> request id -> reply_to
        self._nodes: dict[str, str] = {}  # link address -> node name
        self._locks: dict[str, asyncio.Lock] = {}
        self._unreachable: dict[str, str] = {}  # next-hop address -> why its link broke or could not be made
        self._retries: dict[str, asyncio.Task[StreamLink | None]] = {}  # next-hop address -> a reconnection
        self.frames: Window[FrameTiming] = Window()  # inbound activation frames, reported as observed capacity
        engine.outputs = self

    # grpc.aio also serves a stream method that is a coroutine reading and writing through its
    # context; the generated stub only knows the iterator form.
    async def Connect(  # type: ignore[override]
            self, request_iterator: AsyncIterator[pb.StageRequest], context: Context) -> None:
        metadata = {key: value for key, value in context.invocation_metadata() or () if isinstance(value, str)}
        peer = metadata.get(PEER_HEADER, context.peer())
        outbox: asyncio.Queue[pb.StageEvent] = asyncio.Queue()
        self._peers[peer] = outbox
        ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()  # its data channel closed
        token = None
        listener = self.data_listener
        if listener is not None and metadata.get(datachannel.HEADER) == datachannel.OFFER:
            token, answer = listener.expect(self._receive_frame, lambda: _settle(ended),
                                            lambda size, seconds: self.frames.add(FrameTiming(peer, size, seconds)))
            await context.send_initial_metadata(((datachannel.HEADER, answer),))
        else:
            await context.send_initial_metadata(())
        reader = asyncio.create_task(self._read(context))
        try:
            while True:
                getter = asyncio.create_task(outbox.get())
                waiting: set[asyncio.Future[Any]] = {getter, reader, ended}
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    break
                await context.write(getter.result())
        finally:
            reader.cancel()
            if listener is not None and token is not None:
                listener.withdraw(token)
            if self._peers.get(peer) is outbox:
                del self._peers[peer]

    async def _read(self, context: Context) -> None:
        while True:
            message: object = await context.read()  # the stubs leave out grpc.aio.EOF, read at the end
            if message is grpc.aio.EOF:
                return
            if isinstance(message, pb.StageRequest):
                self._receive(message)

    def _receive_frame(self, header: bytes, data: torch.Tensor | None) -> None:
        self._receive(pb.StageRequest.FromString(header), data)

    def _receive(self, message: pb.StageRequest, data: torch.Tensor | None = None) -> None:
        """One message from a peer; `data` holds its payload's bytes when they came apart."""
        if message.HasField("release"):
            self.release(list(message.release.request_ids))
            return
        batch = message.batch
        try:
            chunks = [wire.chunk_from_proto(c) for c in batch.chunks]
            payload = wire.tensor_from_proto(batch.payload, data)
        except ValueError as err:
            for c in batch.chunks:
                self.deliver(c.reply_to, [], [Failure(c.request_id, self.identity.node, FailureKind.INVALID, str(err))])
            return
        self.engine.submit(chunks, payload)

    async def Describe(self, request: pb.DescribeRequest, context: Context) -> pb.StageInfo:
        """Also the front ends' heartbeat: readiness, progress, the KV the asking peer holds here,
        and which of the next hops its routes take from here this stage cannot forward to now."""
        model, usage = self.engine.model, self.engine.usage()
        by_peer = self.engine.requests_by_peer()
        mine = self.engine.held_tokens(by_peer.get(request.peer, [])) if request.peer else 0
        here = sum(map(len, by_peer.values()))
        return pb.StageInfo(node=self.identity.node, model=self.identity.model, start=model.start, end=model.end,
                            num_layers=model.config.num_layers, hidden_size=model.config.hidden_size,
                            vocab_size=model.config.vocab_size, dtype=str(model.dtype).removeprefix("torch."),
                            kv_capacity_tokens=usage.capacity_tokens, kv_used_tokens=usage.used_tokens,
                            kv_block_tokens=usage.block_tokens, plan_hash=self.identity.plan_hash,
                            ready=self.engine.failure is None, problem=self.engine.failure or "",
                            kv_peer_tokens=mine, stalled_seconds=self.engine.stalled_seconds(),
                            next_hop_problems=self.next_hop_problems(map(wire.hop_from_proto, request.next_hops)),
                            decode_steps=_step_samples(self.engine.steps.decode.recent()),
                            prefill_steps=_step_samples(self.engine.steps.prefill.recent()),
                            inbound_frames=[pb.FrameSample(peer=f.peer, bytes=f.bytes, seconds=f.seconds)
                                            for f in self.frames.recent()],
                            running_requests=usage.requests, waiting_requests=max(0, here - usage.requests))

    def next_hop_problems(self, hops: Iterable[Hop]) -> dict[str, str]:
        """Why this stage would not forward to each of `hops` now, by node (absent: it would): the
        hop is not one it may dial, or its link there broke or could not be made. An unreachable
        hop is tried again in the background, so that a later answer says when it is back."""
        problems: dict[str, str] = {}
        for hop in hops:
            refused = self.peers.problem(hop.node, hop.address)
            problem = refused or self._unreachable.get(hop.address)
            if problem is None:
                continue
            problems[hop.node] = problem
            if refused is None and hop.address not in self._retries:
                self._retry(hop)
        return problems

    def _retry(self, hop: Hop) -> None:
        """Try to reach `hop` again, in the background (one attempt at a time)."""
        address = hop.address
        self._retries[address] = asyncio.get_running_loop().create_task(self._reach(hop))
        self._retries[address].add_done_callback(lambda _: self._retries.pop(address, None))

    # Outputs of the engine -------------------------------------------------------------

    def forward(self, hop: Hop, chunks: list[Chunk], hidden: torch.Tensor) -> None:
        link = self._links.get(hop.address)
        if link is None or not link.up:
            asyncio.get_running_loop().create_task(self._connect_and_send(hop, chunks, hidden))
            return
        self._send(link, chunks, hidden)

    def deliver(self, reply_to: str, results: list[Sampled], failures: list[Failure]) -> None:
        outbox = self._peers.get(reply_to)
        if outbox is None:
            log.warning("no stream from %r: dropping %d results and %d failures", reply_to, len(results), len(failures))
            return
        outbox.put_nowait(pb.StageEvent(results=[wire.sampled_to_proto(r) for r in results],
                                        errors=[wire.failure_to_proto(f) for f in failures]))

    async def _connect_and_send(self, hop: Hop, chunks: list[Chunk], hidden: torch.Tensor) -> None:
        if (refused := self.peers.problem(hop.node, hop.address)) is not None:
            log.warning("refused a route: %s", refused)
            for c in chunks:
                self.deliver(c.reply_to, [], [Failure(c.request_id, self.identity.node, FailureKind.INVALID, refused)])
            return
        link = await self._reach(hop)
        if link is None:
            self._broken(hop.node, {c.request_id: c.reply_to for c in chunks}, self._unreachable[hop.address])
            return
        self._send(link, chunks, hidden)

    async def _reach(self, hop: Hop) -> StreamLink | None:
        """The link to `hop`, connected first if it is not up (within the keepalive's timeout);
        None when that fails, with the reason in `_unreachable` until a connection succeeds."""
        async with self._locks.setdefault(hop.address, asyncio.Lock()):
            link = self._links.get(hop.address)
            if link is not None and link.up:
                return link
            link = StreamLink(hop.address, self.identity.node, max_message_bytes=self.max_message_bytes,
                              data_channel=self.data_listener is not None, on_down=self._link_down, tls=self.tls,
                              keepalive=self.keepalive)
            try:
                await link.connect(timeout=self.keepalive.timeout)
            except (grpc.aio.AioRpcError, TimeoutError) as err:
                why = err.code().name if isinstance(err, grpc.aio.AioRpcError) else "no answer in time"
                self._unreachable[hop.address] = f"cannot reach {hop.node} at {hop.address}: {why}"
                return None
            self._links[hop.address], self._nodes[hop.address] = link, hop.node
            if self._unreachable.pop(hop.address, None) is not None:
                log.info("link to next stage %s at %s is back", hop.node, hop.address)
            return link

    def _send(self, link: StreamLink, chunks: list[Chunk], hidden: torch.Tensor) -> None:
        carried = self._carried.setdefault(link.address, {})
        for chunk in chunks:
            carried[chunk.request_id] = chunk.reply_to
        if not link.send_batch(chunks, hidden):
            self._broken(chunks[0].route[0].node, {c.request_id: c.reply_to for c in chunks}, "link down")

    def _link_down(self, link: StreamLink) -> None:
        if self._links.get(link.address) is link:
            del self._links[link.address]
        node = self._nodes.get(link.address, link.address)
        why = f"stream to next stage {node} at {link.address} broke"
        log.warning("%s", why)
        self._unreachable[link.address] = why
        carried = self._carried.pop(link.address, {})
        alive = {rid: to for rid, to in carried.items() if self.engine.holds(rid)}
        self._broken(node, alive, why)

    def _broken(self, node: str, requests: dict[str, str], message: str) -> None:
        by_peer: dict[str, list[Failure]] = {}
        for request_id, reply_to in requests.items():
            by_peer.setdefault(reply_to, []).append(Failure(request_id, node, FailureKind.ROUTE_BROKEN, message))
        for reply_to, failures in by_peer.items():
            self.deliver(reply_to, [], failures)

    def connected(self, peer: str) -> bool:
        """Whether `peer` holds a stream to this stage now."""
        return peer in self._peers

    def release(self, request_ids: list[str]) -> None:
        """Free requests' KV (a peer's Release, or its lease running out)."""
        self.engine.release(request_ids)
        self.forget(request_ids)

    def forget(self, request_ids: list[str]) -> None:
        """Stop tracking released requests on outbound links."""
        for carried in self._carried.values():
            for request_id in request_ids:
                carried.pop(request_id, None)

    async def close(self) -> None:
        for task in list(self._retries.values()):
            task.cancel()
        await asyncio.gather(*self._retries.values(), return_exceptions=True)
        for link in list(self._links.values()):
            await link.close()
        self._links.clear()


def _step_samples(timings: list[StepTiming]) -> list[pb.StepSample]:
    return [pb.StepSample(size=t.size, layers=t.layers, seconds=t.seconds) for t in timings]


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
