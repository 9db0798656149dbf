"""Plan documents for hand-chosen or proportional layouts (tests, benchmarks).

The planner places layers wherever Helix serves, `helix up` included (see `fleet_plan`);
these helpers build the same plan format when a test or benchmark fixes the layout itself
or simply splits the layers in proportion to speed.
"""

from helix_planner.plan_format import SCHEMA_VERSION, Plan, plan_from_dict
from helix_worker.errors import ServingError

Layout = list[tuple[str, int, int]]  # (node, start, end) per stage, in pipeline order


def manual_plan(model: str, num_layers: int, pipelines: list[Layout], weights: list[float] | None = None,
                *, cluster: str = "local", gpu_types: dict[str, str] | None = None) -> Plan:
    """A plan whose pipelines are exactly `pipelines`; each must cover [0, num_layers) in order."""
    weights = weights or [1.0] * len(pipelines)
    nodes: dict[str, tuple[int, int]] = {}
    for stages in pipelines:
        position = 0
        for node, start, end in stages:
            if start != position or end <= start:
                raise ServingError(f"pipeline {stages} does not cover layers contiguously from 0")
            position = end
            lo, hi = nodes.get(node, (start, end))
            nodes[node] = (min(lo, start), max(hi, end))
        if position != num_layers:
            raise ServingError(f"pipeline {stages} ends at layer {position}, not {num_layers}")
    flow = {n: sum(w for stages, w in zip(pipelines, weights) if any(s[0] == n for s in stages)) for n in nodes}
    return plan_from_dict({
        "schemaVersion": SCHEMA_VERSION, "kind": "HelixPlan", "model": {"name": model, "numLayers": num_layers},
        "cluster": cluster, "throughputModel": "manual", "throughput": sum(weights), "upperBound": None,
        "solver": {"method": "manual", "status": "given", "seconds": 0.0}, "inputsHash": "",
        "nodes": [{"name": n, "gpuType": (gpu_types or {}).get(n, "cpu"), "region": "local", "start": s, "end": e,
                   "capacity": flow[n], "flow": flow[n]} for n, (s, e) in nodes.items()],
        "edges": [],
        "pipelines": [{"stages": [{"node": n, "start": s, "end": e} for n, s, e in stages], "tokensPerSecond": w}
                      for stages, w in zip(pipelines, weights)],
    })


def proportional_split(num_layers: int, speeds: list[float]) -> list[tuple[int, int]]:
    """Contiguous ranges, one per worker, sized in proportion to speed (at least one layer each)."""
    if not speeds or len(speeds) > num_layers or min(speeds) <= 0:
        raise ServingError(f"cannot split {num_layers} layers over {len(speeds)} workers with speeds {speeds}")
    total, ranges, start = sum(speeds), [], 0
    for i in range(len(speeds)):
        remaining_workers = len(speeds) - i - 1
        share = round(num_layers * sum(speeds[:i + 1]) / total) - start
        end = min(max(start + 1, start + share), num_layers - remaining_workers)
        ranges.append((start, end))
        start = end
    return ranges
