"""The simulator calibrated to the served fleet, from what one served placement's stages reported.

Measured on the emulated fleet, none a per-placement factor:
- compute: the served stages' step times (their own metrics, compute alone, the emulated types'
  sleep included) against what the profile says the same steps take (their decode rows and
  prompts, at their layer count and GPU type), fitted per stage, by least squares, as a scale on
  the profile plus a fixed cost per step (in one-row decode layers of the stage's own profile, so
  the emulated slow types, whose sleep stretches the whole step, pay it in proportion). The scale
  is the workers' share of the two cores they split with each other, the front end, the relays and
  the client; the per-step cost what a step costs beyond its layers (the event loop handing it to
  the compute thread and back, the attention layout, sampling). A probe timed in the bench's own
  process (`loop.contention`, shown per placement) reads the machine's load but not the workers'
  share of it: on a quiet machine it said x5 where the stages' own steps said x3.
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

import numpy as np
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
    compute_scale: float  # how much slower the stages computed than profiled
    step_overhead: float  # per step, in one-row decode layers of the stage's profile (before the scale)
    hop_seconds: float  # per message, beyond the link's latency and transfer time
    source: str  # what it was measured on

    def config(self, clients: int, requests: int, seed: int = 0) -> SimConfig:
        """The bench client's load, `requests` in a closed loop of `clients`, with the engine's step budget and
        these measurements; the span ends when the last request finishes, as the client's does."""
        return SimConfig(mode="closed", warmup=0.0, duration=LONGEST, seed=seed, clients=clients, requests=requests,
                         max_in_flight=clients, compute_scale=self.compute_scale, step_overhead=self.step_overhead,
                         hop_seconds=self.hop_seconds, step_tokens=STEP_TOKENS)

    def describe(self) -> str:
        return (f"compute x{self.compute_scale:.2f} plus {self.step_overhead:.1f} one-row decode layers per step, "
                f"{self.hop_seconds * 1e3:.1f} ms per message beyond link latency, steps of {STEP_TOKENS} tokens, "
                f"a closed loop (measured on {self.source})")


def calibrate(seen: Seen, plan: Plan, cluster: Cluster, model: ModelSpec, catalog: Catalog, prompt_tokens: int,
              source: str) -> Calibration:
    """Compute scale, step and hop overhead from one served placement's metrics (`seen`)."""
    layers = {node.name: node.end - node.start for node in plan.nodes}
    served, profiled, per_step = [], [], []  # per stage: its step seconds, the profile's for them, steps x decode(1)
    for name, stage in seen.stages.items():
        profile = catalog.measurement(model.name, cluster.node(name).gpu)
        if profile is None or not stage.steps:
            continue
        prompts = (stage.tokens - stage.requests) / (prompt_tokens - 1)  # a prompt is one request of P rows
        decode_rows = stage.requests - prompts
        served.append(stage.seconds)
        profiled.append(layers[name] * (stage.steps * profile.decode(decode_rows / stage.steps)
                                        + prompts * profile.prompt(prompt_tokens)))
        per_step.append(stage.steps * profile.decode(1))
    scale, step_cost = _fit(np.array(served), np.array(profiled), np.array(per_step))
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
    return Calibration(scale, step_cost / scale, max(0.0, residual / messages) if messages else 0.0, source)


def _fit(served: np.ndarray, profiled: np.ndarray, per_step: np.ndarray) -> tuple[float, float]:
    """served ~ scale * profiled + cost * per_step, both >= 0 (a scale alone when the cost would be negative
    or the stages cannot tell the two apart); (1, 0) without stages."""
    if not len(served) or not profiled.any():
        return 1.0, 0.0
    if len(served) > 1:
        (scale, cost), *_ = np.linalg.lstsq(np.stack([profiled, per_step], axis=1), served, rcond=None)
        if scale > 0 and cost >= 0:
            return float(scale), float(cost)
    return float(served @ profiled / (profiled @ profiled)), 0.0
