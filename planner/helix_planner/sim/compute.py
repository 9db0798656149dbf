"""GPU nodes: batched passes over the node's layer range, timed from the GPU profile.

A pass takes every queued decode step up to the decode batch limit and queued prompts up
to the prompt limits (vLLM's, per layer count, from the catalog), and runs them through the
node's layers together. One layer costs prompt(P) + decode(D) seconds, P the prompt tokens
and D the decode sequences in the pass, interpolated from the measured curves (roofline
estimates for GPUs without measurements). A pass is one event: layers are not simulated
one by one. Prompts and decode steps wait in two FIFO queues.

Calibrated to a served fleet (`SimConfig.compute_scale`, `prompt_scale`, `step_overhead`,
`step_tokens`), the layers' compute runs `compute_scale` times slower (the machine's cores shared;
prompts `prompt_scale` times, where set: a long prompt's step is mostly large matrix products,
slowed less than short decode steps), every pass also pays the served engine's own time per step
beyond its layers (`step_overhead` seconds, whatever the node's type, layers and rows: forming the
step, handing it to the compute thread and back, sending its outputs), and prompts are taken as
the worker engine's step does: decode rows first, then whole prompts while the step's token budget
lasts.
"""

from collections import deque
from dataclasses import dataclass, replace

from helix_planner.errors import PlanningError
from helix_planner.models import ModelSpec
from helix_planner.profiles import Catalog, Curve
from helix_planner.sim.memory import KvCache
from helix_planner.sim.request import Request
from helix_planner.throughput.profiled import USABLE_VRAM, Workload, roofline_curves

MAX_PROMPT_TOKENS = 2048  # vLLM's max_num_batched_tokens per prompt request in the measured profiles
ROOFLINE_DECODE_SEQUENCES = 256


@dataclass(frozen=True)
class NodeProfile:
    """What one GPU type does holding a given number of layers."""

    prompt: Curve
    decode: Curve
    prompt_max_requests: int
    prompt_max_tokens: int
    decode_max_sequences: int
    kv_capacity: float  # token-layers
    shared_budget: bool = False  # decode rows count against prompt_max_tokens (the worker engine's step budget)
    pass_seconds: float = 0.0  # fixed cost of every pass

    def calibrated(self, compute_scale: float, step_overhead: float, step_tokens: int | None,
                   prompt_scale: float | None = None) -> "NodeProfile":
        """The layers `compute_scale` times slower (prompts `prompt_scale` times, when given) and every pass
        `step_overhead` seconds dearer; with `step_tokens`, the engine's step budget in place of vLLM's limits."""
        def scaled(curve: Curve, scale: float) -> Curve:
            return Curve(curve.xs, tuple(seconds * scale for seconds in curve.seconds))

        costed = replace(self, prompt=scaled(self.prompt, compute_scale if prompt_scale is None else prompt_scale),
                         decode=scaled(self.decode, compute_scale),
                         pass_seconds=step_overhead)
        if step_tokens is None:
            return costed
        return replace(costed, prompt_max_requests=step_tokens, prompt_max_tokens=step_tokens,
                       decode_max_sequences=step_tokens, shared_budget=True)


def node_profile(catalog: Catalog, model: ModelSpec, gpu_name: str, layers: int) -> NodeProfile:
    """Measured curves and limits where the catalog has them, roofline and VRAM arithmetic else."""
    gpu = catalog.gpu(gpu_name)
    measured = catalog.measurement(model.name, gpu.name)
    if measured is not None:
        if layers not in measured.kv_blocks:
            raise PlanningError(f"{gpu.name} cannot hold {layers} layers of {model.name}: "
                                f"at most {measured.max_layers}")
        requests = measured.prompt_max_requests.get(layers, 1)
        return NodeProfile(measured.prompt, measured.decode, requests, requests * MAX_PROMPT_TOKENS,
                           measured.decode_max_tokens.get(layers, ROOFLINE_DECODE_SEQUENCES),
                           float(measured.block_size * measured.kv_blocks[layers] * layers))
    kv_bytes = gpu.vram_bytes * USABLE_VRAM - layers * model.bytes_per_layer
    if kv_bytes <= 0:
        raise PlanningError(f"{gpu.name} cannot hold {layers} layers of {model.name}: no memory left for KV cache")
    prompt, decode = roofline_curves(gpu, model, Workload())
    return NodeProfile(prompt, decode, 1, MAX_PROMPT_TOKENS, ROOFLINE_DECODE_SEQUENCES,
                       kv_bytes / model.kv_bytes_per_token_layer)


