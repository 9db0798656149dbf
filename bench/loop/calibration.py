"""The simulator calibrated to the served fleet, from what one served placement's stages reported.

Measured on the emulated fleet, none a per-placement factor:
- step overhead: the served stages' summed step time less what the profile says the same steps take
  (their decode rows and prompts, at their layer count and GPU type), per step, in one-row decode
  layers of the stage's own profile (so the emulated slow types, whose sleep stretches the whole
  step, pay it in proportion). A served step costs about the same with three layers as with four:
  what dominates is per step, not per layer (the event loop handing the step to the compute thread
  and back, the attention layout, sampling, each of them waiting for a core when the workers, the
  front end, the relays and the client share two), so it is one cost per pass, not a scale on the
  curves.
- hop overhead: each pipeline's decode round trip (the front end's `helix_pipeline_step_seconds`)
  less the time its requests spent on each stage (queue included: `helix_stage_hop_seconds`) and
  its links' latency and transfer time, per message: gRPC, TLS, the relays' delay line, the front
  end's own turn.
- the engine's rules and the client's load, known rather than measured: a step runs every decode
  row, then whole prompts within the step's token budget (HELIX_MAX_BATCH_TOKENS); the load is the
  client's N requests in a closed loop of C (the simulator's closed mode), timed until the last one
  finishes, so the drain where slower pipelines finish alone counts as it does served, and no
  request waits, already counting its TTFT, for a free slot (the offline protocol creates the next
  request when the previous one is admitted).
"""

from dataclasses import dataclass

from loop.observed import Seen

from helix_planner.cluster import SINK, SOURCE, Cluster
from helix_planner.models import ModelSpec
from helix_planner.plan_format import Plan
from helix_planner.profiles import Catalog
from helix_planner.sim.simulation import SimConfig
from helix_worker.envs import Settings

STEP_TOKENS = Settings().max_batch_tokens  # the workers' default HELIX_MAX_BATCH_TOKENS
LONGEST = 3600.0  # simulated seconds a finite closed loop may take


@dataclass(frozen=True)
class Calibration:
    step_overhead: float  # per step, in one-row decode layers of the stage's profile
    hop_seconds: float  # per message, beyond the link's latency and transfer time
    source: str  # what it was measured on
    contention: float = 1.0  # how much slower compute ran than profiled (`loop.contention`), in that window
    def config(self, clients: int, requests: int, seed: int = 0) -> SimConfig:
        """The bench client's load, `requests` in a closed loop of `clients`, with the engine's step budget and
        these measurements; the span ends when the last request finishes, as the client's does."""
        return SimConfig(mode="closed", warmup=0.0, duration=LONGEST, seed=seed, clients=clients, requests=requests,
                         max_in_flight=clients, compute_scale=self.contention, step_overhead=self.step_overhead,
                         hop_seconds=self.hop_seconds,
                         step_tokens=STEP_TOKENS)

    def describe(self) -> str:
        return (f"compute x{self.contention:.2f} (probe), {self.step_overhead:.1f} one-row decode layers per step "
                f"beyond the profile, "
                f"{self.hop_seconds * 1e3:.1f} ms per message "
                f"beyond link latency, steps of {STEP_TOKENS} tokens, a closed loop (measured on {self.source})")


def calibrate(seen: Seen, plan: Plan, cluster: Cluster, model: ModelSpec, catalog: Catalog, prompt_tokens: int,
              source: str, contention: float = 1.0) -> Calibration:
    """Step and hop overhead from one served placement's metrics (`seen`), with compute `contention` times
    slower than profiled while it was served."""
    layers = {node.name: node.end - node.start for node in plan.nodes}
    excess = units = 0.0
    for name, stage in seen.stages.items():
        profile = catalog.measurement(model.name, cluster.node(name).gpu)
        if profile is None or not stage.steps:
            continue
        prompts = (stage.tokens - stage.requests) / (prompt_tokens - 1)  # a prompt is one request of P rows
        decode_rows = stage.requests - prompts
        excess += stage.seconds / contention - layers[name] * (stage.steps * profile.decode(decode_rows / stage.steps)
                                                               + prompts * profile.prompt(prompt_tokens))
        units += stage.steps * profile.decode(1)
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
    return Calibration(max(0.0, excess / units) if units else 0.0,
                       max(0.0, residual / messages) if messages else 0.0, source, contention)
