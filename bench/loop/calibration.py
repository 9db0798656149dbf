"""The simulator calibrated to the served fleet, from what one served placement's stages reported.

Three inputs, each measured on the emulated fleet, none a per-placement factor:
- compute scale: the served stages' summed step time over what the profile says the same steps take
  (their decode rows and prompts, at their layer count and GPU type). The profile is measured alone,
  with one torch thread; served, the workers, the front end, the relays and the client share two
  cores, and a step also builds its attention layout and samples.
- hop overhead: each pipeline's decode round trip (the front end's `helix_pipeline_step_seconds`)
  less the time its requests spent on each stage (queue included: `helix_stage_hop_seconds`) and
  its links' latency and transfer time, per message: gRPC, TLS, the relays' delay line, the front
  end's own turn.
- the engine's rules, known rather than measured: a step runs every decode row, then whole prompts
  within the step's token budget (HELIX_MAX_BATCH_TOKENS), and the load is a closed loop of C
  clients (the simulator's closed mode), not the offline protocol whose next request waits,
  already counting its TTFT, from the moment the previous one was admitted.
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
WINDOW = (30.0, 300.0)  # simulated warm-up and measured seconds


@dataclass(frozen=True)
class Calibration:
    compute_scale: float  # served step time / profiled
    hop_seconds: float  # per message, beyond the link's latency and transfer time
    source: str  # what it was measured on

    def config(self, clients: int, seed: int = 0) -> SimConfig:
        """The closed loop of `clients` with the engine's step budget and these measurements."""
        return SimConfig(mode="closed", warmup=WINDOW[0], duration=WINDOW[1], seed=seed, clients=clients,
                         max_in_flight=clients, compute_scale=self.compute_scale, hop_seconds=self.hop_seconds,
                         step_tokens=STEP_TOKENS)

    def describe(self) -> str:
        return (f"compute x{self.compute_scale:.2f} over the profile, {self.hop_seconds * 1e3:.1f} ms per message "
                f"beyond link latency, steps of {STEP_TOKENS} tokens, a closed loop (measured on {self.source})")


def calibrate(seen: Seen, plan: Plan, cluster: Cluster, model: ModelSpec, catalog: Catalog, prompt_tokens: int,
              source: str) -> Calibration:
    """Compute scale and hop overhead from one served placement's metrics (`seen`)."""
    layers = {node.name: node.end - node.start for node in plan.nodes}
    observed = predicted = 0.0
    for name, stage in seen.stages.items():
        profile = catalog.measurement(model.name, cluster.node(name).gpu)
        if profile is None or not stage.steps:
            continue
        prompts = (stage.tokens - stage.requests) / (prompt_tokens - 1)  # a prompt is one request of P rows
        decode_rows = stage.requests - prompts
        predicted += layers[name] * (stage.steps * profile.decode(decode_rows / stage.steps)
                                     + prompts * profile.prompt(prompt_tokens))
        observed += stage.seconds
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
    return Calibration(observed / predicted if predicted else 1.0, max(0.0, residual / messages) if messages else 0.0,
                       source)
