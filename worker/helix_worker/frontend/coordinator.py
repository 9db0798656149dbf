"""The coordinator: token ids in, token ids out, over the plan's stages.

It holds a stream to every stage (first stages take token ids, last stages send back the
sampled tokens, any stage reports failures), admits each request onto a route whose stages
have KV room for its prompt (see `routes`), chosen by IWRR over the plan's pipelines or, with
adaptive routing, composed over its hop graph by expected completion time (see `adaptive`),
keeps it there for all its decode steps, and
re-prefills it (prompt + tokens so far) when it cannot go on there: on another route when a
stage dies, hangs (see `health`) or a stream breaks, and after waiting for room, ahead of new requests, when a
stage preempted it for KV blocks. A link between two stages that breaks while both still
answer takes only the routes over it out of rotation: the stage before it reports the next hop
it cannot reach (a ROUTE_BROKEN failure, then in each heartbeat answer) until it reaches it
again. Under greedy decoding it so finishes with exactly the tokens of an uninterrupted run.
Sends from requests that step together are coalesced into one batch per stage.
"""

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field

import torch

from helix_planner.plan_format import Plan
from helix_proto import helix_stage_pb2 as pb
from helix_worker.engine.penalties import with_history
from helix_worker.envs import Settings
from helix_worker.errors import InvalidRequest, ServingError, Unavailable
from helix_worker.frontend.adaptive import AdaptiveRouter
from helix_worker.frontend.health import Heartbeat, verdict
from helix_worker.frontend.hop_graph import hop_graph
from helix_worker.frontend.observed_capacity import ObservedCapacity
from helix_worker.frontend.request_timeline import RequestTimeline
from helix_worker.frontend.routes import Route, RouteTable
from helix_worker.frontend.validation import check_sampling
from helix_worker.metrics import FrontendMetrics
from helix_worker.protocol import Chunk, FailureKind, Phase, Sampled, SamplingParams
from helix_worker.security.tls import ClusterTLS
from helix_worker.transport import wire
from helix_worker.transport.links import Keepalive, StreamLink

log = logging.getLogger(__name__)
MAX_REROUTES = 8


@dataclass(frozen=True)
class ModelLimits:
    vocab_size: int
    max_positions: int


@dataclass(frozen=True)
class GenerationRequest:
    prompt_ids: tuple[int, ...]
    max_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop_token_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class TokenEvent:
    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()
    logits: torch.Tensor | None = None
    finish_reason: str | None = None  # "stop" (a stop token) or "length" on the last event


class _Reroute(Exception):
    """The request's route failed; re-prefill it elsewhere."""


class _Preempted(Exception):
    """A stage freed the request's KV blocks for older requests; re-prefill it when there is room."""


