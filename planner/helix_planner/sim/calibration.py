"""The simulator calibrated to a served fleet, from what its stages and front end report.

`ServedMetrics` is what the served system counts (each stage's Prometheus step, overhead and
decode-hop histograms, the front end's pipeline round trips and request totals, and the
observed-capacity document's recent steps); `ServedMetrics.since` turns two readings into a
window. `calibrate` fits, from one window of one served placement:
- compute: each stage's recent steps one by one (the observed-capacity document: compute alone,
  an emulated type's sleep included) over what the profile says the same step takes (its rows or
  tokens, at its layer count and GPU type); the median over each GPU type's stages' decode steps
  scales that type's decode curve (the median over all stages' a type not measured), the median
  over all prefill steps the prompt curve. Where workers share cores (a machine emulating a fleet)
  both carry the others' load, and they differ: a long prompt's step is mostly large matrix
  products, a decode step mostly the fixed cost of a step, which waits for a core relatively
  longer; and a type emulated by sleeping waits relatively longer still (the 3x type read up to
  21% further above its profile than the fastest type).
- step overhead: what a step costs its stage beyond the layers' compute, the mean over every
  stage's steps (`helix_stage_step_overhead_seconds`: forming the step, handing it to the compute
  thread and back, sending its outputs), in seconds, the same on every GPU type (a real engine's
  per-step CPU work does not run faster on a faster GPU). Without it a simulated pass is a few
  milliseconds short of a served step, on every stage of every pipeline.
- hop overhead: each pipeline's decode round trip (the front end's `helix_pipeline_step_seconds`)
  less the time its decode tokens spent on each stage (queue included: `helix_stage_hop_seconds`
  of phase decode; a prompt's chunk, queued behind other prompts, would count its wait in a round
  trip it is not part of) and its links' latency and transfer time, per message: gRPC, TLS, relays,
  the front end's own turn.
- the engine's rules and the clients' load, known rather than fitted: a step runs every decode
  row, then whole prompts within the step's token budget (HELIX_MAX_BATCH_TOKENS); the load is a
  closed loop of clients (the simulator's closed mode), as many as the requests the front end held
  on average over the window (`ServedLoad`, Little's law), with their mean prompt and output.
bench/closed_loop.py measures how close this comes to served throughput, per placement, and
`helix up`'s replanner judges its candidates with it (`helix_worker.fleet.replan`).
"""

import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace

from helix_planner.cluster import SINK, SOURCE, Cluster
from helix_planner.errors import PlanningError
from helix_planner.models import ModelSpec
from helix_planner.observed import Observed
from helix_planner.profiles import Catalog
from helix_planner.sim.simulation import SimConfig
from helix_planner.throughput.profiled import layer_curves

LONGEST = 3600.0  # simulated seconds a finite closed loop may take


@dataclass(frozen=True)
class StageMetrics:
    """One stage's counters (sums since it started, or over a window)."""
    steps: float
    seconds: float  # summed step time on the compute thread
    requests: float  # summed requests per step
    chunks: float  # decode pieces (one token each) timed on this stage
    chunk_seconds: float  # their summed time here, queue included
    overhead: float  # summed time of its steps beyond their layers' compute

    @property
    def mean_overhead(self) -> float:
        return self.overhead / self.steps if self.steps else 0.0

    @property
    def mean_step(self) -> float:
        return self.seconds / self.steps if self.steps else 0.0

    @property
    def mean_batch(self) -> float:
        return self.requests / self.steps if self.steps else 0.0

    @property
    def mean_hop(self) -> float:
        return self.chunk_seconds / self.chunks if self.chunks else 0.0


@dataclass(frozen=True)
class RequestTotals:
    """The front end's finished requests: how many, their summed latency, prompt and output tokens."""
    finished: float = 0.0
    latency: float = 0.0
    prompt_tokens: float = 0.0
    output_tokens: float = 0.0


@dataclass(frozen=True)
class ServedLoad:
    """What clients asked of the front end over a window."""
    in_flight: float  # mean requests held (Little's law: summed request latency over the window's length)
    prompt_tokens: float  # per finished request
    output_tokens: float


@dataclass(frozen=True)
class ServedMetrics:
    at: float  # when it was read (monotonic seconds)
    stages: dict[str, StageMetrics]
    round_trips: dict[tuple[str, ...], tuple[float, float]]  # pipeline's nodes -> (decode steps, summed seconds)
    requests: RequestTotals
    capacity: Observed  # the front end's observed-capacity document: recent steps per stage

    def since(self, earlier: "ServedMetrics") -> "ServedMetrics":
        """The counters' change since `earlier` (stages and pipelines new since then count whole); the
        capacity document is this reading's (it is a recent window already)."""
        def minus(now: float, then: float) -> float:
            return max(0.0, now - then)

        stages = {node: StageMetrics(*(minus(getattr(s, f.name), getattr(earlier.stages[node], f.name))
                                       for f in fields(StageMetrics))) if node in earlier.stages else s
                  for node, s in self.stages.items()}
        trips = {nodes: (minus(steps, earlier.round_trips.get(nodes, (0.0, 0.0))[0]),
                         minus(seconds, earlier.round_trips.get(nodes, (0.0, 0.0))[1]))
                 for nodes, (steps, seconds) in self.round_trips.items()}
        totals = RequestTotals(*(minus(getattr(self.requests, f.name), getattr(earlier.requests, f.name))
                                 for f in fields(RequestTotals)))
        return replace(self, stages=stages, round_trips=trips, requests=totals)

    def load(self, seconds: float) -> ServedLoad:
        """The load of a window `seconds` long (this reading a `since`); PlanningError if nothing finished."""
        done = self.requests
        if done.finished < 1 or seconds <= 0:
            raise PlanningError(f"no request finished in the {seconds:.0f} s measured: the load is unknown")
        return ServedLoad(done.latency / seconds, done.prompt_tokens / done.finished,
                          done.output_tokens / done.finished)