class GpuNode:
    """One node's queues, batch former and pass timer; the simulation moves requests in and out."""

    __slots__ = ("name", "gpu", "start", "end", "profile", "kv", "prompts", "decodes", "batch", "mid_entry",
                 "_decode_table")

    def __init__(self, name: str, gpu: str, start: int, end: int, profile: NodeProfile, kv_high_water: float) -> None:
        self.name, self.gpu, self.start, self.end, self.profile = name, gpu, start, end, profile
        self.kv = KvCache(profile.kv_capacity, kv_high_water)
        self.prompts: deque[Request] = deque()
        self.decodes: deque[Request] = deque()
        self.batch: list[Request] = []  # the pass running now (empty: idle)
        self.mid_entry = False  # whether some route enters past `start` (partial inference)
        self._decode_table = [profile.decode(d) for d in range(profile.decode_max_sequences + 1)]

    @property
    def queued(self) -> int:
        return len(self.prompts) + len(self.decodes)

    def start_pass(self) -> float:
        """Form the next batch from the queues into `batch`; return its duration (0 when idle)."""
        profile, decodes, prompts = self.profile, self.decodes, self.prompts
        if len(decodes) <= profile.decode_max_sequences:
            batch = list(decodes)
            decodes.clear()
        else:
            batch = [decodes.popleft() for _ in range(profile.decode_max_sequences)]
        sequences = len(batch)
        taken = tokens = 0
        budget = profile.prompt_max_tokens - (sequences if profile.shared_budget else 0)
        while prompts and taken < profile.prompt_max_requests:
            if (taken or profile.shared_budget and sequences) and tokens + prompts[0].tokens > budget:
                break  # a prompt longer than the token budget still runs, alone
            tokens += prompts[0].tokens
            taken += 1
            batch.append(prompts.popleft())
        self.batch = batch
        if not batch:
            return 0.0
        if self.mid_entry:
            return profile.pass_seconds + self._partial_seconds(batch)
        return profile.pass_seconds + (self.end - self.start) * (profile.prompt(tokens) + self._decode(sequences))

    def _partial_seconds(self, batch: list[Request]) -> float:
        """Layer segments between distinct entry points, each timed with the requests present there."""
        segments: dict[int, list[int]] = {}
        for request in batch:
            counts = segments.setdefault(request.route[request.stage].start, [0, 0])
            if request.prompt:
                counts[0] += request.tokens
            else:
                counts[1] += 1
        seconds, prompt_tokens, decodes = 0.0, 0, 0
        starts = sorted(segments)
        for i, start in enumerate(starts):
            prompt_tokens += segments[start][0]
            decodes += segments[start][1]
            end = starts[i + 1] if i + 1 < len(starts) else self.end
            seconds += (end - start) * (self.profile.prompt(prompt_tokens) + self._decode(decodes))
        return seconds

    def step_seconds(self, sequences: int, layers: int) -> float:
        """Estimated wait plus pass for one decode step among `sequences` (half a pass, then one)."""
        return 1.5 * layers * self._decode(sequences)

    def prompt_seconds(self, tokens: int, layers: int) -> float:
        """Estimated time to first pass a prompt of `tokens` behind the prompts already queued here."""
        passes = len(self.prompts) / self.profile.prompt_max_requests + 1
        return passes * layers * self.profile.prompt(tokens)

    def _decode(self, sequences: int) -> float:
        table = self._decode_table
        return table[sequences] if sequences < len(table) else self.profile.decode(sequences)
