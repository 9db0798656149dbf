"""The simulated serving system: front end, GPU nodes and links driven by one event queue.

A request waits at the front end until the scheduler finds a route with KV room; its prompt
then travels as token ids to the first stage, as activations stage to stage, and its first
output token returns to the front end; every further token is one decode iteration over the
same route. Online mode feeds arrivals at a target rate. Offline mode follows the paper's
protocol for a saturated cluster: a few requests at time 0, then one more each time a request
returns its first token or finishes, as long as KV room (and `max_in_flight`) allow; so the
load ramps up until the KV caches are full without flooding the first stages with prompts.
Closed mode is a benchmark client's closed loop: `clients` requests at time 0, and each one that
finishes is followed by a new one at once, so no request waits at the front end before its
client sends it (offline mode's next request exists from the moment the previous one is admitted,
and its TTFT counts that wait).
"""

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from helix_planner.cluster import SINK, SOURCE, Cluster
from helix_planner.errors import PlanningError
from helix_planner.flow import handovers
from helix_planner.models import ModelSpec
from helix_planner.pipelines import Pipeline
from helix_planner.profiles import Catalog
from helix_planner.sim.compute import GpuNode, node_profile
from helix_planner.sim.engine import EventQueue
from helix_planner.sim.metrics import Recorder, SimResult, summarize
from helix_planner.sim.network import Channel
from helix_planner.sim.request import Request
from helix_planner.sim.routes import build_routes, route_fits
from helix_planner.sim.schedulers import make_scheduler
from helix_planner.sim.workload import LengthTrace

MODES = ("offline", "online", "closed")


@dataclass(frozen=True)
class Scenario:
    """What is simulated: a cluster, a model, a layout and the pipelines of its max flow."""

    label: str
    cluster: Cluster
    model: ModelSpec
    catalog: Catalog
    layout: dict[str, tuple[int, int]]
    pipelines: list[Pipeline]
    partial_inference: bool = False
    max_in_flight: int | None = None  # the plan's front-end admission cap


@dataclass(frozen=True)
class SimConfig:
    mode: str = "offline"
    warmup: float = 60.0
    duration: float = 600.0
    seed: int = 0
    arrivals: np.ndarray | None = None  # online: arrival instants (see workload.arrival_times)
    kv_high_water: float = 0.9
    max_in_flight: int | None = None  # front-end cap on admitted requests (None: KV room decides)
    offline_initial: int = 20  # requests admitted at time 0 in offline mode
    clients: int = 0  # closed mode: requests kept in the system, each followed by a new one when it finishes
    requests: int | None = None  # closed mode: how many in all; the measured span ends when the last one finishes
    slo_ttft: float = 5.0
    slo_tpot: float = 0.5
    # Calibration to a served fleet (`sim.calibration` fits them): how much slower compute runs than
    # profiled (cores shared); the served engine's own seconds per step beyond its layers' compute (forming the
    # step, the compute thread's hand-off, sending its outputs); each message's overhead beyond its link's latency
    # (RPC, relays); the engine's step budget.
    compute_scale: float = 1.0
    gpu_scales: Mapping[str, float] | None = None  # decode scales of GPU types measured alone (others: compute_scale)
    prompt_scale: float | None = None  # prompts' own compute scale (None: compute_scale)
    step_overhead: float = 0.0
    hop_seconds: float = 0.0
    step_tokens: int | None = None

    def check(self) -> None:
        if self.mode not in MODES:
            raise PlanningError(f"unknown mode {self.mode!r}: use offline, online or closed")
        if self.mode == "closed" and self.clients < 1:
            raise PlanningError(f"closed mode needs at least one client (--clients), got {self.clients}")
        if self.requests is not None and (self.mode != "closed" or self.requests < 1):
            raise PlanningError(f"a number of requests ({self.requests}) needs closed mode and at least one")
        if self.mode == "online" and self.arrivals is None:
            raise PlanningError("online mode needs arrivals: give --rate (requests/s) and --arrivals")
        if self.warmup < 0 or self.duration <= 0:
            raise PlanningError(f"warm-up must be >= 0 and the measured window > 0 "
                                f"(got {self.warmup}, {self.duration})")
        if (self.compute_scale <= 0 or (self.prompt_scale is not None and self.prompt_scale <= 0)
                or any(scale <= 0 for scale in (self.gpu_scales or {}).values())
                or self.step_overhead < 0 or self.hop_seconds < 0
                or (self.step_tokens is not None and self.step_tokens < 1)):
            raise PlanningError(f"calibration: compute and prompt scales must be > 0, step overhead and hop seconds "
                                f">= 0 and step tokens >= 1 (got {self.compute_scale}, {self.prompt_scale}, "
                                f"{self.step_overhead}, {self.hop_seconds}, {self.step_tokens})")
        if not 0 < self.kv_high_water <= 1:
            raise PlanningError(f"--kv-high-water must be in (0, 1], got {self.kv_high_water}")


