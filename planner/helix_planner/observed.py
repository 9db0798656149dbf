"""Observed capacity: what the served system measures, compared with the catalog, and when to replan.

Profiles are measured once; a GPU that runs slower than its profile, or a link that lost
bandwidth, shows only in what the stages measure while serving. The front end gathers those
measurements (from each stage's heartbeat answer) into the *observed-capacity document* it
serves at `GET /v2/helix/observed`, in this format (JSON; sizes in tokens, bytes, seconds):

    {"planHash": "<the plan the stages run>",
     "nodes": {"w-1": {"gpuType": "cpu-a",                  # the plan's GPU type of the node
                       "layers": [0, 12],                   # the layers it holds
                       "decode": [[4, 12, 0.031], ...],     # recent pure-decode steps: [batch, layers, seconds]
                       "prefill": [[512, 12, 0.40], ...]}}, # recent steps with prompt tokens: [tokens, layers, seconds]
     "links": {"w-1>w-2": {"bytesPerSecond": 1.2e8,         # estimate from the samples (`link_rate`)
                           "samples": [[1048576, 0.0087], ...]}}}  # activation frames: [bytes, seconds on the wire]

Samples are each stage's recent window (bounded in count and age), not totals: every poll of
the document sees what the system does now. `layers` of a step is the mean over its rows
(a stage may run part of its layers for some routes). A link's samples are timed where they
arrive, from a frame's first byte to its last, so they measure the wire, not a socket buffer.

Then, purely (no I/O here):
  * `node_slowdown` / `link_ratio`: a node's observed step time over its profiled one (the
    catalog curve for its GPU type, per layer times layers; >1 is slower), a link's observed
    bandwidth over the cluster's;
  * `drifts`: the nodes and links whose ratio is beyond a threshold;
  * `effective_inputs`: the cluster and catalog to plan with: a drifted node gets a derived GPU
    type (`<type>@observed-2.10x`) whose curves and roofline are scaled by its ratio, a drifted
    link its observed bandwidth; `restore_gpu_types` maps a plan made on them back to the real
    types, and `plan_value` scores any plan on them;
  * `DriftTracker`: drift must persist for `debounce_seconds` (one calm poll restarts the
    clock), is measured against what was last acted on (`settle`), and a replan is worth it
    only if the new plan beats the current one, both scored on the effective inputs, by
    `min_gain`. Its reasons read "w-3 decodes 2.10x slower than its cpu-a profile for 40 s".
"""

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from helix_planner.cluster import Cluster, Link, Node, RegionMesh
from helix_planner.errors import PlanningError
from helix_planner.flow import evaluate
from helix_planner.models import ModelSpec
from helix_planner.plan_format import Plan
from helix_planner.planner import PlannerOptions, capacity_model_for
from helix_planner.profiles import Catalog, Curve, HelixTables
from helix_planner.throughput.profiled import layer_curves

PATH = "/v2/helix/observed"  # where the front end serves the document
MIN_STEP_SAMPLES = 5  # fewer steps than this say nothing about a node
MIN_LINK_SAMPLES = 3
LINK_SEPARATOR = ">"
DERIVED_MARK = "@observed-"


@dataclass(frozen=True)
class StepSample:
    size: float  # decode: the batch (rows); prefill: tokens (prompt and decode rows) of the step
    layers: float
    seconds: float


@dataclass(frozen=True)
class NodeObservation:
    gpu_type: str
    layers: tuple[int, int]
    decode: tuple[StepSample, ...] = ()
    prefill: tuple[StepSample, ...] = ()


@dataclass(frozen=True)
class LinkSample:
    bytes: float
    seconds: float


@dataclass(frozen=True)
class Observed:
    """One observed-capacity document."""

    plan_hash: str
    nodes: dict[str, NodeObservation] = field(default_factory=dict)
    links: dict[tuple[str, str], tuple[LinkSample, ...]] = field(default_factory=dict)

    def to_document(self) -> dict[str, Any]:
        return {
            "planHash": self.plan_hash,
            "nodes": {name: {"gpuType": n.gpu_type, "layers": list(n.layers),
                             "decode": [[s.size, s.layers, s.seconds] for s in n.decode],
                             "prefill": [[s.size, s.layers, s.seconds] for s in n.prefill]}
                      for name, n in self.nodes.items()},
            "links": {f"{a}{LINK_SEPARATOR}{b}": {"bytesPerSecond": link_rate(samples),
                                                 "samples": [[s.bytes, s.seconds] for s in samples]}
                      for (a, b), samples in self.links.items()},
        }