@dataclass(frozen=True)
class Calibration:
    compute_scale: float  # how much slower the stages decoded than profiled
    prompt_scale: float  # how much slower they ran prompts
    step_seconds: float  # per step, beyond its layers' compute
    hop_seconds: float  # per message, beyond the link's latency and transfer time
    step_tokens: int  # the engine's token budget per step (HELIX_MAX_BATCH_TOKENS)
    source: str  # what it was measured on
    gpu_scales: Mapping[str, float] = field(default_factory=dict)  # decode scale of each GPU type measured

    def config(self, clients: int, requests: int, seed: int = 0) -> SimConfig:
        """`requests` in a closed loop of `clients`, with the engine's step budget and these measurements;
        the span ends when the last request finishes."""
        return SimConfig(mode="closed", warmup=0.0, duration=LONGEST, seed=seed, clients=clients, requests=requests,
                         max_in_flight=clients, compute_scale=self.compute_scale, gpu_scales=self.gpu_scales,
                         prompt_scale=self.prompt_scale,
                         step_overhead=self.step_seconds, hop_seconds=self.hop_seconds, step_tokens=self.step_tokens)

    def describe(self) -> str:
        types = ", ".join(f"{gpu} x{scale:.2f}" for gpu, scale in self.gpu_scales.items())
        return (f"decode x{self.compute_scale:.2f}{f' ({types})' if types else ''}, prompts x{self.prompt_scale:.2f}, "
                f"{self.step_seconds * 1e3:.1f} ms "
                f"per step beyond compute, {self.hop_seconds * 1e3:.1f} ms per message beyond link latency, steps of "
                f"{self.step_tokens} tokens (measured on {self.source})")


def step_ratios(seen: ServedMetrics, cluster: Cluster, model: ModelSpec,
                catalog: Catalog) -> dict[str, tuple[list[float], list[float]]]:
    """Per node of `cluster`: each recent decode step's and prefill step's seconds over the profile's for it."""
    ratios = {}
    for name, node in seen.capacity.nodes.items():
        if name not in cluster.node_names:
            continue
        prompt_curve, decode_curve = layer_curves(catalog, model, catalog.gpu(cluster.node(name).gpu))
        ratios[name] = ([s.seconds / (s.layers * decode_curve(s.size)) for s in node.decode if s.size > 0],
                        [s.seconds / (s.layers * prompt_curve(s.size)) for s in node.prefill if s.size > 0])
    return ratios


def calibrate(seen: ServedMetrics, cluster: Cluster, model: ModelSpec, catalog: Catalog, source: str,
              step_tokens: int) -> Calibration:
    """Decode and prompt compute scales, step and hop overheads from one served placement's metrics."""
    per_node = step_ratios(seen, cluster, model, catalog)
    decode = [r for node, _ in per_node.values() for r in node]
    prompt = [r for _, node in per_node.values() for r in node]
    by_type: dict[str, list[float]] = {}
    for name, (node_decode, _) in per_node.items():
        by_type.setdefault(cluster.node(name).gpu, []).extend(node_decode)
    if not decode or not prompt:
        raise PlanningError(f"{source}: the stages reported no {'decode' if not decode else 'prefill'} steps to "
                            f"calibrate with")
    messages = residual = 0.0
    for nodes, (steps, seconds) in seen.round_trips.items():
        if not steps or any(n not in seen.stages for n in nodes):
            continue
        path = [SOURCE, *nodes, SINK]
        wire = 0.0
        for src, dst in zip(path, path[1:]):
            link = cluster.link(src, dst)
            size = model.token_bytes if src == SOURCE or dst == SINK else model.activation_bytes_per_token
            wire += link.latency + size / link.bandwidth if link is not None else 0.0
        on_stages = sum(seen.stages[n].mean_hop for n in nodes)
        residual += steps * (seconds / steps - on_stages - wire)
        messages += steps * (len(nodes) + 1)
    steps = sum(stage.steps for stage in seen.stages.values())
    overhead = sum(stage.overhead for stage in seen.stages.values()) / steps if steps else 0.0
    return Calibration(statistics.median(decode), statistics.median(prompt), overhead,
                       max(0.0, residual / messages) if messages else 0.0, step_tokens, source,
                       {gpu: statistics.median(ratios) for gpu, ratios in sorted(by_type.items()) if ratios})
