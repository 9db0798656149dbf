"""The plan document (schemaVersion 1): what `helix plan -o json` prints, the operator's
ConfigMap holds and workers and the front end load.

Layer ranges are half-open `[start, end)`. `planHash` identifies the placement (what runs);
`inputsHash` identifies what was planned for (cluster, model, settings). `maxInFlight`, when
set, caps the requests the front end admits at once (the serving objective's way to meet a
time-to-first-token target); being part of what runs, it is part of `planHash`.
"""

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from helix_planner.errors import PlanningError
from helix_planner.pipelines import Pipeline, Stage

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class PlannedNode:
    name: str
    gpu_type: str
    region: str
    start: int
    end: int
    capacity: float
    flow: float


@dataclass(frozen=True)
class PlannedEdge:
    src: str
    dst: str
    flow: float
    capacity: float


@dataclass(frozen=True)
class SolverReport:
    method: str
    status: str
    seconds: float
    mip_gap: float | None = None
    time_limit: float | None = None
    threads: int | None = None


@dataclass(frozen=True)
class Plan:
    model: dict[str, Any]
    cluster: str
    throughput_model: str
    nodes: list[PlannedNode]
    edges: list[PlannedEdge]
    pipelines: list[Pipeline]
    throughput: float
    upper_bound: float | None
    solver: SolverReport
    inputs_hash: str
    bottlenecks: list[str] = field(default_factory=list)
    max_in_flight: int | None = None  # front-end admission cap the serving objective chose for a TTFT target

    @property
    def gap(self) -> float | None:
        """Relative gap (bound - throughput) / bound of the certified upper bound."""
        if self.upper_bound is None or self.upper_bound <= 0:
            return None
        return max(0.0, (self.upper_bound - self.throughput) / self.upper_bound)

    @property
    def layout(self) -> dict[str, tuple[int, int]]:
        return {n.name: (n.start, n.end) for n in self.nodes}

    @property
    def plan_hash(self) -> str:
        """Hash of what runs: model (and the weights' commit when pinned), placement, pipelines and
        admission cap (not timings or bounds)."""
        body: dict[str, Any] = {
            "model": self.model.get("name"),
            "layout": sorted((n.name, n.start, n.end) for n in self.nodes),
            "pipelines": [[(s.node, s.start, s.end) for s in p.stages] for p in self.pipelines],
        }
        if self.max_in_flight is not None:
            body["maxInFlight"] = self.max_in_flight
        if self.model.get("revision"):  # hf:// weights pinned by the operator: a new commit is a new plan
            body["revision"] = self.model["revision"]
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schemaVersion": SCHEMA_VERSION,
            "kind": "HelixPlan",
            "planHash": self.plan_hash,
            "inputsHash": self.inputs_hash,
            "model": self.model,
            "cluster": self.cluster,
            "throughputModel": self.throughput_model,
            "throughput": round(self.throughput, 6),
            "upperBound": None if self.upper_bound is None else round(self.upper_bound, 6),
            "gap": None if self.gap is None else round(self.gap, 6),
            "solver": {k: v for k, v in _camel(asdict(self.solver)).items() if v is not None},
            "nodes": [
                {"name": n.name, "gpuType": n.gpu_type, "region": n.region, "start": n.start, "end": n.end,
                 "capacity": round(n.capacity, 6), "flow": round(n.flow, 6)}
                for n in self.nodes
            ],
            "edges": [
                {"from": e.src, "to": e.dst, "flow": round(e.flow, 6), "capacity": round(e.capacity, 6)}
                for e in self.edges
            ],
            "pipelines": [
                {"stages": [{"node": s.node, "start": s.start, "end": s.end} for s in p.stages],
                 "tokensPerSecond": round(p.tokens_per_second, 6)}
                for p in self.pipelines
            ],
            "bottlenecks": self.bottlenecks,
            "maxInFlight": self.max_in_flight,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)


def _camel(data: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in data.items():
        head, *rest = key.split("_")
        out[head + "".join(part.title() for part in rest)] = value
    return out


def plan_from_dict(data: dict[str, Any]) -> Plan:
    """Read a plan document; a wrong version or a missing field is one clear error."""
    version = data.get("schemaVersion")
    if version != SCHEMA_VERSION:
        raise PlanningError(f"plan schemaVersion {version!r} is not supported: this build reads version "
                            f"{SCHEMA_VERSION}")
    try:
        solver = data["solver"]
        plan = Plan(
            model=dict(data["model"]),
            cluster=str(data["cluster"]),
            throughput_model=str(data["throughputModel"]),
            nodes=[PlannedNode(n["name"], n["gpuType"], n.get("region", "default"), int(n["start"]), int(n["end"]),
                               float(n.get("capacity", 0.0)), float(n.get("flow", 0.0))) for n in data["nodes"]],
            edges=[PlannedEdge(e["from"], e["to"], float(e["flow"]), float(e.get("capacity", 0.0)))
                   for e in data.get("edges", [])],
            pipelines=[Pipeline(tuple(Stage(s["node"], int(s["start"]), int(s["end"])) for s in p["stages"]),
                                float(p["tokensPerSecond"])) for p in data["pipelines"]],
            throughput=float(data["throughput"]),
            upper_bound=None if data.get("upperBound") is None else float(data["upperBound"]),
            solver=SolverReport(method=str(solver.get("method", "")), status=str(solver.get("status", "")),
                                seconds=float(solver.get("seconds", 0.0)), mip_gap=solver.get("mipGap"),
                                time_limit=solver.get("timeLimit"), threads=solver.get("threads")),
            inputs_hash=str(data.get("inputsHash", "")),
            bottlenecks=list(data.get("bottlenecks", [])),
            max_in_flight=_positive_or_none(data.get("maxInFlight"), "maxInFlight"),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise PlanningError(f"plan document is malformed ({err!r}); regenerate it with `helix plan -o json`") from None
    return plan


def _positive_or_none(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer or null, got {value!r}")
    return value


def load_plan(text: str) -> Plan:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise PlanningError(f"plan is not valid JSON: {err}") from None
    return plan_from_dict(data)