def _numbers(value: Any, count: int, where: str) -> list[float]:
    if (not isinstance(value, list) or len(value) != count
            or not all(isinstance(v, int | float) and not isinstance(v, bool) and v >= 0 for v in value)):
        raise PlanningError(f"observed capacity document: {where} must be a list of {count} numbers >= 0, "
                            f"got {value!r}")
    return [float(v) for v in value]


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise PlanningError(f"observed capacity document: {where} must be an object, got {type(value).__name__}")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise PlanningError(f"observed capacity document: {where} must be a list, got {type(value).__name__}")
    return value


def parse_observed(document: Any) -> Observed:
    """The document as served at PATH; a malformed one raises PlanningError naming the field."""
    body = _mapping(document, "the document")
    nodes: dict[str, NodeObservation] = {}
    for name, raw in _mapping(body.get("nodes") or {}, "nodes").items():
        node = _mapping(raw, f"nodes.{name}")
        steps = {phase: tuple(StepSample(*_numbers(s, 3, f"nodes.{name}.{phase}[{i}]"))
                              for i, s in enumerate(_list(node.get(phase) or [], f"nodes.{name}.{phase}")))
                 for phase in ("decode", "prefill")}
        start, end = _numbers(node.get("layers"), 2, f"nodes.{name}.layers")
        nodes[str(name)] = NodeObservation(str(node.get("gpuType") or ""), (int(start), int(end)),
                                           steps["decode"], steps["prefill"])
    links: dict[tuple[str, str], tuple[LinkSample, ...]] = {}
    for key, raw in _mapping(body.get("links") or {}, "links").items():
        src, separator, dst = str(key).partition(LINK_SEPARATOR)
        if not separator or not src or not dst:
            raise PlanningError(f"observed capacity document: link {key!r} must be named 'from{LINK_SEPARATOR}to'")
        link = _mapping(raw, f"links.{key}")
        links[(src, dst)] = tuple(LinkSample(*_numbers(s, 2, f"links.{key}.samples[{i}]"))
                                  for i, s in enumerate(_list(link.get("samples") or [], f"links.{key}.samples")))
    return Observed(str(body.get("planHash") or ""), nodes, links)


def link_rate(samples: Iterable[LinkSample]) -> float | None:
    """Bytes/s a link moves: the median of its frames' rates (None without timed frames)."""
    rates = [s.bytes / s.seconds for s in samples if s.seconds > 0 and s.bytes > 0]
    return statistics.median(rates) if rates else None


def _profiled_seconds(sample: StepSample, curve: Curve) -> float:
    return sample.layers * curve(sample.size) if sample.size > 0 else 0.0


@dataclass(frozen=True)
class Slowdown:
    ratio: float  # observed step time / profiled step time: 2.0 is twice as slow
    phase: str  # "decodes" or "prefills": what most of the samples were
    samples: int


def node_slowdown(observation: NodeObservation, catalog: Catalog, model: ModelSpec, gpu: str) -> Slowdown | None:
    """The median over recent steps of observed / profiled seconds; None with too few steps."""
    prompt, decode = layer_curves(catalog, model, catalog.gpu(gpu))
    pairs = [(s.seconds, _profiled_seconds(s, decode)) for s in observation.decode]
    pairs += [(s.seconds, _profiled_seconds(s, prompt)) for s in observation.prefill]
    ratios = [seen / expected for seen, expected in pairs if expected > 0]
    if len(ratios) < MIN_STEP_SAMPLES:
        return None
    phase = "decodes" if len(observation.decode) >= len(observation.prefill) else "prefills"
    return Slowdown(statistics.median(ratios), phase, len(ratios))


def link_ratio(samples: Iterable[LinkSample], configured: Link) -> float | None:
    """Observed over configured bandwidth, at most 1 (a frame read from a full socket buffer
    looks faster than the wire; a link is never taken to be faster than described)."""
    timed = [s for s in samples if s.seconds > 0 and s.bytes > 0]
    rate = link_rate(timed)
    if rate is None or len(timed) < MIN_LINK_SAMPLES:
        return None
    return min(1.0, rate / configured.bandwidth)