class Coordinator:
    def __init__(self, plan: Plan, endpoints: dict[str, str], limits: ModelLimits, settings: Settings,
                 metrics: FrontendMetrics | None = None, tls: ClusterTLS | None = None) -> None:
        """`tls`: the cluster's mutual TLS for the streams to stages (None: plaintext)."""
        self.routes = RouteTable(plan, endpoints, settings.kv_watermark)
        self.router: AdaptiveRouter | None = None  # None: IWRR over the plan's pipelines
        if settings.routing == "adaptive":
            pipelines = self.routes.routes  # each ends at the model's last layer
            graph = hop_graph(plan.layout, {h.node: h.address for r in pipelines for h in r.hops},
                              pipelines[0].hops[-1].end)
            self.router = AdaptiveRouter(self.routes, graph, {n.name: n.capacity for n in plan.nodes})
            self.routes.next_hops = graph.next_hops()
        self.limits, self.settings = limits, settings
        self.tls = tls
        self.metrics = metrics or FrontendMetrics(str(plan.model.get("name", "")))
        self.peer_name = f"frontend-{uuid.uuid4().hex[:8]}"
        self.observed = ObservedCapacity(plan, self.metrics)  # what the heartbeat answers say the stages measure
        self._links: dict[str, StreamLink] = {}
        self._waiting: dict[str, asyncio.Future[Sampled]] = {}
        self._active: dict[str, Route] = {}
        self._outbox: dict[str, list[tuple[Chunk, torch.Tensor]]] = {}
        self._flush_scheduled = False
        self._probes: dict[str, asyncio.Task[None]] = {}
        self._heartbeat = Heartbeat(self.routes.nodes, self._describe, self.routes.up.__getitem__, self._healthy,
                                    self._hung, interval=settings.heartbeat_seconds, hung_seconds=settings.hung_seconds)
        self._unreleased: dict[str, set[str]] = {}  # node -> requests retired while it was down: released on return
        self._changed = asyncio.Event()  # replaced on every change; waiters hold the old one
        self._queued = 0
        self._resuming = 0  # preempted requests waiting for room: new ones wait behind them
        self.max_in_flight = settings.max_in_flight or plan.max_in_flight  # None: KV room alone decides
        self.draining = False
        self.metrics.running.set_function(lambda: self.admitted)
        self.metrics.waiting.set_function(lambda: self._queued)

    # Lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect to every stage; unreachable ones are probed until they answer."""
        for node in self.routes.nodes:
            address = next(h.address for r in self.routes.routes for h in r.hops if h.node == node)
            self._links[node] = StreamLink(address, self.peer_name, max_message_bytes=self.settings.max_message_bytes,
                                           data_channel=self.settings.data_channel == "tcp", on_event=self._on_event,
                                           tls=self.tls, keepalive=Keepalive.of(self.settings),
                                           on_down=self._on_down_of(node))
        await asyncio.gather(*(self._try_up(node) for node in self.routes.nodes))
        for node in self.routes.nodes:
            if not self.routes.up[node]:
                self._probe(node)
        self._heartbeat.start()

    async def close(self) -> None:
        await self._heartbeat.close()
        for task in self._probes.values():
            task.cancel()
        await asyncio.gather(*self._probes.values(), return_exceptions=True)
        for link in self._links.values():
            await link.close()

    @property
    def ready(self) -> bool:
        """Some pipeline is fully up, and the front end is not draining (readiness probes and
        KServe ServerReady then send new clients elsewhere)."""
        return not self.draining and any(self.routes.usable(r) for r in self.routes.routes)

    def drain(self) -> None:
        """Report not ready from now on; requests keep being served (the servers stop taking them)."""
        self.draining = True

    async def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready:
            await asyncio.wait_for(self._changed.wait(), max(0.0, deadline - time.monotonic()))

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # Generation ----------------------------------------------------------------------------

    def validate(self, request: GenerationRequest) -> None:
        """Reject what can never run, with one clear message."""
        if not request.prompt_ids:
            raise InvalidRequest("the prompt is empty")
        bad = [t for t in request.prompt_ids if not 0 <= t < self.limits.vocab_size]
        if bad:
            raise InvalidRequest(f"token id {bad[0]} is outside the vocabulary [0, {self.limits.vocab_size})")
        if request.max_tokens < 1:
            raise InvalidRequest(f"max_tokens must be at least 1, not {request.max_tokens}")
        check_sampling(request.sampling)
        need = len(request.prompt_ids) + request.max_tokens
        if need > self.limits.max_positions:
            raise InvalidRequest(f"prompt ({len(request.prompt_ids)} tokens) + max_tokens ({request.max_tokens}) = "
                                 f"{need} exceeds the model's context of {self.limits.max_positions} tokens")
        largest = self.routes.largest_fit()
        if largest and need > largest:
            raise InvalidRequest(f"prompt + max_tokens = {need} tokens can never fit: the largest pipeline's KV cache "
                                 f"holds {largest} tokens in all; lower max_tokens or shorten the prompt")

    async def generate(self, request: GenerationRequest,
                       timeline: RequestTimeline | None = None) -> AsyncGenerator[TokenEvent, None]:
        """Tokens of one request as they are sampled; the last event has a finish_reason. A caller
        that ends the request itself (a stop string) marks `timeline` finished before closing."""
        self.validate(request)
        base, attempts, reroutes, resuming = uuid.uuid4().hex[:16], 0, 0, False
        generated: list[int] = []
        timeline = timeline or self.timeline(request)
        try:
            while True:
                ids = list(request.prompt_ids) + generated
                route = await self._admit(len(ids) + 1, resuming, len(ids), request.max_tokens - len(generated))
                timeline.admitted()
                wire_id = f"{base}.{attempts}"
                attempts += 1
                self._active[wire_id] = route
                held = 0
                try:
                    position, phase = 0, Phase.PREFILL
                    while True:
                        self.routes.hold(route, held, position + len(ids) + 1)
                        held = position + len(ids) + 1  # KV of the input, and room for the token it samples
                        started = time.perf_counter()
                        sampling = (request.sampling if phase == Phase.DECODE
                                    else with_history(request.sampling, request.prompt_ids, generated))
                        sampled = await self._step(route, Chunk(wire_id, phase, position, len(ids), route.hops,
                                                                self.peer_name, sampling), ids)
                        if phase == Phase.DECODE:
                            self.metrics.pipeline_step(route.name, time.perf_counter() - started)
                            if self.router is not None:
                                self.router.observed(route, time.perf_counter() - started)
                        position += len(ids)
                        generated.append(sampled.token_id)
                        timeline.token()
                        finish = ("stop" if sampled.token_id in request.stop_token_ids
                                  else "length" if len(generated) >= request.max_tokens else None)
                        if finish:
                            timeline.finished(finish)
                            if self.router is not None:
                                self.router.finished(len(generated))
                        yield TokenEvent(sampled.token_id, sampled.logprob, sampled.top, sampled.logits, finish)
                        if finish:
                            return
                        ids, phase = [sampled.token_id], Phase.DECODE
                except _Preempted as err:
                    self.metrics.preemptions.inc()
                    log.info("request %s: %s; it re-prefills %d tokens when there is room", base, err,
                             len(request.prompt_ids) + len(generated))
                    resuming = True
                except _Reroute as err:
                    reroutes += 1
                    self.metrics.failovers.inc()
                    log.warning("request %s: %s; re-prefilling %d tokens elsewhere (attempt %d)", base, err,
                                len(request.prompt_ids) + len(generated), reroutes + 1)
                    if reroutes > MAX_REROUTES:
                        raise Unavailable(f"request failed on {reroutes} routes; last error: {err}") from None
                    resuming = False
                    await asyncio.sleep(min(0.05 * reroutes, 1.0))  # let health and KV state settle
                finally:
                    self._retire(wire_id, route, held)
        except BaseException as err:
            timeline.failed("abort" if isinstance(err, (GeneratorExit, asyncio.CancelledError)) else type(err).__name__)
            raise

    def timeline(self, request: GenerationRequest) -> RequestTimeline:
        """What the metrics record of `request`, from now (its arrival) on."""
        return RequestTimeline(self.metrics, len(request.prompt_ids), request.max_tokens)

    async def _admit(self, tokens: int, resuming: bool, prompt: int, to_generate: int) -> Route:
        """A route with KV room for `tokens` on every stage, waiting (FIFO-ish) while every route is
        full or down or `max_in_flight` requests hold one. Preempted requests (`resuming`) go first:
        new requests wait while any of them does. The adaptive router weighs routes for a `prompt`
        (tokens to prefill) that may generate `to_generate` more tokens."""
        if not resuming and self._queued >= self.settings.max_queue:
            raise Unavailable(f"{self._queued} requests are already waiting; retry later")
        deadline = time.monotonic() + self.settings.route_wait_seconds
        self._queued += 1
        self._resuming += resuming
        try:
            while (route := self._next_route(tokens, resuming, prompt, to_generate)) is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    down = [n for n, up in self.routes.up.items() if not up]
                    why = (f"down: {', '.join(down)}" if down else
                           f"{self.admitted} requests in flight, the limit" if self._at_limit() else "KV caches full")
                    raise Unavailable(f"no pipeline could take the request within "
                                      f"{self.settings.route_wait_seconds:.0f}s ({why})")
                try:
                    await asyncio.wait_for(self._changed.wait(), remaining)
                except TimeoutError:
                    pass
            if self.router is not None:
                self.router.admitted(route)
            return route
        finally:
            self._queued -= 1
            self._resuming -= resuming

    @property
    def admitted(self) -> int:
        """Requests holding a route (and its KV reservation) now; queued ones are not counted."""
        return len(self._active)

    def _at_limit(self) -> bool:
        return self.max_in_flight is not None and self.admitted >= self.max_in_flight

    def _next_route(self, tokens: int, resuming: bool, prompt: int, to_generate: int) -> Route | None:
        if self._at_limit() or (self._resuming and not resuming):
            return None
        if self.router is not None:
            return self.router.choose(tokens, prompt, to_generate)
        return self.routes.choose(tokens)

    async def _step(self, route: Route, chunk: Chunk, ids: list[int]) -> Sampled:
        if not self.routes.usable(route):
            raise _Reroute(f"route {route.name} is down")
        future = asyncio.get_running_loop().create_future()
        self._waiting[chunk.request_id] = future
        self._queue_send(route.hops[0].node, chunk, torch.tensor(ids, dtype=torch.int64))
        try:
            return await asyncio.wait_for(future, self.settings.step_timeout_seconds)
        except TimeoutError:
            raise _Reroute(f"no answer from {route.name} within {self.settings.step_timeout_seconds:.0f}s") from None
        finally:
            self._waiting.pop(chunk.request_id, None)

    def _retire(self, wire_id: str, route: Route, held: int) -> None:
        """Free the request's KV on its route (stages and ledger) and wake waiting requests."""
        self._active.pop(wire_id, None)
        message = wire.release_to_proto([wire_id])
        for node in route.nodes:
            if not (self.routes.up[node] and self._links[node].send(message)):
                self._unreleased.setdefault(node, set()).add(wire_id)  # a hung stage may keep it: tell it later
        self.routes.hold(route, held, 0)
        if self.router is not None:
            self.router.released(route)
        self._show_held()
        self._notify()

    # Sending -------------------------------------------------------------------------------

    def _queue_send(self, node: str, chunk: Chunk, payload: torch.Tensor) -> None:
        self._outbox.setdefault(node, []).append((chunk, payload))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        outbox, self._outbox = self._outbox, {}
        for node, items in outbox.items():
            chunks = [c for c, _ in items]
            if not self._links[node].send_batch(chunks, torch.cat([p for _, p in items])):
                for chunk in chunks:
                    self._fail(chunk.request_id, _Reroute(f"stream to {node} is down"))

    # Events from stages --------------------------------------------------------------------

    def _on_event(self, event: pb.StageEvent) -> None:
        for result in event.results:
            future = self._waiting.get(result.request_id)
            if future is not None and not future.done():
                future.set_result(wire.sampled_from_proto(result))
        for error in event.errors:
            failure = wire.failure_from_proto(error)
            if failure.kind == FailureKind.INVALID:
                self._fail(failure.request_id,
                           ServingError(f"stage {failure.node} rejected the request: {failure.message}"))
                continue
            if failure.kind == FailureKind.PREEMPTED:
                self._fail(failure.request_id, _Preempted(f"{failure.node}: {failure.message}"))
                continue
            route = self._active.get(failure.request_id)
            self._fail(failure.request_id, _Reroute(f"{failure.node}: {failure.message}"))
            if failure.kind == FailureKind.ROUTE_BROKEN and failure.node in self.routes.up:
                self._route_broken(route, failure.node, failure.message)

    def _fail(self, wire_id: str, error: Exception) -> None:
        future = self._waiting.get(wire_id)
        if future is not None and not future.done():
            future.set_exception(error)

    # Stage health --------------------------------------------------------------------------

    async def _describe(self, node: str, timeout: float) -> pb.StageInfo:
        """The stage's `StageInfo`; the adaptive router learns from the round trip and its queue."""
        started = time.perf_counter()
        info = await self._links[node].describe(timeout=timeout, next_hops=self.routes.next_hops.get(node, ()))
        if self.router is not None:
            self.router.heartbeat(node, time.perf_counter() - started, info.running_requests, info.waiting_requests)
        return info

    def _healthy(self, node: str, info: pb.StageInfo) -> None:
        self.observed.record(node, info)
        if self.routes.observe(node, int(info.kv_used_tokens), int(info.kv_peer_tokens)):
            self._notify()  # other front ends freed (or took) KV there
        self._hop_problems(node, dict(info.next_hop_problems))

    def _route_broken(self, route: Route | None, node: str, why: str) -> None:
        """A stage of a request's `route` could not pass it on to `node`: the link into `node` is
        out (the stage before it says so at each heartbeat until it reaches `node` again), while
        `node` may serve other routes. A request already gone (`route` None) says nothing new;
        this front end's own link to `node` tells whether `node` itself is down."""
        if route is None:
            return
        before = next((a for a, b in zip(route.nodes, route.nodes[1:]) if b == node), None)
        if before is None:
            self._mark_down(node)  # not a next hop of this route: nothing to single out
        else:
            self._hop_problems(before, {**self.routes.hop_problems[before], node: why})

    def _hop_problems(self, node: str, problems: dict[str, str]) -> None:
        """What `node` says it cannot forward to now (next node -> why): the routes over those
        links leave rotation, and come back when it says they are good again."""
        known = self.routes.hop_problems[node]
        if problems == known:
            return
        for after in problems.keys() - known.keys():
            log.warning("stage %s cannot forward to %s (%s); the pipelines over that link leave rotation until it can",
                        node, after, problems[after])
        for after in known.keys() - problems.keys():
            log.info("stage %s forwards to %s again", node, after)
        self.routes.hop_problems[node] = problems
        self._reroute_unusable(f"stage {node} cannot forward to {', '.join(problems) or 'its next hops'}")
        self._show_health()
        self._notify()

    def _hung(self, node: str, problem: str) -> None:
        self._mark_down(node, f"hung ({problem})")

    def _on_down_of(self, node: str) -> Callable[[StreamLink], None]:
        """The callback a link to `node` calls when its stream breaks."""
        return lambda link: self._mark_down(node)

    def _mark_down(self, node: str, why: str = "down") -> None:
        if not self.routes.up.get(node):
            return
        log.warning("stage %s is %s; its pipelines leave rotation until it is back", node, why)
        self.routes.up[node] = False
        self._show_health()
        self._reroute_unusable(f"stage {node} went down")
        self._probe(node)

    def _reroute_unusable(self, why: str) -> None:
        """Re-prefill elsewhere the requests whose route left rotation."""
        for wire_id, route in list(self._active.items()):
            if not self.routes.usable(route):
                self._fail(wire_id, _Reroute(why))

    def _probe(self, node: str) -> None:
        if node not in self._probes or self._probes[node].done():
            self._probes[node] = asyncio.get_running_loop().create_task(self._probe_until_up(node))

    async def _probe_until_up(self, node: str) -> None:
        while not await self._try_up(node):
            await asyncio.sleep(self.settings.reconnect_seconds)

    async def _try_up(self, node: str) -> bool:
        link = self._links[node]
        try:
            info = await self._describe(node, 2.0)
            self._check_holds(node, info)
            if (problem := verdict(info, self.settings.hung_seconds)) is not None:
                raise ServingError(problem)
            await link.connect(timeout=2.0)
        except Exception as err:  # unreachable, still loading, hung, or holding other layers
            log.debug("stage %s not usable yet: %s", node, err)
            return False
        if stale := self._unreleased.pop(node, None):
            link.send(wire.release_to_proto(sorted(stale)))
        self.routes.set_capacity(node, int(info.kv_capacity_tokens), int(info.kv_block_tokens))
        self.routes.observe(node, int(info.kv_used_tokens), int(info.kv_peer_tokens))
        self._hop_problems(node, dict(info.next_hop_problems))
        self.routes.up[node] = True
        self._show_health()
        self._notify()
        log.info("stage %s is up (layers [%d, %d), KV %d tokens)", node, info.start, info.end, info.kv_capacity_tokens)
        return True

    def _check_holds(self, node: str, info: pb.StageInfo) -> None:
        for route in self.routes.routes:
            for hop in route.hops:
                if hop.node == node and not info.start <= hop.start < hop.end <= info.end:
                    raise ServingError(f"stage {node} holds layers [{info.start}, {info.end}) but pipeline "
                                       f"{route.name} needs [{hop.start}, {hop.end}) there")

    def _show_health(self) -> None:
        for route in self.routes.routes:
            self.metrics.pipeline_up(route.name, self.routes.usable(route))

    def _show_held(self) -> None:
        for node, blocks in self.routes.held.items():
            self.metrics.kv_held(node, blocks * self.routes.block_tokens[node])
