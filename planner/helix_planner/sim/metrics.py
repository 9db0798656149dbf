"""What a run measured: tokens over time, per-request latencies, per-node samples, and the
summary figures (throughput, TTFT/TPOT percentiles, SLO attainment) over the measured window.

Throughput counts tokens that reach the front end inside the window; TTFT is counted for
requests whose first token arrives in the window, TPOT and SLO attainment for requests that
finish in it. TTFT includes time spent waiting for admission (KV room) at the front end.
"""

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from helix_planner.sim.compute import GpuNode
from helix_planner.sim.request import Request


@dataclass(frozen=True)
class Percentiles:
    p50: float
    p95: float
    p99: float

    @classmethod
    def of(cls, values: np.ndarray) -> "Percentiles":
        if len(values) == 0:
            return cls(float("nan"), float("nan"), float("nan"))
        p50, p95, p99 = np.percentile(values, [50, 95, 99])
        return cls(float(p50), float(p95), float(p99))


@dataclass(frozen=True)
class NodeStats:
    name: str
    gpu: str
    start: int
    end: int
    busy: float  # share of the window spent in passes
    kv_mean: float
    kv_max: float
    queue_mean: float
    queue_max: float


@dataclass
class SimResult:
    label: str
    scheduler: str
    mode: str
    seed: int
    warmup: float
    duration: float
    decode_throughput: float
    prompt_throughput: float
    ttft: Percentiles
    tpot: Percentiles
    slo_ttft: float
    slo_tpot: float
    slo_attainment: float
    completed: int
    waiting_at_end: int
    in_flight_at_end: int
    rejected: int  # requests too long for every route's KV cache
    nodes: list[NodeStats]
    series: dict[str, list[float] | dict[str, list[float]]] = field(default_factory=dict)
    ttft_values: list[float] = field(default_factory=list)
    tpot_values: list[float] = field(default_factory=list)
    wall_seconds: float = 0.0
    lengths: str = ""  # the request-length trace the run drew from (LengthTrace.name)

    @property
    def sim_seconds_per_wall_second(self) -> float:
        return (self.warmup + self.duration) / self.wall_seconds if self.wall_seconds > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON, camelCase like the plan document; undefined figures become None."""
        data = _camel(asdict(self))
        data["ttft"], data["tpot"] = _camel(data["ttft"]), _camel(data["tpot"])
        data["nodes"] = [_camel(n) for n in data["nodes"]]
        data["simSecondsPerWallSecond"] = self.sim_seconds_per_wall_second
        return {key: _finite(value) for key, value in data.items()}


def _camel(data: dict[str, Any]) -> dict[str, Any]:
    return {k.split("_")[0] + "".join(p.title() for p in k.split("_")[1:]): v for k, v in data.items()}


def _finite(value: object) -> object:
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


class Recorder:
    """Collects raw observations while the simulation runs."""

    def __init__(self, nodes: list[GpuNode], warmup: float, end: float, interval: float) -> None:
        self.nodes, self.warmup, self.end, self.interval = nodes, warmup, end, interval
        bins = int(np.ceil(end / interval)) + 1
        self.output_tokens = np.zeros(bins)
        self.prompt_tokens = np.zeros(bins)
        self.first_tokens: list[tuple[float, float]] = []
        self.finished: list[tuple[float, float, float, int]] = []
        self.sample_times: list[float] = []
        self.kv: list[list[float]] = []
        self.queues: list[list[int]] = []
        self.busy = {node.name: 0.0 for node in nodes}
        self.window_output = 0
        self.window_prompt = 0

    def tokens(self, now: float, count: int) -> None:
        self.output_tokens[int(now / self.interval)] += count
        if self.warmup <= now <= self.end:
            self.window_output += count

    def first_token(self, request: Request, now: float) -> None:
        self.prompt_tokens[int(now / self.interval)] += request.input_tokens
        if self.warmup <= now <= self.end:
            self.window_prompt += request.input_tokens
        self.first_tokens.append((request.arrival, now))

    def done(self, request: Request, now: float) -> None:
        self.finished.append((request.arrival, request.first_token, now, request.output_tokens))

    def pass_started(self, node: GpuNode, now: float, seconds: float) -> None:
        overlap = min(now + seconds, self.end) - max(now, self.warmup)
        if overlap > 0:
            self.busy[node.name] += overlap

    def sample(self, now: float) -> None:
        self.sample_times.append(now)
        self.kv.append([node.kv.utilisation for node in self.nodes])
        self.queues.append([node.queued for node in self.nodes])


def summarize(recorder: Recorder, *, label: str, scheduler: str, mode: str, seed: int, slo_ttft: float,
              slo_tpot: float, waiting: int, in_flight: int, rejected: int, wall_seconds: float,
              lengths: str = "") -> SimResult:
    r = recorder
    span = r.end - r.warmup
    first = np.array(r.first_tokens).reshape(-1, 2)
    ttft = (first[:, 1] - first[:, 0])[(first[:, 1] >= r.warmup) & (first[:, 1] <= r.end)]
    done = np.array(r.finished).reshape(-1, 4)
    done = done[(done[:, 2] >= r.warmup) & (done[:, 2] <= r.end)]
    tpot = np.where(done[:, 3] > 1, (done[:, 2] - done[:, 1]) / np.maximum(done[:, 3] - 1, 1), 0.0)
    met = ((done[:, 1] - done[:, 0]) <= slo_ttft) & (tpot <= slo_tpot)
    times = np.array(r.sample_times)
    inside = (times >= r.warmup) & (times <= r.end)
    kv = np.array(r.kv).reshape(len(times), len(r.nodes))
    queues = np.array(r.queues).reshape(len(times), len(r.nodes))
    nodes = []
    for i, node in enumerate(r.nodes):
        k = kv[inside, i] if inside.any() else np.zeros(1)
        q = queues[inside, i] if inside.any() else np.zeros(1)
        nodes.append(NodeStats(node.name, node.gpu, node.start, node.end, r.busy[node.name] / span,
                               float(k.mean()), float(k.max()), float(q.mean()), float(q.max())))
    series = {
        "time": (np.arange(len(r.output_tokens)) * r.interval).tolist(),
        "decodeThroughput": (r.output_tokens / r.interval).tolist(),
        "promptThroughput": (r.prompt_tokens / r.interval).tolist(),
        "sampleTime": times.tolist(),
        "kvUtilisation": {node.name: kv[:, i].tolist() for i, node in enumerate(r.nodes)},
        "queueLength": {node.name: queues[:, i].tolist() for i, node in enumerate(r.nodes)},
    }
    return SimResult(
        label=label, scheduler=scheduler, mode=mode, seed=seed, warmup=r.warmup, duration=span,
        decode_throughput=r.window_output / span, prompt_throughput=r.window_prompt / span,
        ttft=Percentiles.of(ttft), tpot=Percentiles.of(tpot), slo_ttft=slo_ttft, slo_tpot=slo_tpot,
        slo_attainment=float(met.mean()) if len(met) else float("nan"), completed=len(done),
        waiting_at_end=waiting, in_flight_at_end=in_flight, rejected=rejected, nodes=nodes, series=series,
        ttft_values=sorted(ttft.tolist()), tpot_values=sorted(tpot.tolist()), wall_seconds=wall_seconds,
        lengths=lengths,
    )
