"""The simulator calibrated to the served fleet, from what one served placement's stages reported.

Measured on the emulated fleet, none a per-placement factor:
- compute: each stage's recent steps one by one (the observed-capacity document: compute alone,
  the emulated types' sleep included) over what the profile says the same step takes (its rows or
  tokens, at its layer count and GPU type); the median over the stages' decode steps scales the
  decode curve, the median over their prefill steps the prompt curve. Both are the workers' share
  of the two cores they split with each other, the front end, the relays and the client, and they
  differ: a long prompt's step is mostly large matrix products, a decode step mostly the fixed
  cost of a step, which waits for a core relatively longer (one scale for both, from the stages'
  summed step times, left the calibrated TTFT about twice the served and decode 3-21% slow). A
  probe timed in the bench's own process
  (`loop.contention`, shown per placement) reads the machine's load but not the workers' share of
  it: on a quiet machine it said x4.5 where the stages' own steps said under x3.
- step overhead: what a step costs its stage beyond the layers' compute, the mean over every
  stage's steps (`helix_stage_step_overhead_seconds`: forming the step, handing it to the compute
  thread and back, sending its outputs), in seconds, the same on every GPU type (the emulated
  types' sleep covers the layers alone; a real engine's per-step CPU work does not run faster on a
  faster GPU either). The compute window leaves it out, so without it a simulated pass was a
  few milliseconds short of a served step, on every stage of every pipeline.
- hop overhead: each pipeline's decode round trip (the front end's `helix_pipeline_step_seconds`)
  less the time its decode tokens spent on each stage (queue included: `helix_stage_hop_seconds`
  of phase decode; a prompt's chunk, queued behind other prompts, would count its wait in a
  round trip it is not part of) and its links' latency and transfer time, per message: gRPC,
  TLS, the relays' delay line, the front end's own turn.
- the engine's rules and the client's load, known rather than measured: a step runs every decode
  row, then whole prompts within the step's token budget (HELIX_MAX_BATCH_TOKENS); the load is the
  client's N requests in a closed loop of C (the simulator's closed mode), timed until the last one
  finishes, so the drain where slower pipelines finish alone counts as it does served, and no
  request waits, already counting its TTFT, for a free slot (the offline protocol creates the next
  request when the previous one is admitted).
"""

import statistics
from dataclasses import dataclass

from loop.observed import Seen

from helix_planner.cluster import SINK, SOURCE, Cluster
from helix_planner.models import ModelSpec
from helix_planner.profiles import Catalog
from helix_planner.sim.simulation import SimConfig
from helix_worker.envs import Settings

STEP_TOKENS = Settings().max_batch_tokens  # the workers' default HELIX_MAX_BATCH_TOKENS
LONGEST = 3600.0  # simulated seconds a finite closed loop may take


@dataclass(frozen=True)
class Calibration:
    compute_scale: float  # how much slower the stages decoded than profiled
    prompt_scale: float  # how much slower they ran prompts
    step_seconds: float  # per step, beyond its layers' compute
    hop_seconds: float  # per message, beyond the link's latency and transfer time
    source: str  # what it was measured on

    def config(self, clients: int, requests: int, seed: int = 0) -> SimConfig:
        """The bench client's load, `requests` in a closed loop of `clients`, with the engine's step budget and
        these measurements; the span ends when the last request finishes, as the client's does."""
        return SimConfig(mode="closed", warmup=0.0, duration=LONGEST, seed=seed, clients=clients, requests=requests,
                         max_in_flight=clients, compute_scale=self.compute_scale, prompt_scale=self.prompt_scale,
                         step_overhead=self.step_seconds, hop_seconds=self.hop_seconds, step_tokens=STEP_TOKENS)

    def describe(self) -> str:
        return (f"decode x{self.compute_scale:.2f}, prompts x{self.prompt_scale:.2f}, {self.step_seconds * 1e3:.1f} ms "
                f"per step beyond compute, {self.hop_seconds * 1e3:.1f} ms per message beyond link latency, steps of "
                f"{STEP_TOKENS} tokens, a closed loop (measured on {self.source})")


def calibrate(seen: Seen, cluster: Cluster, model: ModelSpec, catalog: Catalog, source: str) -> Calibration:
    """Decode and prompt compute scales, step and hop overheads from one served placement's metrics (`seen`)."""
    decode, prompt = [], []  # every recent step's seconds over the profile's for it
    for name, node in seen.capacity.nodes.items():
        profile = catalog.measurement(model.name, cluster.node(name).gpu)
        if profile is None:
            continue
        decode += [s.seconds / (s.layers * profile.decode(s.size)) for s in node.decode if s.size > 0]
        prompt += [s.seconds / (s.layers * profile.prompt(s.size)) for s in node.prefill if s.size > 0]
    if not decode or not prompt:
        raise SystemExit(f"{source}: the stages reported no {'decode' if not decode else 'prefill'} steps to "
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
                       max(0.0, residual / messages) if messages else 0.0, source)