@dataclass(frozen=True)
class Drift:
    """One node or link off its description: `ratio` is a node's slowdown or a link's bandwidth share."""

    key: str  # the node's name, or "a>b" for a link
    ratio: float
    description: str  # the reason's subject, e.g. "w-3 decodes 2.10x slower than its cpu-a profile"

    @property
    def is_link(self) -> bool:
        return LINK_SEPARATOR in self.key


def beyond(ratio: float, baseline: float, threshold: float) -> bool:
    """Whether `ratio` differs from `baseline` by more than the relative `threshold`, either way."""
    change = ratio / baseline
    return change > 1 + threshold or change < 1 / (1 + threshold)


def measured_ratios(cluster: Cluster, catalog: Catalog, model: ModelSpec, observed: Observed) -> list[Drift]:
    """Every node and link of `cluster` with enough samples, with its ratio (drifted or not)."""
    out: list[Drift] = []
    names = set(cluster.node_names)
    for name in sorted(observed.nodes.keys() & names):
        gpu = cluster.node(name).gpu
        slowdown = node_slowdown(observed.nodes[name], catalog, model, gpu)
        if slowdown is not None:
            how = (f"{slowdown.ratio:.2f}x slower than" if slowdown.ratio >= 1
                   else f"{1 / slowdown.ratio:.2f}x faster than")
            out.append(Drift(name, slowdown.ratio, f"{name} {slowdown.phase} {how} its {gpu} profile"))
    for (src, dst), samples in sorted(observed.links.items()):
        link = cluster.link(src, dst) if src in names and dst in names else None
        ratio = link_ratio(samples, link) if link is not None else None
        if link is not None and ratio is not None:
            out.append(Drift(f"{src}{LINK_SEPARATOR}{dst}", ratio,
                             f"link {src}{LINK_SEPARATOR}{dst} carries {ratio * link.bandwidth / 1e6:.1f} MB/s, "
                             f"{ratio:.2f}x its described {link.bandwidth / 1e6:.1f} MB/s"))
    return out


def drifts(cluster: Cluster, catalog: Catalog, model: ModelSpec, observed: Observed,
           threshold: float) -> list[Drift]:
    """The nodes and links whose observed ratio is beyond `threshold` of their description."""
    return [d for d in measured_ratios(cluster, catalog, model, observed) if beyond(d.ratio, 1.0, threshold)]


@dataclass(frozen=True)
class EffectiveInputs:
    cluster: Cluster
    catalog: Catalog
    drifts: list[Drift]


def derived_gpu_name(gpu: str, ratio: float) -> str:
    return f"{gpu}{DERIVED_MARK}{ratio:.2f}x"


def effective_inputs(cluster: Cluster, catalog: Catalog, model: ModelSpec, observed: Observed,
                     threshold: float) -> EffectiveInputs:
    """The cluster and catalog as observed: drifted nodes on derived GPU types, drifted links at
    their observed bandwidth. Undrifted ones, and ones without samples, stay as described."""
    found = drifts(cluster, catalog, model, observed, threshold)
    derived = Catalog(dict(catalog.gpus), dict(catalog.measured), dict(catalog.helix_tables))
    renamed: dict[str, str] = {}
    links = cluster.links.without(set()) if isinstance(cluster.links, RegionMesh) else dict(cluster.links)
    for drift in found:
        if drift.is_link:
            src, _, dst = drift.key.partition(LINK_SEPARATOR)
            link = links[(src, dst)]
            links[(src, dst)] = replace(link, bandwidth=link.bandwidth * drift.ratio)
        else:
            renamed[drift.key] = _derive_gpu(derived, model, cluster.node(drift.key).gpu, drift.ratio)
    nodes = [Node(n.name, renamed.get(n.name, n.gpu), n.region) for n in cluster.nodes]
    return EffectiveInputs(Cluster(nodes=nodes, links=links, name=cluster.name), derived, found)


def _derive_gpu(catalog: Catalog, model: ModelSpec, gpu_name: str, ratio: float) -> str:
    """Add `gpu_name` slowed by `ratio` to `catalog` (curves, roofline and Helix tables); its name."""
    gpu = catalog.gpu(gpu_name)
    name = derived_gpu_name(gpu.name, ratio)
    catalog.gpus[name] = replace(gpu, name=name, memory_bandwidth=gpu.memory_bandwidth / ratio,
                                 peak_flops=gpu.peak_flops / ratio, labels=())
    measured = catalog.measurement(model.name, gpu.name)
    if measured is not None:
        catalog.measured[(model.name, name)] = replace(measured, gpu=name, prompt=_scaled(measured.prompt, ratio),
                                                       decode=_scaled(measured.decode, ratio))
    tables = catalog.helix_tables.get(model.name)
    if tables is not None and gpu.name in tables.typical_layers:
        catalog.helix_tables[model.name] = _with_derived(tables, gpu.name, name, ratio)
    return name