class Simulation:
    """One run; construct, then `run()` once."""

    def __init__(self, scenario: Scenario, scheduler: str, config: SimConfig, lengths: LengthTrace) -> None:
        config.check()
        self.scenario, self.config, self.lengths = scenario, config, lengths
        model, cluster = scenario.model, scenario.cluster
        self.nodes: dict[str, GpuNode] = {}
        for node in cluster.nodes:
            if node.name in scenario.layout:
                start, end = scenario.layout[node.name]
                profile = node_profile(scenario.catalog, model, node.gpu, end - start)
                scale = (config.gpu_scales or {}).get(node.gpu, config.compute_scale)
                if (scale != 1.0 or config.prompt_scale is not None or config.step_overhead
                        or config.step_tokens is not None):
                    profile = profile.calibrated(scale, config.step_overhead, config.step_tokens, config.prompt_scale)
                self.nodes[node.name] = GpuNode(node.name, node.gpu, start, end, profile, config.kv_high_water)
        missing = sorted(set(scenario.layout) - set(self.nodes))
        if missing:
            raise PlanningError(f"plan/cluster mismatch: the layout uses {', '.join(missing)}, "
                                f"which cluster {cluster.name!r} does not have")
        if scenario.partial_inference:
            layer_ends = {gpu_node.end for gpu_node in self.nodes.values()}
            for gpu_node in self.nodes.values():
                gpu_node.mid_entry = any(gpu_node.start < end < gpu_node.end for end in layer_ends)
        # Only links a request can take: a fleet's node pairs are far more than its handovers.
        layout = {name: (node.start, node.end) for name, node in self.nodes.items()}
        pairs = handovers(list(self.nodes), layout, scenario.partial_inference)
        pairs += [(SOURCE, n) for n, (start, _) in layout.items() if start == 0]
        pairs += [(n, SINK) for n, (_, end) in layout.items() if end == model.num_layers]
        self.channels = {key: Channel(link.bandwidth, link.latency + config.hop_seconds,
                                      model.token_bytes if SOURCE in key or SINK in key
                                      else model.activation_bytes_per_token)
                         for key in pairs if (link := cluster.link(*key)) is not None}
        self.graph = build_routes(cluster, self.nodes, model.num_layers, scenario.pipelines, self.channels,
                                  partial_inference=scenario.partial_inference)
        seeds = np.random.SeedSequence(config.seed).spawn(2)
        self.length_rng = np.random.default_rng(seeds[0])
        self.scheduler = make_scheduler(scheduler, self.graph, np.random.default_rng(seeds[1]))
        self.queue = EventQueue()
        self.end = config.warmup + config.duration
        self.recorder = Recorder(list(self.nodes.values()), config.warmup, self.end, _interval(self.end))
        self.waiting: deque[Request] = deque()
        self.in_flight = 0
        self.rejected = 0
        self._next_id = 0

    def run(self, progress: Callable[[float, float], None] | None = None) -> SimResult:
        started = time.perf_counter()
        if self.config.mode == "offline":
            self.waiting.append(self._new_request(0.0))
            self.queue.at(0.0, self._admit, self.config.offline_initial)
        elif self.config.mode == "closed":
            self.waiting.extend(self._new_request(0.0) for _ in range(self._to_issue(self.config.clients)))
            self.queue.at(0.0, self._admit, float("inf"))
        else:
            arrivals = self.config.arrivals
            if arrivals is None:  # SimConfig.check refuses this in online mode
                raise PlanningError("online mode needs arrivals: give --rate (requests/s) and --arrivals")
            lengths = self.lengths.sample(self.length_rng, len(arrivals))
            for at, (inp, out) in zip(arrivals.tolist(), lengths):
                self.queue.at(at, self._arrive, self._request(at, inp, out))
        self.queue.at(0.0, self._sample)
        tick = (lambda now: progress(now, self.end)) if progress else None
        self.queue.run(self.end, tick)
        if progress:
            progress(self.end, self.end)
        return summarize(self.recorder, label=self.scenario.label, scheduler=self.scheduler.name,
                         mode=self.config.mode, seed=self.config.seed, slo_ttft=self.config.slo_ttft,
                         slo_tpot=self.config.slo_tpot, waiting=len(self.waiting), in_flight=self.in_flight,
                         rejected=self.rejected, wall_seconds=time.perf_counter() - started,
                         lengths=self.lengths.name)

    # front end ---------------------------------------------------------------------------

    def _request(self, arrival: float, inp: int, out: int) -> Request:
        self._next_id += 1
        return Request(self._next_id, inp, out, arrival)

    def _to_issue(self, wanted: int) -> int:
        """How many of `wanted` new requests a finite closed loop still sends."""
        return wanted if self.config.requests is None else max(0, min(wanted, self.config.requests - self._next_id))

    def _new_request(self, now: float) -> Request:
        (inp, out), = self.lengths.sample(self.length_rng, 1)
        return self._request(now, inp, out)

    def _arrive(self, request: Request) -> None:
        self.waiting.append(request)
        if len(self.waiting) == 1:
            self._admit()

    def _admit(self, limit: float = float("inf")) -> None:
        """Admit up to `limit` waiting requests, in order, while their routes have KV room.

        A KV-unaware scheduler's choice is kept while the request waits for room on it.
        """
        now = self.queue.now
        admitted: list[Request] = []
        caps = [c for c in (self.config.max_in_flight, self.scenario.max_in_flight) if c]
        cap = min(caps) if caps else float("inf")
        while self.waiting and self.in_flight < cap and len(admitted) < limit:
            request = self.waiting[0]
            if not request.route:
                request.route = self.scheduler.choose(request, now) or ()
            if not request.route or not route_fits(request.route, request):
                if self.in_flight or admitted:
                    break
                self.waiting.popleft()  # does not fit an idle cluster: it never will
                self.rejected += 1
                if request.route:
                    self.scheduler.released(request)
                continue
            self.waiting.popleft()
            need = request.worst_case_tokens
            for hop in request.route:
                hop.node.kv.reserve(need * hop.layers)
            request.stage, request.tokens, request.prompt = 0, request.input_tokens, True
            admitted.append(request)
            self.in_flight += 1
            if self.config.mode == "offline" and not self.waiting:
                self.waiting.append(self._new_request(now))
        self._send_from_front_end(admitted, now)

    def _send_from_front_end(self, requests: list[Request], now: float) -> None:
        groups: dict[str, list[Request]] = {}
        for request in requests:
            request.sent_at = now
            groups.setdefault(request.route[0].node.name, []).append(request)
        for name, group in groups.items():
            tokens = sum(r.tokens for r in group)
            arrival = self.channels[(SOURCE, name)].send(now, tokens)
            self.queue.at(arrival, self._deliver, group)

    def _returned(self, group: list[Request]) -> None:
        """Output tokens reach the front end: record them, finish requests or start their next step."""
        now, again, firsts, finished = self.queue.now, [], 0, 0
        recorder = self.recorder
        for request in group:
            request.generated += 1
            if request.prompt:
                request.prompt, request.first_token, request.tokens = False, now, 1
                recorder.first_token(request, now)
                firsts += 1
            if request.generated >= request.output_tokens:
                self._finish(request, now)
                finished += 1
            else:
                request.stage = 0
                again.append(request)
        recorder.tokens(now, len(group))
        self._send_from_front_end(again, now)
        if self.config.mode == "offline":
            self._admit(firsts + finished)
        elif self.config.mode == "closed" and finished:
            self.waiting.extend(self._new_request(now) for _ in range(self._to_issue(finished)))
            self._admit()
            if self.config.requests is not None and not self.in_flight and not self.waiting:
                self.recorder.end = min(self.recorder.end, now)  # the last one finished: the span ends here
        elif finished and self.waiting:
            self._admit()

    def _finish(self, request: Request, now: float) -> None:
        need, stored = request.worst_case_tokens, request.stored_tokens
        for hop in request.route:
            hop.node.kv.release(need * hop.layers, stored * hop.layers)
        self.in_flight -= 1
        self.scheduler.released(request)
        self.recorder.done(request, now)

    # nodes -------------------------------------------------------------------------------

    def _deliver(self, group: list[Request]) -> None:
        node = group[0].route[group[0].stage].node
        prompts, decodes = node.prompts, node.decodes
        for request in group:
            (prompts if request.prompt else decodes).append(request)
        if not node.batch:
            self._start(node)

    def _start(self, node: GpuNode) -> None:
        seconds = node.start_pass()
        if node.batch:
            self.recorder.pass_started(node, self.queue.now, seconds)
            self.queue.at(self.queue.now + seconds, self._pass_done, node)

    def _pass_done(self, node: GpuNode) -> None:
        """Account the KV the pass stored and send every request on to its next stage or home."""
        now, batch = self.queue.now, node.batch
        node.batch = []
        tokens_to: dict[GpuNode | None, int] = {}
        requests_to: dict[GpuNode | None, list[Request]] = {}
        stored = 0
        for request in batch:
            route, stage, tokens = request.route, request.stage, request.tokens
            hop = route[stage]
            stored += tokens * (hop.end - hop.start)
            if request.prompt:
                self.scheduler.prompt_stage_done(request, now - request.sent_at)
                request.sent_at = now
            stage += 1
            request.stage = stage
            after = route[stage].node if stage < len(route) else None
            tokens_to[after] = tokens_to.get(after, 0) + tokens
            requests_to.setdefault(after, []).append(request)
        node.kv.used += stored
        for after, requests in requests_to.items():
            tokens = tokens_to[after]
            if after is None:
                arrival = self.channels[(node.name, SINK)].send(now, len(requests))
                self.queue.at(arrival, self._returned, requests)
            else:
                arrival = self.channels[(node.name, after.name)].send(now, tokens)
                self.queue.at(arrival, self._deliver, requests)
        self._start(node)

    def _sample(self, _: object) -> None:
        self.recorder.sample(self.queue.now)
        self.queue.at(self.queue.now + self.recorder.interval, self._sample)


def _interval(end: float) -> float:
    """Sampling period: about 600 samples per run, at least 0.5 s."""
    return max(0.5, end / 600)
