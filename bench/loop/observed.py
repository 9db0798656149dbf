"""What the served stages and front end report about a run, read from their Prometheus /metrics.

Each stage's step histogram (one step on the compute thread, the slowdown's sleep included), its
step-overhead histogram (what a step costs the stage beyond its layers' compute), its batch and its
decode hop histogram give the mean step, its overhead, its batch and a decode token's time there; the front end's
pipeline-step histogram gives the decode round trip through a pipeline; its observed-capacity document (GET
/v2/helix/observed) the stages' recent decode and prefill steps one by one. These are what the
simulator's compute and network models predict, so the calibration compares them (`loop.calibration`).
"""

import json
import subprocess
import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from helix_planner.observed import PATH, Observed, parse_observed
from helix_worker.fleet.launcher import LocalFleet
from helix_worker.fleet.netem import EmulatedNetwork


@dataclass(frozen=True)
class StageSeen:
    node: str
    steps: float
    seconds: float  # summed step time
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
class Seen:
    stages: dict[str, StageSeen]
    round_trips: dict[tuple[str, ...], tuple[float, float]]  # pipeline's nodes -> (decode steps, summed seconds)
    capacity: Observed  # the front end's observed-capacity document: recent steps per stage


def _samples(text: str, label: str = "") -> dict[str, float]:
    """Sample name (and the value of `label`, if given, after a space) -> value, summed over other labels."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = f"{sample.name} {sample.labels.get(label, '')}" if label else sample.name
            out[key] = out.get(key, 0.0) + sample.value
    return out


def scrape(fleet: LocalFleet, net: EmulatedNetwork, http_url: str) -> Seen:
    """Every worker's metrics (read inside its namespace) and the front end's (through its portal)."""
    stages = {}
    for child in fleet.children:
        if not child.worker:
            continue
        text = subprocess.run(["ip", "netns", "exec", net.hosts[child.name].netns, "curl", "-sf",
                               f"http://127.0.0.1:{child.ports['http']}/metrics"],
                              capture_output=True, text=True, timeout=10, check=True).stdout
        s, hops = _samples(text), _samples(text, "phase")
        stages[child.name] = StageSeen(child.name, s.get("helix_stage_step_seconds_count", 0.0),
                                       s.get("helix_stage_step_seconds_sum", 0.0),
                                       s.get("helix_stage_batch_requests_sum", 0.0),
                                       hops.get("helix_stage_hop_seconds_count decode", 0.0),
                                       hops.get("helix_stage_hop_seconds_sum decode", 0.0),
                                       s.get("helix_stage_step_overhead_seconds_sum", 0.0))
    with urllib.request.urlopen(f"{http_url}/metrics", timeout=10) as response:
        front = _samples(response.read().decode(), "pipeline")
    with urllib.request.urlopen(http_url + PATH, timeout=10) as response:
        capacity = parse_observed(json.loads(response.read()))
    pipelines = {key.split(" ", 1)[1] for key in front if key.startswith("helix_pipeline_step_seconds_count ")}
    return Seen(stages, {tuple(p.split("->")): (front[f"helix_pipeline_step_seconds_count {p}"],
                                                front[f"helix_pipeline_step_seconds_sum {p}"]) for p in pipelines},
                capacity)