def _scaled(curve: Curve, ratio: float) -> Curve:
    return Curve(curve.xs, tuple(s * ratio for s in curve.seconds))


def _with_derived(tables: HelixTables, gpu: str, name: str, ratio: float) -> HelixTables:
    return replace(tables, typical_layers={**tables.typical_layers, name: tables.typical_layers[gpu]},
                   typical_layers_small={**tables.typical_layers_small, name: tables.typical_layers_small[gpu]},
                   initial_perf={**tables.initial_perf, name: tables.initial_perf[gpu] / ratio})


def restore_gpu_types(plan: Plan, cluster: Cluster) -> Plan:
    """A plan made on effective inputs, with each node's real GPU type from `cluster` (what the
    workers, the operator's node checks and later plans compare with)."""
    real = {n.name: n.gpu for n in cluster.nodes}
    return replace(plan, nodes=[replace(n, gpu_type=real.get(n.name, n.gpu_type)) for n in plan.nodes])


def plan_value(plan: Plan, cluster: Cluster, catalog: Catalog, model: ModelSpec,
               options: PlannerOptions | None = None) -> float:
    """Tokens/s `plan`'s placement carries on `cluster` and `catalog` (0 if a node of it is gone)."""
    if any(n.name not in set(cluster.node_names) for n in plan.nodes):
        return 0.0
    capacity = capacity_model_for(cluster, model, options or PlannerOptions(), catalog)
    return evaluate(cluster, model, capacity, plan.layout).value


@dataclass(frozen=True)
class Sustained:
    """Drift that persisted: the effective inputs to plan with and why, in words."""

    drifts: list[Drift]
    reasons: list[str]

    @property
    def message(self) -> str:
        return "; ".join(self.reasons)


@dataclass
class DriftTracker:
    """Debounced, churn-aware drift detection over successive observations.

    Each `update` takes the ratios measured now (`measured_ratios`). A key drifts while its
    ratio is beyond `threshold` of its baseline (1.0, or the ratio last `settle`d); it is
    sustained once it has drifted at every update for `debounce_seconds`. After acting on a
    sustained drift (replanned or not), `settle` makes the current ratios the baselines, so the
    same drift does not trigger again; `worth_replanning` is the churn check."""

    threshold: float = 0.25
    debounce_seconds: float = 30.0
    min_gain: float = 0.05
    baselines: dict[str, float] = field(default_factory=dict)
    since: dict[str, float] = field(default_factory=dict)  # key -> when it started drifting
    latest: dict[str, Drift] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.threshold <= 0 or self.debounce_seconds < 0 or self.min_gain < 0:
            raise PlanningError(f"drift tracking needs threshold > 0, debounce >= 0 and min gain >= 0; got "
                                f"{self.threshold}, {self.debounce_seconds}, {self.min_gain}")

    def update(self, measured: Iterable[Drift], now: float) -> Sustained | None:
        """Record this observation; the sustained drifts, if any."""
        self.latest = {d.key: d for d in measured}
        drifting = {k for k, d in self.latest.items() if beyond(d.ratio, self.baselines.get(k, 1.0), self.threshold)}
        self.since = {k: self.since.get(k, now) for k in drifting}
        due = sorted(k for k, t in self.since.items() if now - t >= self.debounce_seconds)
        if not due:
            return None
        return Sustained([self.latest[k] for k in due],
                         [f"{self.latest[k].description} for {now - self.since[k]:.0f} s" for k in due])

    def worth_replanning(self, current_value: float, candidate_value: float) -> bool:
        """Whether the candidate beats the current plan (both on the effective inputs) by min_gain."""
        return candidate_value >= current_value * (1 + self.min_gain) and candidate_value > 0

    def settle(self) -> None:
        """The latest ratios become the baselines: what was acted on no longer counts as drift."""
        self.baselines.update({k: d.ratio for k, d in self.latest.items()})
        self.since.clear()
